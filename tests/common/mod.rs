//! Test harness: real sockets on 127.0.0.1 port 0, real upstream servers, a real gateway.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jiff::Timestamp;
use keygate::config::Config;
use keygate::token::TokenId;
use keygate::tokens::{Expiry, NewToken, Tokens};
use keygate::{Gateway, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: u64,
}

/// A real HTTP/1.1 + h2c upstream. Behaviour is chosen by query parameters:
/// `status=NNN`, `sleep_ms=N` (before answering), `bytes=N` (streamed body of N bytes),
/// `echo=1` (streams the request body back). Otherwise 200 with body `ok <path>`.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests that have arrived, counted before any `sleep_ms` (`seen` records a
    /// request only once it is answered).
    pub arrived: Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

impl TestUpstream {
    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    /// How many requests have arrived so far, answered or not.
    pub fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    /// The last request.
    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn query_param<'a>(q: &'a str, name: &str) -> Option<&'a str> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

type UpBody = BoxBody<Bytes, hyper::Error>;

async fn upstream_handle(
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<std::sync::atomic::AtomicUsize>,
    req: Request<Incoming>,
) -> Response<UpBody> {
    arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let q = req.uri().query().unwrap_or("").to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let method = req.method().clone();
    let headers = req.headers().clone();
    if let Some(ms) = query_param(&q, "sleep_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = query_param(&q, "status")
        .and_then(|v| v.parse().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if query_param(&q, "echo").is_some() {
        seen.lock().unwrap().push(Seen {
            method,
            target,
            headers,
            body_len: 0,
        });
        let body = req.into_body().boxed();
        return Response::builder().status(status).body(body).unwrap();
    }
    // Drain the body, counting it.
    let mut body = req.into_body();
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_len += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    seen.lock().unwrap().push(Seen {
        method,
        target: target.clone(),
        headers,
        body_len,
    });
    if let Some(n) = query_param(&q, "bytes").and_then(|v| v.parse::<u64>().ok()) {
        const CHUNK: usize = 64 * 1024;
        let chunk = Bytes::from(vec![b'x'; CHUNK]);
        let stream = futures_util::stream::unfold(n, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let take = left.min(CHUNK as u64);
                Some((
                    Ok::<_, hyper::Error>(Frame::data(chunk.slice(..take as usize))),
                    left - take,
                ))
            }
        });
        return Response::builder()
            .status(status)
            .header("content-length", n.to_string())
            .header("connection", "x-hop")
            .header("x-hop", "must not reach the client")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
    }
    Response::builder()
        .status(status)
        .header("x-upstream", "yes")
        .header("keep-alive", "timeout=5")
        .body(
            Full::new(Bytes::from(format!("ok {target}")))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

/// Starts a test upstream on 127.0.0.1:0.
pub async fn spawn_upstream() -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (stop, mut stop_rx) = oneshot::channel::<()>();
    let seen2 = Arc::clone(&seen);
    let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let arrived2 = Arc::clone(&arrived);
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = &mut stop_rx => break,
            };
            let seen = Arc::clone(&seen2);
            let arrived = Arc::clone(&arrived2);
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (seen, arrived) = (Arc::clone(&seen), Arc::clone(&arrived));
                    async move { Ok::<_, Infallible>(upstream_handle(seen, arrived, req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TestUpstream {
        addr,
        seen,
        arrived,
        stop: Some(stop),
    }
}

/// A `[[modules]]` TOML block.
pub fn module_toml(name: &str, prefixes: &[&str], upstream: &str, extra: &str) -> String {
    let prefixes: Vec<String> = prefixes.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "\n[[modules]]\nname = {name:?}\ndescription = \"{name} module\"\nprefixes = [{}]\nupstream = {upstream:?}\n{extra}\n",
        prefixes.join(", ")
    )
}

/// A running gateway on port-0 listeners with an embedded store in a temp dir.
pub struct TestGateway {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub admin_key: String,
    pub tokens: Tokens,
    pub config: Config,
    pub dir: tempfile::TempDir,
    /// The gateway's shared state (statistics, metrics, store).
    pub shared: Arc<keygate::state::Shared>,
    /// Re-reads `config_path()` (what SIGHUP does).
    pub reload: keygate::ReloadHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    /// `http://proxy`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }
    /// `http://admin`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
    /// The configuration file the gateway was started from.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("keygate.toml")
    }
    /// Rewrites the configuration file from `toml` (completed as by [`spawn_gateway`]);
    /// call `reload.reload()` to apply it.
    pub fn write_config(&self, toml: &str) {
        std::fs::write(self.config_path(), complete_toml(toml, self.dir.path())).unwrap();
    }
    /// Creates a token with these permissions; returns (id, "id:secret").
    pub async fn token(&self, permissions: &[&str]) -> (TokenId, String) {
        self.token_with(permissions, |_| {}).await
    }
    /// Creates a token after `edit` adjusts the request.
    pub async fn token_with(
        &self,
        permissions: &[&str],
        edit: impl FnOnce(&mut NewToken),
    ) -> (TokenId, String) {
        let mut new = NewToken {
            name: "test token".into(),
            description: String::new(),
            external_id: None,
            extension: None,
            permissions: permissions.iter().map(|s| s.to_string()).collect(),
            expiry: Expiry::Perpetual,
            ..NewToken::default()
        };
        edit(&mut new);
        let (t, secret) = self
            .tokens
            .create(new, None, &self.config, Timestamp::now())
            .await
            .expect("create token");
        (t.id, format!("{}:{}", t.id, secret.expose()))
    }
    /// Stops it gracefully, waits, and hands back its directory (restart tests).
    pub async fn stop_keep_dir(mut self) -> tempfile::TempDir {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        self.stop().await;
        dir
    }
    /// Stops it gracefully and waits.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Parses `toml` (listen addresses and store path are filled in) and starts a gateway.
pub async fn spawn_gateway(toml: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    spawn_gateway_in(toml, dir).await
}

/// Fills in what a test config leaves out: admin listener, bootstrap key file, store
/// in `dir`, proxy listener on port 0.
pub fn complete_toml(toml: &str, dir: &std::path::Path) -> String {
    let store = dir.join("keygate.redb");
    let key = dir.join("admin.key");
    let admin = format!(
        "listen = \"127.0.0.1:0\"\nbootstrap_key_file = {:?}\n",
        key.display().to_string()
    );
    // A test may bring its own [admin] table (e.g. for tls); the lines go into it.
    let mut text = if toml.contains("[admin]\n") {
        toml.replacen("[admin]\n", &format!("[admin]\n{admin}"), 1)
    } else {
        format!("[admin]\n{admin}{toml}")
    };
    if !toml.contains("[store]") {
        text = format!(
            "[store]\nbackend = \"embedded\"\npath = {:?}\n{text}",
            store.display().to_string()
        );
    }
    if !toml.contains("[proxy]") {
        text = format!("[proxy]\nlisten = \"127.0.0.1:0\"\n{text}");
    } else if !toml.contains("listen") {
        text = text.replacen("[proxy]\n", "[proxy]\nlisten = \"127.0.0.1:0\"\n", 1);
    }
    text
}

/// Like [`spawn_gateway`], reusing `dir` (its store file) — for restart tests. The
/// completed configuration is written to `dir/keygate.toml` (reloads re-read it).
pub async fn spawn_gateway_in(toml: &str, dir: tempfile::TempDir) -> TestGateway {
    spawn_gateway_with_clock(toml, dir, Arc::new(keygate::stats::SystemClock)).await
}

/// Like [`spawn_gateway_in`], with the clock the statistics use.
pub async fn spawn_gateway_with_clock(
    toml: &str,
    dir: tempfile::TempDir,
    clock: Arc<dyn keygate::stats::Clock>,
) -> TestGateway {
    let key = dir.path().join("admin.key");
    let text = complete_toml(toml, dir.path());
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::parse(&text, &path, |_| None)
        .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
    let listeners = Listeners {
        proxy: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let proxy = listeners.proxy.local_addr().unwrap();
    let admin = listeners.admin.local_addr().unwrap();
    let gw = Gateway::start_with_clock(config.clone(), clock)
        .await
        .expect("gateway start");
    let tokens = gw.tokens().clone();
    let shared = Arc::clone(gw.shared());
    let reload = gw.reload_handle();
    let admin_key = std::fs::read_to_string(&key)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let (stop, stop_rx) = oneshot::channel::<()>();
    // As the binary: `proxy.workers` worker threads (unset: one per core), each with
    // its own runtime, serve the proxy's connections.
    let workers = keygate::Workers::for_config(config.proxy.workers, |_| {}).unwrap();
    let task = tokio::spawn(gw.run(listeners, workers, async move {
        let _ = stop_rx.await;
    }));
    TestGateway {
        proxy,
        admin,
        admin_key,
        tokens,
        config,
        dir,
        shared,
        reload,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A plain HTTP/1.1 client (keep-alive pool).
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An h2c (prior knowledge) client.
pub fn h2c_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// A collected response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    /// `error_code` of an error body.
    pub fn code(&self) -> String {
        self.json()["error_code"].as_str().unwrap_or("").to_string()
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends a request with optional `Authorization: ApiKey <key>` and collects the answer.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    key: Option<&str>,
    body: Bytes,
) -> Answer {
    send_with(client, method, url, key, &[], body).await
}

/// [`send`] with extra request headers.
pub async fn send_with(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    let mut b = Request::builder().method(method).uri(url);
    if let Some(k) = key {
        b = b.header("authorization", format!("ApiKey {k}"));
    }
    for (name, value) in headers {
        b = b.header(*name, *value);
    }
    let res = client
        .request(b.body(Full::new(body)).unwrap())
        .await
        .expect("request");
    let (parts, body) = res.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

/// GET with a key.
pub async fn get(url: &str, key: Option<&str>) -> Answer {
    send(&client(), Method::GET, url, key, Bytes::new()).await
}

/// Writes raw bytes to `addr` and reads the whole answer until the server closes
/// (send `Connection: close`) or 5 s pass.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Status code of a raw HTTP/1 answer (0 if none).
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Polls `f` until it is true or `deadline` passes.
pub async fn eventually(deadline: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` (or three joined into a cluster) started by the test on free ports,
/// killed by PID when dropped. Standalone servers keep an append-only file synced on
/// every write, so a server killed and restarted on the same port keeps its data.
pub struct TestRedis {
    /// `redis://127.0.0.1:port` or `redis+cluster://127.0.0.1:p1,…`.
    pub url: String,
    /// Ports of every node.
    pub ports: Vec<u16>,
    dir: tempfile::TempDir,
    children: Vec<std::process::Child>,
}

impl TestRedis {
    /// Kills every node (SIGKILL) and waits for them to exit.
    pub fn kill(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills one cluster node (SIGKILL), by its index in `ports`.
    pub fn kill_node(&mut self, i: usize) {
        let mut c = std::mem::replace(
            &mut self.children[i],
            std::process::Command::new("true").spawn().unwrap(),
        );
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Starts a node killed by [`TestRedis::kill_node`] again (same port and
    /// `nodes.conf`, so it rejoins the cluster as itself).
    pub async fn restart_node(&mut self, i: usize) {
        let port = self.ports[i];
        let old = std::mem::replace(
            &mut self.children[i],
            start_redis_process(port, self.dir.path(), true),
        );
        let mut old = old;
        let _ = old.wait();
        wait_redis_ready(port).await;
    }

    /// Starts a killed standalone server again on the same port and data directory.
    pub async fn restart(&mut self) {
        assert!(self.children.is_empty(), "kill it first");
        let port = self.ports[0];
        self.children
            .push(start_redis_process(port, self.dir.path(), false));
        wait_redis_ready(port).await;
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on 127.0.0.1 (and, for cluster nodes, its bus port +10000 too).
fn free_port(with_bus: bool) -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if !with_bus {
            return port;
        }
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn start_redis_process(port: u16, dir: &std::path::Path, cluster: bool) -> std::process::Child {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).unwrap();
    let mut cmd = std::process::Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
    ])
    .arg("--dir")
    .arg(&node_dir)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    if cluster {
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--appendonly",
            "no",
        ]);
    } else {
        cmd.args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--enable-debug-command",
            "local",
        ]);
    }
    cmd.spawn().expect("start redis-server (is it installed?)")
}

/// Sends one inline command to the Redis on `port` and returns the raw answer
/// (`None` if none within 1 s).
pub async fn redis_raw(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("{command}\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Waits until the server on `port` stops answering (a `DEBUG SLEEP` sent on another
/// connection is under way); false if it still answers after 5 s.
pub async fn redis_asleep(port: u16) -> bool {
    eventually(Duration::from_secs(5), async || {
        let ping = async {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            s.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 64];
            s.read(&mut buf).await.ok()
        };
        tokio::time::timeout(Duration::from_millis(200), ping)
            .await
            .is_err()
    })
    .await
}

async fn redis_ready(port: u16) -> bool {
    eventually(Duration::from_secs(10), async || {
        redis_raw(port, "PING")
            .await
            .is_some_and(|a| a.starts_with("+PONG"))
    })
    .await
}

/// Whether *our* child answers on `port` (not another test's server that took it).
async fn redis_child_ready(port: u16, child: &mut std::process::Child) -> bool {
    let want = format!("process_id:{}\r", child.id());
    eventually(Duration::from_secs(10), async || {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true; // exited (port taken); the caller sees it below
        }
        redis_raw(port, "INFO server")
            .await
            .is_some_and(|a| a.contains(&want))
    })
    .await
        && matches!(child.try_wait(), Ok(None))
}

async fn wait_redis_ready(port: u16) {
    assert!(
        redis_ready(port).await,
        "redis-server on port {port} did not start"
    );
}

/// Starts a standalone `redis-server` on a free port. The port is picked by binding
/// port 0 and releasing it, so another test may take it first: then retry on another.
pub async fn spawn_redis() -> TestRedis {
    let dir = tempfile::tempdir().unwrap();
    let mut attempt = 0;
    let (port, child) = loop {
        attempt += 1;
        let port = free_port(false);
        let mut child = start_redis_process(port, dir.path(), false);
        if redis_child_ready(port, &mut child).await {
            break (port, child);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(attempt < 4, "redis-server did not start on 3 free ports");
    };
    TestRedis {
        url: format!("redis://127.0.0.1:{port}"),
        ports: vec![port],
        dir,
        children: vec![child],
    }
}

/// Starts three cluster-enabled `redis-server`s and joins them with
/// `redis-cli --cluster create` (no replicas).
pub async fn spawn_redis_cluster() -> TestRedis {
    let dir = tempfile::tempdir().unwrap();
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < 3 {
        let p = free_port(true);
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let mut redis = TestRedis {
        url: format!(
            "redis+cluster://{}",
            ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
        ports: ports.clone(),
        children: Vec::new(),
        dir,
    };
    for &p in &ports {
        redis
            .children
            .push(start_redis_process(p, redis.dir.path(), true));
    }
    for &p in &ports {
        wait_redis_ready(p).await;
    }
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
    })
    .await
    .unwrap()
    .expect("run redis-cli --cluster create");
    assert!(
        out.status.success(),
        "redis-cli --cluster create failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for &p in &ports {
        let ok = eventually(Duration::from_secs(15), async || {
            redis_raw(p, "CLUSTER INFO")
                .await
                .is_some_and(|a| a.contains("cluster_state:ok"))
        })
        .await;
        assert!(ok, "cluster node {p} never reached cluster_state:ok");
    }
    redis
}

/// The `[store]` section for a gateway on `redis` with its own key prefix.
pub fn redis_store_toml(redis: &TestRedis, prefix: &str, extra: &str) -> String {
    format!(
        "[store]\nbackend = \"redis\"\nurl = {:?}\nkey_prefix = {prefix:?}\n{extra}\n",
        redis.url
    )
}

/// Sends `body` (JSON text, may be empty) to the admin listener with `key`.
pub async fn admin_call(
    gw: &TestGateway,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> Answer {
    send(
        &client(),
        method,
        &gw.admin_url(path),
        key,
        Bytes::from(body.to_string()),
    )
    .await
}

/// Creates a token through the admin API with `key`; asserts 201 and returns
/// (id, api_key, answer body).
pub async fn create_token(
    gw: &TestGateway,
    key: &str,
    body: serde_json::Value,
) -> (String, String, serde_json::Value) {
    let a = admin_call(gw, Method::POST, "/v1/tokens", Some(key), &body.to_string()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    let v = a.json();
    let field = |name: &str| v[name].as_str().unwrap_or_default().to_string();
    (field("id"), field("api_key"), v)
}

/// The value of the first sample line of the admin listener's `/metrics` that starts
/// with `line_start` (0 when there is none).
pub async fn metric(gw: &TestGateway, line_start: &str) -> f64 {
    let text = get(&gw.admin_url("/metrics"), None).await.text();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
