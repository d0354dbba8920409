//! Usage policies (SPEC §8): read-only permissions, IP allow-lists, rate limits and
//! quotas — their types and validation, the client address behind trusted proxies, the
//! compiled form a cached token carries, and the admission decision.
//!
//! A token without policies has no compiled [`Policy`] (`AuthEntry::policy` is `None`),
//! so its requests pay one pointer test. The decision itself lives in [`limiter`]
//! (this process's state: the embedded store, and Redis while it is down) and in
//! [`crate::store::RedisStore::admit`] (one Lua script per admitted request, exact
//! across instances).

pub mod limiter;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::duration::parse as parse_duration;
use crate::error::ApiError;
use crate::store::redis::RedisVerdict;
use crate::store::{Store, StoreResult};
use crate::token::TokenId;

pub use limiter::{Admission, Limiters, Refusal};

pub use crate::cidr::{Cidr, any_contains, canonical};
pub use crate::permissions::{
    Access, PERMISSION_ALL_READ, READ_SUFFIX, access, check_permission_list, holds_all,
    is_read_method, split_permission,
};

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
/// The header listing a token's rate limits (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
/// The header with the tightest limit's remaining requests.
pub const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

// ---------------------------------------------------------------------------
// IP allow-lists.

/// The client address (SPEC §8): the TCP peer, unless the peer is a trusted proxy;
/// then `X-Forwarded-For` read right to left, skipping trusted addresses, and the first
/// untrusted one is the client (all trusted: the left-most; a malformed entry stops the
/// walk and the last trusted address is the client).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    if !any_contains(trusted, peer) {
        return peer;
    }
    let mut client = peer;
    // Several X-Forwarded-For lines form one list in order (RFC 9110 §5.3).
    let lines: Vec<&HeaderValue> = headers.get_all("x-forwarded-for").iter().collect();
    for line in lines.iter().rev() {
        let Ok(text) = line.to_str() else {
            return client;
        };
        for entry in text.rsplit(',') {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                return client;
            };
            client = canonical(ip);
            if !any_contains(trusted, client) {
                return client;
            }
        }
    }
    client
}

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
                let secs = |d: jiff::civil::Date| i64::from(crate::store::day_number(d)) * 86_400;
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

fn short(s: &str) -> String {
    s.chars().take(64).collect()
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
    /// `"<N>/<per>"` as spelled in the token (a structured-field string).
    pub label: Box<str>,
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
                label: format!("{}/{}", l.requests, l.per).into(),
            })
            .collect();
        let policy_header = (!limits.is_empty())
            .then(|| {
                let s: Vec<String> = limits
                    .iter()
                    .map(|l| format!("\"{}\";q={};w={}", l.label, l.requests, l.per_ms / 1000))
                    .collect();
                HeaderValue::from_str(&s.join(", ")).ok()
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

/// The `RateLimit` header for the limit with the fewest requests left.
pub fn ratelimit_header(policy: &Policy, state: &limiter::Headroom) -> Option<HeaderValue> {
    let l = policy.limits.get(state.index)?;
    HeaderValue::from_str(&format!(
        "\"{}\";r={};t={}",
        l.label, state.remaining, state.reset_secs
    ))
    .ok()
}

/// RFC 3339 of Unix seconds.
pub fn rfc3339(unix: i64) -> String {
    Timestamp::from_second(unix).map_or_else(|_| "-".into(), |t| t.to_string())
}

// ---------------------------------------------------------------------------
// The decision, on either store.

/// Decides on one request of token `id` whose policy has limits or a quota (SPEC §2
/// rows 8a, 8b). Embedded store: this process's state. Redis: one script, exact across
/// instances; while Redis is unreachable (or this call fails) this instance decides
/// alone and its quota counts are added to Redis later ([`sync_quotas`]).
pub async fn admit(limiters: &Limiters, store: &Store, id: TokenId, policy: &Policy) -> Admission {
    let now_ms = Timestamp::now().as_millisecond();
    let Store::Redis(redis) = store else {
        return limiters.admit(id, policy, now_ms, false);
    };
    if redis.is_up() {
        let quota = policy.quota.map(|q| {
            let (start, end) = q.period.bounds(now_ms.div_euclid(1000));
            (q.period, start, end)
        });
        match redis.admit(id, policy, quota, now_ms).await {
            Ok(v) => return from_redis(limiters, id, policy, quota, now_ms, &v),
            Err(e) => {
                tracing::debug!(token = %id, error = %e, "limits decided locally: redis did not answer");
            }
        }
    }
    limiters.admit(id, policy, now_ms, true)
}

fn from_redis(
    limiters: &Limiters,
    id: TokenId,
    policy: &Policy,
    quota: Option<(Period, i64, i64)>,
    now_ms: i64,
    v: &RedisVerdict,
) -> Admission {
    limiters.mirror(id, policy, now_ms, &v.tats, quota.map(|_| v.quota_used));
    match v.verdict {
        0 => Admission::Admitted(limiter::headroom(policy, &v.tats, v.now_ms)),
        1 => {
            let retry_after = policy
                .limits
                .iter()
                .zip(&v.tats)
                .filter_map(|(l, t)| {
                    limiter::gcra(*t, v.now_ms, l.requests, l.per_ms)
                        .err()
                        .map(|w| limiter::ceil_secs(w, l.requests))
                })
                .max()
                .unwrap_or(1)
                .max(1);
            Admission::Refused(Refusal::RateLimited {
                retry_after,
                headroom: limiter::headroom(policy, &v.tats, v.now_ms),
            })
        }
        _ => {
            let (_, start, end) = quota.unwrap_or((Period::Day, 0, 0));
            if v.first_refusal {
                limiters.note_reported(id, start);
            }
            Admission::Refused(Refusal::QuotaExceeded {
                retry_after: limiter::quota_retry_after(end, now_ms),
                first_in_period: v.first_refusal,
                period_start: start,
            })
        }
    }
}

/// `quota_usage` of a token with a quota (exact: this process's count on the embedded
/// store; Redis's count plus what this instance admitted while Redis was unreachable).
pub async fn quota_usage(
    limiters: &Limiters,
    store: &Store,
    id: TokenId,
    quota: &Quota,
    now: Timestamp,
) -> QuotaUsage {
    let (start, end) = quota.period.bounds(now.as_second());
    let local = limiters.quota_used(id, quota.period, start);
    let used = match store {
        Store::Embedded(_) => local.unwrap_or(0),
        Store::Redis(r) => match r.quota_used(id, quota.period, start).await {
            Ok(n) => n + limiters.quota_unsynced(id, quota.period, start),
            Err(_) => local.unwrap_or(0),
        },
    };
    QuotaUsage {
        used,
        period_start: rfc3339(start),
        period_end: rfc3339(end),
    }
}

/// Persists quota counts (embedded store: with every statistics flush, so a crash
/// loses at most one flush interval) or adds counts made while Redis was unreachable.
pub async fn sync_quotas(limiters: &Limiters, store: &Store) -> StoreResult<()> {
    match store {
        Store::Embedded(s) => {
            let rows = limiters.take_dirty();
            if rows.is_empty() {
                return Ok(());
            }
            let s = std::sync::Arc::clone(s);
            let written = rows.clone();
            let result = tokio::task::spawn_blocking(move || s.set_quotas(&written))
                .await
                .map_err(|e| crate::store::StoreError::Unavailable(e.to_string()))
                .and_then(|r| r);
            if result.is_err() {
                limiters.restore_dirty(&rows);
            }
            result
        }
        Store::Redis(r) => {
            if !r.is_up() {
                return Ok(());
            }
            let rows = limiters.take_unsynced();
            for (i, &(id, period, start, n)) in rows.iter().enumerate() {
                if let Err(e) = r.add_quota(id, period, start, n).await {
                    limiters.give_back(&rows[i..]);
                    return Err(e);
                }
            }
            if !rows.is_empty() {
                tracing::info!(
                    rows = rows.len(),
                    "quota counts made while redis was unreachable were added"
                );
            }
            Ok(())
        }
    }
}

/// Loads persisted quota counts (embedded store, at start-up).
pub async fn load_quotas(limiters: &Limiters, store: &Store) -> StoreResult<()> {
    if let Store::Embedded(s) = store {
        let s = std::sync::Arc::clone(s);
        let rows = tokio::task::spawn_blocking(move || s.quotas())
            .await
            .map_err(|e| crate::store::StoreError::Unavailable(e.to_string()))??;
        for (id, period, start, used) in rows {
            limiters.load_quota(id, period, start, used);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn xff_walk() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("x-forwarded-for", HeaderValue::from_str(v).unwrap());
            m
        };
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let outside: IpAddr = "203.0.113.9".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_ip(outside, &h("1.1.1.1"), &trusted), outside);
        assert_eq!(
            client_ip(peer, &h("1.1.1.1, 2.2.2.2, 10.0.0.5"), &trusted),
            ip("2.2.2.2")
        );
        assert_eq!(
            client_ip(peer, &h("10.0.0.9, 10.0.0.5"), &trusted),
            ip("10.0.0.9")
        );
        assert_eq!(
            client_ip(peer, &h("1.1.1.1, junk, 10.0.0.5"), &trusted),
            ip("10.0.0.5")
        );
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
        assert_eq!(client_ip(peer, &h("1.1.1.1"), &[]), peer);
        let mut two = h("1.1.1.1");
        two.append("x-forwarded-for", HeaderValue::from_static("10.0.0.7"));
        assert_eq!(client_ip(peer, &two, &trusted), ip("1.1.1.1"));
    }

    #[test]
    fn periods_are_utc_calendar() {
        // 2026-11-25T16:00:00Z
        let now = 1_795_564_800 + 16 * 3600;
        let (s, e) = Period::Day.bounds(now);
        assert_eq!(
            (rfc3339(s), rfc3339(e)),
            ("2026-11-25T00:00:00Z".into(), "2026-11-26T00:00:00Z".into())
        );
        let (s, e) = Period::Month.bounds(now);
        assert_eq!(
            (rfc3339(s), rfc3339(e)),
            ("2026-11-01T00:00:00Z".into(), "2026-12-01T00:00:00Z".into())
        );
        let dec = Period::Month.bounds(e + 5);
        assert_eq!(rfc3339(dec.1), "2027-01-01T00:00:00Z");
    }

    #[test]
    fn limit_validation_names_fields() {
        let l = |n, p: &str| RateLimit {
            requests: n,
            per: p.into(),
        };
        assert!(check_rate_limits(&[l(1, "1s"), l(1_000_000_000, "1d")]).is_ok());
        let e = |x: &[RateLimit]| check_rate_limits(x).unwrap_err().to_string();
        assert!(e(&[l(0, "1s")]).starts_with("rate_limits[0].requests"));
        assert!(e(&[l(1, "1s"), l(1, "500ms")]).starts_with("rate_limits[1].per"));
        assert!(e(&[l(1, "2d")]).starts_with("rate_limits[0].per"));
        assert!(e(&[l(1, "1x")]).starts_with("rate_limits[0].per"));
        assert!(e(&vec![l(1, "1s"); 5]).starts_with("rate_limits:"));
        assert!(
            check_quota(&Quota {
                requests: 0,
                period: Period::Day
            })
            .is_err()
        );
        let p = Policy::of(&[l(100, "1m"), l(10, "1s")], None, &[]).unwrap();
        assert_eq!(
            p.policy_header.unwrap(),
            "\"100/1m\";q=100;w=60, \"10/1s\";q=10;w=1"
        );
        assert!(Policy::of(&[], None, &[]).is_none());
    }
}
