//! Operations: configuration reload, connection limits and timeouts, body and header
//! limits, h2c, and the binary's environment overrides and signals.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads from `s` until the peer closes or errors; true if that happens before `deadline`.
async fn closed_within(s: &mut TcpStream, deadline: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(deadline, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Reads one HTTP/1 response with a Content-Length body from a keep-alive stream.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return text.into_owned();
            }
        }
    }
}

fn get_req(path: &str, key: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {key}\r\n\r\n")
}

// ---------------------------------------------------------------------------
// Reload

#[tokio::test]
async fn reload_swaps_modules_keeps_inflight_and_refuses_a_bad_file() {
    let up1 = spawn_upstream().await;
    let up2 = spawn_upstream().await;
    let first = module_toml("alpha", &["/a"], &up1.url(), "");
    let gw = spawn_gateway(&first).await;
    let (_, key) = gw.token(&["alpha"]).await;
    assert_eq!(
        get(&gw.url("/a/x"), Some(&key)).await.status,
        StatusCode::OK
    );
    assert_eq!(up1.count(), 1);

    // A slow request on the old generation is in flight while the table changes.
    let slow_url = gw.url("/a/slow?sleep_ms=600");
    let slow_key = key.clone();
    let slow = tokio::spawn(async move { get(&slow_url, Some(&slow_key)).await });
    assert!(eventually(Duration::from_secs(5), async || up1.count() == 2).await);

    // New module "beta" takes index 0 and "alpha" moves to the second upstream: a
    // token for alpha must not inherit beta through the old permission bits.
    let second = format!(
        "{}{}",
        module_toml("beta", &["/b"], &up2.url(), ""),
        module_toml("alpha", &["/a"], &up2.url(), "")
    );
    gw.write_config(&second);
    gw.reload.reload().await.expect("good file reloads");

    let a = get(&gw.url("/a/y"), Some(&key)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.text(), "ok /a/y");
    assert_eq!(up2.last().expect("up2 saw it").target, "/a/y");
    let b = get(&gw.url("/b/z"), Some(&key)).await;
    assert_eq!(b.status, StatusCode::FORBIDDEN, "{}", b.text());
    assert_eq!(b.code(), "PERM_DENIED");
    let current = gw.reload.current().config.clone();
    let (beta, secret) = gw
        .tokens
        .create(
            keygate::tokens::NewToken {
                name: "beta token".into(),
                description: String::new(),
                external_id: None,
                extension: None,
                permissions: vec!["beta".into()],
                expiry: keygate::tokens::Expiry::Perpetual,
                ..Default::default()
            },
            None,
            &current,
            jiff::Timestamp::now(),
        )
        .await
        .expect("token for the new module");
    let beta_key = format!("{}:{}", beta.id, secret.expose());
    assert_eq!(
        get(&gw.url("/b/z"), Some(&beta_key)).await.status,
        StatusCode::OK
    );

    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(
        slow.text(),
        "ok /a/slow?sleep_ms=600",
        "in-flight request finished on the old upstream"
    );

    // A file that fails validation is refused; the running table stays.
    std::fs::write(gw.config_path(), "[proxy]\nbogus = 1\n").unwrap();
    let err = gw.reload.reload().await.expect_err("bad file refused");
    assert!(err.contains("proxy.bogus"), "{err}");
    // So is one whose CA file is not a certificate.
    let bad_ca = gw.dir.path().join("not-a-ca.pem");
    std::fs::write(&bad_ca, "hello").unwrap();
    gw.write_config(&module_toml(
        "alpha",
        &["/a"],
        "https://127.0.0.1:1",
        &format!("ca_file = {:?}", bad_ca.display().to_string()),
    ));
    let err = gw.reload.reload().await.expect_err("bad CA file refused");
    assert!(err.contains("ca_file"), "{err}");
    assert_eq!(
        get(&gw.url("/b/z"), Some(&beta_key)).await.status,
        StatusCode::OK
    );
    assert_eq!(get(&gw.url("/a/q"), Some(&key)).await.text(), "ok /a/q");
}

#[tokio::test]
async fn reload_keeps_restart_only_settings() {
    let up = spawn_upstream().await;
    let m = module_toml("alpha", &["/a"], &up.url(), "");
    let gw = spawn_gateway(&m).await;
    let (_, key) = gw.token(&["alpha"]).await;
    // A new listen address (and limit) in the file: the reload succeeds, the
    // listener stays where it is.
    gw.write_config(&format!(
        "[proxy]\nlisten = \"127.0.0.1:1\"\nmax_connections = 3\n{m}"
    ));
    gw.reload.reload().await.expect("reload");
    assert_eq!(
        get(&gw.url("/a/1"), Some(&key)).await.status,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------------------
// Timeouts

#[tokio::test]
async fn slowloris_client_is_cut_off() {
    let gw = spawn_gateway("[proxy]\nheader_read_timeout = \"500ms\"\n").await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    // Keep trickling header lines: each byte is progress, but the head never ends.
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for i in 0..100 {
            if wr
                .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    assert!(closed, "a client trickling its head was not cut off");
    trickle.abort();
}

/// Regression for issue 13's watchdog change (a request no longer wakes it): a head
/// that starts trickling on a keep-alive connection after an answered request is cut
/// off after `header_read_timeout`, not left until `idle_timeout`.
#[tokio::test]
async fn slow_second_head_on_keep_alive_is_cut_off() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&format!(
        "[proxy]\nheader_read_timeout = \"500ms\"\nidle_timeout = \"60s\"\n{}",
        module_toml("alpha", &["/a"], &up.url(), "")
    ))
    .await;
    let (_, key) = gw.token(&["alpha"]).await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(get_req("/a/1", &key).as_bytes()).await.unwrap();
    assert_eq!(raw_status(&read_response(&mut s).await), 200);
    s.write_all(b"GET /a/2 HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for i in 0..100 {
            if wr
                .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    assert!(
        closed,
        "a second head trickling on a keep-alive connection was not cut off"
    );
    trickle.abort();
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn silent_connection_is_cut_off_after_header_read_timeout() {
    let gw = spawn_gateway("[proxy]\nheader_read_timeout = \"300ms\"\n").await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn idle_keep_alive_outlives_header_timeout_then_closes() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&format!(
        "[proxy]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"3s\"\n{}",
        module_toml("alpha", &["/a"], &up.url(), "")
    ))
    .await;
    let (_, key) = gw.token(&["alpha"]).await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(get_req("/a/1", &key).as_bytes()).await.unwrap();
    assert_eq!(raw_status(&read_response(&mut s).await), 200);
    // Idle for longer than the head timeout, shorter than the idle timeout.
    tokio::time::sleep(Duration::from_millis(900)).await;
    s.write_all(get_req("/a/2", &key).as_bytes()).await.unwrap();
    assert_eq!(raw_status(&read_response(&mut s).await), 200);
    // Then the idle timeout closes it.
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
    assert_eq!(up.count(), 2);
}

// ---------------------------------------------------------------------------
// Limits

#[tokio::test]
async fn oversized_head_answers_431() {
    let gw = spawn_gateway("[proxy]\nmax_header_bytes = 16384\n").await;
    let big = "v".repeat(20_000);
    let answer = raw(
        gw.proxy,
        format!("GET /a HTTP/1.1\r\nHost: gw\r\nX-Big: {big}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 431, "{answer}");
    // Just under the limit is fine (answers 401: no key).
    let ok = "v".repeat(12_000);
    let answer = raw(
        gw.proxy,
        format!("GET /a HTTP/1.1\r\nHost: gw\r\nX-Big: {ok}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 401, "{answer}");
}

#[tokio::test]
async fn body_over_limit_by_content_length_answers_413() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&module_toml(
        "alpha",
        &["/a"],
        &up.url(),
        "max_body_bytes = 1000",
    ))
    .await;
    let (_, key) = gw.token(&["alpha"]).await;
    let c = client();
    let small = send(
        &c,
        Method::POST,
        &gw.url("/a/ok"),
        Some(&key),
        Bytes::from(vec![b'x'; 1000]),
    )
    .await;
    assert_eq!(small.status, StatusCode::OK);
    assert_eq!(up.last().unwrap().body_len, 1000);
    let big = send(
        &c,
        Method::POST,
        &gw.url("/a/big"),
        Some(&key),
        Bytes::from(vec![b'x'; 1001]),
    )
    .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(big.code(), "BODY_TOO_LARGE");
    assert_eq!(
        up.count(),
        1,
        "the upstream never saw the oversized request"
    );
}

#[tokio::test]
async fn chunked_body_over_limit_answers_413() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&module_toml(
        "alpha",
        &["/a"],
        &up.url(),
        "max_body_bytes = 1000",
    ))
    .await;
    let (_, key) = gw.token(&["alpha"]).await;
    let chunk = "y".repeat(600);
    let mut req = format!(
        "POST /a/chunked HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {key}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for _ in 0..3 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    let answer = raw(gw.proxy, req.as_bytes()).await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
    assert!(answer.contains("BODY_TOO_LARGE"), "{answer}");
    // Under the limit, chunked passes whole.
    let mut req = format!(
        "POST /a/chunked HTTP/1.1\r\nHost: gw\r\nAuthorization: ApiKey {key}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    req.push_str(&format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()));
    let answer = raw(gw.proxy, req.as_bytes()).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(up.last().unwrap().body_len, 600);
}

#[tokio::test]
async fn max_connections_holds_the_next_connection_until_one_closes() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&format!(
        "[proxy]\nmax_connections = 2\n{}",
        module_toml("alpha", &["/a"], &up.url(), "")
    ))
    .await;
    let (_, key) = gw.token(&["alpha"]).await;
    let mut first = TcpStream::connect(gw.proxy).await.unwrap();
    first
        .write_all(get_req("/a/1", &key).as_bytes())
        .await
        .unwrap();
    assert_eq!(raw_status(&read_response(&mut first).await), 200);
    let mut second = TcpStream::connect(gw.proxy).await.unwrap();
    second
        .write_all(get_req("/a/2", &key).as_bytes())
        .await
        .unwrap();
    assert_eq!(raw_status(&read_response(&mut second).await), 200);

    // The third connects (kernel backlog) but is not served while both are open.
    let mut third = TcpStream::connect(gw.proxy).await.unwrap();
    third
        .write_all(get_req("/a/3", &key).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let early = tokio::time::timeout(Duration::from_millis(400), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the third connection was served while two were open"
    );
    assert_eq!(up.count(), 2);

    drop(first);
    assert_eq!(raw_status(&read_response(&mut third).await), 200);
    assert_eq!(up.count(), 3);
}

// ---------------------------------------------------------------------------
// HTTP/2 cleartext

#[tokio::test]
async fn h2c_prior_knowledge_is_proxied() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&module_toml("alpha", &["/a"], &up.url(), "")).await;
    let (_, key) = gw.token(&["alpha"]).await;
    let c = h2c_client();
    let req = http::Request::builder()
        .uri(gw.url("/a/h2"))
        .header("authorization", format!("ApiKey {key}"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let res = c.request(req).await.expect("h2c request");
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);
    let seen = up.last().unwrap();
    assert_eq!(seen.target, "/a/h2");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
}

// ---------------------------------------------------------------------------
// The binary: environment overrides, SIGHUP, SIGTERM

fn keygate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keygate"))
}

#[test]
fn check_config_honours_environment_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.toml");
    std::fs::write(
        &path,
        "[proxy]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n",
    )
    .unwrap();
    let out = keygate()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("KEYGATE_PROXY_LISTEN", "127.0.0.1:18080")
        .env("KEYGATE_ADMIN_LISTEN", "127.0.0.1:19090")
        .env("KEYGATE_STORE_PATH", "/tmp/elsewhere.redb")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("proxy 127.0.0.1:18080"), "{text}");
    assert!(text.contains("admin 127.0.0.1:19090"), "{text}");
    assert!(text.contains("embedded /tmp/elsewhere.redb"), "{text}");

    let out = keygate()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("KEYGATE_STORE_BACKEND", "redis")
        .env("KEYGATE_STORE_URL", "redis://127.0.0.1:7777/0")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("store redis"), "{text}");
    // An override is validated like the file.
    let out = keygate()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("KEYGATE_STORE_BACKEND", "mongo")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.backend"));
}

/// `keygate serve` with env overrides and KEYGATE_LOG: SIGHUP reloads (a bad file
/// is refused and the process lives on), healthcheck answers, SIGTERM exits 0.
#[test]
fn serve_reloads_on_sighup_and_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.toml");
    let base = format!(
        "[admin]\nbootstrap_key_file = {:?}\n[[modules]]\nname = \"alpha\"\nprefixes = [\"/a\"]\nupstream = \"http://127.0.0.1:9\"\n",
        dir.path().join("admin.key").display().to_string()
    );
    std::fs::write(&path, &base).unwrap();
    let child = keygate()
        .args(["serve", "--config"])
        .arg(&path)
        .env("KEYGATE_PROXY_LISTEN", "127.0.0.1:0")
        .env("KEYGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env(
            "KEYGATE_STORE_PATH",
            dir.path().join("s.redb").display().to_string(),
        )
        .env("KEYGATE_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Killed if the test fails half-way.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(child);
    let pid = child.0.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| -> String {
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no log line with {needle:?}");
    };
    let listening = wait_for("keygate listening");
    let addr_of = |name: &str| -> String {
        listening
            .split(&format!("{name}="))
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("{name} address in {listening:?}"))
            .to_string()
    };
    let (proxy, admin) = (addr_of("proxy"), addr_of("admin"));
    // KEYGATE_LOG=debug: a connection that sends garbage is logged at debug level.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&proxy).unwrap();
        s.write_all(b"NOT HTTP\r\n\r\n").unwrap();
        wait_for("DEBUG");
    }
    let health = keygate()
        .args(["healthcheck", "--config"])
        .arg(&path)
        .env("KEYGATE_ADMIN_LISTEN", &admin)
        .output()
        .unwrap();
    assert!(health.status.success(), "{health:?}");
    // Nothing listening there: the probe fails.
    let dead = keygate()
        .args(["healthcheck", "--config"])
        .arg(&path)
        .env("KEYGATE_ADMIN_LISTEN", "127.0.0.1:9")
        .output()
        .unwrap();
    assert!(!dead.status.success());

    let hup = || {
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    std::fs::write(&path, format!("{base}\n[[modules]]\nname = \"beta\"\nprefixes = [\"/b\"]\nupstream = \"http://127.0.0.1:9\"\n")).unwrap();
    hup();
    let line = wait_for("configuration reloaded");
    assert!(line.contains("modules=2"), "{line}");
    std::fs::write(&path, "[[modules]]\nname = \"BAD\"\n").unwrap();
    hup();
    wait_for("configuration reload refused");

    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
