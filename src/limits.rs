//! Usage policies as data (SPEC §8): rate limits and quotas as stored and shown, their
//! validation, and the compiled [`Policy`] a cached token carries. The decision that
//! uses them is [`crate::policy`]; the token, its store and the admin API use these
//! types without it.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http::HeaderValue;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::duration::parse as parse_duration;
use crate::error::ApiError;

/// Most rate limits on one token.
pub const MAX_RATE_LIMITS: usize = 4;
/// Largest `requests` of a rate limit.
pub const MAX_LIMIT_REQUESTS: u64 = 1_000_000_000;
/// Largest `requests` of a quota.
pub const MAX_QUOTA_REQUESTS: u64 = 1_000_000_000_000;
/// Shortest `per`.
pub const MIN_PER: Duration = Duration::from_secs(1);
/// Longest `per`.
pub const MAX_PER: Duration = Duration::from_secs(86_400);
/// Most entries of `allowed_ips`.
pub const MAX_ALLOWED_IPS: usize = 64;
// ---------------------------------------------------------------------------
// Rate limits and quotas as stored and shown.

/// One rate limit: at most `requests` per `per` (spelled as given, e.g. `"1m"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// 1 to 10^9.
    pub requests: u64,
    /// A duration from `1s` to `1d`.
    pub per: String,
}

impl RateLimit {
    /// `per` in milliseconds (validated values always parse).
    pub fn per_ms(&self) -> u64 {
        parse_duration(&self.per).map_or(1000, |d| d.as_millis() as u64)
    }

    /// `<N>/<per>` with `per` as spelled in the token: the limit's name in the
    /// `RateLimit-Policy` and `RateLimit` headers (SPEC §8).
    pub fn label(&self) -> String {
        format!("{}/{}", self.requests, self.per)
    }

    /// Parses the CLI form `100/1m`.
    pub fn parse_short(s: &str) -> Result<RateLimit, String> {
        let (n, per) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not <requests>/<per>, e.g. 100/1m"))?;
        let requests = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {n:?} is not a number"))?;
        Ok(RateLimit {
            requests,
            per: per.trim().to_string(),
        })
    }
}

/// A calendar period in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// From 00:00 UTC to the next 00:00.
    Day,
    /// From the 1st 00:00 UTC to the next month's 1st.
    Month,
}

impl Period {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The period holding `now`: its start and the next period's start (Unix seconds).
    pub fn bounds(self, now_unix: i64) -> (i64, i64) {
        let day = now_unix.div_euclid(86_400);
        match self {
            Period::Day => (day * 86_400, (day + 1) * 86_400),
            Period::Month => {
                let date = jiff::civil::date(1970, 1, 1)
                    .checked_add(jiff::Span::new().days(day))
                    .unwrap_or(jiff::civil::date(1970, 1, 1));
                let first = date.first_of_month();
                let next = first
                    .checked_add(jiff::Span::new().months(1))
                    .unwrap_or(first);
                let epoch = jiff::civil::date(1970, 1, 1);
                let secs = |d: jiff::civil::Date| i64::from((d - epoch).get_days()) * 86_400;
                (secs(first), secs(next))
            }
        }
    }
}

/// A quota: at most `requests` per calendar `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// 1 to 10^12.
    pub requests: u64,
    /// `day` or `month`.
    pub period: Period,
}

impl Quota {
    /// Parses the CLI form `100000/month`.
    pub fn parse_short(s: &str) -> Result<Quota, String> {
        let (n, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not <requests>/<day|month>, e.g. 100000/month"))?;
        let requests = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {n:?} is not a number"))?;
        let period = match p.trim() {
            "day" => Period::Day,
            "month" => Period::Month,
            other => return Err(format!("{s:?}: unknown period {other:?} (day or month)")),
        };
        Ok(Quota { requests, period })
    }
}

/// `quota_usage` of a token (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaUsage {
    /// Requests admitted in the current period.
    pub used: u64,
    /// RFC 3339.
    pub period_start: String,
    /// RFC 3339: the next period's start.
    pub period_end: String,
}

fn invalid(field: String, why: impl fmt::Display) -> ApiError {
    ApiError::Validation(format!("{field}: {why}"))
}

/// Checks rate limits (SPEC §8), naming the offending field.
pub fn check_rate_limits(limits: &[RateLimit]) -> Result<(), ApiError> {
    if limits.len() > MAX_RATE_LIMITS {
        return Err(invalid(
            "rate_limits".into(),
            format!("at most {MAX_RATE_LIMITS} limits"),
        ));
    }
    for (i, l) in limits.iter().enumerate() {
        if !(1..=MAX_LIMIT_REQUESTS).contains(&l.requests) {
            return Err(invalid(
                format!("rate_limits[{i}].requests"),
                format!("must be between 1 and {MAX_LIMIT_REQUESTS}"),
            ));
        }
        let per =
            parse_duration(&l.per).map_err(|e| invalid(format!("rate_limits[{i}].per"), e))?;
        if !(MIN_PER..=MAX_PER).contains(&per) || per.subsec_millis() != 0 {
            return Err(invalid(
                format!("rate_limits[{i}].per"),
                "must be whole seconds between 1s and 1d",
            ));
        }
        if l.per.trim() != l.per || l.per.contains(['"', ';', ',', '\\']) {
            return Err(invalid(
                format!("rate_limits[{i}].per"),
                "must be a duration like 1m",
            ));
        }
    }
    Ok(())
}

/// Checks a quota (SPEC §8).
pub fn check_quota(q: &Quota) -> Result<(), ApiError> {
    if !(1..=MAX_QUOTA_REQUESTS).contains(&q.requests) {
        return Err(invalid(
            "quota.requests".into(),
            format!("must be between 1 and {MAX_QUOTA_REQUESTS}"),
        ));
    }
    Ok(())
}

/// Parses `allowed_ips` (SPEC §8), naming the offending entry.
pub fn parse_allowed_ips(list: &[String]) -> Result<Vec<Cidr>, ApiError> {
    if list.len() > MAX_ALLOWED_IPS {
        return Err(invalid(
            "allowed_ips".into(),
            format!("at most {MAX_ALLOWED_IPS} entries"),
        ));
    }
    let mut out: Vec<Cidr> = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let c = Cidr::parse(s).map_err(|e| invalid(format!("allowed_ips[{i}]"), e))?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The compiled form a cached token carries.

/// One rate limit, ready for the hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// N.
    pub requests: u64,
    /// `per` in milliseconds.
    pub per_ms: u64,
    /// The start of this limit's `RateLimit` item, `"<N>/<per>";r=` with `<per>` as
    /// spelled in the token (written once: the item is written for every answer).
    pub ratelimit_prefix: Box<[u8]>,
}

/// A token's policies, built once per cached token (`None` when it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `allowed_ips` (empty = any address).
    pub allowed_ips: Box<[Cidr]>,
    /// Rate limits.
    pub limits: Box<[Limit]>,
    /// Quota.
    pub quota: Option<Quota>,
    /// The `RateLimit-Policy` header value (when there are limits).
    pub policy_header: Option<HeaderValue>,
}

impl Policy {
    /// The compiled policies of a token, `None` when it has none.
    pub fn of(
        rate_limits: &[RateLimit],
        quota: Option<Quota>,
        allowed_ips: &[Cidr],
    ) -> Option<Box<Policy>> {
        if rate_limits.is_empty() && quota.is_none() && allowed_ips.is_empty() {
            return None;
        }
        let limits: Box<[Limit]> = rate_limits
            .iter()
            .map(|l| Limit {
                requests: l.requests,
                per_ms: l.per_ms(),
                ratelimit_prefix: format!("\"{}\";r=", l.label()).into_bytes().into(),
            })
            .collect();
        let policy_header = (!rate_limits.is_empty())
            .then(|| {
                let s: Vec<String> = rate_limits
                    .iter()
                    .map(|l| format!("\"{}\";q={};w={}", l.label(), l.requests, l.per_ms() / 1000))
                    .collect();
                POLICY_HEADERS.value(s.join(", "))
            })
            .flatten();
        Some(Box::new(Policy {
            allowed_ips: allowed_ips.into(),
            limits,
            quota,
            policy_header,
        }))
    }

    /// Whether the request must go through the limiter.
    pub fn counts(&self) -> bool {
        !self.limits.is_empty() || self.quota.is_some()
    }
}

/// `RateLimit-Policy` values kept as `'static` text for the life of the process, so
/// that putting one on an answer copies a pointer: a shared value costs two atomic
/// operations per answer, its clone and its drop (13 ns of the ~100 ns a token with
/// two limits and an IP list adds, `cargo bench --bench auth -- policy_`). Tokens use
/// a handful of limit sets in practice; at most [`INTERNED_POLICY_HEADERS`] distinct
/// values are kept (under 1 MB at the longest value), and values beyond that are
/// shared values as before.
static POLICY_HEADERS: Interned = Interned::new(INTERNED_POLICY_HEADERS);

/// Most distinct `RateLimit-Policy` values kept as `'static` text.
const INTERNED_POLICY_HEADERS: usize = 4096;

/// A bounded set of header values that live as long as the process.
struct Interned {
    values: Mutex<BTreeSet<&'static str>>,
    max: usize,
}

impl Interned {
    const fn new(max: usize) -> Interned {
        Interned {
            values: Mutex::new(BTreeSet::new()),
            max,
        }
    }

    /// `text` as a header value (`None`: not a valid one): the kept copy when there is
    /// one or room for one, else a shared value.
    fn value(&self, text: String) -> Option<HeaderValue> {
        let mut values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kept) = values.get(text.as_str()) {
            return Some(HeaderValue::from_static(kept));
        }
        // Checked before it is kept: `from_static` panics on bytes a header value may
        // not hold.
        let shared = HeaderValue::from_str(&text).ok()?;
        if values.len() >= self.max {
            return Some(shared);
        }
        let kept: &'static str = Box::leak(text.into_boxed_str());
        values.insert(kept);
        Some(HeaderValue::from_static(kept))
    }
}

/// RFC 3339 of Unix seconds.
pub fn rfc3339(unix: i64) -> String {
    Timestamp::from_second(unix).map_or_else(|_| "-".into(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_headers_are_kept_once_and_bounded() {
        let set = Interned::new(2);
        let ptr = |v: &HeaderValue| v.as_bytes().as_ptr();
        let a = set.value("\"10/1s\";q=10;w=1".into()).unwrap();
        let again = set.value("\"10/1s\";q=10;w=1".into()).unwrap();
        assert_eq!(ptr(&a), ptr(&again), "one kept copy per distinct value");
        let b = set.value("\"20/1s\";q=20;w=1".into()).unwrap();
        assert_ne!(ptr(&a), ptr(&b));
        // Full: new values are shared values, each its own copy, still correct.
        let c1 = set.value("\"30/1s\";q=30;w=1".into()).unwrap();
        let c2 = set.value("\"30/1s\";q=30;w=1".into()).unwrap();
        assert_eq!(
            (c1.to_str().unwrap(), c2.to_str().unwrap()),
            ("\"30/1s\";q=30;w=1", "\"30/1s\";q=30;w=1")
        );
        assert_ne!(ptr(&c1), ptr(&c2));
        assert_eq!(set.values.lock().unwrap().len(), 2);
        // What a header value may not hold is refused, never kept.
        assert!(set.value("a\nb".into()).is_none());
        // Policies built from the same limits share the process-wide copy.
        let l = [RateLimit {
            requests: 7,
            per: "1m".into(),
        }];
        let p1 = Policy::of(&l, None, &[]).unwrap();
        let p2 = Policy::of(&l, None, &[]).unwrap();
        let (h1, h2) = (p1.policy_header.unwrap(), p2.policy_header.unwrap());
        assert_eq!(h1, "\"7/1m\";q=7;w=60");
        assert_eq!(ptr(&h1), ptr(&h2));
    }
}
