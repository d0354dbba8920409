//! Hostile clients and broken inputs (issue #14): one regression test per fix, named
//! after it. Everything on real sockets on 127.0.0.x; other client addresses are
//! 127.0.0.2, 127.0.0.3 … (the whole 127/8 is loopback on Linux).

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// A TCP connection to `to` from the loopback address `from` (e.g. 127.0.0.2).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((from, 0))).unwrap();
    s.connect(to).await.unwrap()
}

/// Reads until the server closes or `wait` passes; the text read.
async fn read_answer(s: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the server closed `s` (EOF or reset) within `wait`, having sent nothing.
async fn closed_at_once(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn error_code(raw_answer: &str) -> String {
    let body = raw_answer.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error_code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A token's statistics totals (unflushed counts included).
async fn token_totals(gw: &TestGateway, id: keygate::token::TokenId) -> serde_json::Value {
    let a = admin_call(
        gw,
        Method::GET,
        &format!("/v1/tokens/{id}/stats?days=1"),
        Some(&gw.admin_key),
        "",
    )
    .await;
    a.json()["totals"].clone()
}

async fn gateway_with(proxy: &str, up: &TestUpstream, module_extra: &str) -> TestGateway {
    spawn_gateway(&format!(
        "[proxy]\n{proxy}\n{}",
        module_toml("alpha", &["/a"], &up.url(), module_extra)
    ))
    .await
}

// ---------------------------------------------------------------------------
// Item 1: the module timeout is the upstream's time, from the end of the body.

#[tokio::test]
async fn slow_upload_to_a_healthy_upstream_is_not_a_504() {
    let up = spawn_upstream().await;
    let gw = gateway_with("", &up, "timeout = \"1s\"").await;
    let (_, key) = gw.token(&["alpha"]).await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let body = b"0123456789";
    s.write_all(
        format!(
            "POST /a/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // 10 bytes over ~2.5 s: longer than the module's 1 s timeout.
    for b in body {
        s.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let answer = read_answer(&mut s, Duration::from_secs(10)).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(up.last().unwrap().body_len, 10);
    assert_eq!(
        metric(
            &gw,
            "keygate_upstream_errors_total{kind=\"timeout\",module=\"alpha\"}"
        )
        .await,
        0.0
    );
}

#[tokio::test]
async fn upstream_timeout_runs_from_the_end_of_the_body() {
    let up = spawn_upstream().await;
    let gw = gateway_with("", &up, "timeout = \"1s\"").await;
    let (_, key) = gw.token(&["alpha"]).await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(
        format!(
            "POST /a/x?sleep_ms=5000 HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {key}\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The body takes 1.5 s (longer than the timeout), then the upstream is slow.
    for b in b"abc" {
        s.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.write_all(b"d").await.unwrap();
    let body_done = Instant::now();
    let answer = read_answer(&mut s, Duration::from_secs(10)).await;
    assert_eq!(raw_status(&answer), 504, "{answer}");
    assert_eq!(error_code(&answer), "UPSTREAM_TIMEOUT");
    // Measured from the end of the body: not cut before the upstream had its second.
    assert!(body_done.elapsed() >= Duration::from_millis(900));
}

// ---------------------------------------------------------------------------
// Item 2: body_read_timeout, per-address limits, idle connections under pressure.

#[tokio::test]
async fn stalled_request_body_answers_408_req_timeout() {
    let up = spawn_upstream().await;
    let gw = gateway_with("body_read_timeout = \"500ms\"", &up, "").await;
    let (id, key) = gw.token(&["alpha"]).await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(
        format!(
            "POST /a/x HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {key}\r\nContent-Length: 100\r\nConnection: close\r\n\r\nonly ten b"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let answer = read_answer(&mut s, Duration::from_secs(10)).await;
    assert_eq!(raw_status(&answer), 408, "{answer}");
    assert_eq!(error_code(&answer), "REQ_TIMEOUT");
    assert!(answer.to_lowercase().contains("x-request-id:"), "{answer}");
    // The client's 4xx, not an upstream error.
    assert_eq!(
        metric(
            &gw,
            "keygate_upstream_errors_total{kind=\"protocol\",module=\"alpha\"}"
        )
        .await,
        0.0
    );
    let totals = token_totals(&gw, id).await;
    assert_eq!(totals["4xx"], 1, "counted as the token's 4xx: {totals}");
}

#[tokio::test]
async fn max_connections_per_ip_refuses_at_once_and_other_clients_are_served() {
    let up = spawn_upstream().await;
    let gw = gateway_with("max_connections = 8\nmax_connections_per_ip = 4", &up, "").await;
    let (_, key) = gw.token(&["alpha"]).await;
    // A slowloris client on 127.0.0.1: heads that never end.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from([127, 0, 0, 1], gw.proxy).await;
        s.write_all(b"GET /a HTTP/1.1\r\nHost: gw\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    // Its fifth (and any further) connection is closed at once.
    for _ in 0..20 {
        let mut s = connect_from([127, 0, 0, 1], gw.proxy).await;
        let _ = s.write_all(b"GET /a HTTP/1.1\r\nHost: gw\r\n").await;
        assert!(closed_at_once(&mut s, Duration::from_secs(2)).await);
    }
    // Another client is served at once, although the slowloris is still connected.
    let mut s = connect_from([127, 0, 0, 2], gw.proxy).await;
    s.write_all(
        format!("GET /a HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {key}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let answer = read_answer(&mut s, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    drop(held);
}

#[tokio::test]
async fn slow_posts_from_one_client_hold_only_its_own_slots() {
    let up = spawn_upstream().await;
    let gw = gateway_with("max_connections = 6\nmax_connections_per_ip = 3", &up, "").await;
    let (_, key) = gw.token(&["alpha"]).await;
    // Valid token, body trickling one byte at a time, on every slot it may have.
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut s = connect_from([127, 0, 0, 3], gw.proxy).await;
        let _ = s
            .write_all(
                format!("POST /a HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {key}\r\nContent-Length: 1000\r\n\r\nx")
                    .as_bytes(),
            )
            .await;
        held.push(s);
    }
    for from in [[127, 0, 0, 4], [127, 0, 0, 5]] {
        let mut s = connect_from(from, gw.proxy).await;
        s.write_all(
            format!("GET /a HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {key}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let answer = read_answer(&mut s, Duration::from_secs(5)).await;
        assert_eq!(raw_status(&answer), 200, "{answer}");
    }
    drop(held);
}

#[tokio::test]
async fn idle_admin_connections_do_not_starve_healthz() {
    let gw = spawn_gateway("[admin]\nmax_connections = 8\nmax_connections_per_ip = 100\n").await;
    // More idle connections than the admin listener serves, from the probe's address.
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(TcpStream::connect(gw.admin).await.unwrap());
    }
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.admin).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut s, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    // Served well before the idle connections' own head timeout (10 s) would free a slot.
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(idle);
}

#[tokio::test]
async fn admin_max_connections_per_ip_refuses_at_once() {
    let gw = spawn_gateway("[admin]\nmax_connections_per_ip = 2\n").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from([127, 0, 0, 6], gw.admin).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    let mut s = connect_from([127, 0, 0, 6], gw.admin).await;
    assert!(closed_at_once(&mut s, Duration::from_secs(2)).await);
    let mut s = connect_from([127, 0, 0, 7], gw.admin).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        raw_status(&read_answer(&mut s, Duration::from_secs(5)).await),
        200
    );
    drop(held);
}

// ---------------------------------------------------------------------------
// Item 3: an empty or unreadable store file stops start-up.

#[tokio::test]
async fn empty_store_file_stops_startup_naming_the_file() {
    for (content, expect) in [
        (&b""[..], "empty"),
        (&b"not a redb file at all"[..], "cannot open"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("keygate.redb");
        std::fs::write(&store, content).unwrap();
        let key_file = dir.path().join("admin.key");
        std::fs::write(&key_file, "SU-111-111-111:keep\n").unwrap();
        let text = complete_toml("", dir.path());
        let config =
            keygate::config::Config::parse(&text, &dir.path().join("k.toml"), |_| None).unwrap();
        let err = match keygate::Gateway::start(config).await {
            Ok(_) => panic!("started on a store file holding {content:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&store.display().to_string()), "{err}");
        assert!(err.contains(expect), "{err}");
        // Nothing was bootstrapped over the operator's key file.
        assert_eq!(
            std::fs::read_to_string(&key_file).unwrap(),
            "SU-111-111-111:keep\n"
        );
        assert_eq!(std::fs::read(&store).unwrap(), content);
    }
}

// ---------------------------------------------------------------------------
// Item 4: a malformed chunked body is the client's 400.

#[tokio::test]
async fn malformed_chunked_body_answers_400_not_502() {
    let up = spawn_upstream().await;
    let gw = gateway_with("", &up, "").await;
    let (id, key) = gw.token(&["alpha"]).await;
    let answer = raw(
        gw.proxy,
        format!(
            "POST /a/x HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {key}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nzz-not-a-size\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert_eq!(error_code(&answer), "REQ_MALFORMED");
    assert_eq!(
        metric(
            &gw,
            "keygate_upstream_errors_total{kind=\"protocol\",module=\"alpha\"}"
        )
        .await,
        0.0
    );
    let totals = token_totals(&gw, id).await;
    assert_eq!(totals["4xx"], 1, "the token's 4xx: {totals}");
    assert_eq!(totals["5xx"], 0, "not its 5xx: {totals}");
}

// ---------------------------------------------------------------------------
// Item 6: Host rules.

#[tokio::test]
async fn http11_request_without_host_or_with_two_hosts_answers_400() {
    let up = spawn_upstream().await;
    let gw = gateway_with("", &up, "").await;
    let (_, key) = gw.token(&["alpha"]).await;
    for head in [
        format!("GET /a HTTP/1.1\r\nAuthorization: ApiKey {key}\r\nConnection: close\r\n\r\n"),
        format!(
            "GET /a HTTP/1.1\r\nHost: gw\r\nHost: evil\r\nAuthorization: ApiKey {key}\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let answer = raw(gw.proxy, head.as_bytes()).await;
        assert_eq!(raw_status(&answer), 400, "{head}: {answer}");
        assert_eq!(error_code(&answer), "REQ_MALFORMED", "{answer}");
    }
    assert_eq!(up.count(), 0);
    // HTTP/1.0 needs no Host.
    let answer = raw(
        gw.proxy,
        format!("GET /a HTTP/1.0\r\nAuthorization: ApiKey {key}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
}

/// Regression (#14 item 6): heads over `max_header_bytes` were answered by hyper — a bare
/// 431 without the JSON error or `X-Request-Id` — and a limit under hyper's 8 KiB
/// minimum buffer did not hold. Up to twice the limit keygate now answers itself, on
/// HTTP/1, on h2 and on the admin listener; beyond that hyper still answers (bare).
#[tokio::test]
async fn oversized_head_answers_431_in_the_json_shape_with_a_request_id() {
    let up = spawn_upstream().await;
    let gw = gateway_with("max_header_bytes = 2048", &up, "").await;
    let (_, key) = gw.token(&["alpha"]).await;
    let head = |n: usize| {
        format!(
            "GET /a HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {key}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "v".repeat(n)
        )
    };
    let a = raw(gw.proxy, head(1500).as_bytes()).await;
    assert_eq!(raw_status(&a), 200, "under the limit: {a}");
    let a = raw(gw.proxy, head(3000).as_bytes()).await;
    assert_eq!(raw_status(&a), 431, "{a}");
    assert_eq!(error_code(&a), "HEADERS_TOO_LARGE", "{a}");
    assert!(a.contains("\r\nx-request-id: "), "{a}");
    assert_eq!(
        up.count(),
        1,
        "only the request under the limit went upstream"
    );
    // h2 (prior knowledge): the header list size of RFC 9113 §6.5.2.
    let io = TcpStream::connect(gw.proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for (n, status) in [(1500, 200), (3000, 431)] {
        let req = http::Request::builder()
            .uri(format!("http://gw/a/{n}"))
            .header("authorization", format!("ApiKey {key}"))
            .header("x-big", "v".repeat(n))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), status, "h2, {n} bytes");
        assert!(res.headers().contains_key("x-request-id"));
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap();
        if status == 431 {
            let v: serde_json::Value = serde_json::from_slice(&body.to_bytes()).unwrap();
            assert_eq!(v["error_code"], "HEADERS_TOO_LARGE");
        }
    }
    assert_eq!(up.count(), 2);
    // The admin listener, before any route or authentication.
    let a = raw(
        gw.admin,
        format!(
            "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "v".repeat(3000)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&a), 431, "{a}");
    assert_eq!(error_code(&a), "HEADERS_TOO_LARGE", "{a}");
    assert!(a.contains("\r\nx-request-id: "), "{a}");
    // Beyond hyper's own limit (twice ours, at least 8 KiB) hyper answers, bare.
    let a = raw(gw.proxy, head(20_000).as_bytes()).await;
    assert_eq!(raw_status(&a), 431, "{a}");
    assert_eq!(error_code(&a), "", "{a}");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn h2_x_forwarded_host_comes_from_authority() {
    let up = spawn_upstream().await;
    let gw = gateway_with("", &up, "").await;
    let (_, key) = gw.token(&["alpha"]).await;
    let url = format!("http://gw.example:{}/a", gw.proxy.port());
    let req = http::Request::builder()
        .uri(url)
        .header("authorization", format!("ApiKey {key}"))
        // :authority wins over a Host header (RFC 9113 §8.3.1).
        .header("host", "other.example")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    // Connect to 127.0.0.1 while naming gw.example in :authority.
    let io = TcpStream::connect(gw.proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let seen = up.last().unwrap();
    assert_eq!(
        seen.headers.get("x-forwarded-host").unwrap(),
        &format!("gw.example:{}", gw.proxy.port())
    );
}

// ---------------------------------------------------------------------------
// Item 8: diagnostics.

#[tokio::test]
async fn expires_at_in_year_9999_is_a_clear_validation_error() {
    let gw = spawn_gateway("").await;
    for at in ["9999-12-31T00:00:00Z", "9999-12-31T23:59:59Z"] {
        let a = admin_call(
            &gw,
            Method::POST,
            "/v1/tokens",
            Some(&gw.admin_key),
            &format!(r#"{{"name":"x","permissions":["all"],"expires_at":"{at}"}}"#),
        )
        .await;
        assert_eq!(a.status, 400);
        assert_eq!(a.code(), "VALIDATION");
        let text = a.json()["errors"][0].as_str().unwrap().to_string();
        assert!(
            text.starts_with("expires_at: too far in the future"),
            "{text}"
        );
    }
    let a = admin_call(
        &gw,
        Method::POST,
        "/v1/tokens",
        Some(&gw.admin_key),
        r#"{"name":"x","permissions":["all"],"expires_at":"yesterday"}"#,
    )
    .await;
    let text = a.json()["errors"][0].as_str().unwrap().to_string();
    assert!(text.contains("RFC 3339"), "{text}");
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keygate"))
}

fn config_file(dir: &std::path::Path, store_extra: &str) -> std::path::PathBuf {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let path = dir.join("k.toml");
    std::fs::write(
        &path,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\nbootstrap_key_file = {:?}\n[store]\npath = {:?}\n{store_extra}",
            free(),
            free(),
            dir.join("admin.key").display().to_string(),
            dir.join("kg.redb").display().to_string(),
        ),
    )
    .unwrap();
    path
}

#[test]
fn listening_is_logged_only_after_the_store_opened() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "");
    std::fs::write(dir.path().join("kg.redb"), b"").unwrap();
    let out = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("KEYGATE_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success());
    assert!(
        stderr.contains("kg.redb") && stderr.contains("empty"),
        "{stderr}"
    );
    assert!(!stdout.contains("listening"), "{stdout}");
}

#[test]
fn bad_keygate_log_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "");
    let out = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("KEYGATE_LOG", "info,[=")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("KEYGATE_LOG"), "{stderr}");
    assert!(!dir.path().join("kg.redb").exists(), "started anyway");
}

#[test]
fn check_config_rejects_a_bad_redis_url_and_an_empty_store_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "");
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("KEYGATE_STORE_PATH", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.path"));
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("KEYGATE_STORE_BACKEND", "redis")
        .env("KEYGATE_STORE_URL", "redis://[::1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("store.url") && stderr.contains("not a valid Redis URL"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// Item 9: readiness on Redis Cluster follows every master.

#[tokio::test]
async fn readyz_follows_a_dead_cluster_master_while_cached_tokens_answer() {
    let mut redis = spawn_redis_cluster().await;
    let up = spawn_upstream().await;
    let toml = format!(
        "{}{}",
        redis_store_toml(&redis, "hostile:", ""),
        module_toml("alpha", &["/a"], &up.url(), "")
    );
    // Another instance makes the token, and the gateway under test starts only once
    // every node has carried the creation's announcement: an announcement still on the
    // cluster bus could reach it after the master is killed, and an announced change
    // that cannot be read back rightly drops the cached entry (seen: 1 run in ~6).
    let mut listeners = Vec::new();
    for port in &redis.ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe("hostile:changes").await.unwrap();
        listeners.push(pubsub);
    }
    let maker = spawn_gateway(&toml).await;
    let (id, key) = maker.token(&["alpha"]).await;
    drop(maker);
    for mut pubsub in listeners {
        let mut messages = pubsub.on_message();
        let announced = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(m) = messages.next().await {
                if m.get_payload_bytes() == id.to_string().as_bytes() {
                    return;
                }
            }
        })
        .await;
        assert!(announced.is_ok(), "a node never carried the announcement");
    }
    let gw = spawn_gateway(&toml).await;
    assert_eq!(get(&gw.url("/a"), Some(&key)).await.status, 200); // now cached
    assert_eq!(get(&gw.admin_url("/readyz"), None).await.status, 200);

    eprintln!("DEBUG kill at {:?}", std::time::SystemTime::now());
    redis.kill_node(1);
    let down = eventually(Duration::from_secs(10), async || {
        get(&gw.admin_url("/readyz"), None).await.status == 503
    })
    .await;
    assert!(down, "/readyz stayed 200 with a master dead");
    assert_eq!(metric(&gw, "keygate_store_up").await, 0.0);
    // Cached tokens keep working.
    assert_eq!(get(&gw.url("/a"), Some(&key)).await.status, 200);

    redis.restart_node(1).await;
    let back = eventually(Duration::from_secs(20), async || {
        get(&gw.admin_url("/readyz"), None).await.status == 200
    })
    .await;
    assert!(back, "/readyz never recovered");
    assert_eq!(metric(&gw, "keygate_store_up").await, 1.0);
    let _ = send(
        &client(),
        Method::GET,
        &gw.url("/a"),
        Some(&key),
        Bytes::new(),
    )
    .await;
}
