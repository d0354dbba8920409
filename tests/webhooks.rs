//! Events and signed webhooks (SPEC §9): a real recording receiver on 127.0.0.1:0, real
//! gateways (embedded store, or a real redis-server from the harness).

mod common;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(10);

/// One delivery as the receiver saw it.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: Bytes,
    /// The status the receiver answered.
    status: u16,
    arrived: std::time::Instant,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn ty(&self) -> String {
        self.json()["type"].as_str().unwrap_or("").to_string()
    }
    fn token_id(&self) -> String {
        self.json()["data"]["token"]["id"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// A recording webhook receiver: answers 200, or the statuses queued in `script` first;
/// `hang` makes it never answer.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    hang: Arc<std::sync::atomic::AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    fn on(listener: TcpListener) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop, mut stop_rx) = oneshot::channel::<()>();
        let (g, s, h) = (Arc::clone(&got), Arc::clone(&script), Arc::clone(&hang));
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = &mut stop_rx => break,
                };
                let (g, s, h) = (Arc::clone(&g), Arc::clone(&s), Arc::clone(&h));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (g, s, h) = (Arc::clone(&g), Arc::clone(&s), Arc::clone(&h));
                        async move {
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string()
                            };
                            let (id, timestamp, signature, content_type) = (
                                header("webhook-id"),
                                header("webhook-timestamp"),
                                header("webhook-signature"),
                                header("content-type"),
                            );
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            if h.load(std::sync::atomic::Ordering::SeqCst) {
                                std::future::pending::<()>().await;
                            }
                            let status = s.lock().unwrap().pop_front().unwrap_or(200);
                            g.lock().unwrap().push(Got {
                                id,
                                timestamp,
                                signature,
                                content_type,
                                body,
                                status,
                                arrived: std::time::Instant::now(),
                            });
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            got,
            script,
            hang,
            stop: Some(stop),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Deliveries answered 2xx.
    fn ok(&self) -> Vec<Got> {
        self.got().into_iter().filter(|g| g.status < 300).collect()
    }

    /// Types delivered (2xx) for one token, in order.
    fn types_of(&self, token: &str) -> Vec<String> {
        self.ok()
            .iter()
            .filter(|g| g.token_id() == token)
            .map(Got::ty)
            .collect()
    }

    async fn wait_for(&self, what: &str, f: impl Fn(&[Got]) -> bool) {
        let ok = eventually(WAIT, async || f(&self.ok())).await;
        assert!(
            ok,
            "{what}: got {:#?}",
            self.ok()
                .iter()
                .map(|g| (g.ty(), g.token_id()))
                .collect::<Vec<_>>()
        );
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn hook_toml(name: &str, url: &str, extra: &str) -> String {
    format!("\n[[webhooks]]\nname = {name:?}\nurl = {url:?}\nsecret = {SECRET:?}\n{extra}\n")
}

/// `[events]` with a short first retry, plus `extra`, and one module `a`.
fn base_toml(extra: &str) -> String {
    format!(
        "[events]\nfirst_retry = \"50ms\"\n{extra}\n{}",
        module_toml("a", &["/a"], "http://127.0.0.1:1", "")
    )
}

async fn call(gw: &TestGateway, method: Method, path: &str, body: &str) -> Answer {
    admin_call(gw, method, path, Some(&gw.admin_key), body).await
}

/// Creates a token with the bootstrap admin key; returns its id.
async fn create(gw: &TestGateway, body: &str) -> String {
    let body = serde_json::from_str(body).expect("test body is JSON");
    create_token(gw, &gw.admin_key, body).await.0
}

/// Verifies a delivery's signature with Python's hmac/hashlib/base64 (an implementation
/// independent of the gateway's).
fn python_verifies(g: &Got, body: &[u8]) -> bool {
    let script = r#"
import base64, hashlib, hmac, sys
secret, msg_id, ts, sig = sys.argv[1:5]
body = sys.stdin.buffer.read()
key = base64.b64decode(secret.split("_", 1)[1])
mac = hmac.new(key, msg_id.encode() + b"." + ts.encode() + b"." + body, hashlib.sha256).digest()
expected = "v1," + base64.b64encode(mac).decode()
sys.exit(0 if any(hmac.compare_digest(expected, s) for s in sig.split(" ")) else 1)
"#;
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, SECRET, &g.id, &g.timestamp, &g.signature])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(body).unwrap();
    child.wait().unwrap().success()
}

/// A sample of the gateway's metrics, read without HTTP (usable in sync closures).
fn rendered_metric(gw: &TestGateway, name_and_labels: &str) -> f64 {
    let (text, _) = gw.shared.metrics.render();
    let text = String::from_utf8(text).unwrap();
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Every admin change is an event, delivered in order, signed, with the payload of
/// SPEC §9; a second webhook with a glob gets only its types, under other ids.
#[tokio::test]
async fn every_change_is_delivered_signed_and_in_order() {
    let all = Receiver::start().await;
    let some = Receiver::start().await;
    let toml = base_toml("")
        + &hook_toml("all", &all.url(), "")
        + &hook_toml("some", &some.url(), "events = [\"token.d*\"]");
    let gw = spawn_gateway(&toml).await;
    let admin = gw.admin_key.split(':').next().unwrap().to_string();

    // The bootstrap token's creation, by nobody.
    all.wait_for("bootstrap created", |g| {
        g.iter().any(|g| g.token_id() == admin)
    })
    .await;
    let boot = all
        .ok()
        .into_iter()
        .find(|g| g.token_id() == admin)
        .unwrap();
    assert_eq!(boot.ty(), "token.created");
    assert_eq!(boot.json()["data"]["actor"], Value::Null);

    let id = create(
        &gw,
        r#"{"name": "hooked", "permissions": ["a"], "expires_in": "1h"}"#,
    )
    .await;
    let p = |s: &str| format!("/v1/tokens/{id}{s}");
    for (m, path, body) in [
        (Method::PATCH, p(""), r#"{"name": "renamed"}"#),
        (Method::PATCH, p(""), r#"{"name": "renamed"}"#), // no change: no event
        (Method::POST, p("/disable"), ""),
        (Method::POST, p("/enable"), ""),
        (Method::POST, p("/rotate"), ""),
        (Method::POST, p("/renew"), r#"{"expires_in": "30d"}"#),
    ] {
        let a = call(&gw, m, &path, body).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
    }
    assert_eq!(call(&gw, Method::DELETE, &p(""), "").await.status, 204);

    let expected = [
        "token.created",
        "token.expiring", // created 1h before expiry, within the default 7d
        "token.updated",
        "token.disabled",
        "token.enabled",
        "token.rotated",
        "token.renewed",
        "token.deleted",
    ];
    all.wait_for("every event", |g| {
        g.iter().filter(|g| g.token_id() == id).count() >= expected.len()
    })
    .await;
    assert_eq!(all.types_of(&id), expected);
    some.wait_for("globbed events", |g| g.len() >= 2).await;
    assert_eq!(some.types_of(&id), ["token.disabled", "token.deleted"]);
    // The bootstrap token's creation did not match "token.d*".
    assert!(some.ok().iter().all(|g| g.token_id() == id));

    let mine: Vec<Got> = all
        .ok()
        .into_iter()
        .filter(|g| g.token_id() == id)
        .collect();
    for g in &mine {
        assert_eq!(g.content_type, "application/json");
        assert!(g.id.starts_with("msg_"), "{}", g.id);
        let j = g.json();
        assert_eq!(j.as_object().unwrap().len(), 3, "{j}");
        assert!(j["timestamp"].as_str().unwrap().ends_with('Z'));
        // token.expiring is raised by the gateway itself.
        let actor = if g.ty() == "token.expiring" {
            Value::Null
        } else {
            Value::from(admin.as_str())
        };
        assert_eq!(j["data"]["actor"], actor, "{}", g.ty());
        let token = j["data"]["token"].as_object().unwrap();
        assert!(!token.contains_key("api_key"), "{j}");
        assert!(!token.contains_key("secret_hash"), "{j}");
        assert!(token.contains_key("status") && token.contains_key("permissions"));
        assert!(python_verifies(g, &g.body), "signature of {}", g.ty());
    }
    // The payload shows the token as it was at each event.
    assert_eq!(mine[3].json()["data"]["token"]["status"], "disabled");
    assert_eq!(mine[4].json()["data"]["token"]["status"], "active");
    assert_eq!(mine[2].json()["data"]["token"]["name"], "renamed");
    // A tampered body fails the same independent check.
    let mut tampered = mine[0].body.to_vec();
    let at = tampered.iter().position(|b| *b == b'h').unwrap();
    tampered[at] = b'H';
    assert!(!python_verifies(&mine[0], &tampered));
    // One id per event and webhook.
    let mut ids: Vec<&str> = mine.iter().map(|g| g.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), mine.len());
    let other_ids: Vec<String> = some.ok().iter().map(|g| g.id.clone()).collect();
    assert!(other_ids.iter().all(|i| !ids.contains(&i.as_str())));

    // The audit log shows the same events.
    let log = call(&gw, Method::GET, &p("/events"), "").await.json();
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "created", "expiring", "updated", "disabled", "enabled", "rotated", "renewed",
            "deleted"
        ]
    );
    assert_eq!(
        rendered_metric(
            &gw,
            "keygate_webhook_deliveries_total{result=\"ok\",webhook=\"some\"}"
        ),
        2.0
    );
    let pending_zero = eventually(WAIT, async || {
        rendered_metric(&gw, "keygate_webhook_pending{webhook=\"all\"}") == 0.0
    })
    .await;
    assert!(pending_zero);
    gw.stop().await;
}

/// Failed deliveries (500s) are retried with the same `webhook-id`; a later event of the
/// same token waits for the earlier one; `retry` and `ok` are counted.
#[tokio::test]
async fn retries_after_500s_keep_the_id_and_the_order() {
    let r = Receiver::start().await;
    let toml = base_toml("")
        + &hook_toml(
            "r",
            &r.url(),
            "events = [\"token.created\", \"token.disabled\"]",
        );
    let gw = spawn_gateway(&toml).await;
    let admin = gw.admin_key.split(':').next().unwrap().to_string();
    r.wait_for("bootstrap", |g| !g.is_empty()).await;

    r.script.lock().unwrap().extend([500, 503, 500]);
    let id = create(&gw, r#"{"name": "x", "permissions": ["a"]}"#).await;
    assert_eq!(
        call(&gw, Method::POST, &format!("/v1/tokens/{id}/disable"), "")
            .await
            .status,
        200
    );
    r.wait_for("both events", |g| {
        g.iter().filter(|g| g.token_id() == id).count() == 2
    })
    .await;
    let mine: Vec<Got> = r.got().into_iter().filter(|g| g.token_id() == id).collect();
    let statuses: Vec<u16> = mine.iter().map(|g| g.status).collect();
    assert_eq!(statuses, [500, 503, 500, 200, 200]);
    let types: Vec<String> = mine.iter().map(Got::ty).collect();
    assert_eq!(
        types[..4],
        ["token.created"; 4],
        "the disable overtook a retried create"
    );
    assert_eq!(types[4], "token.disabled");
    assert!(
        mine[..4].iter().all(|g| g.id == mine[0].id),
        "id changed between retries"
    );
    assert_ne!(mine[4].id, mine[0].id);
    // Each attempt is signed afresh (its own timestamp) and verifies.
    assert!(mine.iter().all(|g| python_verifies(g, &g.body)));
    assert_eq!(
        rendered_metric(
            &gw,
            "keygate_webhook_deliveries_total{result=\"retry\",webhook=\"r\"}"
        ),
        3.0
    );
    // Counted once the answer is back, a moment after the receiver recorded it.
    let ok = eventually(WAIT, async || {
        rendered_metric(
            &gw,
            "keygate_webhook_deliveries_total{result=\"ok\",webhook=\"r\"}",
        ) == 3.0
    })
    .await;
    assert!(ok);
    assert!(r.ok().iter().any(|g| g.token_id() == admin));
    gw.stop().await;
}

/// A receiver that never answers delays neither the other webhook nor the admin API;
/// an event not delivered within `retry_for` is dropped and counted.
#[tokio::test]
async fn a_dead_receiver_blocks_nobody_and_its_events_are_dropped() {
    let dead = Receiver::start().await;
    dead.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    let live = Receiver::start().await;
    let toml = base_toml("")
        + &hook_toml(
            "dead",
            &dead.url(),
            "timeout = \"300ms\"\nretry_for = \"1s\"",
        )
        + &hook_toml("live", &live.url(), "");
    let gw = spawn_gateway(&toml).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(create(&gw, &format!(r#"{{"name": "t{i}", "permissions": ["a"]}}"#)).await);
    }
    live.wait_for("every create", |g| {
        ids.iter().all(|id| g.iter().any(|g| &g.token_id() == id))
    })
    .await;
    // 21 events (20 + bootstrap), each dropped after ~1s of timeouts and retries.
    let dropped = eventually(WAIT, async || {
        rendered_metric(
            &gw,
            "keygate_webhook_deliveries_total{result=\"dropped\",webhook=\"dead\"}",
        ) == 21.0
    })
    .await;
    assert!(
        dropped,
        "dropped: {}",
        rendered_metric(
            &gw,
            "keygate_webhook_deliveries_total{result=\"dropped\",webhook=\"dead\"}"
        )
    );
    assert!(dead.ok().is_empty());
    gw.stop().await;
}

/// Events written while the receiver is down are delivered after a restart of the
/// gateway, with the receiver back on the same address.
#[tokio::test]
async fn pending_deliveries_survive_a_restart() {
    // Reserve a port, then leave it closed: the receiver is down.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let toml = base_toml("") + &hook_toml("r", &url, "");
    let gw = spawn_gateway(&toml).await;
    let id = create(&gw, r#"{"name": "x", "permissions": ["a"]}"#).await;
    assert_eq!(
        call(&gw, Method::POST, &format!("/v1/tokens/{id}/disable"), "")
            .await
            .status,
        200
    );
    let retried = eventually(WAIT, async || {
        rendered_metric(
            &gw,
            "keygate_webhook_deliveries_total{result=\"retry\",webhook=\"r\"}",
        ) >= 2.0
    })
    .await;
    assert!(retried);
    let dir = gw.stop_keep_dir().await;

    let r = Receiver::on(TcpListener::bind(("127.0.0.1", port)).await.unwrap());
    let gw = spawn_gateway_in(&toml, dir).await;
    r.wait_for("events after the restart", |g| {
        g.iter().filter(|g| g.token_id() == id).count() == 2
    })
    .await;
    assert_eq!(r.types_of(&id), ["token.created", "token.disabled"]);
    // Only the bootstrap token's creation besides (no event twice).
    assert_eq!(
        r.ok().len(),
        3,
        "{:?}",
        r.ok().iter().map(Got::ty).collect::<Vec<_>>()
    );
    gw.stop().await;
}

/// `token.expiring` when the remaining validity drops below `expiring_before` (or at
/// create), `token.expired` after the expiry, once each; a renew arms both again.
#[tokio::test]
async fn expiring_and_expired_are_raised_once_and_rearmed_by_renew() {
    let r = Receiver::start().await;
    let toml = base_toml("expiring_before = \"2s\"\nscan_interval = \"100ms\"")
        + &hook_toml("r", &r.url(), "events = [\"token.*\"]");
    let gw = spawn_gateway(&toml).await;
    let id = create(
        &gw,
        r#"{"name": "x", "permissions": ["a"], "expires_in": "3s"}"#,
    )
    .await;
    r.wait_for("expired", |g| {
        g.iter()
            .any(|g| g.token_id() == id && g.ty() == "token.expired")
    })
    .await;
    // A few more scans: nothing new.
    let scans = gw.shared.metrics.render().0.len();
    let _ = scans;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        r.types_of(&id),
        ["token.created", "token.expiring", "token.expired"]
    );
    let expired = r
        .ok()
        .into_iter()
        .find(|g| g.ty() == "token.expired")
        .unwrap();
    assert_eq!(expired.json()["data"]["token"]["status"], "expired");
    assert_eq!(expired.json()["data"]["actor"], Value::Null);

    let a = call(
        &gw,
        Method::POST,
        &format!("/v1/tokens/{id}/renew"),
        r#"{"expires_in": "2s"}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    r.wait_for("expired again", |g| {
        g.iter()
            .filter(|g| g.token_id() == id && g.ty() == "token.expired")
            .count()
            == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        r.types_of(&id),
        [
            "token.created",
            "token.expiring",
            "token.expired",
            "token.renewed",
            "token.expiring",
            "token.expired"
        ]
    );
    gw.stop().await;
}

/// `token.quota_exceeded` once per token and quota period.
#[tokio::test]
async fn quota_exceeded_is_raised_once_per_period() {
    let r = Receiver::start().await;
    let toml = base_toml("") + &hook_toml("r", &r.url(), "events = [\"token.quota_exceeded\"]");
    let gw = spawn_gateway(&toml).await;
    let id = create(&gw, r#"{"name": "x", "permissions": ["a"]}"#).await;
    let tid: keygate::token::TokenId = id.parse().unwrap();
    let store = &gw.shared.store;
    let day = jiff::Timestamp::from_second(1_790_000_000).unwrap();
    let next = jiff::Timestamp::from_second(1_790_086_400).unwrap();
    let now = jiff::Timestamp::now();
    assert!(
        keygate::events::quota_exceeded(store, tid, day, now)
            .await
            .unwrap()
    );
    assert!(
        !keygate::events::quota_exceeded(store, tid, day, now)
            .await
            .unwrap()
    );
    assert!(
        keygate::events::quota_exceeded(store, tid, next, now)
            .await
            .unwrap()
    );
    assert!(
        !keygate::events::quota_exceeded(store, tid, next, now)
            .await
            .unwrap()
    );
    r.wait_for("two", |g| g.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.types_of(&id), ["token.quota_exceeded"; 2]);
    gw.stop().await;
}

/// SIGHUP reload swaps the webhook list: a webhook added gets events from then on.
#[tokio::test]
async fn reload_swaps_the_webhook_list() {
    let first = Receiver::start().await;
    let second = Receiver::start().await;
    let gw = spawn_gateway(&(base_toml("") + &hook_toml("first", &first.url(), ""))).await;
    let a = create(&gw, r#"{"name": "a", "permissions": ["a"]}"#).await;
    first
        .wait_for("a", |g| g.iter().any(|g| g.token_id() == a))
        .await;
    gw.write_config(&(base_toml("") + &hook_toml("second", &second.url(), "")));
    gw.reload.reload().await.unwrap();
    let b = create(&gw, r#"{"name": "b", "permissions": ["a"]}"#).await;
    second
        .wait_for("b", |g| g.iter().any(|g| g.token_id() == b))
        .await;
    // Events from before it was configured are not sent to the new webhook.
    assert!(second.ok().iter().all(|g| g.token_id() == b));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(first.ok().iter().all(|g| g.token_id() != b));
    // A bad webhook in the file is refused; the running list stays.
    gw.write_config(&(base_toml("") + &hook_toml("bad", "http://example.com/x", "")));
    assert!(gw.reload.reload().await.is_err());
    let c = create(&gw, r#"{"name": "c", "permissions": ["a"]}"#).await;
    second
        .wait_for("c", |g| g.iter().any(|g| g.token_id() == c))
        .await;
    gw.stop().await;
}

/// Two instances on one Redis: each event reaches the webhook once, and the expiry
/// events and quota_exceeded are raised once between them.
#[tokio::test]
async fn two_instances_on_one_redis_deliver_each_event_once() {
    let redis = spawn_redis().await;
    let r = Receiver::start().await;
    let toml = redis_store_toml(&redis, "hooks:", "")
        + &base_toml("expiring_before = \"5s\"\nscan_interval = \"50ms\"")
        + &hook_toml("r", &r.url(), "");
    let a = spawn_gateway(&toml).await;
    let b = spawn_gateway(&toml).await;
    let key = if a.admin_key.is_empty() {
        &b.admin_key
    } else {
        &a.admin_key
    };
    let mut ids = Vec::new();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let body = format!(r#"{{"name": "t{i}", "permissions": ["a"], "expires_in": "2s"}}"#);
        let ans = admin_call(gw, Method::POST, "/v1/tokens", Some(key), &body).await;
        assert_eq!(ans.status, 201, "{}", ans.text());
        let id = ans.json()["id"].as_str().unwrap().to_string();
        let other = if i % 2 == 0 { &b } else { &a };
        let path = format!("/v1/tokens/{id}/disable");
        assert_eq!(
            admin_call(other, Method::POST, &path, Some(key), "")
                .await
                .status,
            200
        );
        ids.push(id);
    }
    // quota_exceeded from both at once.
    let tid: keygate::token::TokenId = ids[0].parse().unwrap();
    let period = jiff::Timestamp::from_second(1_790_000_000).unwrap();
    let now = jiff::Timestamp::now();
    let (x, y) = tokio::join!(
        keygate::events::quota_exceeded(&a.shared.store, tid, period, now),
        keygate::events::quota_exceeded(&b.shared.store, tid, period, now)
    );
    assert!(x.unwrap() ^ y.unwrap(), "raised by both or neither");

    r.wait_for("every token expired", |g| {
        ids.iter().all(|id| {
            g.iter()
                .any(|g| &g.token_id() == id && g.ty() == "token.expired")
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = r.ok();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for g in &got {
        *seen.entry(g.id.as_str()).or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "delivered twice: {seen:?}");
    for (i, id) in ids.iter().enumerate() {
        let types = r.types_of(id);
        let quota = types
            .iter()
            .filter(|t| *t == "token.quota_exceeded")
            .count();
        assert_eq!(quota, usize::from(i == 0), "token {id}: {types:?}");
        let rest: Vec<&String> = types
            .iter()
            .filter(|t| *t != "token.quota_exceeded")
            .collect();
        // Created within expiring_before of its expiry: expiring at once.
        assert_eq!(
            rest,
            [
                "token.created",
                "token.expiring",
                "token.disabled",
                "token.expired"
            ],
            "token {id}"
        );
    }
    a.stop().await;
    b.stop().await;
}

/// Bad `[events]` / `[[webhooks]]` settings stop start-up naming file, key and reason.
#[test]
fn config_errors_name_the_key() {
    let good = format!("name = \"w\"\nurl = \"https://h.example/x\"\nsecret = {SECRET:?}\n");
    let cases: Vec<(String, &str, &str)> = vec![
        ("[events]\nscan_interval = \"0s\"\n".into(), "events.scan_interval", "greater than zero"),
        ("[events]\nexpiring_before = \"soon\"\n".into(), "events.expiring_before", "number"),
        ("[events]\nbogus = 1\n".into(), "events.bogus", "unknown field"),
        (format!("[[webhooks]]\n{good}bogus = 1\n"), "webhooks[0].bogus", "unknown field"),
        (format!("[[webhooks]]\n{good}[[webhooks]]\n{good}"), "webhooks[1].name", "twice"),
        ("[[webhooks]]\nname = \"Bad Name\"\nurl = \"https://h/\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n".into(), "webhooks[0].name", "a-z"),
        (good.replace("https://h.example/x", "http://example.com/x").replace("name", "[[webhooks]]\nname"), "webhooks[0].url", "http:// only"),
        (good.replace("https://h.example/x", "not a url").replace("name", "[[webhooks]]\nname"), "webhooks[0].url", "not a URL"),
        (good.replace(SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").replace("name", "[[webhooks]]\nname"), "webhooks[0].secret", "whsec_"),
        (good.replace(SECRET, "whsec_c2hvcnQ=").replace("name", "[[webhooks]]\nname"), "webhooks[0].secret", "24 to 64"),
        (format!("[[webhooks]]\n{good}events = [\"user.*\"]\n"), "webhooks[0].events[0]", "matches no event type"),
        (format!("[[webhooks]]\n{good}events = []\n"), "webhooks[0].events", "at least one"),
        (format!("[[webhooks]]\n{good}timeout = \"1h\"\n"), "webhooks[0].timeout", "at most"),
        (format!("[[webhooks]]\n{good}retry_for = \"0s\"\n"), "webhooks[0].retry_for", "greater than zero"),
        ("[[webhooks]]\nname = \"w\"\n".into(), "webhooks[0]", "missing field"),
    ];
    for (text, key, reason) in cases {
        match keygate::config::Config::parse(&text, std::path::Path::new("k.toml"), |_| None) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => {
                assert_eq!(e.file, "k.toml");
                assert_eq!(e.key, key, "{text}\n{e}");
                assert!(e.reason.contains(reason), "{text}\n{e}");
                assert!(
                    !e.to_string().contains("MfKQ9r8GKYqrTwjUPD8IL"),
                    "secret in error: {e}"
                );
            }
        }
    }
}

/// Measurement, not a check: admin create latency and the time from the admin answer to
/// the delivery, embedded and Redis.
/// `cargo test --release --test webhooks measure_delivery_latency -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_delivery_latency() {
    let redis = spawn_redis().await;
    for backend in ["embedded", "redis"] {
        let r = Receiver::start().await;
        let store = if backend == "redis" {
            redis_store_toml(&redis, "m:", "")
        } else {
            String::new()
        };
        let gw = spawn_gateway(&(store + &base_toml("") + &hook_toml("r", &r.url(), ""))).await;
        r.wait_for("bootstrap", |g| !g.is_empty()).await;
        let n = 300;
        let mut answered = HashMap::new();
        let mut create_us = Vec::new();
        for i in 0..n {
            let t0 = std::time::Instant::now();
            let id = create(&gw, &format!(r#"{{"name": "m{i}", "permissions": ["a"]}}"#)).await;
            let t1 = std::time::Instant::now();
            create_us.push((t1 - t0).as_micros() as u64);
            answered.insert(id, t1);
        }
        r.wait_for("all", |g| g.len() > n).await;
        let mut lat: Vec<u64> = r
            .ok()
            .iter()
            .filter_map(|g| {
                let t = answered.get(&g.token_id())?;
                Some(g.arrived.saturating_duration_since(*t).as_micros() as u64)
            })
            .collect();
        lat.sort_unstable();
        create_us.sort_unstable();
        let pct = |v: &[u64], p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
        println!(
            "{backend}: {n} creates; create p50 {} us p99 {} us; answer->delivery p50 {} us p99 {} us",
            pct(&create_us, 50),
            pct(&create_us, 99),
            pct(&lat, 50),
            pct(&lat, 99)
        );
        gw.stop().await;
    }
}

/// The scan raises an expiry event once; scanning again, or after a restart (a fresh
/// memory), writes nothing: the marker is in the store.
#[tokio::test]
async fn scan_raises_each_expiry_event_once_across_restarts() {
    let gw = spawn_gateway(&base_toml("scan_interval = \"1h\"")).await;
    let now = jiff::Timestamp::now();
    let past = jiff::Timestamp::from_second(now.as_second() - 5).unwrap();
    let t = keygate::token::Token {
        expires_at: Some(past),
        ..keygate::token::Token::new(
            "old",
            &["a"],
            keygate::token::Secret::generate().hash(),
            past,
        )
    };
    assert!(gw.shared.store.insert(&t).await.unwrap());
    let store = &gw.shared.store;
    let week = Duration::from_secs(7 * 86_400);
    let mut raised = keygate::events::Raised::new();
    // The gateway's own scanner (its first pass at start) may get there first.
    let first = keygate::events::scan(store, week, now, &mut raised)
        .await
        .unwrap();
    assert!(first <= 1);
    assert_eq!(
        keygate::events::scan(store, week, now, &mut raised)
            .await
            .unwrap(),
        0
    );
    let mut fresh = keygate::events::Raised::new();
    assert_eq!(
        keygate::events::scan(store, week, now, &mut fresh)
            .await
            .unwrap(),
        0
    );
    assert_eq!(fresh.len(), 1, "a store-side duplicate is remembered too");
    let actions: Vec<String> = store
        .events(t.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["expired"]);
    gw.stop().await;
}

/// Through the proxy: the first request refused for the quota raises
/// `token.quota_exceeded`; further refusals in the same period raise nothing.
#[tokio::test]
async fn quota_exceeded_through_the_proxy_once_per_period() {
    let up = spawn_upstream().await;
    let r = Receiver::start().await;
    let toml = format!(
        "[events]\nfirst_retry = \"50ms\"\n{}",
        module_toml("a", &["/a"], &up.url(), "")
    ) + &hook_toml("r", &r.url(), "events = [\"token.quota_exceeded\"]");
    let gw = spawn_gateway(&toml).await;
    let a = call(
        &gw,
        Method::POST,
        "/v1/tokens",
        r#"{"name": "q", "permissions": ["a"], "quota": {"requests": 1, "period": "day"}}"#,
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let id = a.json()["id"].as_str().unwrap().to_string();
    let key = a.json()["api_key"].as_str().unwrap().to_string();
    assert_eq!(get(&gw.url("/a/x"), Some(&key)).await.status, 200);
    for _ in 0..3 {
        let a = get(&gw.url("/a/x"), Some(&key)).await;
        assert_eq!(
            (a.status.as_u16(), a.code()),
            (429, "QUOTA_EXCEEDED".to_string())
        );
    }
    r.wait_for("quota_exceeded", |g| !g.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.types_of(&id), ["token.quota_exceeded"]);
    let j = r.ok()[0].json();
    assert_eq!(j["data"]["actor"], Value::Null);
    gw.stop().await;
}
