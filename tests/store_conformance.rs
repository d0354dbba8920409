//! One suite of store behaviours, run against every backend: embedded (redb),
//! standalone Redis and a three-node Redis Cluster.

mod common;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use keygate::store::{
    BatchId, Bootstrapped, EmbeddedStore, Event, EventWrite, HookState, Once, RedisStore, Store,
    has_active_admin,
};
use keygate::token::{Secret, Token, TokenId};

fn token(permissions: &[&str]) -> Token {
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    Token {
        external_id: Some("ext-1".into()),
        ..Token::new("conformance", permissions, Secret::generate().hash(), now)
    }
}

async fn bootstrap_once_under_concurrency(store: &Store) {
    let calls = (0..10).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.insert_bootstrap(&token(&["all"])).await.unwrap() })
    });
    let mut created = 0;
    for c in calls {
        if c.await.unwrap() == Bootstrapped::Inserted {
            created += 1;
        }
    }
    assert_eq!(
        created, 1,
        "exactly one of 10 concurrent callers creates it"
    );
    let all = store.list().await.unwrap();
    assert_eq!(
        all.iter()
            .filter(|t| t.has_permission("integrations"))
            .count(),
        1
    );
    assert!(has_active_admin(&all, Timestamp::now()));
    assert_eq!(
        store.insert_bootstrap(&token(&["all"])).await.unwrap(),
        Bootstrapped::AdminExists
    );
}

/// Regression (review #12): the embedded bootstrap insert skipped `insert`'s id checks,
/// so a colliding random id overwrote a live token or reused a retired id.
async fn bootstrap_insert_never_reuses_a_live_or_retired_id(store: &Store) {
    let live = token(&["agreements"]);
    assert!(store.insert(&live).await.unwrap());
    let mut admin = token(&["all"]);
    admin.id = live.id;
    assert_eq!(
        store.insert_bootstrap(&admin).await.unwrap(),
        Bootstrapped::IdTaken
    );
    assert_eq!(store.get(live.id).await.unwrap(), Some(live.clone()));
    assert!(store.delete(live.id).await.unwrap());
    assert_eq!(
        store.insert_bootstrap(&admin).await.unwrap(),
        Bootstrapped::IdTaken,
        "a retired id"
    );
    assert_eq!(store.get(live.id).await.unwrap(), None);
}

async fn insert_get_list(store: &Store) {
    let t = token(&["agreements"]);
    assert!(store.insert(&t).await.unwrap());
    assert_eq!(store.get(t.id).await.unwrap(), Some(t.clone()));
    assert!(!store.insert(&t).await.unwrap(), "an id is inserted once");
    let other = token(&["agreements"]);
    assert!(store.insert(&other).await.unwrap());
    let ids: Vec<TokenId> = store.list().await.unwrap().iter().map(|t| t.id).collect();
    assert!(ids.contains(&t.id) && ids.contains(&other.id));
    let missing = TokenId::random();
    assert_eq!(store.get(missing).await.unwrap(), None);
}

async fn replace_is_compare_and_swap(store: &Store) {
    let mut t = token(&["agreements"]);
    assert!(store.insert(&t).await.unwrap());
    t.name = "renamed".into();
    t.version = 2;
    assert!(store.replace(&t, 1).await.unwrap());
    assert_eq!(store.get(t.id).await.unwrap().unwrap().name, "renamed");
    let mut stale = t.clone();
    stale.name = "lost edit".into();
    stale.version = 2;
    assert!(
        !store.replace(&stale, 1).await.unwrap(),
        "stale version refused"
    );
    assert_eq!(store.get(t.id).await.unwrap().unwrap().name, "renamed");
    let ghost = token(&["agreements"]);
    assert!(!store.replace(&ghost, 1).await.unwrap(), "missing token");
    // Concurrent edits from the same version: exactly one wins.
    let racers = (0..8).map(|i| {
        let store = store.clone();
        let mut t = t.clone();
        tokio::spawn(async move {
            t.name = format!("racer {i}");
            t.version = 3;
            store.replace(&t, 2).await.unwrap()
        })
    });
    let mut won = 0;
    for r in racers {
        if r.await.unwrap() {
            won += 1;
        }
    }
    assert_eq!(won, 1);
}

async fn delete_retires_the_id(store: &Store) {
    let t = token(&["agreements"]);
    assert!(store.insert(&t).await.unwrap());
    assert!(store.delete(t.id).await.unwrap());
    assert_eq!(store.get(t.id).await.unwrap(), None);
    assert!(!store.delete(t.id).await.unwrap());
    assert!(
        !store.insert(&t).await.unwrap(),
        "a deleted id is never reused"
    );
    let mut edited = t.clone();
    edited.version = 2;
    assert!(!store.replace(&edited, 1).await.unwrap());
    assert!(!store.list().await.unwrap().iter().any(|x| x.id == t.id));
    // Deleting an id that never existed retires it as well.
    let never = token(&["agreements"]);
    assert!(!store.delete(never.id).await.unwrap());
    assert!(!store.insert(&never).await.unwrap());
}

/// A delete that only happens if the stored version is still the one checked.
async fn delete_if_version_is_compare_and_swap(store: &Store) {
    let mut t = token(&["agreements"]);
    assert!(store.insert(&t).await.unwrap());
    assert!(!store.delete_if_version(t.id, 2).await.unwrap(), "newer");
    t.version = 2;
    assert!(store.replace(&t, 1).await.unwrap());
    assert!(!store.delete_if_version(t.id, 1).await.unwrap(), "stale");
    assert_eq!(store.get(t.id).await.unwrap(), Some(t.clone()));
    assert!(store.delete_if_version(t.id, 2).await.unwrap());
    assert_eq!(store.get(t.id).await.unwrap(), None);
    assert!(!store.list().await.unwrap().iter().any(|x| x.id == t.id));
    assert!(!store.delete_if_version(t.id, 2).await.unwrap(), "gone");
    assert!(
        !store.insert(&t).await.unwrap(),
        "a deleted id is never reused"
    );
    let never = token(&["agreements"]);
    assert!(!store.delete_if_version(never.id, 1).await.unwrap());
}

async fn counts_add_range_prune(store: &Store) {
    let (a, b) = (TokenId::random(), TokenId::random());
    let d = 20_000;
    assert!(store.add_counts(BatchId::random(), &[]).await.unwrap());
    store
        .add_counts(
            BatchId::random(),
            &[
                (a, d, [1, 2, 3, 4]),
                (a, d + 1, [1, 0, 0, 0]),
                (b, d, [5, 0, 0, 0]),
            ],
        )
        .await
        .unwrap();
    store
        .add_counts(BatchId::random(), &[(a, d, [1, 1, 1, 1])])
        .await
        .unwrap();
    assert_eq!(
        store.counts(a, d, d + 1).await.unwrap(),
        vec![(d, [2, 3, 4, 5]), (d + 1, [1, 0, 0, 0])]
    );
    assert_eq!(
        store.counts(a, d + 1, d + 9).await.unwrap(),
        vec![(d + 1, [1, 0, 0, 0])]
    );
    assert_eq!(store.counts(a, d + 2, d).await.unwrap(), vec![]);
    assert_eq!(
        store.counts(b, d, d).await.unwrap(),
        vec![(d, [5, 0, 0, 0])]
    );
    assert_eq!(
        store.counts(TokenId::random(), d, d + 1).await.unwrap(),
        vec![]
    );
    // Concurrent batches: each counted once.
    let adds = (0..10).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .add_counts(BatchId::random(), &[(b, d + 1, [1, 0, 0, 1])])
                .await
                .unwrap()
        })
    });
    for add in adds {
        add.await.unwrap();
    }
    assert_eq!(
        store.counts(b, d + 1, d + 1).await.unwrap(),
        vec![(d + 1, [10, 0, 0, 10])]
    );
    // Day d has two rows (a and b); they go, day d+1 stays.
    assert_eq!(store.prune_counts(d + 1).await.unwrap(), 2);
    assert_eq!(
        store.counts(a, d, d + 1).await.unwrap(),
        vec![(d + 1, [1, 0, 0, 0])]
    );
    assert_eq!(store.prune_counts(d + 1).await.unwrap(), 0);
}

/// A batch sent again under the same id (its first answer lost) counts once, even
/// when the resends race; another id with the same rows counts again.
async fn a_count_batch_counts_once(store: &Store) {
    let a = TokenId::random();
    let d = 20_100;
    let batch = BatchId::random();
    let rows = [(a, d, [1, 2, 3, 4]), (a, d + 1, [5, 0, 0, 0])];
    assert!(store.add_counts(batch, &rows).await.unwrap());
    assert!(!store.add_counts(batch, &rows).await.unwrap());
    let racing = BatchId::random();
    let sends = (0..10).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .add_counts(racing, &[(a, d, [1, 0, 0, 0])])
                .await
                .unwrap()
        })
    });
    let mut applied = 0;
    for s in sends {
        if s.await.unwrap() {
            applied += 1;
        }
    }
    assert_eq!(applied, 1, "exactly one of 10 concurrent resends applies");
    assert!(
        store
            .add_counts(BatchId::random(), &[(a, d, [1, 0, 0, 0])])
            .await
            .unwrap()
    );
    assert_eq!(
        store.counts(a, d, d + 1).await.unwrap(),
        vec![(d, [3, 2, 3, 4]), (d + 1, [5, 0, 0, 0])]
    );
    // Pruning old days does not forget recent batches.
    store.prune_counts(d).await.unwrap();
    assert!(!store.add_counts(batch, &rows).await.unwrap());
    assert_eq!(
        store.counts(a, d, d).await.unwrap(),
        vec![(d, [3, 2, 3, 4])]
    );
}

async fn last_used_keeps_the_latest(store: &Store) {
    let mut t = token(&["agreements"]);
    assert!(store.insert(&t).await.unwrap());
    let t1 = Timestamp::from_second(1_800_000_000).unwrap();
    let t0 = Timestamp::from_second(1_700_000_000).unwrap();
    let t2 = Timestamp::from_second(1_900_000_000).unwrap();
    store.set_last_used(&[(t.id, t1)]).await.unwrap();
    assert_eq!(
        store.get(t.id).await.unwrap().unwrap().last_used_at,
        Some(t1)
    );
    store.set_last_used(&[(t.id, t0)]).await.unwrap();
    assert_eq!(
        store.get(t.id).await.unwrap().unwrap().last_used_at,
        Some(t1)
    );
    // An edit does not clobber it.
    t.name = "edited".into();
    t.version = 2;
    assert!(store.replace(&t, 1).await.unwrap());
    assert_eq!(
        store.get(t.id).await.unwrap().unwrap().last_used_at,
        Some(t1)
    );
    store.set_last_used(&[(t.id, t2)]).await.unwrap();
    assert_eq!(
        store.get(t.id).await.unwrap().unwrap().last_used_at,
        Some(t2)
    );
    // Deleted tokens get no row, and that is no error.
    assert!(store.delete(t.id).await.unwrap());
    store
        .set_last_used(&[(t.id, t2), (TokenId::random(), t2)])
        .await
        .unwrap();
    assert_eq!(store.get(t.id).await.unwrap(), None);
}

fn ev(action: &str) -> EventWrite {
    EventWrite {
        event: Event {
            at: Timestamp::from_second(1_800_000_000).unwrap(),
            actor: TokenId::new(7),
            action: action.to_string(),
            fields: vec!["name".into()],
            id: format!("id-{action}"),
            token: Some(serde_json::json!({"name": action})),
        },
        once: None,
    }
}

fn once(action: &str, kind: &'static str, value: &str) -> EventWrite {
    EventWrite {
        once: Some(Once {
            kind,
            value: value.into(),
        }),
        ..ev(action)
    }
}

/// Events are written with the change (not without it), in order, once per marker,
/// and the webhook bookkeeping (pending index, state, lease, settle) works alike.
async fn events_with_changes(store: &Store) {
    let t = token(&["a"]);
    let id = t.id;
    assert!(store.insert_with(&t, &[ev("created")]).await.unwrap());
    // A lost compare-and-swap writes no event.
    let mut t2 = t.clone();
    t2.version = 2;
    assert!(!store.replace_with(&t2, 7, &[ev("lost")]).await.unwrap());
    assert!(
        store
            .replace_with(
                &t2,
                1,
                &[ev("updated"), once("expiring", "expiring", "100")]
            )
            .await
            .unwrap()
    );
    // Raised once per marker value; not for a stale version.
    assert_eq!(
        store
            .raise(id, Some(2), &[once("expiring", "expiring", "100")])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .raise(id, Some(1), &[once("expired", "expired", "100")])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .raise(id, Some(2), &[once("expired", "expired", "100")])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .raise(id, None, &[once("expiring", "expiring", "200")])
            .await
            .unwrap(),
        1
    );
    assert!(
        !store
            .delete_if_version_with(id, 1, &[ev("lost")])
            .await
            .unwrap()
    );
    assert!(
        store
            .delete_if_version_with(id, 2, &[ev("deleted")])
            .await
            .unwrap()
    );
    // Nothing is raised for a deleted token.
    assert_eq!(
        store
            .raise(id, None, &[ev("quota_exceeded")])
            .await
            .unwrap(),
        0
    );
    let actions: Vec<String> = store
        .events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            "created", "updated", "expiring", "expired", "expiring", "deleted"
        ]
    );
    assert_eq!(store.events(id).await.unwrap()[0], ev("created").event);
    assert_eq!(store.events(TokenId::random()).await.unwrap(), vec![]);

    // Delivery bookkeeping.
    assert!(
        store
            .pending(100)
            .await
            .unwrap()
            .iter()
            .any(|(i, _)| *i == id)
    );
    let (n, states) = store.hook_status(id).await.unwrap();
    assert_eq!((n, states.len()), (6, 0));
    let from = store.events_from(id, 4, 10).await.unwrap();
    assert_eq!(from.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [4, 5]);
    let ttl = Duration::from_secs(5);
    let st = store.hook_lease(id, "w", "me", ttl).await.unwrap().unwrap();
    assert_eq!(st, HookState::default());
    if !store.is_exclusive() {
        assert_eq!(store.hook_lease(id, "w", "other", ttl).await.unwrap(), None);
        assert!(!store.hook_save(id, "w", "other", ttl, st).await.unwrap());
    }
    assert!(
        !store
            .settle(id, &["w".into()], Duration::ZERO)
            .await
            .unwrap()
    );
    let done = HookState {
        cursor: 6,
        attempts: 0,
        next_at_ms: 0,
    };
    assert!(store.hook_save(id, "w", "me", ttl, done).await.unwrap());
    store.hook_release(id, "w", "me").await;
    assert_eq!(
        store.hook_status(id).await.unwrap().1,
        vec![("w".to_string(), done)]
    );
    assert!(
        !store
            .settle(id, &["w".into(), "v".into()], Duration::ZERO)
            .await
            .unwrap()
    );
    if !store.is_exclusive() {
        // Marked moments ago: kept for the grace period.
        assert!(
            !store
                .settle(id, &["w".into()], Duration::from_secs(60))
                .await
                .unwrap()
        );
    }
    assert!(
        store
            .settle(id, &["w".into()], Duration::ZERO)
            .await
            .unwrap()
    );
    assert!(
        !store
            .pending(100)
            .await
            .unwrap()
            .iter()
            .any(|(i, _)| *i == id)
    );
    let now = Timestamp::from_second(1_800_000_000).unwrap();
    let since = store.webhook_since("w", now).await.unwrap();
    assert_eq!(since, now);
    assert_eq!(
        store.webhook_since("w", Timestamp::now()).await.unwrap(),
        since
    );
}

/// The whole suite, on a fresh store.
async fn conformance(store: Store) {
    store.ping().await.unwrap();
    // Before any admin exists (afterwards the bootstrap insert stops at that check).
    bootstrap_insert_never_reuses_a_live_or_retired_id(&store).await;
    bootstrap_once_under_concurrency(&store).await;
    insert_get_list(&store).await;
    replace_is_compare_and_swap(&store).await;
    delete_retires_the_id(&store).await;
    delete_if_version_is_compare_and_swap(&store).await;
    counts_add_range_prune(&store).await;
    a_count_batch_counts_once(&store).await;
    last_used_keeps_the_latest(&store).await;
    events_with_changes(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("k.redb")).unwrap();
    conformance(Store::Embedded(Arc::new(store))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms() {
    let redis = common::spawn_redis().await;
    let store = RedisStore::open(&redis.url, "conformance:").await.unwrap();
    conformance(Store::Redis(Arc::new(store))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_conforms() {
    let redis = common::spawn_redis_cluster().await;
    let store = RedisStore::open(&redis.url, "conformance:").await.unwrap();
    conformance(Store::Redis(Arc::new(store))).await;
}

/// Redis stalls past the store deadline while a count batch is queued: the call fails
/// here, Redis applies the batch when it wakes, and sending it again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_batch_applied_after_its_deadline_counts_once() {
    let redis = common::spawn_redis().await;
    let store = Store::Redis(Arc::new(
        RedisStore::open(&redis.url, "late:").await.unwrap(),
    ));
    // One batch first, so Redis has the script cached and the stalled call is a plain
    // EVALSHA (on a fresh server it would be answered NOSCRIPT, never applied).
    assert!(
        store
            .add_counts(
                BatchId::random(),
                &[(TokenId::random(), 20_200, [1, 0, 0, 0])]
            )
            .await
            .unwrap()
    );
    let port = redis.ports[0];
    let sleeper = tokio::spawn(async move { common::redis_raw(port, "DEBUG SLEEP 2").await });
    assert!(
        common::redis_asleep(port).await,
        "DEBUG SLEEP did not start"
    );
    let (a, d) = (TokenId::random(), 20_200);
    let batch = BatchId::random();
    let rows = [(a, d, [7, 0, 0, 1])];
    assert!(
        store.add_counts(batch, &rows).await.is_err(),
        "cut off by the deadline"
    );
    let _ = sleeper.await;
    // Redis ran the queued script after waking; the resend is recognised.
    let mut resent = None;
    let ok = common::eventually(std::time::Duration::from_secs(5), async || {
        resent = store.add_counts(batch, &rows).await.ok();
        resent.is_some()
    })
    .await;
    assert!(ok);
    assert_eq!(
        resent,
        Some(false),
        "the first attempt was applied after all"
    );
    assert_eq!(
        store.counts(a, d, d).await.unwrap(),
        vec![(d, [7, 0, 0, 1])]
    );
    // The marker expires by itself, after a day.
    let ttl = common::redis_raw(port, &format!("TTL late:{{counts}}:batch:{batch}"))
        .await
        .unwrap();
    let ttl: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
    assert!((86_000..=86_400).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn redis_key_prefix_with_braces_is_refused() {
    let redis = common::spawn_redis().await;
    let err = RedisStore::open(&redis.url, "a{b}:").await.err().unwrap();
    assert!(err.to_string().contains("key_prefix"), "{err}");
}

#[tokio::test]
async fn unreachable_redis_fails_fast_at_start() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let r = RedisStore::open(&format!("redis://127.0.0.1:{port}"), "x:").await;
    assert!(r.is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
