//! Transparency: what a client sends reaches the upstream, and what the upstream answers
//! reaches the client, as HTTP allows a proxy to relay it (after linkerd2-proxy's
//! `tests/transparency.rs`). Both ends are raw sockets, so each test asserts the bytes
//! the client and the upstream saw, not what a client library makes of them.
//!
//! The upstream here reads one request per connection (by `Content-Length` or chunked
//! framing), records it as received, writes its scripted answer and closes.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PREFIX: &str = "/t";

/// What the scripted upstream does with one request.
#[derive(Clone)]
enum Script {
    /// Writes these bytes, then closes.
    Answer(Vec<u8>),
    /// Writes `100 Continue` when the request expects it, then reads the body, then
    /// writes these bytes and closes.
    ContinueThen(Vec<u8>),
}

/// A raw upstream answering every connection with one script.
struct RawUpstream {
    addr: SocketAddr,
    /// Every request as received: head and body, bytes as on the wire.
    seen: Arc<Mutex<Vec<String>>>,
}

impl RawUpstream {
    async fn start(script: Script) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (script, record) = (script.clone(), Arc::clone(&record));
                tokio::spawn(async move {
                    if let Some(req) = serve_one(s, script).await {
                        record.lock().unwrap().push(req);
                    }
                });
            }
        });
        RawUpstream { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn only_request(&self) -> String {
        let seen = self.seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "upstream requests: {seen:#?}");
        seen[0].clone()
    }
}

async fn serve_one(mut s: TcpStream, script: Script) -> Option<String> {
    let mut buf = Vec::new();
    let head_end = read_until(&mut s, &mut buf, |b| find(b, b"\r\n\r\n").map(|i| i + 4)).await?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    if let Script::ContinueThen(_) = &script
        && head.contains("\r\nexpect: 100-continue")
    {
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.ok()?;
    }
    let body_end = if head.contains("\r\ntransfer-encoding: chunked") {
        read_until(&mut s, &mut buf, |b| chunked_end(b, head_end)).await?
    } else {
        let len: usize = header_value(&head, "content-length").map_or(0, |v| v.parse().unwrap());
        read_until(&mut s, &mut buf, |b| {
            (b.len() >= head_end + len).then_some(head_end + len)
        })
        .await?
    };
    let (Script::Answer(answer) | Script::ContinueThen(answer)) = script;
    s.write_all(&answer).await.ok()?;
    let _ = s.shutdown().await;
    Some(String::from_utf8_lossy(&buf[..body_end]).into_owned())
}

/// Reads into `buf` until `done` finds the end; `None` on EOF first or after 5 s.
async fn read_until(
    s: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> Option<usize> {
    let read = async {
        loop {
            if let Some(end) = done(buf) {
                return Some(end);
            }
            let mut chunk = [0u8; 8192];
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The end of a chunked body starting at `from` (after the last chunk's trailers).
fn chunked_end(b: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let line_end = at + find(b.get(at..)?, b"\r\n")?;
        let size_text = std::str::from_utf8(&b[at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailer lines, then an empty line.
            return find(b.get(at..)?, b"\r\n").and_then(|i| {
                if i == 0 {
                    Some(at + 2)
                } else {
                    find(&b[at..], b"\r\n\r\n").map(|j| at + j + 4)
                }
            });
        }
        at += size + 2;
        if b.len() < at {
            return None;
        }
    }
}

/// A header's value in a lower-cased head.
fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
}

/// A gateway with one module on `upstream`, and a key for it.
async fn gateway(upstream: &str, extra: &str) -> (TestGateway, String) {
    let gw = spawn_gateway(&format!(
        "{extra}{}",
        module_toml("t", &[PREFIX], upstream, "")
    ))
    .await;
    let (_, key) = gw.token(&["t"]).await;
    (gw, key)
}

/// One HTTP/1.1 request head from the client, keep-alive unless `extra` says otherwise.
fn head(method: &str, path: &str, key: &str, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: gw.test\r\nAuthorization: ApiKey {key}\r\n{extra}\r\n"
    )
}

/// Sends `request` on a new connection and reads until the server closes (send
/// `Connection: close`).
async fn exchange(gw: &TestGateway, request: &str) -> String {
    raw(gw.proxy, request.as_bytes()).await
}

/// Reads one whole HTTP/1.1 answer (by `Content-Length` or chunked) from a kept-alive
/// connection.
async fn read_answer(s: &mut TcpStream, no_body: bool) -> String {
    let mut buf = Vec::new();
    let head_end = read_until(s, &mut buf, |b| find(b, b"\r\n\r\n").map(|i| i + 4))
        .await
        .expect("answer head");
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let end = if no_body {
        head_end
    } else if head.contains("\r\ntransfer-encoding: chunked") {
        read_until(s, &mut buf, |b| chunked_end(b, head_end))
            .await
            .expect("chunked body")
    } else {
        let len: usize = header_value(&head, "content-length").map_or(0, |v| v.parse().unwrap());
        read_until(s, &mut buf, |b| {
            (b.len() >= head_end + len).then_some(head_end + len)
        })
        .await
        .expect("body")
    };
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test]
async fn head_is_answered_with_the_upstream_headers_and_no_body() {
    let up = RawUpstream::start(Script::Answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n".to_vec(),
    ))
    .await;
    let (gw, key) = gateway(&up.url(), "").await;
    let a = exchange(&gw, &head("HEAD", "/t/x", &key, "Connection: close\r\n")).await;
    assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
    assert!(
        a.to_lowercase().contains("\r\ncontent-length: 1234\r\n"),
        "{a}"
    );
    assert_eq!(body(&a), "", "a HEAD answer has no body");
    assert!(up.only_request().starts_with("HEAD /t/x HTTP/1.1\r\n"));
}

#[tokio::test]
async fn no_content_and_not_modified_have_no_body_and_the_connection_stays_usable() {
    for (status, extra) in [
        ("204 No Content", ""),
        ("304 Not Modified", "ETag: \"v1\"\r\n"),
    ] {
        let up = RawUpstream::start(Script::Answer(
            format!("HTTP/1.1 {status}\r\n{extra}\r\n").into_bytes(),
        ))
        .await;
        let (gw, key) = gateway(&up.url(), "").await;
        let mut s = TcpStream::connect(gw.proxy).await.unwrap();
        let req = head("GET", "/t/x", &key, "If-None-Match: \"v1\"\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let a = read_answer(&mut s, true).await;
        assert!(a.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{a}");
        let lower = a.to_lowercase();
        assert!(!lower.contains("transfer-encoding"), "{a}");
        assert!(!lower.contains("content-length: ") || lower.contains("content-length: 0"));
        if status.starts_with("304") {
            assert!(a.contains("\"v1\""), "ETag relayed: {a}");
        }
        // Nothing follows the head: the next answer on this connection is the next
        // request's.
        s.write_all(head("GET", "/nope", &key, "Connection: close\r\n").as_bytes())
            .await
            .unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).await.unwrap();
        assert!(
            rest.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{status}: {rest}"
        );
        assert!(
            up.only_request()
                .to_lowercase()
                .contains("\r\nif-none-match: \"v1\"\r\n")
        );
    }
}

#[tokio::test]
async fn trailers_pass_both_ways() {
    let up = RawUpstream::start(Script::Answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-digest\r\n\r\n5\r\nhello\r\n0\r\nx-digest: sha-256=abc\r\n\r\n".to_vec(),
    ))
    .await;
    let (gw, key) = gateway(&up.url(), "").await;
    let req = format!(
        "{}4\r\nping\r\n0\r\nx-checksum: 42\r\n\r\n",
        head(
            "POST",
            "/t/x",
            &key,
            "TE: trailers\r\nTrailer: x-checksum\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
        )
    );
    let a = exchange(&gw, &req).await;
    assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
    let b = body(&a);
    assert!(b.contains("hello"), "{a}");
    assert!(
        b.contains("\r\nx-digest: sha-256=abc\r\n"),
        "response trailer: {a}"
    );
    let seen = up.only_request();
    assert!(seen.contains("\r\n\r\n4\r\nping\r\n0\r\n"), "{seen}");
    assert!(
        seen.contains("\r\nx-checksum: 42\r\n"),
        "request trailer: {seen}"
    );
    assert!(
        seen.to_lowercase().contains("\r\nte: trailers\r\n"),
        "{seen}"
    );
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let up = RawUpstream::start(Script::ContinueThen(
        b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone".to_vec(),
    ))
    .await;
    let (gw, key) = gateway(&up.url(), "").await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let req = head(
        "PUT",
        "/t/x",
        &key,
        "Expect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n",
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let interim = read_until(&mut s, &mut buf, |b| find(b, b"\r\n\r\n").map(|i| i + 4))
        .await
        .expect("an interim answer before the body");
    assert!(
        String::from_utf8_lossy(&buf[..interim]).starts_with("HTTP/1.1 100 Continue\r\n"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    s.write_all(b"hello").await.unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).await.unwrap();
    let rest = format!("{}{rest}", String::from_utf8_lossy(&buf[interim..]));
    assert!(rest.starts_with("HTTP/1.1 201 Created\r\n"), "{rest}");
    assert_eq!(body(&rest), "done");
    let seen = up.only_request();
    assert!(seen.ends_with("\r\n\r\nhello"), "{seen}");
}

#[tokio::test]
async fn a_refused_request_never_asks_for_its_body() {
    let up = RawUpstream::start(Script::Answer(b"HTTP/1.1 200 OK\r\n\r\n".to_vec())).await;
    let (gw, _) = gateway(&up.url(), "").await;
    let req = head(
        "PUT",
        "/t/x",
        "SU-000-000-000:0000000000000000000000000000000000000000",
        "Expect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n",
    );
    let a = exchange(&gw, &req).await;
    assert!(a.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{a}");
    assert!(up.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn repeated_set_cookie_lines_stay_separate() {
    let up = RawUpstream::start(Script::Answer(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2, c=3; Expires=Wed, 21 Oct 2026 07:28:00 GMT\r\nContent-Length: 0\r\n\r\n".to_vec(),
    ))
    .await;
    let (gw, key) = gateway(&up.url(), "").await;
    let a = exchange(
        &gw,
        &head(
            "GET",
            "/t/x",
            &key,
            "Cookie: x=1\r\nCookie: y=2\r\nConnection: close\r\n",
        ),
    )
    .await;
    let cookies: Vec<&str> = a
        .lines()
        .filter_map(|l| l.strip_prefix("set-cookie: "))
        .collect();
    assert_eq!(
        cookies,
        [
            "a=1; Path=/",
            "b=2, c=3; Expires=Wed, 21 Oct 2026 07:28:00 GMT"
        ],
        "{a}"
    );
    let seen = up.only_request();
    assert!(
        seen.contains("\r\ncookie: x=1\r\ncookie: y=2\r\n"),
        "{seen}"
    );
}

#[tokio::test]
async fn every_method_reaches_the_upstream_with_its_body() {
    let up = spawn_upstream().await;
    let (gw, key) = gateway(&up.url(), "").await;
    let methods = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PURGE",
    ];
    for (i, method) in methods.iter().enumerate() {
        let with_body = !matches!(*method, "GET" | "HEAD" | "TRACE");
        let (extra, payload) = if with_body {
            ("Content-Length: 3\r\nConnection: close\r\n", "abc")
        } else {
            ("Connection: close\r\n", "")
        };
        let a = exchange(
            &gw,
            &format!("{}{payload}", head(method, "/t/m", &key, extra)),
        )
        .await;
        assert_eq!(raw_status(&a), 200, "{method}: {a}");
        let seen = up.seen();
        assert_eq!(seen.len(), i + 1);
        let last = &seen[i];
        assert_eq!(last.method.as_str(), *method);
        assert_eq!(last.target, "/t/m");
        assert_eq!(last.body_len, payload.len() as u64, "{method}");
    }
    // CONNECT is not a request a gateway forwards.
    let a = exchange(
        &gw,
        &head("CONNECT", "gw.test:443", &key, "Connection: close\r\n"),
    )
    .await;
    assert_eq!(raw_status(&a), 400, "{a}");
    assert_eq!(up.count(), methods.len());
}

#[tokio::test]
async fn an_informational_answer_is_consumed_and_the_final_one_relayed() {
    let up = RawUpstream::start(Script::Answer(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal".to_vec(),
    ))
    .await;
    let (gw, key) = gateway(&up.url(), "").await;
    let a = exchange(&gw, &head("GET", "/t/x", &key, "Connection: close\r\n")).await;
    // hyper's server cannot send a 1xx of the service's choosing, so the hint is
    // dropped; the client gets exactly one, final, answer.
    assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
    assert_eq!(a.matches("HTTP/1.1 ").count(), 1, "{a}");
    assert_eq!(body(&a), "final");
    assert!(up.only_request().starts_with("GET /t/x HTTP/1.1\r\n"));
}

#[tokio::test]
async fn an_http10_client_is_answered_in_http10_and_the_upstream_sees_http11() {
    let up = spawn_upstream().await;
    let (gw, key) = gateway(&up.url(), "").await;
    let a = exchange(
        &gw,
        &format!("GET /t/x HTTP/1.0\r\nAuthorization: ApiKey {key}\r\n\r\n"),
    )
    .await;
    assert!(a.starts_with("HTTP/1.0 200 OK\r\n"), "{a}");
    assert_eq!(body(&a), "ok /t/x");
    let seen = up.last().unwrap();
    // The upstream got a well-formed HTTP/1.1 request: its own Host, the client's
    // (absent) Host recorded as such.
    assert_eq!(seen.headers["host"], up.addr.to_string().as_str());
    assert!(seen.headers.get("x-forwarded-host").is_none());
}

/// Regression (issue #10): an HTTP/1.0 upstream's answer was relayed to an HTTP/1.1
/// client as `HTTP/1.0` and closed the client's keep-alive connection. The version is
/// hop-by-hop (RFC 9110 §6.2): the client is answered in its own.
#[tokio::test]
async fn an_http10_upstream_answer_reaches_an_http11_client_as_http11_and_keeps_it_alive() {
    // Like `python3 -m http.server`: HTTP/1.0, the body delimited by closing.
    let up = RawUpstream::start(Script::Answer(
        b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\nContent-Type: text/plain\r\n\r\nhello"
            .to_vec(),
    ))
    .await;
    let (gw, key) = gateway(&up.url(), "").await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    for _ in 0..2 {
        s.write_all(head("GET", "/t/x", &key, "").as_bytes())
            .await
            .unwrap();
        let a = read_answer(&mut s, false).await;
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
        assert!(!a.to_lowercase().contains("connection: close"), "{a}");
        assert!(body(&a).contains("hello"), "{a}");
    }
    assert_eq!(up.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn large_headers_pass_both_ways_up_to_the_limit() {
    let big = "v".repeat(12 * 1024);
    let up = RawUpstream::start(Script::Answer(
        format!("HTTP/1.1 200 OK\r\nX-Big-Answer: {big}\r\nContent-Length: 0\r\n\r\n").into_bytes(),
    ))
    .await;
    let (gw, key) = gateway(&up.url(), "").await;
    let a = exchange(
        &gw,
        &head(
            "GET",
            "/t/x",
            &key,
            &format!("X-Big: {big}\r\nConnection: close\r\n"),
        ),
    )
    .await;
    assert!(
        a.starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        &a[..a.len().min(200)]
    );
    assert!(a.contains(&format!("\r\nx-big-answer: {big}\r\n")));
    assert!(up.only_request().contains(&format!("\r\nx-big: {big}\r\n")));
    // Over `proxy.max_header_bytes` (16 KiB by default): 431, and nothing upstream.
    let huge = "v".repeat(20 * 1024);
    let a = exchange(
        &gw,
        &head(
            "GET",
            "/t/x",
            &key,
            &format!("X-Big: {huge}\r\nConnection: close\r\n"),
        ),
    )
    .await;
    assert_eq!(raw_status(&a), 431, "{}", &a[..a.len().min(200)]);
    assert_eq!(up.seen.lock().unwrap().len(), 1);
}
