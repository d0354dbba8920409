//! In-process token cache (dashmap): read-through with single-flight on misses and a
//! bounded negative cache.
//!
//! What is bounded, per instance:
//! - **memory**: entries exist only for tokens that exist; unknown ids are remembered in
//!   the negative cache, at most [`NEGATIVE_CAPACITY`] for [`NEGATIVE_TTL`]; the
//!   single-flight map holds one entry per id being looked up right now, removed when its
//!   last waiter finishes or is cancelled.
//! - **store reads for misses**: at most [`MAX_MISS_READS`] at a time. A miss that gets no
//!   slot within [`MISS_READ_WAIT`] is answered `Unavailable` (503 `STORE_UNAVAILABLE`)
//!   without asking the store and without marking it down.
//!
//! What is not bounded: the *rate* of store reads. Every distinct unknown id costs one
//! read (the negative cache only absorbs an id repeated within [`NEGATIVE_TTL`]), so a
//! flood of random ids keeps up to [`MAX_MISS_READS`] reads busy, and a legitimate token
//! that is not cached competes with it for those slots (it may get 503 during such a
//! flood). Cached tokens are never affected. With the embedded store the cache holds every
//! token and a miss reads nothing.
//!
//! Entries are compact [`AuthEntry`]s (what a request decision needs), not whole
//! tokens: with the map's own overhead a million cached tokens take ~196 bytes each
//! (`cargo bench --bench cache_memory`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use jiff::Timestamp;
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};

use super::Store;
use crate::config::{Config, MAX_MODULES, PERMISSION_ALL};
use crate::limits::Policy;
use crate::permissions::Access;
use crate::token::{SecretHash, Token, TokenId};

/// Unknown ids remembered at most; when full the negative cache is emptied
/// (cheap, and an attacker cycling ids gains nothing but store reads it already had).
pub const NEGATIVE_CAPACITY: usize = 65_536;
/// How long an unknown id is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// Store reads for cache misses in flight at once (beyond that, misses answer 503).
pub const MAX_MISS_READS: usize = 128;
/// How long a miss waits for one of the [`MAX_MISS_READS`] slots.
pub const MISS_READ_WAIT: Duration = Duration::from_millis(100);

/// The modules a token may use, as two bitsets over the configured module indices:
/// full access and read-only access (`:read`, SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PermSet {
    all: bool,
    all_read: bool,
    // `config::MAX_MODULES` bounds the module indices; an index beyond (a bug) is
    // neither set nor allowed (`get`/`get_mut`), never a panic.
    bits: [u64; MAX_MODULES / 64],
    read_bits: [u64; MAX_MODULES / 64],
}

impl PermSet {
    /// Builds the set from permission names against the configured modules;
    /// names of modules no longer configured are ignored.
    pub fn from_names(names: &[String], config: &Config) -> PermSet {
        let mut set = PermSet::default();
        for n in names {
            let (m, read) = crate::permissions::split_permission(n);
            if m == PERMISSION_ALL {
                if read {
                    set.all_read = true;
                } else {
                    set.all = true;
                }
            } else if let Some(i) = config.module_index(m)
                && let Some(w) = if read {
                    set.read_bits.get_mut(i / 64)
                } else {
                    set.bits.get_mut(i / 64)
                }
            {
                *w |= 1 << (i % 64);
            }
        }
        set
    }

    fn bit(words: &[u64; 4], index: usize) -> bool {
        words
            .get(index / 64)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Whether module `index` is allowed with every method.
    pub fn allows(&self, index: usize) -> bool {
        self.all || Self::bit(&self.bits, index)
    }

    /// What the token may do in module `index`.
    pub fn access(&self, index: usize) -> Access {
        if self.allows(index) {
            Access::Full
        } else if self.all_read || Self::bit(&self.read_bits, index) {
            Access::Read
        } else {
            Access::None
        }
    }
}

/// What a request decision needs to know about a token.
#[derive(Debug)]
pub struct AuthEntry {
    /// Id.
    pub id: TokenId,
    /// Disabled by an operator.
    pub disabled: bool,
    /// Index into the configured extensions.
    pub extension: u16,
    /// Expiry as Unix seconds (`i64::MAX` = perpetual).
    pub expires_at: i64,
    /// Current secret.
    pub hash: SecretHash,
    /// Previous secret and the Unix second its grace period ends.
    pub previous: Option<Box<(SecretHash, i64)>>,
    /// Allowed modules.
    pub perms: PermSet,
    /// External id, when set.
    pub external_id: Option<Box<str>>,
    /// The token's version: a cached entry is never replaced by an older one.
    pub version: u64,
    /// The configuration generation `perms` and `extension` index into.
    pub generation: u64,
    /// Usage policies (SPEC §8); `None` for a token without any.
    pub policy: Option<Box<Policy>>,
}

impl AuthEntry {
    /// Builds an entry for `token` against the current configuration.
    pub fn new(token: &Token, config: &Config) -> AuthEntry {
        let extension = config
            .extensions
            .iter()
            .position(|e| e.name == token.extension)
            .unwrap_or(0);
        AuthEntry {
            id: token.id,
            disabled: token.disabled,
            extension: u16::try_from(extension).unwrap_or(0),
            expires_at: token.expires_at.map_or(i64::MAX, |t| t.as_second()),
            hash: token.secret_hash,
            previous: token
                .previous_secret
                .map(|p| Box::new((p.hash, p.until.as_second()))),
            perms: PermSet::from_names(&token.permissions, config),
            external_id: token.external_id.as_deref().map(Box::from),
            version: token.version,
            generation: config.generation,
            policy: Policy::of(&token.rate_limits, token.quota, &token.allowed_ips),
        }
    }

    /// Whether `presented` is the current secret, or the previous one within its grace
    /// period. Both comparisons always run, in constant time.
    pub fn verify(&self, presented: &SecretHash, now_unix: i64) -> bool {
        let current = self.hash.matches(presented);
        let previous = match &self.previous {
            Some(p) => p.0.matches(presented) && now_unix < p.1,
            None => false,
        };
        current | previous
    }

    /// Whether the token is past its expiry at `now_unix`.
    pub fn expired(&self, now_unix: i64) -> bool {
        self.expires_at <= now_unix
    }
}

/// The result of a cache lookup.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The token.
    Found(Arc<AuthEntry>),
    /// No such token.
    Unknown,
    /// The store could not be asked.
    Unavailable,
}

/// Ids invalidated recently, remembered so that a store read which started before the
/// invalidation cannot put the old token back; when full it is emptied and every read
/// older than that moment is refused instead.
pub const INVALIDATED_CAPACITY: usize = 65_536;

/// One waiter's share of a single-flight read. Dropping the last one removes the map
/// entry, whether the read finished or every waiter was cancelled.
struct Inflight<'a> {
    map: &'a DashMap<u32, Arc<OnceCell<Lookup>>>,
    key: u32,
    cell: Arc<OnceCell<Lookup>>,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        // Every waiter holds one clone (in its guard) besides the map's, and clones are
        // only taken under the shard lock `remove_if` holds: a count of 2 means no other
        // waiter is left. `ptr_eq`: never remove a newer cell for the same id.
        self.map.remove_if(&self.key, |_, c| {
            Arc::ptr_eq(c, &self.cell) && Arc::strong_count(c) <= 2
        });
    }
}

/// The token cache.
pub struct TokenCache {
    entries: DashMap<u32, Arc<AuthEntry>>,
    negative: DashMap<u32, Instant>,
    inflight: DashMap<u32, Arc<OnceCell<Lookup>>>,
    /// Invalidation counter: bumped by every [`TokenCache::remove`].
    generation: AtomicU64,
    /// id → generation of its last invalidation.
    invalidated: DashMap<u32, u64>,
    /// Reads that started before this generation are not cached.
    floor: AtomicU64,
    /// The cache holds every token (exclusive store): a miss means unknown.
    complete: bool,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Slots for store reads of misses.
    reads: Semaphore,
}

impl TokenCache {
    /// An empty cache; `complete` when every token will be loaded into it.
    pub fn new(complete: bool) -> TokenCache {
        TokenCache {
            entries: DashMap::new(),
            negative: DashMap::new(),
            inflight: DashMap::new(),
            generation: AtomicU64::new(0),
            invalidated: DashMap::new(),
            floor: AtomicU64::new(0),
            complete,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            reads: Semaphore::new(MAX_MISS_READS),
        }
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total hits and misses so far.
    pub fn hit_miss(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Ids with a store read (or waiters for one) in flight.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// The cached entry, without asking the store.
    pub fn get(&self, id: TokenId) -> Option<Arc<AuthEntry>> {
        self.entries.get(&id.number()).map(|e| Arc::clone(&e))
    }

    /// Looks `id` up: cache, then (unless the cache is complete) the store, with one
    /// store read per id in flight at a time. An entry built for another configuration
    /// generation (modules reloaded) is re-read, so its module bits never meet a route
    /// table of another module list.
    pub async fn lookup(&self, id: TokenId, store: &Store, config: &Config) -> Lookup {
        let stale = match self.get(id) {
            Some(e) if e.generation == config.generation => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                // A shared store down for longer than max_stale: the entry may have been
                // disabled or deleted elsewhere meanwhile, so stop trusting it.
                if !self.complete && !store.cache_trusted(config.store.max_stale) {
                    return Lookup::Unavailable;
                }
                return Lookup::Found(e);
            }
            Some(_) => true,
            None => false,
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        if self.complete && !stale {
            return Lookup::Unknown;
        }
        // Boxed: the store read's future is large and every request's future would
        // carry (and move) its size for the rare miss (issue 13).
        Box::pin(self.lookup_miss(id, store, config)).await
    }

    /// [`TokenCache::lookup`] when the entry is not cached (or is of an older
    /// configuration generation): negative cache, single-flight store read.
    async fn lookup_miss(&self, id: TokenId, store: &Store, config: &Config) -> Lookup {
        let key = id.number();
        if let Some(at) = self.negative.get(&key).map(|v| *v) {
            if at.elapsed() < NEGATIVE_TTL {
                return Lookup::Unknown;
            }
            self.negative.remove(&key);
        }
        // The guard holds this waiter's only clone of the cell and removes the map
        // entry when the lookup ends, finished or cancelled (a client that hangs up
        // drops this future mid-read).
        let inflight = Inflight {
            map: &self.inflight,
            key,
            cell: Arc::clone(
                self.inflight
                    .entry(key)
                    .or_insert_with(|| Arc::new(OnceCell::new()))
                    .value(),
            ),
        };
        let result = inflight
            .cell
            .get_or_init(|| async {
                if !store.accepts_reads() {
                    return Lookup::Unavailable;
                }
                let Some(_slot) = self.read_slot().await else {
                    return Lookup::Unavailable;
                };
                let started = self.read_started();
                match store.get(id).await {
                    Ok(Some(token)) => {
                        let entry = Arc::new(AuthEntry::new(&token, config));
                        self.fill(&entry, started);
                        Lookup::Found(entry)
                    }
                    Ok(None) => {
                        self.entries.remove(&key);
                        self.remember_unknown(key);
                        Lookup::Unknown
                    }
                    Err(_) => Lookup::Unavailable,
                }
            })
            .await
            .clone();
        drop(inflight);
        match result {
            // A request of another generation filled the shared read: build ours.
            Lookup::Found(e) if e.generation != config.generation => {
                let Some(_slot) = self.read_slot().await else {
                    return Lookup::Unavailable;
                };
                match store.get(id).await {
                    Ok(Some(token)) => Lookup::Found(Arc::new(AuthEntry::new(&token, config))),
                    Ok(None) => Lookup::Unknown,
                    Err(_) => Lookup::Unavailable,
                }
            }
            other => other,
        }
    }

    /// One of the [`MAX_MISS_READS`] slots, or `None` when none frees up within
    /// [`MISS_READ_WAIT`].
    async fn read_slot(&self) -> Option<SemaphorePermit<'_>> {
        match tokio::time::timeout(MISS_READ_WAIT, self.reads.acquire()).await {
            Ok(Ok(permit)) => Some(permit),
            _ => None,
        }
    }

    /// Store reads of misses under way now.
    pub fn miss_reads_in_flight(&self) -> usize {
        MAX_MISS_READS - self.reads.available_permits()
    }

    fn remember_unknown(&self, key: u32) {
        if self.negative.len() >= NEGATIVE_CAPACITY {
            self.negative.clear();
        }
        self.negative.insert(key, Instant::now());
    }

    /// Caches `token` just written by this process under a fresh id (create,
    /// bootstrap); an entry with a newer version is kept. Not for edits: those use
    /// [`TokenCache::fill_token`] so a concurrent delete is never undone.
    pub fn put(&self, token: &Token, config: &Config) {
        self.negative.remove(&token.id.number());
        self.insert_newest(Arc::new(AuthEntry::new(token, config)));
    }

    /// A marker to take before reading a token from the store, for [`TokenCache::fill`].
    pub fn read_started(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Caches `token` read from the store, unless it was invalidated after the read
    /// began (`started` from [`TokenCache::read_started`]): then the read may predate a
    /// delete or disable and must not be put back. Returns whether it was cached.
    pub fn fill_token(&self, token: &Token, config: &Config, started: u64) -> bool {
        self.fill(&Arc::new(AuthEntry::new(token, config)), started)
    }

    fn fill(&self, entry: &Arc<AuthEntry>, started: u64) -> bool {
        let key = entry.id.number();
        // Checked while holding the entry's shard lock: `remove` records the
        // invalidation before it takes that lock to drop the entry, so either we see
        // the invalidation here or `remove` drops what we insert.
        let slot = self.entries.entry(key);
        if self.floor.load(Ordering::SeqCst) > started
            || self.invalidated.get(&key).is_some_and(|g| *g > started)
        {
            return false;
        }
        Self::keep_newest(slot, Arc::clone(entry));
        self.negative.remove(&key);
        true
    }

    fn insert_newest(&self, entry: Arc<AuthEntry>) {
        Self::keep_newest(self.entries.entry(entry.id.number()), entry);
    }

    fn keep_newest(slot: dashmap::Entry<'_, u32, Arc<AuthEntry>>, entry: Arc<AuthEntry>) {
        match slot {
            dashmap::Entry::Occupied(mut o) => {
                if o.get().version <= entry.version {
                    o.insert(entry);
                }
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(entry);
            }
        }
    }

    /// Drops `id` (deleted, or changed elsewhere: the next request re-reads it), and
    /// keeps reads already under way from putting the old token back.
    pub fn remove(&self, id: TokenId) {
        let key = id.number();
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if self.invalidated.len() >= INVALIDATED_CAPACITY {
            self.invalidated.clear();
            self.floor.store(generation, Ordering::SeqCst);
        }
        self.invalidated.insert(key, generation);
        self.entries.remove(&key);
        self.negative.remove(&key);
    }

    /// Drops everything (reads under way are not cached either).
    pub fn clear(&self) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.floor.store(generation, Ordering::SeqCst);
        self.invalidated.clear();
        self.entries.clear();
        self.negative.clear();
    }

    /// Replaces the whole content with `tokens` (start-up, config reload).
    pub fn load_all(&self, tokens: &[Token], config: &Config) {
        self.clear();
        for t in tokens {
            self.put(t, config);
        }
    }

    /// Ids of every cached token (for periodic refresh).
    pub fn ids(&self) -> Vec<TokenId> {
        self.entries
            .iter()
            .filter_map(|e| TokenId::new(*e.key()))
            .collect()
    }
}

/// Unix seconds of `t`.
pub fn unix(t: Timestamp) -> i64 {
    t.as_second()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;
    use crate::token::Secret;

    fn config() -> Config {
        Config::parse(
            "[[modules]]\nname = \"agreements\"\nprefixes = [\"/a\"]\nupstream = \"http://127.0.0.1:1\"\n",
            std::path::Path::new("test.toml"),
            |_| None,
        )
        .expect("valid config")
    }

    fn token(version: u64) -> Token {
        Token {
            id: TokenId::new(42).expect("id"),
            version,
            ..Token::new(
                "t",
                &["agreements"],
                Secret::generate().hash(),
                Timestamp::now(),
            )
        }
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let (cache, config) = (TokenCache::new(false), config());
        let mut v2 = token(2);
        v2.disabled = true;
        cache.put(&v2, &config);
        cache.put(&token(1), &config);
        let e = cache.get(v2.id).expect("cached");
        assert_eq!((e.version, e.disabled), (2, true));
        let started = cache.read_started();
        assert!(cache.fill_token(&token(1), &config, started));
        assert_eq!(cache.get(v2.id).expect("cached").version, 2);
    }

    #[test]
    fn a_read_that_began_before_an_invalidation_is_not_cached() {
        let (cache, config) = (TokenCache::new(false), config());
        let t = token(1);
        let started = cache.read_started();
        // Deleted elsewhere while the read was under way.
        cache.remove(t.id);
        assert!(!cache.fill_token(&t, &config, started));
        assert!(cache.get(t.id).is_none());
        // A read that began afterwards is cached.
        let started = cache.read_started();
        assert!(cache.fill_token(&t, &config, started));
        assert!(cache.get(t.id).is_some());
        // clear() refuses every read that began before it.
        let started = cache.read_started();
        cache.clear();
        assert!(!cache.fill_token(&t, &config, started));
    }

    fn two_modules() -> Config {
        Config::parse(
            "[[modules]]\nname = \"a\"\nprefixes = [\"/a\"]\nupstream = \"http://127.0.0.1:1\"\n[[modules]]\nname = \"b\"\nprefixes = [\"/b\"]\nupstream = \"http://127.0.0.1:1\"\n",
            std::path::Path::new("t.toml"),
            |_| None,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn negative_cache_stays_bounded_and_read_through_finds_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Embedded(Arc::new(
            EmbeddedStore::open(&dir.path().join("s.redb")).unwrap(),
        ));
        let config = two_modules();
        let cache = TokenCache::new(false);
        for i in 0..(NEGATIVE_CAPACITY as u32 + 1000) {
            let id = TokenId::new(i).unwrap();
            assert!(matches!(
                cache.lookup(id, &store, &config).await,
                Lookup::Unknown
            ));
        }
        assert!(cache.negative.len() <= NEGATIVE_CAPACITY);
        assert!(cache.inflight.is_empty());
        assert!(cache.is_empty(), "unknown ids must not create entries");
    }

    #[test]
    fn permsets_follow_module_indices() {
        let config = two_modules();
        let p = PermSet::from_names(&["b".into(), "gone".into()], &config);
        assert!(!p.allows(0) && p.allows(1) && !p.allows(2) && !p.allows(10_000));
        let all = PermSet::from_names(&["all".into()], &config);
        assert!(all.allows(0) && all.allows(255));
        let r = PermSet::from_names(&["a:read".into()], &config);
        assert_eq!((r.access(0), r.access(1)), (Access::Read, Access::None));
        let r = PermSet::from_names(&["all:read".into(), "b".into()], &config);
        assert_eq!(
            (r.access(0), r.access(1), r.access(9)),
            (Access::Read, Access::Full, Access::Read)
        );
    }
}
