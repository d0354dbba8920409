//! Usage policies (SPEC §8) on the request path: the client address behind trusted
//! proxies, the admission decision on either store, and the `RateLimit` headers. The
//! policies as data (rate limits, quotas, the compiled [`Policy`]) are
//! [`crate::limits`], the permission grammar [`crate::permissions`] and CIDR blocks
//! [`crate::cidr`]: they are re-exported here, and the token, its store and the config
//! use them from there, below this module.
//!
//! A token without policies has no compiled [`Policy`] (`AuthEntry::policy` is `None`),
//! so its requests pay one pointer test. The decision itself lives in [`limiter`]
//! (this process's state: the embedded store, and Redis while it is down) and in
//! [`crate::store::RedisStore::admit`] (one Lua script per admitted request, exact
//! across instances).

pub mod limiter;

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use jiff::Timestamp;

use crate::store::redis::RedisVerdict;
use crate::store::{Store, StoreResult};
use crate::token::TokenId;

pub use limiter::{Admission, Limiters, Refusal};

pub use crate::cidr::{Cidr, any_contains, canonical};
pub use crate::limits::{
    Limit, MAX_ALLOWED_IPS, MAX_LIMIT_REQUESTS, MAX_PER, MAX_QUOTA_REQUESTS, MAX_RATE_LIMITS,
    MIN_PER, Period, Policy, Quota, QuotaUsage, RateLimit, check_quota, check_rate_limits,
    parse_allowed_ips, rfc3339,
};
pub use crate::permissions::{
    Access, PERMISSION_ALL_READ, READ_SUFFIX, access, check_permission_list, holds_all,
    is_read_method, split_permission,
};

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

/// The `RateLimit` header for the limit with the fewest requests left:
/// `"<label>";r=<remaining>;t=<seconds>`, written into one buffer of exactly its length
/// (every answer of a token with rate limits carries it; `Bytes` takes that buffer as it
/// is, one allocation).
pub fn ratelimit_header(policy: &Policy, state: &limiter::Headroom) -> Option<HeaderValue> {
    let prefix = &policy.limits.get(state.index)?.ratelimit_prefix;
    let (p, r) = (prefix.len(), decimal_len(state.remaining));
    let t = p + r + 3;
    let mut v = vec![0; t + decimal_len(state.reset_secs)];
    v[..p].copy_from_slice(prefix);
    write_decimal(&mut v[p..p + r], state.remaining);
    v[p + r..t].copy_from_slice(b";t=");
    write_decimal(&mut v[t..], state.reset_secs);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
}

fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// "00" to "99".
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Writes `n` in decimal into `out`, which is [`decimal_len`]`(n)` bytes long, from
/// the right, two digits at a time.
fn write_decimal(out: &mut [u8], mut n: u64) {
    let mut at = out.len();
    while n >= 10 && at >= 2 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        out[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if let Some(last) = at.checked_sub(1).and_then(|i| out.get_mut(i)) {
        *last = b'0' + (n % 10) as u8;
    }
}

/// `RateLimit-Policy` and `RateLimit` for an answer of a token with rate limits.
pub fn ratelimit_headers(
    policy: &Policy,
    headroom: Option<limiter::Headroom>,
) -> Option<(HeaderValue, HeaderValue)> {
    let state = headroom.and_then(|h| ratelimit_header(policy, &h))?;
    Some((policy.policy_header.clone()?, state))
}

// ---------------------------------------------------------------------------
// The decision, on either store.

/// Decides on one request of token `id` whose policy has limits or a quota (SPEC §2
/// rows 8a, 8b). Embedded store: this process's state. Redis: one script, exact across
/// instances; while Redis is unreachable (or this call fails) this instance decides
/// alone and its quota counts are added to Redis later ([`sync_quotas`]). `now_ms`:
/// Unix ms, the clock read that also checked the token's expiry.
pub async fn admit(
    limiters: &Limiters,
    store: &Store,
    id: TokenId,
    policy: &Policy,
    now_ms: i64,
) -> Admission {
    let Store::Redis(redis) = store else {
        return limiters.admit(id, policy, now_ms, false);
    };
    if redis.is_up() {
        let quota = policy.quota.map(|q| {
            let (start, end) = q.period.bounds(now_ms.div_euclid(1000));
            (q.period, start, end)
        });
        // Boxed: a Redis round trip's future would size every request's future.
        match Box::pin(redis.admit(id, policy, quota, now_ms)).await {
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
    fn ratelimit_header_value() {
        let l = |n, p: &str| RateLimit {
            requests: n,
            per: p.into(),
        };
        let p = Policy::of(&[l(100, "1m"), l(1_000_000_000, "1d")], None, &[]).unwrap();
        for (index, remaining, reset_secs, want) in [
            (0, 0, 0, "\"100/1m\";r=0;t=0"),
            (0, 99, 1, "\"100/1m\";r=99;t=1"),
            (
                1,
                1_000_000_000,
                86_400,
                "\"1000000000/1d\";r=1000000000;t=86400",
            ),
            (
                1,
                u64::MAX,
                10,
                "\"1000000000/1d\";r=18446744073709551615;t=10",
            ),
        ] {
            let h = limiter::Headroom {
                index,
                remaining,
                reset_secs,
            };
            assert_eq!(ratelimit_header(&p, &h).unwrap(), want);
        }
        let out_of_range = limiter::Headroom {
            index: 2,
            remaining: 0,
            reset_secs: 0,
        };
        assert!(ratelimit_header(&p, &out_of_range).is_none());
    }

    #[test]
    fn decimals() {
        let mut n = 1u64;
        for _ in 0..19 {
            for x in [n - 1, n, n + 1, n * 5, n * 9 + 8] {
                let mut v = vec![0; decimal_len(x)];
                write_decimal(&mut v, x);
                assert_eq!(v, x.to_string().as_bytes());
            }
            n *= 10;
        }
        let mut v = vec![0; decimal_len(u64::MAX)];
        write_decimal(&mut v, u64::MAX);
        assert_eq!(v, u64::MAX.to_string().as_bytes());
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
