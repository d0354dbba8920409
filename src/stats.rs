//! Per-token day counters: atomics on the request path, a periodic flush to the store.
//!
//! Each token seen gets one entry in a dashmap, made on first sight and never again
//! allocated per request. The entry holds one `AtomicU64` per status class packing
//! *(UTC day, count)*: a request compare-and-swaps `count + 1` while the day matches,
//! so a count can never land on the wrong day even when the flusher, a request of the
//! previous day and one of the next race at midnight. A request of a newer day swaps
//! the old day's count out into a small `pending` map (a mutex touched once per token
//! per day, not per request). The flusher takes counts out with the same CAS, so
//! nothing is counted twice and nothing is lost.
//!
//! Each flush sends its counts as one batch under a fresh [`BatchId`]. A failed flush
//! keeps that batch unchanged (`unacked`) and every later flush first sends it again
//! under the same id before taking new counts: the store may have applied it and only
//! the answer been lost (a deadline, a dropped connection), and the store applies a
//! batch id at most once, so the retry counts it exactly once either way. Meanwhile
//! new counts stay in the slots. Memory while the store is down is therefore bounded:
//! the slots (fixed per token), `pending` (at most [`MAX_PENDING`] rows; what does
//! not fit is dropped and counted in `keygate_stats_dropped_total`) and the one
//! unacknowledged batch (at most `pending` plus one row per token).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use jiff::Timestamp;

use crate::metrics::{Class, ClassChildren, Metrics, ModuleMetrics};
use crate::routes::WordHasher;
use crate::store::{BatchId, ClassCounts, Store, StoreResult};
use crate::token::TokenId;

/// Where "now" comes from: the system clock, or a test's hand-set one.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to (tests: day rollover, retention).
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock standing at `t` (whole seconds).
    pub fn new(t: Timestamp) -> ManualClock {
        ManualClock(AtomicI64::new(t.as_second()))
    }

    /// Moves the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.as_second(), Ordering::SeqCst);
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let secs = i64::try_from(by.as_secs()).unwrap_or(i64::MAX);
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_second(self.0.load(Ordering::SeqCst)).unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

/// Unflushed (token, day) rows kept at most while the store is failing; about 64 bytes
/// each, so the bound is a few MiB.
pub const MAX_PENDING: usize = 100_000;

/// The UTC day number (days since 1970-01-01, as [`crate::store::day_number`]) of a
/// Unix time.
pub fn day_of(unix_secs: i64) -> i32 {
    i32::try_from(unix_secs.div_euclid(86_400)).unwrap_or(0)
}

// A slot packs (day, count): 24 bits of day (until the year 47000), 40 bits of count
// (a trillion requests per token, day and class).
const COUNT_BITS: u32 = 40;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const DAY_MAX: i32 = (1 << 24) - 1;

fn pack(day: i32, count: u64) -> u64 {
    // Day numbers are clamped to the representable range (a clock before 1970 counts
    // on day 0).
    (u64::from(day.clamp(0, DAY_MAX).unsigned_abs()) << COUNT_BITS) | count
}

fn unpack(v: u64) -> (i32, u64) {
    // 24 bits always fit an i32.
    ((v >> COUNT_BITS) as i32, v & COUNT_MAX)
}

/// What counting one request in a slot did.
enum Bump {
    /// Counted in the slot.
    Done,
    /// Counted; the slot held an older day whose count must go to `pending`.
    Evicted(i32, u64),
    /// Not counted: the slot already moved to a later day (a request that straddled
    /// midnight, or a clock stepped back); the caller counts it in `pending`.
    Late,
}

fn bump(slot: &AtomicU64, day: i32) -> Bump {
    let day = day.clamp(0, DAY_MAX);
    let mut cur = slot.load(Ordering::Acquire);
    loop {
        let (d, n) = unpack(cur);
        let (next, outcome) = if d == day && n < COUNT_MAX {
            (cur + 1, Bump::Done)
        } else if d <= day {
            // A new day (or a full counter): start over, hand the old count back.
            (pack(day, 1), Bump::Evicted(d, n))
        } else {
            return Bump::Late;
        };
        match slot.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return outcome,
            Err(actual) => cur = actual,
        }
    }
}

/// Takes the slot's count out (leaving its day), if there is any.
fn take(slot: &AtomicU64) -> Option<(i32, u64)> {
    let mut cur = slot.load(Ordering::Acquire);
    loop {
        let (d, n) = unpack(cur);
        if n == 0 {
            return None;
        }
        match slot.compare_exchange_weak(cur, pack(d, 0), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some((d, n)),
            Err(actual) => cur = actual,
        }
    }
}

/// One token's counters and cached metric children.
struct TokenStats {
    /// `[2xx, 3xx, 4xx, 5xx]`, each packing (day, count).
    slots: [AtomicU64; 4],
    /// Unix second of the last request (0 = none since the last flush).
    last_used: AtomicI64,
    /// Whether this token has its own `token` label (within `max_token_series`).
    own_series: bool,
    /// Its `keygate_requests_total` children for the current configuration generation.
    series: ArcSwapOption<TokenSeries>,
}

/// Per-token `keygate_requests_total` children, one [`ClassChildren`] per module slot.
struct TokenSeries {
    modules: Arc<ModuleMetrics>,
    children: Box<[ClassChildren]>,
}

/// Counts sent to the store without a confirmation.
#[derive(Clone)]
struct Unacked {
    id: BatchId,
    rows: HashMap<(u32, i32), ClassCounts>,
}

/// Sends one batch of counts.
async fn send_batch(
    store: &Store,
    id: BatchId,
    rows: &HashMap<(u32, i32), ClassCounts>,
) -> StoreResult<()> {
    let rows: Vec<_> = rows
        .iter()
        .filter_map(|(&(key, day), &c)| Some((TokenId::new(key)?, day, c)))
        .collect();
    let applied = store.add_counts(id, &rows).await?;
    if !applied {
        tracing::info!(batch = %id, "statistics batch was already applied; not counted again");
    }
    Ok(())
}

/// The statistics of every token seen by this process.
pub struct Stats {
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// Keyed by the ids of tokens that presented their correct secret (never an id a
    /// client merely sent), so no client can choose colliding keys: hashed with the
    /// route table's word hasher instead of SipHash (~80 instructions per request).
    tokens: DashMap<u32, TokenStats, BuildHasherDefault<WordHasher>>,
    /// Counts out of the slots but not yet in the store: evicted days, failed flushes.
    pending: Mutex<HashMap<(u32, i32), ClassCounts>>,
    max_pending: usize,
    /// Held by a flush from taking the counts until the store has them, and by exact
    /// readers, so a reader never misses counts that are in flight.
    flush_lock: tokio::sync::Mutex<()>,
    /// The batch of a failed flush, sent again unchanged (same id) before anything else.
    /// Only changed while `flush_lock` is held.
    unacked: Mutex<Option<Unacked>>,
    series_used: AtomicUsize,
    max_series: usize,
}

impl Stats {
    /// Empty statistics; at most `max_token_series` tokens get their own metric label.
    pub fn new(metrics: Arc<Metrics>, max_token_series: usize, clock: Arc<dyn Clock>) -> Stats {
        Stats {
            clock,
            metrics,
            tokens: DashMap::with_hasher(BuildHasherDefault::default()),
            pending: Mutex::new(HashMap::new()),
            max_pending: MAX_PENDING,
            flush_lock: tokio::sync::Mutex::new(()),
            unacked: Mutex::new(None),
            series_used: AtomicUsize::new(0),
            max_series: max_token_series,
        }
    }

    /// Lowers the pending bound (tests of the drop path).
    pub fn with_max_pending(mut self, max_pending: usize) -> Stats {
        self.max_pending = max_pending;
        self
    }

    /// The clock the counters use, and the request path's one wall-clock read
    /// (`gateway::proxy_request`), so that a request counts on the day it was checked on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Today's UTC day number by this clock.
    pub fn today(&self) -> i32 {
        day_of(self.clock.now().as_second())
    }

    /// Counts one response: `token` is the request's token if it presented a known id
    /// with its correct secret, with the time it did so by [`Stats::clock`] (the
    /// request's one clock read: it is counted on that day); `slot` is the module slot
    /// of `modules`.
    pub fn record(
        &self,
        token: Option<(TokenId, Timestamp)>,
        modules: &Arc<ModuleMetrics>,
        slot: usize,
        class: Class,
    ) {
        let Some((id, at)) = token else {
            modules.inc_shared(&self.metrics, true, slot, class);
            return;
        };
        let now = at.as_second();
        let key = id.number();
        if let Some(entry) = self.tokens.get(&key) {
            self.count(id, &entry, now, modules, slot, class);
            return;
        }
        let entry = self
            .tokens
            .entry(key)
            .or_insert_with(|| self.new_entry())
            .downgrade();
        self.count(id, &entry, now, modules, slot, class);
    }

    fn new_entry(&self) -> TokenStats {
        let own_series = self.metrics.per_token()
            && self.series_used.fetch_add(1, Ordering::Relaxed) < self.max_series;
        TokenStats {
            slots: Default::default(),
            last_used: AtomicI64::new(0),
            own_series,
            series: ArcSwapOption::empty(),
        }
    }

    fn count(
        &self,
        id: TokenId,
        e: &TokenStats,
        now: i64,
        modules: &Arc<ModuleMetrics>,
        slot: usize,
        class: Class,
    ) {
        let day = day_of(now);
        match bump(&e.slots[class as usize], day) {
            Bump::Done => {}
            Bump::Evicted(d, n) => self.stash(id.number(), d, class, n),
            Bump::Late => self.stash(id.number(), day, class, 1),
        }
        e.last_used.store(now, Ordering::Relaxed);

        if !e.own_series {
            modules.inc_shared(&self.metrics, false, slot, class);
            return;
        }
        let make = || {
            self.metrics
                .request_child(&id.to_string(), modules.name(slot), class)
        };
        {
            let guard = e.series.load();
            if let Some(s) = guard.as_ref().filter(|s| Arc::ptr_eq(&s.modules, modules)) {
                if let Some(c) = s.children.get(slot) {
                    c.inc(class, make);
                }
                return;
            }
        }
        // First request of this token, or the first after a configuration reload.
        let s = Arc::new(TokenSeries {
            modules: Arc::clone(modules),
            children: (0..modules.len())
                .map(|_| ClassChildren::default())
                .collect(),
        });
        if let Some(c) = s.children.get(slot) {
            c.inc(class, make);
        }
        e.series.store(Some(s));
    }

    /// Adds `n` of `class` on `day` to the pending map, or drops it when full.
    fn stash(&self, key: u32, day: i32, class: Class, n: u64) {
        if n == 0 {
            return;
        }
        let mut add = [0; 4];
        add[class as usize] = n;
        let dropped = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            merge(&mut pending, self.max_pending, key, day, add)
        };
        self.note_dropped(dropped);
    }

    fn note_dropped(&self, dropped: u64) {
        if dropped > 0 {
            self.metrics.stats_dropped.inc_by(dropped);
            tracing::warn!(
                dropped,
                "statistics memory bound reached; request counts dropped"
            );
        }
    }

    /// Writes every count and last-use time to the store. On failure nothing is lost
    /// and nothing will be counted twice: the batch is kept and sent again, under the
    /// same id, by the next flush.
    pub async fn flush(&self, store: &Store) -> StoreResult<()> {
        let _flushing = self.flush_lock.lock().await;
        self.send_unacked(store).await?;
        let mut batch =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut used = Vec::new();
        for e in self.tokens.iter() {
            let key = *e.key();
            for class in Class::ALL {
                if let Some((day, n)) = take(&e.slots[class as usize]) {
                    batch.entry((key, day)).or_insert([0; 4])[class as usize] += n;
                }
            }
            let at = e.last_used.swap(0, Ordering::Relaxed);
            if at > 0 {
                used.push((key, at));
            }
        }
        if !batch.is_empty() {
            let id = BatchId::random();
            if let Err(e) = send_batch(store, id, &batch).await {
                // The store may have applied it; only the same id may carry it again.
                *self.unacked.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Unacked { id, rows: batch });
                self.restore_last_used(&used);
                self.metrics.flush_errors.inc();
                return Err(e);
            }
        }
        if !used.is_empty() {
            let rows: Vec<_> = used
                .iter()
                .filter_map(|&(key, at)| {
                    Some((TokenId::new(key)?, Timestamp::from_second(at).ok()?))
                })
                .collect();
            if let Err(e) = store.set_last_used(&rows).await {
                self.restore_last_used(&used);
                self.metrics.flush_errors.inc();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sends the batch of a failed flush again, if there is one. Call with
    /// `flush_lock` held.
    async fn send_unacked(&self, store: &Store) -> StoreResult<()> {
        let unacked = self
            .unacked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(u) = unacked else {
            return Ok(());
        };
        if let Err(e) = send_batch(store, u.id, &u.rows).await {
            self.metrics.flush_errors.inc();
            return Err(e);
        }
        *self.unacked.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// Puts a failed flush's last-use times back.
    fn restore_last_used(&self, used: &[(u32, i64)]) {
        for &(key, at) in used {
            if let Some(e) = self.tokens.get(&key) {
                e.last_used.fetch_max(at, Ordering::Relaxed);
            }
        }
    }

    /// A token's counts for days `from..=to` (day numbers), one entry per day, oldest
    /// first: what the store has plus what is still in memory, so the answer is exact.
    /// An unacknowledged batch is sent first (it may or may not be in the store, so it
    /// cannot simply be added); if that fails, so does this.
    pub async fn day_counts(
        &self,
        store: &Store,
        id: TokenId,
        from: i32,
        to: i32,
    ) -> StoreResult<Vec<ClassCounts>> {
        let _flushing = self.flush_lock.lock().await;
        self.send_unacked(store).await?;
        let stored = store.counts(id, from, to).await?;
        let len = usize::try_from(i64::from(to) - i64::from(from) + 1).unwrap_or(0);
        let mut out = vec![[0u64; 4]; len];
        let mut add = |day: i32, c: &ClassCounts| {
            if let Some(row) = usize::try_from(day - from)
                .ok()
                .and_then(|i| out.get_mut(i))
            {
                for (r, n) in row.iter_mut().zip(c) {
                    *r += n;
                }
            }
        };
        for (day, c) in &stored {
            add(*day, c);
        }
        if let Some(e) = self.tokens.get(&id.number()) {
            for class in Class::ALL {
                let (day, n) = unpack(e.slots[class as usize].load(Ordering::Acquire));
                let mut c = [0; 4];
                c[class as usize] = n;
                add(day, &c);
            }
        }
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (&(key, day), c) in pending.iter() {
            if key == id.number() {
                add(day, c);
            }
        }
        Ok(out)
    }

    /// Deletes stored days older than the last `retention_days` (today included), and
    /// unflushed ones too.
    pub async fn prune(&self, store: &Store, retention_days: u32) -> StoreResult<u64> {
        let keep = i32::try_from(retention_days).unwrap_or(i32::MAX).max(1);
        let before = self.today().saturating_sub(keep - 1);
        let _flushing = self.flush_lock.lock().await;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&(_, day), _| day >= before);
        // Fewer rows under the same id stay safe: if the store applied the batch, the
        // retry is still a no-op; if not, the old days are not wanted anyway.
        if let Some(u) = self
            .unacked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            u.rows.retain(|&(_, day), _| day >= before);
        }
        store.prune_counts(before).await
    }

    /// Unflushed counts in memory (slots + pending), for tests and shutdown logs.
    pub fn unflushed(&self) -> u64 {
        let slots: u64 = self
            .tokens
            .iter()
            .flat_map(|e| {
                e.slots
                    .iter()
                    .map(|s| unpack(s.load(Ordering::Acquire)).1)
                    .collect::<Vec<_>>()
            })
            .sum();
        let pending: u64 = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flatten()
            .sum();
        let unacked: u64 = self
            .unacked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |u| u.rows.values().flatten().sum());
        slots + pending + unacked
    }
}

/// Adds `c` to the pending row (key, day); returns how many counts did not fit.
fn merge(
    pending: &mut HashMap<(u32, i32), ClassCounts>,
    max: usize,
    key: u32,
    day: i32,
    c: ClassCounts,
) -> u64 {
    let len = pending.len();
    match pending.entry((key, day)) {
        Entry::Occupied(mut o) => {
            for (a, b) in o.get_mut().iter_mut().zip(c) {
                *a = a.saturating_add(b);
            }
            0
        }
        Entry::Vacant(v) if len < max => {
            v.insert(c);
            0
        }
        Entry::Vacant(_) => c.iter().sum(),
    }
}

/// What the flusher works on: the counters, the store they go to, and how many days
/// the store keeps (restart-only, so a value, not read from the live configuration).
pub struct Flusher {
    /// The counters.
    pub stats: Arc<Stats>,
    /// Quota counts to persist (embedded) or to add to Redis after an outage.
    pub limiters: Arc<crate::policy::Limiters>,
    /// The store.
    pub store: Store,
    /// `stats.retention_days`.
    pub retention_days: u32,
}

impl Flusher {
    /// Prunes, then flushes every `interval` and prunes once per UTC day until `stop`
    /// turns true. The final flush is the caller's ([`Flusher::final_flush`]), after
    /// the listeners drained.
    pub async fn run(&self, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut pruned_day = None;
        self.prune_daily(&mut pruned_day).await;
        // The first flush one interval after start, not at once.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if let Err(e) = crate::policy::sync_quotas(&self.limiters, &self.store).await {
                tracing::debug!(error = %e, "quota counts not written yet; kept in memory");
            }
            match self.stats.flush(&self.store).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("statistics flush works again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "statistics flush failed; counts kept in memory");
                }
                Err(_) => {}
            }
            // A flush with nothing to write succeeds without asking a shared store, so
            // its health counts too.
            self.stats
                .metrics
                .set_store_up(!failing && self.store.accepts_reads());
            self.prune_daily(&mut pruned_day).await;
        }
    }

    async fn prune_daily(&self, pruned_day: &mut Option<i32>) {
        let today = self.stats.today();
        if *pruned_day == Some(today) {
            return;
        }
        let retention = self.retention_days;
        match self.stats.prune(&self.store, retention).await {
            Ok(removed) => {
                *pruned_day = Some(today);
                tracing::debug!(removed, retention, "pruned old statistics");
            }
            Err(e) => tracing::warn!(error = %e, "pruning old statistics failed"),
        }
    }

    /// The shutdown flush: a few tries, then the counts still in memory are reported
    /// lost.
    pub async fn final_flush(&self) {
        if let Err(e) = crate::policy::sync_quotas(&self.limiters, &self.store).await {
            tracing::error!(error = %e, "final quota count write failed");
        }
        const TRIES: u32 = 3;
        for attempt in 1..=TRIES {
            match self.stats.flush(&self.store).await {
                Ok(()) => {
                    self.prune_daily(&mut None).await;
                    return;
                }
                Err(e) if attempt == TRIES => tracing::error!(
                    error = %e,
                    lost = self.stats.unflushed(),
                    "final statistics flush failed; these request counts are lost"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "final statistics flush failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips() {
        for (d, n) in [(0, 0), (20_000, 1), (DAY_MAX, COUNT_MAX)] {
            assert_eq!(unpack(pack(d, n)), (d, n));
        }
        assert_eq!(unpack(pack(-5, 3)), (0, 3));
    }

    #[test]
    fn bump_counts_and_rolls_over() {
        let s = AtomicU64::new(0);
        assert!(matches!(bump(&s, 100), Bump::Evicted(0, 0)));
        assert!(matches!(bump(&s, 100), Bump::Done));
        assert_eq!(unpack(s.load(Ordering::Relaxed)), (100, 2));
        assert!(matches!(bump(&s, 101), Bump::Evicted(100, 2)));
        assert!(matches!(bump(&s, 100), Bump::Late));
        assert_eq!(unpack(s.load(Ordering::Relaxed)), (101, 1));
        assert_eq!(take(&s), Some((101, 1)));
        assert_eq!(take(&s), None);
        assert!(matches!(bump(&s, 101), Bump::Done));
    }

    #[test]
    fn full_counter_moves_to_pending() {
        let s = AtomicU64::new(pack(7, COUNT_MAX));
        assert!(matches!(bump(&s, 7), Bump::Evicted(7, COUNT_MAX)));
        assert_eq!(unpack(s.load(Ordering::Relaxed)), (7, 1));
    }

    #[test]
    fn merge_is_bounded() {
        let mut p = HashMap::new();
        assert_eq!(merge(&mut p, 1, 1, 10, [1, 0, 0, 0]), 0);
        assert_eq!(merge(&mut p, 1, 1, 10, [1, 2, 0, 0]), 0);
        assert_eq!(merge(&mut p, 1, 2, 10, [0, 0, 3, 4]), 7);
        assert_eq!(p[&(1, 10)], [2, 2, 0, 0]);
    }

    #[test]
    fn concurrent_bumps_lose_nothing() {
        let s = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    let mut evicted = 0;
                    for _ in 0..10_000 {
                        if let Bump::Evicted(_, n) = bump(&s, 5) {
                            evicted += n;
                        }
                    }
                    evicted
                })
            })
            .collect();
        let mut total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let mut taken = 0;
        while let Some((_, n)) = take(&s) {
            taken += n;
        }
        total += taken;
        assert_eq!(total, 40_000);
    }

    fn setup(max_pending: usize) -> (Stats, Arc<ModuleMetrics>, Arc<ManualClock>, Arc<Metrics>) {
        let text = "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                    bootstrap_key_file = \"k\"\n[store]\nbackend = \"embedded\"\npath = \"s\"\n\
                    [[modules]]\nname = \"a\"\ndescription = \"a\"\nprefixes = [\"/a\"]\n\
                    upstream = \"http://127.0.0.1:1\"\n";
        let config =
            crate::config::Config::parse(text, std::path::Path::new("t.toml"), |_| None).unwrap();
        let cache = Arc::new(crate::store::TokenCache::new(true));
        let metrics = Arc::new(Metrics::new(&config.metrics, cache).unwrap());
        let clock = Arc::new(ManualClock::new("2024-01-01T23:00:00Z".parse().unwrap()));
        let stats =
            Stats::new(Arc::clone(&metrics), 10, clock.clone()).with_max_pending(max_pending);
        let modules = Arc::new(metrics.modules(&config));
        (stats, modules, clock, metrics)
    }

    #[tokio::test]
    async fn rollover_beyond_the_pending_bound_is_dropped_and_counted() {
        let (stats, modules, clock, metrics) = setup(1);
        let ids: Vec<_> = (1..=3).map(|n| TokenId::new(n * 1000).unwrap()).collect();
        for id in &ids {
            stats.record(Some((*id, clock.now())), &modules, 0, Class::Success);
        }
        clock.advance(Duration::from_secs(3600));
        // Each token's first request of the new day evicts yesterday's count; only one
        // (token, day) row fits in pending.
        for id in &ids {
            stats.record(Some((*id, clock.now())), &modules, 0, Class::Success);
        }
        assert_eq!(metrics.stats_dropped.get(), 2);
        assert_eq!(stats.unflushed(), 4);

        let dir = tempfile::tempdir().unwrap();
        let store = Store::Embedded(Arc::new(
            crate::store::EmbeddedStore::open(&dir.path().join("s.redb")).unwrap(),
        ));
        stats.flush(&store).await.unwrap();
        assert_eq!(stats.unflushed(), 0);
        let d = stats.today();
        let mut total = 0;
        for id in &ids {
            let rows = store.counts(*id, d - 1, d).await.unwrap();
            assert_eq!(rows.last(), Some(&(d, [1, 0, 0, 0])));
            total += rows.iter().map(|r| r.1[0]).sum::<u64>();
        }
        assert_eq!(total, 4);
        // Flushing again writes nothing twice.
        stats.flush(&store).await.unwrap();
        let again: u64 = {
            let mut t = 0;
            for id in &ids {
                t += store
                    .counts(*id, d - 1, d)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.1[0])
                    .sum::<u64>();
            }
            t
        };
        assert_eq!(again, 4);
    }

    #[test]
    fn day_of_is_utc() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(86_399), 0);
        assert_eq!(day_of(86_400), 1);
        let d: jiff::civil::Date = "2024-03-01".parse().unwrap();
        let ts: Timestamp = "2024-03-01T23:59:59Z".parse().unwrap();
        assert_eq!(day_of(ts.as_second()), crate::store::day_number(d));
    }
}
