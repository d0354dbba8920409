//! In-process token cache (dashmap): read-through with single-flight on misses and a
//! bounded negative cache, so random ids can neither grow memory nor hammer the store.
//!
//! Entries are compact [`AuthEntry`]s (what a request decision needs, ~130 bytes),
//! not whole tokens, so a million cached tokens stay well under 300 MB.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use jiff::Timestamp;
use tokio::sync::OnceCell;

use super::Store;
use crate::config::{Config, PERMISSION_ALL};
use crate::token::{SecretHash, Token, TokenId};

/// Unknown ids remembered at most; when full the negative cache is emptied
/// (cheap, and an attacker cycling ids gains nothing but store reads it already had).
pub const NEGATIVE_CAPACITY: usize = 65_536;
/// How long an unknown id is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// The modules a token may use, as a bitset over the configured module indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PermSet {
    all: bool,
    bits: [u64; 4],
}

impl PermSet {
    /// Builds the set from permission names against the configured modules;
    /// names of modules no longer configured are ignored.
    pub fn from_names(names: &[String], config: &Config) -> PermSet {
        let mut set = PermSet::default();
        for n in names {
            if n == PERMISSION_ALL {
                set.all = true;
            } else if let Some(i) = config.module_index(n) {
                set.bits[i / 64] |= 1 << (i % 64);
            }
        }
        set
    }

    /// Whether module `index` is allowed.
    pub fn allows(&self, index: usize) -> bool {
        self.all
            || self
                .bits
                .get(index / 64)
                .is_some_and(|w| w & (1 << (index % 64)) != 0)
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
    /// The configuration generation `perms` and `extension` index into.
    pub generation: u64,
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
            generation: config.generation,
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

/// The token cache.
pub struct TokenCache {
    entries: DashMap<u32, Arc<AuthEntry>>,
    negative: DashMap<u32, Instant>,
    inflight: DashMap<u32, Arc<OnceCell<Lookup>>>,
    /// The cache holds every token (exclusive store): a miss means unknown.
    complete: bool,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl TokenCache {
    /// An empty cache; `complete` when every token will be loaded into it.
    pub fn new(complete: bool) -> TokenCache {
        TokenCache {
            entries: DashMap::new(),
            negative: DashMap::new(),
            inflight: DashMap::new(),
            complete,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
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
                return Lookup::Found(e);
            }
            Some(_) => true,
            None => false,
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        if self.complete && !stale {
            return Lookup::Unknown;
        }
        let key = id.number();
        if let Some(at) = self.negative.get(&key).map(|v| *v) {
            if at.elapsed() < NEGATIVE_TTL {
                return Lookup::Unknown;
            }
            self.negative.remove(&key);
        }
        let cell = Arc::clone(
            self.inflight
                .entry(key)
                .or_insert_with(|| Arc::new(OnceCell::new()))
                .value(),
        );
        let result = cell
            .get_or_init(|| async {
                match store.get(id).await {
                    Ok(Some(token)) => {
                        let entry = Arc::new(AuthEntry::new(&token, config));
                        self.entries.insert(key, Arc::clone(&entry));
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
        self.inflight.remove(&key);
        match result {
            // A request of another generation filled the shared read: build ours.
            Lookup::Found(e) if e.generation != config.generation => match store.get(id).await {
                Ok(Some(token)) => Lookup::Found(Arc::new(AuthEntry::new(&token, config))),
                Ok(None) => Lookup::Unknown,
                Err(_) => Lookup::Unavailable,
            },
            other => other,
        }
    }

    fn remember_unknown(&self, key: u32) {
        if self.negative.len() >= NEGATIVE_CAPACITY {
            self.negative.clear();
        }
        self.negative.insert(key, Instant::now());
    }

    /// Caches (or refreshes) `token`.
    pub fn put(&self, token: &Token, config: &Config) {
        self.negative.remove(&token.id.number());
        self.entries
            .insert(token.id.number(), Arc::new(AuthEntry::new(token, config)));
    }

    /// Drops `id` (deleted, or changed elsewhere: the next request re-reads it).
    pub fn remove(&self, id: TokenId) {
        self.entries.remove(&id.number());
        self.negative.remove(&id.number());
    }

    /// Drops everything.
    pub fn clear(&self) {
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
