//! Rate limits and quotas in this process: the GCRA arithmetic (shared with the Redis
//! script) and the per-token state used on the embedded store, and on Redis while it is
//! unreachable.
//!
//! **Algorithm.** Each limit is a GCRA (generic cell rate algorithm, a token bucket
//! kept as one number): the theoretical arrival time `tat` advances by `per / N` per
//! admitted request and a request is admitted while `max(tat, now) + per/N - now ≤ per`.
//! A token idle for `per` therefore has exactly N requests of a burst admitted and gets
//! its N back after another `per`. `tat` is kept in units of `1/N` milliseconds, so
//! `per / N` is an integer and nothing is rounded. A request is admitted only if every
//! limit and the quota admit it; only then is any state changed (all or nothing).
//!
//! The state of one token is an entry of a dashmap keyed by token id, changed under
//! its shard's write lock (one lock per request, never held across an await): tokens
//! without limits or quota never create an entry.

use std::hash::BuildHasherDefault;

use dashmap::DashMap;

use super::{Period, Policy, Quota};
use crate::routes::WordHasher;
use crate::token::TokenId;

/// Limit state: the theoretical arrival time in units of `1/N` ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    requests: u64,
    per_ms: u64,
    tat: i128,
}

/// One GCRA step at `now_ms`: the new `tat` if admitted, else how long to wait
/// (in `1/N` ms).
pub fn gcra(tat: i128, now_ms: i64, requests: u64, per_ms: u64) -> Result<i128, i128> {
    let n = i128::from(requests);
    let now = i128::from(now_ms) * n;
    let next = tat.max(now) + i128::from(per_ms);
    let horizon = now + i128::from(per_ms) * n;
    if next <= horizon {
        Ok(next)
    } else {
        Err(next - horizon)
    }
}

/// Whole seconds of a span in `1/N` ms, rounded up.
pub fn ceil_secs(scaled: i128, requests: u64) -> u64 {
    // Spans of admitted state are at most `per` (≤ 1 d · 10^9 < 2^64): a 64-bit
    // division, not the 128-bit library call.
    if let (Ok(s), Some(per_sec)) = (u64::try_from(scaled.max(0)), requests.checked_mul(1000)) {
        return s.div_ceil(per_sec.max(1));
    }
    let per_sec = i128::from(requests) * 1000;
    u64::try_from((scaled.max(0) + per_sec - 1) / per_sec).unwrap_or(u64::MAX)
}

/// What the `RateLimit` header reports: the limit with the fewest requests left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    /// Index of that limit in the token's list.
    pub index: usize,
    /// Requests it admits after this one.
    pub remaining: u64,
    /// Seconds until it is fully available again.
    pub reset_secs: u64,
}

/// The headroom of the limits in `tats` (each the state after this request) at `now_ms`.
pub fn headroom(policy: &Policy, tats: &[i128], now_ms: i64) -> Option<Headroom> {
    // (index, remaining, ahead): the reset time is worked out for the chosen one only.
    let mut best: Option<(usize, u64, i128)> = None;
    for (index, (l, &tat)) in policy.limits.iter().zip(tats).enumerate() {
        let n = i128::from(l.requests);
        let now = i128::from(now_ms) * n;
        let ahead = (tat - now).max(0);
        let slack = (i128::from(l.per_ms) * n - ahead).max(0);
        // slack ≤ per · N < 2^64: a 64-bit division.
        let remaining = u64::try_from(slack).map_or(l.requests, |s| s / l.per_ms.max(1));
        let remaining = remaining.min(l.requests);
        if best.is_none_or(|(_, r, _)| remaining < r) {
            best = Some((index, remaining, ahead));
        }
    }
    let (index, remaining, ahead) = best?;
    Some(Headroom {
        index,
        remaining,
        reset_secs: ceil_secs(ahead, policy.limits.get(index)?.requests),
    })
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over a rate limit (429 `RATE_LIMITED`).
    RateLimited {
        /// Seconds until the next request would be admitted (≥ 1).
        retry_after: u64,
        /// For the `RateLimit` header.
        headroom: Option<Headroom>,
    },
    /// Over the quota (429 `QUOTA_EXCEEDED`).
    QuotaExceeded {
        /// Seconds until the period ends (≥ 1).
        retry_after: u64,
        /// The first refusal of this token in this period (the `token.quota_exceeded`
        /// event is raised once per token and period on it).
        first_in_period: bool,
        /// Unix second the quota period starts (names the period for that event).
        period_start: i64,
    },
}

/// The decision on one request of a token with limits or a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted and counted against every limit and the quota.
    Admitted(Option<Headroom>),
    /// Refused; nothing counted.
    Refused(Refusal),
}

/// A token's quota count in one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QuotaState {
    period: Period,
    /// Unix second the counted period starts.
    start: i64,
    used: u64,
    /// Admitted here while Redis was unreachable, not yet added there.
    unsynced: u64,
    /// Changed since the last persist (embedded store).
    dirty: bool,
    /// Start of the last period whose first refusal was reported.
    reported: i64,
}

#[derive(Debug, Default)]
struct TokenState {
    limits: Vec<LimitState>,
    quota: Option<QuotaState>,
    /// Unsynced counts of periods that ended before they reached Redis.
    leftover: Vec<(Period, i64, u64)>,
}

impl TokenState {
    /// Aligns the state with the token's current policy: a limit kept (same N and
    /// `per`) keeps its state; a quota keeps its count while the period kind stays.
    fn align(&mut self, policy: &Policy, now_ms: i64) {
        let same = self.limits.len() == policy.limits.len()
            && self
                .limits
                .iter()
                .zip(policy.limits.iter())
                .all(|(s, l)| s.requests == l.requests && s.per_ms == l.per_ms);
        if !same {
            let old = std::mem::take(&mut self.limits);
            self.limits = policy
                .limits
                .iter()
                .map(|l| {
                    old.iter()
                        .find(|s| s.requests == l.requests && s.per_ms == l.per_ms)
                        .copied()
                        .unwrap_or(LimitState {
                            requests: l.requests,
                            per_ms: l.per_ms,
                            tat: i128::MIN / 4,
                        })
                })
                .collect();
        }
        match policy.quota {
            None => {}
            Some(Quota { period, .. }) => {
                let (start, _) = period.bounds(now_ms.div_euclid(1000));
                match &mut self.quota {
                    Some(q) if q.period == period && q.start == start => {}
                    Some(q) if q.period == period && q.start < start => {
                        if q.unsynced > 0 {
                            self.leftover.push((q.period, q.start, q.unsynced));
                        }
                        *q = QuotaState {
                            start,
                            used: 0,
                            unsynced: 0,
                            dirty: true,
                            ..*q
                        };
                    }
                    _ => {
                        if let Some(q) = self.quota.filter(|q| q.unsynced > 0) {
                            self.leftover.push((q.period, q.start, q.unsynced));
                        }
                        self.quota = Some(QuotaState {
                            period,
                            start,
                            used: 0,
                            unsynced: 0,
                            dirty: false,
                            reported: i64::MIN,
                        });
                    }
                }
            }
        }
    }
}

/// The rate-limit and quota state of every token with limits or a quota seen here.
#[derive(Default)]
pub struct Limiters {
    tokens: DashMap<u32, TokenState, BuildHasherDefault<WordHasher>>,
}

impl Limiters {
    /// Empty.
    pub fn new() -> Limiters {
        Limiters::default()
    }

    fn with<R>(&self, id: TokenId, f: impl FnOnce(&mut TokenState) -> R) -> R {
        f(&mut self.tokens.entry(id.number()).or_default())
    }

    /// Decides on one request of `id` at `now_ms` (Unix ms) against this process's
    /// state. `unsynced`: the count must later be added to Redis (it is unreachable).
    pub fn admit(&self, id: TokenId, policy: &Policy, now_ms: i64, unsynced: bool) -> Admission {
        self.with(id, |st| {
            st.align(policy, now_ms);
            // Every limit first, without changing anything.
            let mut next = [0i128; super::MAX_RATE_LIMITS];
            let mut wait: Option<(i128, u64)> = None;
            for (i, s) in st.limits.iter().enumerate() {
                match gcra(s.tat, now_ms, s.requests, s.per_ms) {
                    Ok(t) => next[i] = t,
                    Err(w) => {
                        let secs = ceil_secs(w, s.requests).max(1);
                        if wait.is_none_or(|(_, cur)| secs > cur) {
                            wait = Some((w, secs));
                        }
                    }
                }
            }
            let n = st.limits.len();
            if let Some((_, retry_after)) = wait {
                let tats: Vec<i128> = st.limits.iter().map(|s| s.tat).collect();
                return Admission::Refused(Refusal::RateLimited {
                    retry_after,
                    headroom: headroom(policy, &tats, now_ms),
                });
            }
            if let (Some(q), Some(quota)) = (st.quota.as_mut(), policy.quota)
                && q.used >= quota.requests
            {
                let (_, end) = quota.period.bounds(now_ms.div_euclid(1000));
                let first_in_period = q.reported != q.start;
                q.reported = q.start;
                return Admission::Refused(Refusal::QuotaExceeded {
                    retry_after: quota_retry_after(end, now_ms),
                    first_in_period,
                    period_start: q.start,
                });
            }
            for (s, t) in st.limits.iter_mut().zip(&next[..n]) {
                s.tat = *t;
            }
            if let Some(q) = st.quota.as_mut() {
                q.used += 1;
                q.dirty = true;
                if unsynced {
                    q.unsynced += 1;
                }
            }
            Admission::Admitted(headroom(policy, &next[..n], now_ms))
        })
    }

    /// Takes Redis's answer as this process's state (so that, should Redis become
    /// unreachable, this instance carries on from where the cluster was).
    pub fn mirror(
        &self,
        id: TokenId,
        policy: &Policy,
        now_ms: i64,
        tats: &[i128],
        quota_used: Option<u64>,
    ) {
        // Answers to concurrent requests arrive in any order; both values only grow
        // (within a period), so the larger one is the later state.
        self.with(id, |st| {
            st.align(policy, now_ms);
            for (s, t) in st.limits.iter_mut().zip(tats) {
                s.tat = s.tat.max(*t);
            }
            if let (Some(q), Some(used)) = (st.quota.as_mut(), quota_used) {
                q.used = q.used.max(used + q.unsynced);
            }
        });
    }

    /// Marks the first refusal of the period as reported elsewhere (Redis decided it).
    pub fn note_reported(&self, id: TokenId, start: i64) {
        if let Some(mut g) = self.tokens.get_mut(&id.number())
            && let Some(q) = g.quota.as_mut().filter(|q| q.start == start)
        {
            q.reported = start;
        }
    }

    /// This process's count for `id`'s quota period starting at `start`.
    pub fn quota_used(&self, id: TokenId, period: Period, start: i64) -> Option<u64> {
        let g = self.tokens.get(&id.number())?;
        g.quota
            .filter(|q| q.period == period && q.start == start)
            .map(|q| q.used)
    }

    /// Counts admitted here while Redis was unreachable, not yet added there.
    pub fn quota_unsynced(&self, id: TokenId, period: Period, start: i64) -> u64 {
        let Some(g) = self.tokens.get(&id.number()) else {
            return 0;
        };
        g.quota
            .filter(|q| q.period == period && q.start == start)
            .map_or(0, |q| q.unsynced)
    }

    /// Sets a persisted count (embedded store, at start-up).
    pub fn load_quota(&self, id: TokenId, period: Period, start: i64, used: u64) {
        self.with(id, |st| {
            st.quota = Some(QuotaState {
                period,
                start,
                used,
                unsynced: 0,
                dirty: false,
                reported: i64::MIN,
            });
        });
    }

    /// Counts changed since the last call, to persist: `(id, period, start, used)`.
    pub fn take_dirty(&self) -> Vec<(TokenId, Period, i64, u64)> {
        let mut out = Vec::new();
        for mut e in self.tokens.iter_mut() {
            let key = *e.key();
            if let Some(q) = e.value_mut().quota.as_mut().filter(|q| q.dirty) {
                q.dirty = false;
                if let Some(id) = TokenId::new(key) {
                    out.push((id, q.period, q.start, q.used));
                }
            }
        }
        out
    }

    /// Marks counts dirty again after a failed persist.
    pub fn restore_dirty(&self, rows: &[(TokenId, Period, i64, u64)]) {
        for (id, _, start, _) in rows {
            if let Some(mut g) = self.tokens.get_mut(&id.number())
                && let Some(q) = g.quota.as_mut().filter(|q| q.start == *start)
            {
                q.dirty = true;
            }
        }
    }

    /// Counts admitted while Redis was unreachable: `(id, period, start, n)`, taken out
    /// (give them back with [`Limiters::give_back`] if adding them fails).
    pub fn take_unsynced(&self) -> Vec<(TokenId, Period, i64, u64)> {
        let mut out = Vec::new();
        for mut e in self.tokens.iter_mut() {
            let Some(id) = TokenId::new(*e.key()) else {
                continue;
            };
            let g = e.value_mut();
            for (p, s, n) in g.leftover.drain(..) {
                out.push((id, p, s, n));
            }
            if let Some(q) = g.quota.as_mut().filter(|q| q.unsynced > 0) {
                out.push((id, q.period, q.start, q.unsynced));
                q.unsynced = 0;
            }
        }
        out
    }

    /// Puts counts that could not be added to Redis back.
    pub fn give_back(&self, rows: &[(TokenId, Period, i64, u64)]) {
        for &(id, period, start, n) in rows {
            self.with(id, |st| match st.quota.as_mut() {
                Some(q) if q.period == period && q.start == start => q.unsynced += n,
                _ => st.leftover.push((period, start, n)),
            });
        }
    }

    /// Whether this process holds rate-limit or quota state for `id`.
    pub fn tracks(&self, id: TokenId) -> bool {
        self.tokens.contains_key(&id.number())
    }

    /// Forgets a deleted token.
    pub fn forget(&self, id: TokenId) {
        self.tokens.remove(&id.number());
    }
}

/// Seconds from `now_ms` until the period ending at `end` (Unix s), at least 1.
pub fn quota_retry_after(end: i64, now_ms: i64) -> u64 {
    let ms = end.saturating_mul(1000).saturating_sub(now_ms);
    u64::try_from((ms + 999) / 1000).unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, RateLimit};

    fn policy(limits: &[(u64, &str)], quota: Option<(u64, Period)>) -> Box<Policy> {
        let l: Vec<RateLimit> = limits
            .iter()
            .map(|(n, p)| RateLimit {
                requests: *n,
                per: p.to_string(),
            })
            .collect();
        let q = quota.map(|(requests, period)| Quota { requests, period });
        Policy::of(&l, q, &[]).unwrap()
    }

    fn id() -> TokenId {
        TokenId::new(7).unwrap()
    }

    const T0: i64 = 1_795_564_800_000 + 3_600_000;

    #[test]
    fn exactly_n_of_a_burst_then_n_again_after_per() {
        for (n, per) in [
            (1, "1s"),
            (3, "1s"),
            (7, "1m"),
            (100, "1h"),
            (999_999_937, "1d"),
        ] {
            let l = Limiters::new();
            let p = policy(&[(n, per)], None);
            let per_ms = p.limits[0].per_ms as i64;
            let burst = n.min(5000);
            let mut admitted = 0;
            // A big N: pretend the first N - burst were admitted already.
            if n > burst {
                l.with(id(), |st| {
                    st.align(&p, T0);
                    st.limits[0].tat = i128::from(T0) * i128::from(n)
                        + i128::from(n - burst) * i128::from(p.limits[0].per_ms);
                });
            }
            for _ in 0..burst + 10 {
                if matches!(l.admit(id(), &p, T0, false), Admission::Admitted(_)) {
                    admitted += 1;
                }
            }
            assert_eq!(admitted, burst, "{n}/{per}");
            let later = T0 + per_ms;
            let again = (0..burst + 10)
                .filter(|_| matches!(l.admit(id(), &p, later, false), Admission::Admitted(_)))
                .count() as u64;
            if n == burst {
                assert_eq!(again, n, "{n}/{per} after per");
            }
        }
    }

    #[test]
    fn all_or_nothing_and_refusals_count_nothing() {
        let l = Limiters::new();
        let p = policy(&[(5, "1s"), (2, "1m")], Some((10, Period::Day)));
        assert!(
            matches!(l.admit(id(), &p, T0, false), Admission::Admitted(Some(h)) if h.index == 1 && h.remaining == 1)
        );
        assert!(
            matches!(l.admit(id(), &p, T0, false), Admission::Admitted(Some(h)) if h.remaining == 0)
        );
        // The 1/min limit refuses; the 5/s limit and the quota are not charged.
        for _ in 0..10 {
            match l.admit(id(), &p, T0, false) {
                Admission::Refused(Refusal::RateLimited { retry_after, .. }) => {
                    assert_eq!(retry_after, 30)
                }
                other => panic!("{other:?}"),
            }
        }
        let start = Period::Day.bounds(T0 / 1000).0;
        assert_eq!(l.quota_used(id(), Period::Day, start), Some(2));
    }

    #[test]
    fn quota_refuses_until_the_period_ends_and_reports_once() {
        let l = Limiters::new();
        let p = policy(&[], Some((3, Period::Day)));
        for _ in 0..3 {
            assert!(matches!(
                l.admit(id(), &p, T0, false),
                Admission::Admitted(None)
            ));
        }
        let r = |t| l.admit(id(), &p, t, false);
        assert_eq!(
            r(T0),
            Admission::Refused(Refusal::QuotaExceeded {
                retry_after: 23 * 3600,
                first_in_period: true,
                period_start: Period::Day.bounds(T0 / 1000).0,
            })
        );
        assert!(matches!(
            r(T0 + 1),
            Admission::Refused(Refusal::QuotaExceeded {
                first_in_period: false,
                ..
            })
        ));
        // The next day starts from zero.
        assert!(matches!(r(T0 + 23 * 3_600_000), Admission::Admitted(None)));
        let start = Period::Day.bounds((T0 + 23 * 3_600_000) / 1000).0;
        assert_eq!(l.quota_used(id(), Period::Day, start), Some(1));
    }

    #[test]
    fn changing_n_keeps_the_quota_count() {
        let l = Limiters::new();
        for _ in 0..3 {
            l.admit(id(), &policy(&[], Some((3, Period::Month))), T0, false);
        }
        let p = policy(&[], Some((4, Period::Month)));
        assert!(matches!(
            l.admit(id(), &p, T0, false),
            Admission::Admitted(_)
        ));
        assert!(matches!(
            l.admit(id(), &p, T0, false),
            Admission::Refused(_)
        ));
    }

    /// Regression: answers of concurrent Redis calls mirrored out of order made the
    /// count go back (an instance then admitted one more while Redis was down).
    #[test]
    fn mirrored_state_never_goes_back() {
        let l = Limiters::new();
        let p = policy(&[(5, "1s")], Some((5, Period::Day)));
        let start = Period::Day.bounds(T0 / 1000).0;
        let tat = |k: i128| i128::from(T0) * 5 + k * 1000;
        l.mirror(id(), &p, T0, &[tat(2)], Some(2));
        l.mirror(id(), &p, T0, &[tat(1)], Some(1));
        assert_eq!(l.quota_used(id(), Period::Day, start), Some(2));
        let admitted = (0..5)
            .filter(|_| matches!(l.admit(id(), &p, T0, true), Admission::Admitted(_)))
            .count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn headers_report_the_tightest_limit() {
        let p = policy(&[(100, "1m")], None);
        let l = Limiters::new();
        let Admission::Admitted(Some(h)) = l.admit(id(), &p, T0, false) else {
            panic!()
        };
        assert_eq!((h.remaining, h.reset_secs), (99, 1));
    }
}
