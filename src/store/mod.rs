//! The token store: one interface, two backends (embedded redb, Redis).
//!
//! Enum dispatch instead of a trait object: async methods stay plain `async fn`,
//! and the conformance tests run the same calls against both backends.

pub mod cache;
pub mod embedded;
pub mod redis;
pub mod sync;

use std::sync::Arc;

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
        let token = token.clone();
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.insert(&token)).await,
            Store::Redis(s) => s.insert(&token).await,
        }
    }

    /// Replaces a token if its stored version is still `expected_version`
    /// (optimistic concurrency); `false` if it changed or vanished meanwhile.
    pub async fn replace(&self, token: &Token, expected_version: u64) -> StoreResult<bool> {
        let token = token.clone();
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.replace(&token, expected_version)).await,
            Store::Redis(s) => s.replace(&token, expected_version).await,
        }
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
        match self {
            Store::Embedded(s) => {
                blocking(s, move |s| s.delete_if_version(id, expected_version)).await
            }
            Store::Redis(s) => s.delete_if_version(id, expected_version).await,
        }
    }

    /// Atomically inserts `token` unless an active token with the admin permission
    /// exists at its `created_at`. Like [`Store::insert`], never over a live token's id
    /// or a retired one ([`Bootstrapped::IdTaken`]: try again with another id).
    pub async fn insert_bootstrap(&self, token: &Token) -> StoreResult<Bootstrapped> {
        let token = token.clone();
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.insert_bootstrap(&token)).await,
            Store::Redis(s) => s.insert_bootstrap(&token).await,
        }
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

/// One audit event of a token (never holds a secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// When.
    pub at: jiff::Timestamp,
    /// Who: the token that made the change (`None` = keygate itself, e.g. bootstrap).
    pub actor: Option<TokenId>,
    /// What: `created`, `updated`, `disabled`, `enabled`, `rotated`, `renewed`, `deleted`.
    pub action: String,
    /// Which fields changed.
    pub fields: Vec<String>,
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

    /// Appends an audit event to a token's log.
    pub async fn append_event(&self, id: TokenId, event: &Event) -> StoreResult<()> {
        let event = event.clone();
        match self {
            Store::Embedded(s) => blocking(s, move |s| s.append_event(id, &event)).await,
            Store::Redis(s) => s.append_event(id, &event).await,
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
