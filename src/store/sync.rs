//! Keeps the cache of a shared (Redis) store coherent with what other instances change:
//!
//! - **subscriber**: every change is announced on `<prefix>changes` (message = token id);
//!   the entry is dropped at once and re-read. After each (re)subscription every cached
//!   entry is re-read, since announcements made while we were not listening are lost.
//! - **refresher**: [`REFRESH_INTERVAL`] after the previous pass, every cached entry is
//!   re-read, which bounds staleness if a message is lost. A failed read never drops an entry: while Redis is
//!   down cached tokens keep working (for up to `store.max_stale`).
//! - **health check**: a PING every [`HEALTH_INTERVAL`] notices when Redis is back (cache
//!   misses answer 503 without asking while it is marked down).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};

use super::{RedisStore, Store, TokenCache, redis::OP_TIMEOUT};
use crate::config::Config;
use crate::token::TokenId;

/// How often every cached token is re-read.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// How often the store is pinged.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// How often the subscription connection is pinged (a dead peer may send no RST).
pub const SUBSCRIPTION_PING_INTERVAL: Duration = Duration::from_secs(1);
/// Concurrent store reads while revalidating.
const REVALIDATE_CONCURRENCY: usize = 32;
/// Longest pause between subscription attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What the sync task keeps coherent: this instance's cache of the shared store, with
/// entries built against the configuration current at the time.
pub struct Follower {
    /// The cache.
    pub cache: Arc<TokenCache>,
    /// The (Redis) store.
    pub store: Store,
    /// The current configuration generation.
    pub config: Box<dyn Fn() -> Arc<Config> + Send + Sync>,
}

/// Runs the subscriber, the refresher and the health check until `stop` resolves.
pub async fn run(shared: Arc<Follower>, redis: Arc<RedisStore>, stop: impl Future<Output = ()>) {
    tokio::select! {
        _ = subscriber(&shared, &redis) => {}
        _ = refresher(&shared) => {}
        _ = health(&shared) => {}
        _ = stop => {}
    }
}

async fn subscriber(shared: &Arc<Follower>, redis: &RedisStore) {
    let urls = redis.pubsub_urls();
    let mut node = 0usize;
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(url) = urls.get(node % urls.len().max(1)) else {
            // `RedisStore::open` always names at least one node; without any, the
            // periodic refresh alone keeps the cache coherent.
            tracing::error!("no Redis node to subscribe to for token changes");
            return std::future::pending().await;
        };
        match subscribe(url, redis.channel()).await {
            Ok((sink, stream)) => {
                tracing::debug!(channel = redis.channel(), "subscribed to token changes");
                backoff = Duration::from_millis(50);
                // Listen and catch up on what was missed at the same time.
                tokio::join!(listen(shared, sink, stream), revalidate(shared));
                tracing::warn!("lost the token change subscription; resubscribing");
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot subscribe to token changes");
                node = node.wrapping_add(1);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn subscribe(url: &str, channel: &str) -> Result<(PubSubSink, PubSubStream), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut pubsub = tokio::time::timeout(OP_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(OP_TIMEOUT, pubsub.subscribe(channel))
        .await
        .map_err(|_| "SUBSCRIBE timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(pubsub.split())
}

/// Applies announcements until the connection is lost.
async fn listen(shared: &Arc<Follower>, mut sink: PubSubSink, mut stream: PubSubStream) {
    let mut ping = tokio::time::interval(SUBSCRIPTION_PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => {
                    let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                    if let Some(id) = TokenId::parse(&payload) {
                        changed(shared, id);
                    }
                }
                None => return,
            },
            _ = ping.tick() => {
                let answer = tokio::time::timeout(OP_TIMEOUT, sink.ping::<redis::Value>()).await;
                if !matches!(answer, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}

/// Token `id` changed somewhere: drop it now, and re-read it if it was cached (so the
/// next request does not wait for the store).
fn changed(shared: &Arc<Follower>, id: TokenId) {
    let cached = shared.cache.get(id).is_some();
    shared.cache.remove(id);
    if !cached {
        return;
    }
    let f = Arc::clone(shared);
    let config = (f.config)();
    tokio::spawn(async move {
        let started = f.cache.read_started();
        if let Ok(Some(token)) = f.store.get(id).await {
            f.cache.fill_token(&token, &config, started);
        }
    });
}

/// Re-reads every cached token; an entry is only dropped when the store says the
/// token is gone, never because the store failed to answer.
pub async fn revalidate(shared: &Follower) {
    let ids = shared.cache.ids();
    let config = (shared.config)();
    futures_util::stream::iter(ids)
        .for_each_concurrent(REVALIDATE_CONCURRENCY, |id| {
            let config = &config;
            async move {
                if !shared.store.accepts_reads() {
                    return;
                }
                let started = shared.cache.read_started();
                match shared.store.get(id).await {
                    Ok(Some(token)) => {
                        shared.cache.fill_token(&token, config, started);
                    }
                    Ok(None) => shared.cache.remove(id),
                    Err(_) => {}
                }
            }
        })
        .await;
}

/// Pauses [`REFRESH_INTERVAL`] between passes (not between starts), so a large cache
/// costs at most half of one connection's read capacity instead of all of it.
async fn refresher(shared: &Follower) {
    loop {
        tokio::time::sleep(REFRESH_INTERVAL).await;
        revalidate(shared).await;
    }
}

async fn health(shared: &Follower) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The result is recorded by the store itself.
        let _ = shared.store.ping().await;
    }
}
