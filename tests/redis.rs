//! Several gateway instances on one Redis: changes made through one are enforced by the
//! others within 1 s (SPEC §4), and a Redis outage does not break cached tokens.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use jiff::Timestamp;
use keygate::config::Config;
use keygate::store::cache::MAX_MISS_READS;
use keygate::store::{Lookup, RedisStore, Store, TokenCache};
use keygate::token::{Secret, TokenId};

/// The SPEC's bound on propagation between instances.
const PROPAGATION: Duration = Duration::from_secs(1);

/// Statistics written every 200 ms instead of every second.
const FAST_FLUSH: &str = "[stats]\nflush_interval = \"200ms\"\n";

async fn two_instances(
    redis: &TestRedis,
    prefix: &str,
    store_extra: &str,
) -> (TestUpstream, TestGateway, TestGateway) {
    two_instances_with(redis, prefix, store_extra, "").await
}

/// Two instances on `redis`; `more` is extra TOML (whole tables) for both.
async fn two_instances_with(
    redis: &TestRedis,
    prefix: &str,
    store_extra: &str,
    more: &str,
) -> (TestUpstream, TestGateway, TestGateway) {
    let up = spawn_upstream().await;
    let toml = format!(
        "{}{more}{}{}",
        redis_store_toml(redis, prefix, store_extra),
        module_toml("agreements", &["/public/v1/agreements"], &up.url(), ""),
        module_toml("billing", &["/public/v1/billing"], &up.url(), "")
    );
    let a = spawn_gateway(&toml).await;
    let b = spawn_gateway(&toml).await;
    (up, a, b)
}

/// Polls `gw` with `key` until the status is `want`; false if `deadline` passes.
async fn status_becomes(
    gw: &TestGateway,
    path: &str,
    key: &str,
    want: StatusCode,
    deadline: Duration,
) -> bool {
    let c = client();
    eventually(deadline, async || {
        send(
            &c,
            Method::GET,
            &gw.url(path),
            Some(key),
            Default::default(),
        )
        .await
        .status
            == want
    })
    .await
}

/// Polls `path` on `gw` until its error code is `want` or `deadline` passes.
async fn code_becomes(
    gw: &TestGateway,
    path: &str,
    key: &str,
    want: &str,
    deadline: Duration,
) -> bool {
    eventually(deadline, async || {
        get(&gw.url(path), Some(key)).await.code() == want
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_one_instance_creates_the_bootstrap_token() {
    let redis = spawn_redis().await;
    let (_up, a, b) = two_instances(&redis, "boot:", "").await;
    assert_ne!(
        a.admin_key.is_empty(),
        b.admin_key.is_empty(),
        "exactly one instance writes a key file"
    );
    let admins = a
        .tokens
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.has_permission("integrations"))
        .count();
    assert_eq!(admins, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_on_one_instance_are_enforced_on_the_other() {
    let redis = spawn_redis().await;
    let (_up, a, b) = two_instances(&redis, "changes:", "").await;
    let path = "/public/v1/agreements/x";
    let (id, key) = a.token(&["agreements"]).await;
    // Created on A, usable on B at once (B reads through on a miss).
    assert_eq!(get(&b.url(path), Some(&key)).await.status, 200);

    // disable → 401 AUTH_DISABLED on B; enable → 200 again.
    a.tokens
        .modify(id, &a.config, Timestamp::now(), |t| {
            t.disabled = true;
            Ok(())
        })
        .await
        .unwrap();
    assert!(status_becomes(&b, path, &key, StatusCode::UNAUTHORIZED, PROPAGATION).await);
    assert_eq!(get(&b.url(path), Some(&key)).await.code(), "AUTH_DISABLED");
    a.tokens
        .modify(id, &a.config, Timestamp::now(), |t| {
            t.disabled = false;
            Ok(())
        })
        .await
        .unwrap();
    assert!(status_becomes(&b, path, &key, StatusCode::OK, PROPAGATION).await);

    // permission change → 403 on B.
    a.tokens
        .modify(id, &a.config, Timestamp::now(), |t| {
            t.permissions = vec!["billing".into()];
            Ok(())
        })
        .await
        .unwrap();
    assert!(status_becomes(&b, path, &key, StatusCode::FORBIDDEN, PROPAGATION).await);
    assert!(
        status_becomes(
            &b,
            "/public/v1/billing/y",
            &key,
            StatusCode::OK,
            PROPAGATION
        )
        .await
    );

    // rotate (no grace period) → the old secret stops working on B, the new one works.
    let new_secret = Secret::generate();
    let new_hash = new_secret.hash();
    a.tokens
        .modify(id, &a.config, Timestamp::now(), |t| {
            t.secret_hash = new_hash;
            t.previous_secret = None;
            Ok(())
        })
        .await
        .unwrap();
    let new_key = format!("{id}:{}", new_secret.expose());
    let billing = "/public/v1/billing/y";
    assert!(status_becomes(&b, billing, &key, StatusCode::UNAUTHORIZED, PROPAGATION).await);
    assert_eq!(get(&b.url(billing), Some(&new_key)).await.status, 200);

    // delete → 401 AUTH_INVALID on B.
    a.tokens.delete(id).await.unwrap();
    assert!(status_becomes(&b, billing, &new_key, StatusCode::UNAUTHORIZED, PROPAGATION).await);
    assert_eq!(
        get(&b.url(billing), Some(&new_key)).await.code(),
        "AUTH_INVALID"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_created_elsewhere_clears_the_negative_cache() {
    let redis = spawn_redis().await;
    let (_up, a, b) = two_instances(&redis, "negative:", "").await;
    let path = "/public/v1/agreements/x";
    // B learns that this id is unknown (and remembers it for NEGATIVE_TTL = 5 s).
    let secret = Secret::generate();
    let mut token = a
        .tokens
        .get(a.token(&["agreements"]).await.0)
        .await
        .unwrap();
    token.id = TokenId::random();
    token.secret_hash = secret.hash();
    let key = format!("{}:{}", token.id, secret.expose());
    assert_eq!(get(&b.url(path), Some(&key)).await.code(), "AUTH_INVALID");
    // Created through A's store with that id: B accepts it well before the 5 s.
    assert!(a.tokens.store().insert(&token).await.unwrap());
    assert!(status_becomes(&b, path, &key, StatusCode::OK, PROPAGATION).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_propagate_on_redis_cluster() {
    let redis = spawn_redis_cluster().await;
    let (_up, a, b) = two_instances(&redis, "cluster:", "").await;
    let path = "/public/v1/agreements/x";
    let (id, key) = a.token(&["agreements"]).await;
    assert_eq!(get(&b.url(path), Some(&key)).await.status, 200);
    a.tokens
        .modify(id, &a.config, Timestamp::now(), |t| {
            t.disabled = true;
            Ok(())
        })
        .await
        .unwrap();
    assert!(status_becomes(&b, path, &key, StatusCode::UNAUTHORIZED, PROPAGATION).await);
    // The token already answers 401 (disabled), so wait for the code to change:
    // the deletion reaches B asynchronously, over the cluster bus.
    a.tokens.delete(id).await.unwrap();
    assert!(code_becomes(&b, path, &key, "AUTH_INVALID", PROPAGATION).await);
}

/// Measures how long a disable/enable made through A takes to be enforced by B,
/// over 200 changes, by polling B without pause. Prints p50/p99/max.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn propagation_time_p50_p99() {
    let redis = spawn_redis().await;
    let (_up, a, b) = two_instances(&redis, "timing:", "").await;
    let path = "/public/v1/agreements/x";
    let (id, key) = a.token(&["agreements"]).await;
    let c = client();
    assert_eq!(get(&b.url(path), Some(&key)).await.status, 200);
    let mut times = Vec::new();
    for i in 0..200 {
        let disable = i % 2 == 0;
        a.tokens
            .modify(id, &a.config, Timestamp::now(), |t| {
                t.disabled = disable;
                Ok(())
            })
            .await
            .unwrap();
        let changed = Instant::now();
        let want = if disable { 401 } else { 200 };
        loop {
            let s = send(
                &c,
                Method::GET,
                &b.url(path),
                Some(&key),
                Default::default(),
            )
            .await
            .status;
            if s == want {
                break;
            }
            assert!(
                changed.elapsed() < PROPAGATION,
                "change {i} not seen within 1 s"
            );
        }
        times.push(changed.elapsed());
    }
    times.sort();
    let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    println!(
        "propagation over {} changes: p50 {:?}, p99 {:?}, max {:?}",
        times.len(),
        pct(50),
        pct(99),
        times[times.len() - 1]
    );
}

/// Statuses the load asks the upstream for: one per class, 2xx to 5xx.
const CLASS_STATUSES: [u16; 4] = [200, 302, 404, 500];

/// Client tasks sending requests with cached tokens without pause (2 ms between
/// requests per task), round-robin over gateways, tokens and status classes, counting
/// every answer by (token, class) and every unexpected one as failed.
struct Load {
    stop: Arc<AtomicBool>,
    /// `sent[token][class]`: answered with the expected status.
    sent: Arc<Vec<[AtomicU64; 4]>>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(bases: &[String], path: &str, keys: &[String], tasks: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent: Arc<Vec<[AtomicU64; 4]>> =
            Arc::new(keys.iter().map(|_| Default::default()).collect());
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..tasks)
            .map(|t| {
                let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
                let (bases, keys, path) = (bases.to_vec(), keys.to_vec(), path.to_string());
                tokio::spawn(async move {
                    let c = client();
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        let base = &bases[i % bases.len()];
                        let k = (i / bases.len()) % keys.len();
                        let class = (i / bases.len() / keys.len()) % 4;
                        i += 1;
                        let want = CLASS_STATUSES[class];
                        let url = format!("{base}{path}?status={want}");
                        let got = send(&c, Method::GET, &url, Some(&keys[k]), Default::default())
                            .await
                            .status;
                        if got.as_u16() == want {
                            sent[k][class].fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("load: {url} answered {got}, wanted {want}");
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            tasks,
        }
    }

    /// Answers counted so far (expected status).
    fn total(&self) -> u64 {
        self.sent
            .iter()
            .flat_map(|c| c.iter().map(|n| n.load(Ordering::Relaxed)))
            .sum()
    }

    /// Waits until `n` more requests than now have been answered as expected.
    async fn wait_for_more(&self, n: u64) {
        let want = self.total() + n;
        assert!(
            eventually(Duration::from_secs(20), async || self.total() >= want).await,
            "the load stalled at {} answers, wanted {want}",
            self.total()
        );
    }

    /// Stops the clients; returns `sent[token][class]` and the number failed.
    async fn finish(self) -> (Vec<[u64; 4]>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let sent = self
            .sent
            .iter()
            .map(|c| c.each_ref().map(|n| n.load(Ordering::Relaxed)))
            .collect();
        (sent, self.failed.load(Ordering::Relaxed))
    }
}

/// Yesterday and today (UTC) as day numbers, so a run across midnight still adds up.
fn two_days() -> (i32, i32) {
    let today = keygate::stats::day_of(Timestamp::now().as_second());
    (today - 1, today)
}

/// A token's counts in the store over [`two_days`], summed per class.
async fn stored_counts(gw: &TestGateway, id: TokenId) -> [u64; 4] {
    let (from, to) = two_days();
    let mut sum = [0u64; 4];
    for (_, c) in gw.shared.store.counts(id, from, to).await.unwrap() {
        for (s, n) in sum.iter_mut().zip(c) {
            *s += n;
        }
    }
    sum
}

/// Waits until the store holds exactly `want` for every token and no instance holds
/// counts still to be written (a retried batch that could arrive late), then checks
/// that the store still holds exactly `want`.
async fn assert_counts_settle(gws: &[&TestGateway], ids: &[TokenId], want: &[[u64; 4]]) {
    let gw = gws[0];
    let mut got = Vec::new();
    let settled = eventually(Duration::from_secs(10), async || {
        got.clear();
        for id in ids {
            got.push(stored_counts(gw, *id).await);
        }
        got == want
    })
    .await;
    assert!(settled, "store counts {got:?}, requests sent {want:?}");
    assert!(
        eventually(Duration::from_secs(10), async || gws.iter().all(|g| g
            .shared
            .stats
            .unflushed()
            == 0))
        .await,
        "counts left unflushed"
    );
    for (id, want) in ids.iter().zip(want) {
        assert_eq!(&stored_counts(gw, *id).await, want, "{id} changed later");
    }
}

/// `keygate_store_up` from one scrape, and how long the scrape took.
async fn scrape_store_up(gw: &TestGateway) -> (String, Duration) {
    let started = Instant::now();
    let text = get(&gw.admin_url("/metrics"), None).await.text();
    let took = started.elapsed();
    let line = text
        .lines()
        .find(|l| l.starts_with("keygate_store_up "))
        .unwrap_or("keygate_store_up missing")
        .to_string();
    (line, took)
}

/// Two instances under steady load with cached tokens; Redis is SIGKILLed mid-load
/// and restarted on the same port 2 s later. No request with a cached token fails,
/// `/readyz` and `keygate_store_up` follow the outage, and after the counts kept in
/// memory are flushed the store's day counters equal the requests sent, per token and
/// class, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_keeps_cached_tokens_working_and_counts_exact() {
    let mut redis = spawn_redis().await;
    let (_up, a, b) = two_instances_with(&redis, "outage:", "", FAST_FLUSH).await;
    let path = "/public/v1/agreements/x";
    let (mut ids, mut keys) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        let (id, key) = a.token(&["agreements"]).await;
        ids.push(id);
        keys.push(key);
    }
    // A token that exists in Redis but is in neither cache.
    let (_, unseen_key) = b.token(&["agreements"]).await;
    // Warm both caches through the load itself (its first requests are counted too).
    let bases = [a.url(""), b.url("")];
    let load = Load::start(&bases, path, &keys, 4);
    // Every (instance, token) pair answered at least once: both caches are warm.
    load.wait_for_more(4 * (bases.len() * keys.len()) as u64)
        .await;

    redis.kill();
    let killed = Instant::now();
    // While down: /readyz 503 and keygate_store_up 0 on both, scrapes answer within
    // the store's deadline, unknown tokens get 503 STORE_UNAVAILABLE.
    for gw in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(3), async || {
                get(&gw.admin_url("/readyz"), None).await.status == 503
            })
            .await
        );
        let (line, took) = scrape_store_up(gw).await;
        println!("outage: scrape while down took {took:?}: {line}");
        assert_eq!(line, "keygate_store_up 0");
        // The store's deadline (1 s) plus slack: a scrape never hangs on a dead Redis.
        assert!(took < Duration::from_secs(2), "scrape took {took:?}");
    }
    let a503 = get(&a.url(path), Some(&unseen_key)).await;
    assert_eq!(a503.status, 503);
    assert_eq!(a503.code(), "STORE_UNAVAILABLE");
    // Keep Redis down until both instances failed a flush (their counts are kept in
    // memory) while the load goes on with cached tokens.
    let failed_flushes = |gw: &TestGateway| gw.shared.metrics.flush_errors.get();
    let before = (failed_flushes(&a), failed_flushes(&b));
    assert!(
        eventually(Duration::from_secs(10), async || failed_flushes(&a)
            > before.0
            && failed_flushes(&b) > before.1)
        .await,
        "no flush failed while Redis was down"
    );
    load.wait_for_more(100).await;
    println!("outage: Redis down for {:?}", killed.elapsed());
    redis.restart().await;
    for gw in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(5), async || {
                get(&gw.admin_url("/readyz"), None).await.status == 200
            })
            .await
        );
        assert!(
            eventually(Duration::from_secs(5), async || {
                scrape_store_up(gw).await.0 == "keygate_store_up 1"
            })
            .await
        );
    }
    assert!(
        eventually(Duration::from_secs(5), async || {
            get(&a.url(path), Some(&unseen_key)).await.status == 200
        })
        .await
    );
    // And some more once it is back.
    load.wait_for_more(100).await;
    let (sent, failed) = load.finish().await;
    let total: u64 = sent.iter().flatten().sum();
    println!("outage: {total} requests with cached tokens ({sent:?}), {failed} failed");
    assert!(total > 200, "the load ran ({total})");
    assert_eq!(failed, 0);

    assert_counts_settle(&[&a, &b], &ids, &sent).await;
    // The stats endpoint agrees, on either instance.
    let admin = if a.admin_key.is_empty() {
        &b.admin_key
    } else {
        &a.admin_key
    };
    for gw in [&a, &b] {
        for (id, want) in ids.iter().zip(&sent) {
            let s = admin_call(
                gw,
                Method::GET,
                &format!("/v1/tokens/{id}/stats?days=2"),
                Some(admin),
                "",
            )
            .await;
            assert_eq!(s.status, 200, "{}", s.text());
            let totals = &s.json()["totals"];
            let got = ["2xx", "3xx", "4xx", "5xx"].map(|c| totals[c].as_u64().unwrap());
            assert_eq!(&got, want, "{id} via the stats endpoint");
        }
        assert_eq!(gw.shared.metrics.stats_dropped.get(), 0);
        let text = get(&gw.admin_url("/metrics"), None).await.text();
        assert!(text.contains("\nkeygate_stats_dropped_total 0\n"), "{text}");
    }
    println!(
        "outage: flush errors A {}, B {}",
        a.shared.metrics.flush_errors.get(),
        b.shared.metrics.flush_errors.get()
    );
}

/// Redis stalls (DEBUG SLEEP) past the store deadline while flushes are in flight:
/// the flush fails on our side, but Redis runs the queued script when it wakes. The
/// retry of that batch must not count it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flush_whose_answer_is_lost_is_not_counted_twice() {
    let redis = spawn_redis().await;
    let (_up, a, b) = two_instances_with(&redis, "lost:", "", FAST_FLUSH).await;
    let path = "/public/v1/agreements/x";
    let (mut ids, mut keys) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let (id, key) = a.token(&["agreements"]).await;
        ids.push(id);
        keys.push(key);
    }
    let load = Load::start(&[a.url(""), b.url("")], path, &keys, 2);
    load.wait_for_more(100).await;
    let flush_errors = || a.shared.metrics.flush_errors.get() + b.shared.metrics.flush_errors.get();
    let errors_before = flush_errors();
    let port = redis.ports[0];
    let sleeper = tokio::spawn(async move { redis_raw(port, "DEBUG SLEEP 2.5").await });
    assert!(redis_asleep(port).await, "DEBUG SLEEP did not start");
    // A flush runs into the stall (the store's deadline is shorter than the sleep).
    assert!(
        eventually(Duration::from_secs(10), async || flush_errors()
            > errors_before)
        .await,
        "no flush ran into the stall"
    );
    let _ = sleeper.await;
    // The sleeper's client may give up before Redis wakes: wait until it answers.
    assert!(
        eventually(Duration::from_secs(10), async || redis_raw(port, "PING")
            .await
            .is_some_and(|r| r.contains("PONG")))
        .await,
        "Redis did not wake up"
    );
    load.wait_for_more(100).await;
    let (sent, failed) = load.finish().await;
    let errors = flush_errors() - errors_before;
    let total: u64 = sent.iter().flatten().sum();
    println!("lost answers: {total} requests, {failed} failed, {errors} flushes timed out");
    assert_eq!(failed, 0);
    assert!(errors > 0, "a flush ran into the stall");
    assert_counts_settle(&[&a, &b], &ids, &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_tokens_stop_working_after_max_stale() {
    let mut redis = spawn_redis().await;
    let (_up, a, _b) = two_instances(&redis, "stale:", "max_stale = \"1s\"").await;
    let path = "/public/v1/agreements/x";
    let (_, key) = a.token(&["agreements"]).await;
    assert_eq!(get(&a.url(path), Some(&key)).await.status, 200);
    redis.kill();
    assert!(
        status_becomes(
            &a,
            path,
            &key,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(5)
        )
        .await
    );
    assert_eq!(
        get(&a.url(path), Some(&key)).await.code(),
        "STORE_UNAVAILABLE"
    );
    redis.restart().await;
    assert!(status_becomes(&a, path, &key, StatusCode::OK, Duration::from_secs(5)).await);
}

/// Redis stops answering (DEBUG SLEEP): cached tokens are served without waiting, and a
/// miss is cut off by the store deadline (503) instead of waiting for Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_redis_does_not_block_the_request_path() {
    let redis = spawn_redis().await;
    let (_up, a, b) = two_instances(&redis, "slow:", "").await;
    let path = "/public/v1/agreements/x";
    let (_, cached) = a.token(&["agreements"]).await;
    let (_, uncached) = b.token(&["agreements"]).await;
    assert_eq!(get(&a.url(path), Some(&cached)).await.status, 200);
    let port = redis.ports[0];
    let sleeper = tokio::spawn(async move { redis_raw(port, "DEBUG SLEEP 4").await });
    // Measure only once Redis really sleeps (a fixed sleep races a loaded machine).
    assert!(redis_asleep(port).await, "DEBUG SLEEP did not start");
    let started = Instant::now();
    assert_eq!(get(&a.url(path), Some(&cached)).await.status, 200);
    let hit = started.elapsed();
    let miss = get(&a.url(path), Some(&uncached)).await;
    // Redis wakes after 4 s; a 503 before that means the deadline cut the wait short.
    assert_eq!(miss.status, 503, "{}", miss.text());
    println!(
        "slow redis: cached token answered in {hit:?}, miss in {:?}",
        started.elapsed() - hit
    );
    let _ = sleeper.await;
    assert!(status_becomes(&a, path, &uncached, StatusCode::OK, Duration::from_secs(5)).await);
}

/// A bare cache on a Redis store (no gateway, so no health check or refresher).
async fn cache_on(redis: &TestRedis, prefix: &str) -> (Arc<TokenCache>, Store, Arc<Config>) {
    let store = RedisStore::open(&redis.url, prefix).await.unwrap();
    let config = Config::parse(
        &module_toml("a", &["/a"], "http://127.0.0.1:1", ""),
        std::path::Path::new("t.toml"),
        |_| None,
    )
    .unwrap();
    (
        Arc::new(TokenCache::new(false)),
        Store::Redis(Arc::new(store)),
        Arc::new(config),
    )
}

/// Regression (review #2): a cache miss whose every waiter was cancelled (client
/// hung up, h2 RST_STREAM) left its single-flight entry in the map for good, so random
/// ids grew memory without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_cache_misses_leave_no_inflight_entries() {
    let redis = spawn_redis().await;
    let (cache, store, config) = cache_on(&redis, "inflight:").await;
    let port = redis.ports[0];
    let sleeper = tokio::spawn(async move { redis_raw(port, "DEBUG SLEEP 2").await });
    assert!(redis_asleep(port).await, "DEBUG SLEEP did not start");
    let lookups: Vec<_> = (0..50)
        .map(|_| {
            let (cache, store, config) = (cache.clone(), store.clone(), config.clone());
            tokio::spawn(async move { cache.lookup(TokenId::random(), &store, &config).await })
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), async || cache.inflight_len() >= 40).await);
    for l in &lookups {
        l.abort();
    }
    for l in lookups {
        let _ = l.await;
    }
    assert_eq!(cache.inflight_len(), 0, "cancelled lookups left entries");
    let _ = sleeper.await;
}

/// Regression (review #4): one slow token read (an id made up by a client, during a
/// latency spike) marked the whole store down, so every uncached token got 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_token_read_does_not_mark_the_store_down() {
    let mut redis = spawn_redis().await;
    let (cache, store, config) = cache_on(&redis, "oneslow:").await;
    let port = redis.ports[0];
    let sleeper = tokio::spawn(async move { redis_raw(port, "DEBUG SLEEP 2").await });
    assert!(redis_asleep(port).await, "DEBUG SLEEP did not start");
    let miss = cache.lookup(TokenId::random(), &store, &config).await;
    assert!(matches!(miss, Lookup::Unavailable), "{miss:?}");
    assert!(
        store.accepts_reads(),
        "one failed read marked the store down"
    );
    let _ = sleeper.await;
    // The health check's PING still decides at once.
    redis.kill();
    assert!(store.ping().await.is_err());
    assert!(!store.accepts_reads());
}

/// Regression (review #4): every miss made its own store read, without bound; now at
/// most MAX_MISS_READS run at once and the rest answer Unavailable without asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_beyond_the_read_limit_do_not_reach_the_store() {
    let redis = spawn_redis().await;
    let (cache, store, config) = cache_on(&redis, "flood:").await;
    let port = redis.ports[0];
    assert!(redis_raw(port, "CONFIG RESETSTAT").await.is_some());
    let sleeper = tokio::spawn(async move { redis_raw(port, "DEBUG SLEEP 3").await });
    assert!(redis_asleep(port).await, "DEBUG SLEEP did not start");
    let extra = 60;
    let lookups: Vec<_> = (0..MAX_MISS_READS + extra)
        .map(|_| {
            let (cache, store, config) = (cache.clone(), store.clone(), config.clone());
            tokio::spawn(async move { cache.lookup(TokenId::random(), &store, &config).await })
        })
        .collect();
    for l in lookups {
        assert!(matches!(l.await.unwrap(), Lookup::Unavailable));
    }
    assert_eq!(cache.miss_reads_in_flight(), 0);
    let _ = sleeper.await;
    // Commands written while Redis slept run when it wakes; count the reads it got.
    let mut reads = 0;
    let counted = eventually(Duration::from_secs(5), async || {
        let stats = redis_raw(port, "INFO commandstats")
            .await
            .unwrap_or_default();
        reads = stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_hmget:calls="))
            .and_then(|l| l.split(',').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        reads > 0
    })
    .await;
    assert!(counted, "no HMGET reached Redis");
    assert!(
        reads <= MAX_MISS_READS,
        "{reads} store reads for {} concurrent misses",
        MAX_MISS_READS + extra
    );
}
