//! The webhook worker: delivers every stored event to every webhook that wants it,
//! signed per the Standard Webhooks specification, in order per token, with retries.
//!
//! Each round (on a local write, else every [`POLL_INTERVAL`]) it reads the pending
//! index, and for each (webhook, token) pair with undelivered events that is not in
//! back-off, starts one task that takes the pair's lease (Redis: one instance at a
//! time; the lease outlives one attempt), sends the events from the pair's cursor one
//! after another and advances the cursor after each success. A failure stores the
//! back-off in the pair's state and ends the task, so a later event of that token waits
//! while the others go on. Tasks are bounded per webhook ([`MAX_IN_FLIGHT`]): a slow or
//! dead receiver only ever occupies its own webhook's slots. Nothing here is awaited by
//! the admin API or the proxy: they only write the event to the store.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jiff::Timestamp;
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Tasks, payload, type_of};
use crate::config::events::{MAX_RETRY_INTERVAL, Webhook, WebhookSecret};
use crate::store::{Event, HookState, Store, StoreResult};
use crate::tls::{self, Trust};
use crate::token::TokenId;

/// How often the pending index is read when nothing was written locally (other
/// instances' events, retries coming due).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Concurrent deliveries per webhook (each to a different token).
pub const MAX_IN_FLIGHT: usize = 16;
/// Pending tokens looked at per round.
const MAX_PENDING_PER_ROUND: usize = 10_000;
/// Events read from the store at once.
const EVENTS_PER_READ: usize = 32;
/// A lease lasts one attempt's timeout plus this.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// A token leaves the Redis pending index only this long after it was last marked (a
/// writer marks before its script runs; see `RedisStore::settle`).
const SETTLE_GRACE: Duration = Duration::from_secs(30);
/// Concurrent state reads per round.
const STATUS_READS: usize = 32;
/// A pending mark younger than this may still be followed by its writer's script (one
/// store deadline): a token found caught up with an older mark rests (is not read
/// again) until its mark can be settled or it is marked again.
const RECENT_MARK_MS: i64 = 2_000;
/// Connect timeout of the webhook client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The `webhook-signature` value for `body` (Standard Webhooks, scheme `v1`).
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret.bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// The `webhook-id` of event `e` at webhook `w`: unique per event and webhook, the same
/// on every retry.
pub fn message_id(e: &Event, webhook: &str) -> String {
    format!("msg_{}_{webhook}", e.id)
}

/// The wait before attempt `attempts + 1`: `first` doubled per failure, at most an hour,
/// with ±25 % jitter so receivers coming back are not hit by every pair at once.
pub fn backoff(first: Duration, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = first.saturating_mul(1u32 << exp).min(MAX_RETRY_INTERVAL);
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    // 0.75 ..= 1.25
    let factor = 0.75 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0;
    base.mul_f64(factor).min(MAX_RETRY_INTERVAL)
}

/// State of one worker (one per process).
struct Worker {
    tasks: Arc<Tasks>,
    /// Names this process in leases.
    holder: String,
    client: HttpClient,
    /// (webhook, token) pairs with a task running here.
    in_flight: Mutex<HashSet<(String, TokenId)>>,
    /// Pairs in back-off: not looked at before this time (Unix ms).
    not_before: Mutex<HashMap<(String, TokenId), i64>>,
    /// Events waiting per webhook and token, as last seen.
    waiting: Mutex<HashMap<String, HashMap<TokenId, u64>>>,
    /// When each webhook was first configured.
    since: Mutex<HashMap<String, Timestamp>>,
    /// Pending tokens found caught up but marked too recently to settle (Redis), by the
    /// mark seen then: not read again until that mark is old enough, unless re-marked.
    quiet: Mutex<HashMap<TokenId, i64>>,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

fn client() -> Result<HttpClient, String> {
    let tls = tls::client_config(Trust::System).or_else(|e| {
        tracing::warn!(error = %e, "no system TLS roots: https:// webhooks will fail");
        tls::client_config(Trust::Nothing)
    })?;
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector))
}

/// Runs the worker until `stop` resolves. Deliveries in flight are abandoned then (their
/// cursor was not advanced, so they are sent again later, with the same `webhook-id`).
pub async fn run(tasks: Arc<Tasks>, stop: impl Future<Output = ()>) {
    let mut holder = [0u8; 12];
    let _ = getrandom::fill(&mut holder);
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; no webhook deliveries");
            return;
        }
    };
    let worker = Arc::new(Worker {
        tasks,
        holder: hex::encode(holder),
        client,
        in_flight: Mutex::default(),
        not_before: Mutex::default(),
        waiting: Mutex::default(),
        since: Mutex::default(),
        quiet: Mutex::default(),
        slots: Mutex::default(),
    });
    let tasks = Arc::new(Mutex::new(JoinSet::new()));
    tokio::pin!(stop);
    loop {
        worker.round(&tasks).await;
        let written = worker.tasks.store.events_written();
        tokio::select! {
            _ = written.notified() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = &mut stop => break,
        }
    }
    let mut set = std::mem::take(&mut *lock(&tasks));
    set.abort_all();
    while set.join_next().await.is_some() {}
    // Leases of abandoned pairs: give them back so another instance need not wait.
    let pairs: Vec<(String, TokenId)> = lock(&worker.in_flight).drain().collect();
    for (w, id) in pairs {
        worker
            .tasks
            .store
            .hook_release(id, &w, &worker.holder)
            .await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// What one round found of a pending token: its event count, and the round's clock and
/// back-off setting.
struct Due {
    id: TokenId,
    /// Events the token has (the next one's index).
    n: u64,
    /// The round's time (Unix ms).
    now: i64,
    first_retry: Duration,
}

/// One (webhook, token) pair's delivery lease, held by this process.
struct Lease<'a> {
    store: &'a Store,
    w: &'a Webhook,
    id: TokenId,
    holder: &'a str,
    ttl: Duration,
}

impl Lease<'_> {
    /// Saves the delivery state under the lease; `false` when it could not be (lost
    /// lease, store error): the caller stops, and the pair is looked at again later.
    async fn save(&self, st: HookState) -> bool {
        let (id, w) = (self.id, &self.w.name);
        match self.store.hook_save(id, w, self.holder, self.ttl, st).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(token = %id, webhook = %w, "lost the delivery lease");
                false
            }
            Err(e) => {
                tracing::warn!(token = %id, webhook = %w, error = %e, "cannot save the delivery state");
                false
            }
        }
    }
}

impl Worker {
    async fn since(&self, name: &str) -> Option<Timestamp> {
        if let Some(t) = lock(&self.since).get(name) {
            return Some(*t);
        }
        match self.tasks.store.webhook_since(name, Timestamp::now()).await {
            Ok(t) => {
                lock(&self.since).insert(name.to_string(), t);
                Some(t)
            }
            Err(e) => {
                tracing::warn!(webhook = name, error = %e, "cannot read the webhook's start time");
                None
            }
        }
    }

    fn slots(&self, name: &str) -> Arc<Semaphore> {
        Arc::clone(
            lock(&self.slots)
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT))),
        )
    }

    fn busy(&self, w: &str, id: TokenId, now: i64) -> bool {
        let key = (w.to_string(), id);
        lock(&self.in_flight).contains(&key)
            || lock(&self.not_before).get(&key).is_some_and(|t| *t > now)
    }

    /// One look at the pending index: starts a delivery for every (webhook, token) pair
    /// with events due, and settles the tokens every webhook has caught up with.
    async fn round(self: &Arc<Self>, tasks: &Arc<Mutex<JoinSet<()>>>) {
        // Reap finished tasks.
        {
            let mut set = lock(tasks);
            while set.try_join_next().is_some() {}
        }
        let config = (self.tasks.config)();
        let hooks: Vec<Arc<Webhook>> = config.webhooks.iter().cloned().map(Arc::new).collect();
        let first_retry = config.events.first_retry;
        drop(config);
        let ready = self.ready(&hooks).await;
        // A token is settled only when every webhook's start time is known.
        let all_ready = ready.len() == hooks.len();
        let names: Vec<String> = hooks.iter().map(|w| w.name.clone()).collect();
        let store = &self.tasks.store;
        let ids = match store.pending(MAX_PENDING_PER_ROUND).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the pending events index");
                return;
            }
        };
        let now = now_ms();
        let to_read = self.to_read(ids, &names, all_ready, now).await;
        // The states, read concurrently (one round trip each on Redis).
        let read: Vec<_> = futures_util::stream::iter(to_read)
            .map(|(id, mark)| async move { (id, mark, store.hook_status(id).await) })
            .buffer_unordered(STATUS_READS)
            .collect()
            .await;
        for (id, mark, status) in read {
            let (n, states) = match status {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(token = %id, error = %e, "cannot read webhook state");
                    continue;
                }
            };
            let due = Due {
                id,
                n,
                now,
                first_retry,
            };
            let caught_up = self.start_deliveries(tasks, &due, &states, &ready);
            if caught_up && all_ready {
                self.settle_caught_up(id, mark, &names, now).await;
            }
        }
        self.report_pending(&names);
    }

    /// The webhooks whose start time is known, with it.
    async fn ready(&self, hooks: &[Arc<Webhook>]) -> Vec<(Arc<Webhook>, Timestamp)> {
        let mut ready = Vec::with_capacity(hooks.len());
        for w in hooks {
            if let Some(since) = self.since(&w.name).await {
                ready.push((Arc::clone(w), since));
            }
        }
        ready
    }

    /// The pending tokens whose state is worth reading: neither resting nor busy at
    /// every webhook. A resting token whose mark has grown old enough is settled here.
    async fn to_read(
        &self,
        ids: Vec<(TokenId, i64)>,
        names: &[String],
        all_ready: bool,
        now: i64,
    ) -> Vec<(TokenId, i64)> {
        let grace_ms = SETTLE_GRACE.as_millis() as i64;
        lock(&self.quiet).retain(|id, _| ids.iter().any(|(i, _)| i == id));
        let mut to_read = Vec::new();
        for (id, mark) in ids {
            if lock(&self.quiet).get(&id) == Some(&mark) {
                if now.saturating_sub(mark) < grace_ms {
                    continue;
                }
                // Old enough now; settle re-checks that it is still caught up.
                lock(&self.quiet).remove(&id);
                if all_ready {
                    let _ = self.settle(id, names).await;
                }
                continue;
            }
            if !names.is_empty() && names.iter().all(|w| self.busy(w, id, now)) {
                continue;
            }
            to_read.push((id, mark));
        }
        to_read
    }

    /// Starts a delivery task for each ready webhook that has events of `due.id` due and
    /// none running; returns whether every ready webhook has caught up with them.
    fn start_deliveries(
        self: &Arc<Self>,
        tasks: &Arc<Mutex<JoinSet<()>>>,
        due: &Due,
        states: &[(String, HookState)],
        ready: &[(Arc<Webhook>, Timestamp)],
    ) -> bool {
        let id = due.id;
        let mut caught_up = true;
        for (w, since) in ready {
            let st = states
                .iter()
                .find(|(k, _)| *k == w.name)
                .map(|(_, s)| *s)
                .unwrap_or_default();
            let left = due.n.saturating_sub(st.cursor);
            lock(&self.waiting)
                .entry(w.name.clone())
                .or_default()
                .insert(id, left);
            if left == 0 {
                continue;
            }
            caught_up = false;
            let key = (w.name.clone(), id);
            if st.next_at_ms > due.now {
                lock(&self.not_before).insert(key, st.next_at_ms);
                continue;
            }
            if lock(&self.in_flight).contains(&key) {
                continue;
            }
            let Ok(permit) = self.slots(&w.name).try_acquire_owned() else {
                continue;
            };
            lock(&self.not_before).remove(&key);
            lock(&self.in_flight).insert(key.clone());
            let (me, w, since, first_retry) =
                (Arc::clone(self), Arc::clone(w), *since, due.first_retry);
            lock(tasks).spawn(async move {
                me.deliver(&w, id, since, first_retry).await;
                lock(&me.in_flight).remove(&key);
                drop(permit);
            });
        }
        caught_up
    }

    /// A token every webhook has caught up with leaves the pending index — unless its
    /// mark is younger than the grace period (Redis: its writer's script may still
    /// run); then it rests once the mark is no longer recent.
    async fn settle_caught_up(&self, id: TokenId, mark: i64, names: &[String], now: i64) {
        let age = now.saturating_sub(mark);
        let settleable = mark == 0 || age >= SETTLE_GRACE.as_millis() as i64;
        if !settleable {
            if mark > 0 && age >= RECENT_MARK_MS {
                lock(&self.quiet).insert(id, mark);
            }
            return;
        }
        if let Err(e) = self.settle(id, names).await {
            tracing::debug!(token = %id, error = %e, "cannot settle");
        }
    }

    /// Takes `id` off the pending index if it is still caught up; forgets its waiting
    /// counts when it was.
    async fn settle(&self, id: TokenId, names: &[String]) -> StoreResult<bool> {
        let settled = self.tasks.store.settle(id, names, SETTLE_GRACE).await?;
        if settled {
            for m in lock(&self.waiting).values_mut() {
                m.remove(&id);
            }
        }
        Ok(settled)
    }

    /// `keygate_webhook_pending`: events waiting per webhook, as last seen.
    fn report_pending(&self, names: &[String]) {
        let metrics = &self.tasks.metrics;
        let waiting = lock(&self.waiting);
        for name in names {
            let sum: u64 = waiting.get(name).map_or(0, |m| m.values().sum());
            metrics
                .webhook_pending
                .with_label_values(&[name.as_str()])
                .set(i64::try_from(sum).unwrap_or(i64::MAX));
        }
    }

    fn count(&self, w: &Webhook, result: &str) {
        self.tasks
            .metrics
            .webhook_deliveries
            .with_label_values(&[w.name.as_str(), result])
            .inc();
    }

    /// Delivers `id`'s events to `w` from its cursor, in order, until one fails or none
    /// are left.
    async fn deliver(&self, w: &Webhook, id: TokenId, since: Timestamp, first_retry: Duration) {
        let lease = Lease {
            store: &self.tasks.store,
            w,
            id,
            holder: &self.holder,
            ttl: w.timeout + LEASE_MARGIN,
        };
        let mut st = match lease
            .store
            .hook_lease(id, &w.name, lease.holder, lease.ttl)
            .await
        {
            Ok(Some(st)) => st,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(token = %id, webhook = %w.name, error = %e, "cannot take the lease");
                return;
            }
        };
        self.deliver_leased(&lease, since, first_retry, &mut st)
            .await;
        lease.store.hook_release(id, &w.name, lease.holder).await;
    }

    /// The delivery loop under the lease: batches of events from the cursor; an event
    /// not for this webhook is skipped, one too old is dropped, the rest are sent.
    async fn deliver_leased(
        &self,
        lease: &Lease<'_>,
        since: Timestamp,
        first_retry: Duration,
        st: &mut HookState,
    ) {
        let (w, id) = (lease.w, lease.id);
        loop {
            if st.next_at_ms > now_ms() {
                lock(&self.not_before).insert((w.name.clone(), id), st.next_at_ms);
                return;
            }
            let events = match lease
                .store
                .events_from(id, st.cursor, EVENTS_PER_READ)
                .await
            {
                Ok(e) if e.is_empty() => return,
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(token = %id, error = %e, "cannot read events");
                    return;
                }
            };
            // Skips are saved with the next delivery, or at the end of the batch.
            let mut skipped = false;
            for (index, e) in events {
                let wanted = !e.id.is_empty() && e.at >= since && w.wants(&type_of(&e));
                let Some(body) = payload(&e).filter(|_| wanted) else {
                    // Not for this webhook (type, or older than the webhook).
                    *st = HookState::after(index);
                    skipped = true;
                    continue;
                };
                if std::mem::take(&mut skipped) && !lease.save(*st).await {
                    return;
                }
                if !self.attempt(lease, &e, index, body, first_retry, st).await {
                    return;
                }
            }
            if skipped && !lease.save(*st).await {
                return;
            }
        }
    }

    /// Sends event `index` — or drops it once `retry_for` has passed — and saves the
    /// outcome in `st`. `false`: stop here (a retry is scheduled, or the lease is lost).
    async fn attempt(
        &self,
        lease: &Lease<'_>,
        e: &Event,
        index: u64,
        body: Vec<u8>,
        first_retry: Duration,
        st: &mut HookState,
    ) -> bool {
        let (w, id, ty) = (lease.w, lease.id, type_of(e));
        let deadline =
            e.at.as_millisecond()
                .saturating_add(w.retry_for.as_millis() as i64);
        if now_ms() >= deadline {
            self.count(w, "dropped");
            tracing::warn!(token = %id, webhook = %w.name, event = %ty, "event not delivered within retry_for; dropped");
            *st = HookState::after(index);
            return lease.save(*st).await;
        }
        let why = match self.send(w, e, body).await {
            Ok(()) => {
                self.count(w, "ok");
                *st = HookState::after(index);
                return lease.save(*st).await;
            }
            Err(why) => why,
        };
        let attempts = st.attempts.saturating_add(1);
        let next = now_ms().saturating_add(backoff(first_retry, attempts).as_millis() as i64);
        if next >= deadline {
            self.count(w, "dropped");
            tracing::warn!(token = %id, webhook = %w.name, event = %ty, attempts, reason = %why, "event not delivered within retry_for; dropped");
            *st = HookState::after(index);
            return lease.save(*st).await;
        }
        self.count(w, "retry");
        tracing::info!(token = %id, webhook = %w.name, event = %ty, attempts, reason = %why, "webhook delivery failed; will retry");
        *st = HookState {
            cursor: index,
            attempts,
            next_at_ms: next,
        };
        let _ = lease.save(*st).await;
        lock(&self.not_before).insert((w.name.clone(), id), next);
        false
    }

    /// One attempt: POST, signed, within the webhook's timeout; `Ok` on a 2xx.
    async fn send(&self, w: &Webhook, e: &Event, body: Vec<u8>) -> Result<(), String> {
        let msg_id = message_id(e, &w.name);
        let ts = Timestamp::now().as_second();
        let signature = sign(&w.secret, &msg_id, ts, &body);
        let header = |s: &str| HeaderValue::from_str(s).map_err(|_| "bad header value".to_string());
        let req = Request::builder()
            .method(Method::POST)
            .uri(w.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("keygate/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", header(&msg_id)?)
            .header("webhook-timestamp", ts)
            .header("webhook-signature", header(&signature)?)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(w.timeout, self.client.request(req)).await {
            Err(_) => Err(format!("no answer within {:?}", w.timeout)),
            Ok(Err(e)) => Err(crate::error::error_chain(&e)),
            Ok(Ok(res)) if res.status().is_success() => Ok(()),
            Ok(Ok(res)) => Err(format!("answered {}", res.status().as_u16())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_an_hour_with_jitter() {
        let first = Duration::from_secs(1);
        let b1 = backoff(first, 1);
        assert!(
            b1 >= Duration::from_millis(750) && b1 <= Duration::from_millis(1250),
            "{b1:?}"
        );
        let b4 = backoff(first, 4);
        assert!(
            b4 >= Duration::from_secs(6) && b4 <= Duration::from_secs(10),
            "{b4:?}"
        );
        for n in [13, 20, 40, u32::MAX] {
            let b = backoff(first, n);
            assert!(
                b <= MAX_RETRY_INTERVAL && b >= Duration::from_secs(2700),
                "{n}: {b:?}"
            );
        }
    }
}
