//! The token store: one interface, two backends (embedded redb, Redis).
//!
//! Enum dispatch instead of a trait object: async methods stay plain `async fn`,
//! and the conformance tests run the same calls against both backends.

pub mod cache;
pub mod embedded;
pub mod redis;
pub mod sync;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::token::{Token, TokenId};

pub use cache::{AuthEntry, Lookup, PermSet, TokenCache};
pub use embedded::EmbeddedStore;
pub use redis::RedisStore;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or failed to answer.
    #[error("token store unavailable: {0}")]
    Unavailable(String),
    /// Stored data does not decode (a bug or a foreign writer).
    #[error("token store data is corrupt: {0}")]
    Corrupt(String),
}

/// Shorthand.
pub type StoreResult<T> = Result<T, StoreError>;

/// The configured store.
#[derive(Clone)]
pub enum Store {
    /// redb file.
    Embedded(Arc<EmbeddedStore>),
    /// Redis, standalone or cluster, shared by many instances.
    Redis(Arc<RedisStore>),
}

impl Store {
    /// Whether every change goes through this process, so the cache can hold every token
    /// and an id missing from it is unknown without asking the store.
    pub fn is_exclusive(&self) -> bool {
        match self {
            Store::Embedded(_) => true,
            Store::Redis(_) => false,
        }
    }

    /// Whether a cache miss may ask the store now. `false` while a shared store is
    /// known to be down, so misses answer 503 at once instead of each waiting for a
    /// deadline (the health check in [`sync`] notices when it is back).
    pub fn accepts_reads(&self) -> bool {
        match self {
            Store::Embedded(_) => true,
            Store::Redis(s) => s.is_up(),
        }
    }

    /// Whether cached tokens may still be trusted: always, unless a shared store has
    /// not answered for longer than `max_stale`.
    pub fn cache_trusted(&self, max_stale: std::time::Duration) -> bool {
        match self {
            Store::Embedded(_) => true,
            Store::Redis(s) => s.is_up() || s.since_last_ok() <= max_stale,
        }
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> StoreResult<()> {
        match self {
            Store::Embedded(_) => Ok(()),
            Store::Redis(s) => s.ping().await,
        }
    }

    /// Checks the store for `/readyz` and `keygate_store_up`: a shared store known to be
    /// down fails at once (the health check in [`sync`] notices when it is back), so a
    /// probe or scrape never waits on a dead store; otherwise a ping, bounded by the
    /// store's deadline.
    pub async fn check(&self) -> StoreResult<()> {
        if !self.accepts_reads() {
            return Err(StoreError::Unavailable(
                "the store did not answer its last call".into(),
            ));
        }
        self.ping().await
    }

    /// One token.
    pub async fn get(&self, id: TokenId) -> StoreResult<Option<Token>> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.get(id)).await,
            Store::Redis(s) => s.get(id).await,
        }
    }

    /// Every token (unordered).
    pub async fn list(&self) -> StoreResult<Vec<Token>> {
        match self {
            Store::Embedded(s) => blocking(s, |s| s.list()).await,
            Store::Redis(s) => s.list().await,
        }
    }

    /// Inserts a new token; `false` if its id is taken or was ever used.
    pub async fn insert(&self, token: &Token) -> StoreResult<bool> {
        self.insert_with(token, &[]).await
    }

    /// [`Store::insert`] writing `events` in the same transaction (script).
    pub async fn insert_with(&self, token: &Token, events: &[EventWrite]) -> StoreResult<bool> {
        let (token, events) = (token.clone(), events.to_vec());
        let done = match self {
            Store::Embedded(s) => blocking(s, move |s| s.insert(&token, &events)).await,
            Store::Redis(s) => s.insert(&token, &events).await,
        };
        self.wrote(done)
    }

    /// Replaces a token if its stored version is still `expected_version`
    /// (optimistic concurrency); `false` if it changed or vanished meanwhile.
    pub async fn replace(&self, token: &Token, expected_version: u64) -> StoreResult<bool> {
        self.replace_with(token, expected_version, &[]).await
    }

    /// [`Store::replace`] writing `events` in the same transaction (script).
    pub async fn replace_with(
        &self,
        token: &Token,
        expected_version: u64,
        events: &[EventWrite],
    ) -> StoreResult<bool> {
        let (token, events) = (token.clone(), events.to_vec());
        let done = match self {
            Store::Embedded(s) => {
                blocking(s, move |s| s.replace(&token, expected_version, &events)).await
            }
            Store::Redis(s) => s.replace(&token, expected_version, &events).await,
        };
        self.wrote(done)
    }

    /// Deletes a token; its id is never handed out again. `false` if it did not exist.
    pub async fn delete(&self, id: TokenId) -> StoreResult<bool> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.delete(id)).await,
            Store::Redis(s) => s.delete(id).await,
        }
    }

    /// Deletes a token (retiring its id) only if its stored version is still
    /// `expected_version`, so a check made on that version holds for the delete;
    /// `false` if it changed or vanished meanwhile.
    pub async fn delete_if_version(&self, id: TokenId, expected_version: u64) -> StoreResult<bool> {
        self.delete_if_version_with(id, expected_version, &[]).await
    }

    /// [`Store::delete_if_version`] writing `events` in the same transaction (script).
    pub async fn delete_if_version_with(
        &self,
        id: TokenId,
        expected_version: u64,
        events: &[EventWrite],
    ) -> StoreResult<bool> {
        let events = events.to_vec();
        let done = match self {
            Store::Embedded(s) => {
                blocking(s, move |s| {
                    s.delete_if_version(id, expected_version, &events)
                })
                .await
            }
            Store::Redis(s) => s.delete_if_version(id, expected_version, &events).await,
        };
        self.wrote(done)
    }

    /// Atomically inserts `token` unless an active token with the admin permission
    /// exists at its `created_at`. Like [`Store::insert`], never over a live token's id
    /// or a retired one ([`Bootstrapped::IdTaken`]: try again with another id).
    pub async fn insert_bootstrap(&self, token: &Token) -> StoreResult<Bootstrapped> {
        self.insert_bootstrap_with(token, &[]).await
    }

    /// [`Store::insert_bootstrap`] writing `events` with the token.
    pub async fn insert_bootstrap_with(
        &self,
        token: &Token,
        events: &[EventWrite],
    ) -> StoreResult<Bootstrapped> {
        let any = !events.is_empty();
        let (token, events) = (token.clone(), events.to_vec());
        let done = match self {
            Store::Embedded(s) => blocking(s, move |s| s.insert_bootstrap(&token, &events)).await,
            Store::Redis(s) => s.insert_bootstrap(&token, &events).await,
        };
        if matches!(done, Ok(Bootstrapped::Inserted)) && any {
            self.events_written().notify_one();
        }
        done
    }

    /// Writes events raised by the gateway itself (expiring, expired, quota exceeded)
    /// for a live token, each at most once per its [`Once`] marker; only if the token's
    /// version is still `expected_version` (when given). Returns how many were written.
    pub async fn raise(
        &self,
        id: TokenId,
        expected_version: Option<u64>,
        events: &[EventWrite],
    ) -> StoreResult<usize> {
        let events = events.to_vec();
        let n = match self {
            Store::Embedded(s) => {
                blocking(s, move |s| s.raise(id, expected_version, &events)).await
            }
            Store::Redis(s) => s.raise(id, expected_version, &events).await,
        }?;
        if n > 0 {
            self.events_written().notify_one();
        }
        Ok(n)
    }

    /// Woken whenever this process wrote an event (the webhook worker waits on it).
    pub fn events_written(&self) -> &tokio::sync::Notify {
        match self {
            Store::Embedded(s) => &s.events_written,
            Store::Redis(s) => &s.events_written,
        }
    }

    fn wrote(&self, done: StoreResult<bool>) -> StoreResult<bool> {
        if matches!(done, Ok(true)) {
            self.events_written().notify_one();
        }
        done
    }
}

/// What [`Store::insert_bootstrap`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrapped {
    /// The token was inserted.
    Inserted,
    /// An active admin token exists; nothing was inserted.
    AdminExists,
    /// The token's id is taken or was used before; nothing was inserted.
    IdTaken,
}

/// Runs a blocking store call off the async workers.
async fn blocking<S, T, F>(store: &Arc<S>, f: F) -> StoreResult<T>
where
    S: Send + Sync + 'static,
    T: Send + 'static,
    F: FnOnce(&S) -> StoreResult<T> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
}

/// Whether an active token with admin rights exists among `tokens` at `now`.
pub fn has_active_admin<'a>(
    tokens: impl IntoIterator<Item = &'a Token>,
    now: jiff::Timestamp,
) -> bool {
    tokens.into_iter().any(|t| {
        t.status(now) == crate::token::Status::Active
            && t.has_permission(crate::config::ADMIN_MODULE)
    })
}

/// Response counts of one token on one UTC day, by class: `[2xx, 3xx, 4xx, 5xx]`.
pub type ClassCounts = [u64; 4];

/// One event of a token (never holds a secret): the audit log entry, and what the
/// webhooks deliver (see `crate::events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When.
    pub at: jiff::Timestamp,
    /// Who: the token that made the change (`None` = keygate itself, e.g. bootstrap).
    pub actor: Option<TokenId>,
    /// What: `created`, `updated`, `disabled`, `enabled`, `rotated`, `renewed`,
    /// `deleted`, `expiring`, `expired`, `quota_exceeded` (the type without `token.`).
    pub action: String,
    /// Which fields changed.
    pub fields: Vec<String>,
    /// Random id (hex), the base of the `webhook-id`; empty in events written before
    /// webhooks existed, which are never delivered.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The token as the admin API showed it right after the change (before a delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<serde_json::Value>,
}

/// Raise an event at most once per (token, `kind`) and `value`: it is written only if
/// the token's marker `kind` does not hold `value` yet, and the marker is set with it
/// (e.g. kind `expired`, value the expiry time: a new expiry arms it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Once {
    /// Marker name.
    pub kind: &'static str,
    /// The value it must not already hold.
    pub value: String,
}

/// An event to write together with a change.
#[derive(Debug, Clone, PartialEq)]
pub struct EventWrite {
    /// The event.
    pub event: Event,
    /// Write it only once per marker.
    pub once: Option<Once>,
}

impl EventWrite {
    fn json(&self) -> StoreResult<String> {
        serde_json::to_string(&self.event).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

/// Where one webhook stands with one token's events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookState {
    /// Index of the next event to deliver (events before it are delivered or dropped).
    pub cursor: u64,
    /// Failed attempts at the event at `cursor`.
    pub attempts: u32,
    /// Not before this time (Unix milliseconds): the back-off after a failure.
    pub next_at_ms: i64,
}

impl HookState {
    /// The state once event `index` is delivered or dropped: the next one, no failures.
    pub fn after(index: u64) -> HookState {
        HookState {
            cursor: index + 1,
            attempts: 0,
            next_at_ms: 0,
        }
    }

    fn encode(&self) -> String {
        format!("{} {} {}", self.cursor, self.attempts, self.next_at_ms)
    }

    fn decode(s: &str) -> HookState {
        let mut it = s.split(' ');
        let mut next = || it.next().and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        HookState {
            cursor: u64::try_from(next()).unwrap_or(0),
            attempts: u32::try_from(next()).unwrap_or(0),
            next_at_ms: next(),
        }
    }
}

/// Delivery bookkeeping of the webhook worker (`crate::events::deliver`). A token with
/// events not yet delivered to every webhook is in the *pending* index; each
/// (webhook, token) pair has a [`HookState`]; on Redis a lease makes one instance at a
/// time deliver one pair, so each event reaches each webhook once.
impl Store {
    /// Tokens that may have undelivered events (at most `limit`, longest pending first),
    /// each with when it was last marked (Unix ms; 0 on the embedded store, whose
    /// [`Store::settle`] needs no grace).
    pub async fn pending(&self, limit: usize) -> StoreResult<Vec<(TokenId, i64)>> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.pending(limit)).await,
            Store::Redis(s) => s.pending(limit).await,
        }
    }

    /// How many events `id` has, and every webhook's state with them.
    pub async fn hook_status(&self, id: TokenId) -> StoreResult<(u64, Vec<(String, HookState)>)> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.hook_status(id)).await,
            Store::Redis(s) => s.hook_status(id).await,
        }
    }

    /// Up to `max` events of `id` from index `from`, with their indices.
    pub async fn events_from(
        &self,
        id: TokenId,
        from: u64,
        max: usize,
    ) -> StoreResult<Vec<(u64, Event)>> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.events_from(id, from, max)).await,
            Store::Redis(s) => s.events_from(id, from, max).await,
        }
    }

    /// Takes the lease on (`webhook`, `id`) for `ttl` (Redis; the embedded store has
    /// one process, whose worker keeps its own in-flight set) and returns the state, or
    /// `None` when another instance holds it.
    pub async fn hook_lease(
        &self,
        id: TokenId,
        webhook: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> StoreResult<Option<HookState>> {
        match self {
            Store::Embedded(s) => {
                let w = webhook.to_string();
                blocking(s, move |s| s.hook_state(id, &w).map(Some)).await
            }
            Store::Redis(s) => s.hook_lease(id, webhook, holder, ttl).await,
        }
    }

    /// Saves the state of (`webhook`, `id`) if `holder` still holds the lease (and
    /// extends it by `ttl`); `false` if the lease was lost.
    pub async fn hook_save(
        &self,
        id: TokenId,
        webhook: &str,
        holder: &str,
        ttl: std::time::Duration,
        state: HookState,
    ) -> StoreResult<bool> {
        match self {
            Store::Embedded(s) => {
                let w = webhook.to_string();
                blocking(s, move |s| s.hook_save(id, &w, state).map(|()| true)).await
            }
            Store::Redis(s) => s.hook_save(id, webhook, holder, ttl, state).await,
        }
    }

    /// Gives the lease on (`webhook`, `id`) back.
    pub async fn hook_release(&self, id: TokenId, webhook: &str, holder: &str) {
        if let Store::Redis(s) = self {
            s.hook_release(id, webhook, holder).await;
        }
    }

    /// Drops `id` from the pending index if every one of `webhooks` has all its events
    /// (embedded: checked in the same transaction; Redis: only if it was last marked
    /// more than `grace` ago, so a writer between its mark and its script is not lost).
    pub async fn settle(
        &self,
        id: TokenId,
        webhooks: &[String],
        grace: std::time::Duration,
    ) -> StoreResult<bool> {
        let webhooks = webhooks.to_vec();
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.settle(id, &webhooks)).await,
            Store::Redis(s) => s.settle(id, &webhooks, grace).await,
        }
    }

    /// When webhook `name` was first configured (recorded now if never): events older
    /// than that are not sent to it.
    pub async fn webhook_since(
        &self,
        name: &str,
        now: jiff::Timestamp,
    ) -> StoreResult<jiff::Timestamp> {
        let name = name.to_string();
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.webhook_since(&name, now)).await,
            Store::Redis(s) => s.webhook_since(&name, now).await,
        }
    }
}

/// Days as integers (days since 1970-01-01, UTC) so both backends key them the same way.
pub fn day_number(date: jiff::civil::Date) -> i32 {
    let epoch = jiff::civil::date(1970, 1, 1);
    // Whole days between two valid dates always fit in i32.
    (date - epoch).get_days()
}

/// The inverse of [`day_number`].
pub fn day_from_number(n: i32) -> jiff::civil::Date {
    let epoch = jiff::civil::date(1970, 1, 1);
    epoch
        .checked_add(jiff::Span::new().days(i64::from(n)))
        .unwrap_or(epoch)
}

/// How long a store remembers that it applied a count batch: a batch retried later
/// than this (its first attempt applied, the answer lost, then a day without a working
/// store) would be counted twice.
pub const BATCH_ID_TTL: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Names one batch of count increments, so that a batch sent again after its answer was
/// lost (a deadline passed, the connection dropped after the store applied it) is
/// applied once. See [`Store::add_counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchId([u8; 16]);

impl BatchId {
    /// A fresh id, unique across instances.
    pub fn random() -> BatchId {
        let mut b = [0u8; 16];
        if getrandom::fill(&mut b).is_err() {
            // No OS randomness (never seen in practice): time, process and a counter
            // still make ids unique enough for a one-day window.
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let nanos = jiff::Timestamp::now().as_nanosecond();
            let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            b[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
            b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
            b[12..].copy_from_slice(&(seq as u32).to_le_bytes());
        }
        BatchId(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Store {
    /// Adds day counts (increments) as batch `batch`. Atomic per call on both backends
    /// (one redb transaction; one Lua script on Redis), and idempotent per batch id for
    /// [`BATCH_ID_TTL`]: the store records the id together with the counts, and a batch
    /// whose id it has seen is not applied again (`Ok(false)`). So a caller whose call
    /// failed — even one the store applied but whose answer was lost — keeps the batch
    /// and sends it again unchanged, under the same id, without double counting.
    pub async fn add_counts(
        &self,
        batch: BatchId,
        rows: &[(TokenId, i32, ClassCounts)],
    ) -> StoreResult<bool> {
        if rows.is_empty() {
            return Ok(true);
        }
        let rows = rows.to_vec();
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.add_counts(batch, &rows)).await,
            Store::Redis(s) => s.add_counts(batch, &rows).await,
        }
    }

    /// The days in `from..=to` (day numbers) that have counts, oldest first.
    pub async fn counts(
        &self,
        id: TokenId,
        from: i32,
        to: i32,
    ) -> StoreResult<Vec<(i32, ClassCounts)>> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.counts(id, from, to)).await,
            Store::Redis(s) => s.counts(id, from, to).await,
        }
    }

    /// Deletes every day count older than day `before`; returns how many rows went.
    /// Also forgets applied batch ids older than [`BATCH_ID_TTL`] (the embedded store;
    /// on Redis they expire by themselves).
    pub async fn prune_counts(&self, before: i32) -> StoreResult<u64> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.prune_counts(before)).await,
            Store::Redis(s) => s.prune_counts(before).await,
        }
    }

    /// Records last use times (keeps the later of stored and given). Kept apart from the
    /// token record so it never races an edit's compare-and-swap.
    pub async fn set_last_used(&self, updates: &[(TokenId, jiff::Timestamp)]) -> StoreResult<()> {
        let updates = updates.to_vec();
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.set_last_used(&updates)).await,
            Store::Redis(s) => s.set_last_used(&updates).await,
        }
    }

    /// A token's audit events, oldest first.
    pub async fn events(&self, id: TokenId) -> StoreResult<Vec<Event>> {
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.events(id)).await,
            Store::Redis(s) => s.events(id).await,
        }
    }
}
