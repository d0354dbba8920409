//! The `keygate` binary: serve (bootstrap key file, log lines, SIGTERM drain and exit 0)
//! and check-config (module table, errors naming file/key/reason, exit codes).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Method;

use common::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keygate"))
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A configuration with both listeners on port 0: the bound addresses are read from
/// the "keygate listening" log line.
fn write_config(dir: &Path, upstream: &str, workers: usize) -> std::path::PathBuf {
    let path = dir.join("keygate.toml");
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\n[admin]\nlisten = \"127.0.0.1:0\"\nbootstrap_key_file = {:?}\n[store]\npath = {:?}\n{}",
        dir.join("admin.key").display().to_string(),
        dir.join("kg.redb").display().to_string(),
        module_toml("agreements", &["/public/v1/agreements"], upstream, "")
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn wait_for_file(path: &Path) -> String {
    assert!(
        eventually(Duration::from_secs(20), async || path.exists()
            && std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n')))
        .await,
        "{} never appeared",
        path.display()
    );
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// The proxy and admin addresses of a "keygate listening" line, text or JSON.
fn listening_addresses(line: &str) -> Option<(String, String)> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        let addr = |k: &str| v[k].as_str().map(str::to_string);
        return Some((addr("proxy")?, addr("admin")?));
    }
    let addr = |k: &str| {
        line.split(&format!("{k}="))
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
    };
    Some((addr("proxy")?, addr("admin")?))
}

/// `keygate serve` on `cfg` with its stdout read line by line: the process, the proxy
/// and admin addresses from its "keygate listening" line, and the lines it printed
/// (returned once it exits).
async fn serve(
    cfg: &Path,
    log_format: &str,
) -> (Proc, String, String, std::thread::JoinHandle<Vec<String>>) {
    let mut child = bin()
        .args(["serve", "--config"])
        .arg(cfg)
        .args(["--log-format", log_format])
        .env("KEYGATE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let lines = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let proc = Proc(child);
    let listening = tokio::task::spawn_blocking(move || {
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("keygate listening") => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .unwrap()
    .expect("a \"keygate listening\" log line");
    let (proxy, admin) =
        listening_addresses(&listening).unwrap_or_else(|| panic!("addresses in {listening:?}"));
    (proc, proxy, admin, lines)
}

/// The names of the process's threads that serve proxy connections (`keygate-worker-N`,
/// cut to 15 bytes by the kernel).
#[cfg(target_os = "linux")]
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("keygate-worker"))
        .count()
}

/// The binary on `workers` proxy workers: a request through the proxy, the admin
/// health check, a slow request that SIGTERM lets finish, exit 0; the log lines.
async fn serve_round_trip(log_format: &str, workers: usize) -> Vec<String> {
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up.url(), workers);
    let (proc, proxy, admin, lines) = serve(&cfg, log_format).await;
    // One worker is the main thread; more are threads of their own (thread per core).
    #[cfg(target_os = "linux")]
    assert_eq!(
        worker_threads(proc.0.id()),
        if workers == 1 { 0 } else { workers }
    );
    let key = wait_for_file(&dir.path().join("admin.key")).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("admin.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let a = get(&format!("http://{admin}/healthz"), None).await;
    assert_eq!(a.status, 200);
    // A slow request in flight when SIGTERM arrives still completes.
    let slow = tokio::spawn({
        let key = key.clone();
        async move {
            get(
                &format!("http://{proxy}/public/v1/agreements/slow?sleep_ms=500"),
                Some(&key),
            )
            .await
            .status
        }
    });
    // Signal only once the request is in flight (a fixed sleep races a loaded machine).
    assert!(eventually(Duration::from_secs(10), async || up.arrived() == 1).await);
    let mut proc = proc;
    let pid = proc.0.id();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(slow.await.unwrap(), 200);
    let status = tokio::task::spawn_blocking(move || {
        let s = proc.0.wait().unwrap();
        std::mem::forget(proc);
        s
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let lines = lines.join().unwrap();
    let secret = key.split(':').nth(1).unwrap();
    assert!(
        lines.iter().all(|l| !l.contains(secret)),
        "a log line holds the secret"
    );
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_text_logs_one_line_per_request_and_drains_on_sigterm() {
    let lines = serve_round_trip("text", 1).await;
    let req: Vec<&String> = lines.iter().filter(|l| l.contains("slow")).collect();
    assert_eq!(req.len(), 1, "{lines:#?}");
    for field in [
        "request_id",
        "token",
        "module",
        "method",
        "path",
        "status",
        "latency_us",
    ] {
        assert!(req[0].contains(field), "{field} missing: {}", req[0]);
    }
    assert!(
        lines.iter().any(|l| l.contains("admin.key")),
        "bootstrap path not logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_json_logs_parse() {
    // On three worker threads: the drain waits for the request on its worker.
    let lines = serve_round_trip("json", 3).await;
    let mut found = false;
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        if v["path"] == "/public/v1/agreements/slow" {
            found = true;
            assert_eq!(v["status"], 200);
            assert_eq!(v["module"], "agreements");
            assert_eq!(v["method"], "GET");
            assert!(v["token"].as_str().unwrap().starts_with("SU-"));
            assert!(v["latency_us"].as_u64().is_some());
            assert!(v["request_id"].as_str().is_some());
        }
    }
    assert!(found, "{lines:#?}");
}

#[test]
fn check_config_prints_the_module_table() {
    let out = bin()
        .args(["check-config", "--config", "config/keygate.toml"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for m in [
        "agreements",
        "tier_accounts",
        "usage",
        "/public/v1/subscriptions",
        "http://127.0.0.1:7001",
    ] {
        assert!(text.contains(m), "{m} missing:\n{text}");
    }
}

#[test]
fn bad_config_names_file_key_and_reason_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[proxy]\nlisten = \"127.0.0.1:8080\"\nlisten_backlog = 5\n",
    )
    .unwrap();
    for sub in ["check-config", "serve"] {
        let out = bin().arg(sub).arg("--config").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{sub}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.contains("bad.toml")
                && err.contains("proxy.listen_backlog")
                && err.contains("unknown field"),
            "{sub}: {err}"
        );
    }
    let out = bin()
        .args(["check-config", "--config", "/nonexistent/k.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("cannot read")
    );
}

#[test]
fn bad_cli_arguments_fail_with_usage() {
    for args in [
        &["serve", "--bogus"][..],
        &["serve", "--log-format", "xml"],
        &["frobnicate"],
        &[],
    ] {
        let out = bin().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn env_overrides_reach_the_binary() {
    let out = bin()
        .args(["check-config", "--config", "config/keygate.toml"])
        .env("KEYGATE_PROXY_LISTEN", "127.0.0.1:18080")
        .env("KEYGATE_STORE_PATH", "/tmp/elsewhere.redb")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("127.0.0.1:18080") && text.contains("/tmp/elsewhere.redb"),
        "{text}"
    );
    let out = bin()
        .args(["check-config", "--config", "config/keygate.toml"])
        .env("KEYGATE_PROXY_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("proxy.listen")
    );
}

/// Every embedded-store call runs on tokio's blocking pool, and the store has one
/// writer: with tokio's default pool (512 threads), clients creating tokens at once
/// made the process start a thread per waiting call (~380 threads and 1.6 GB of RSS
/// for the load script's 8 clients × 10,000 tokens). The binary caps the pool at 16.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admin_writes_do_not_multiply_threads() {
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up.url(), 1);
    let (proc, _proxy, admin, _lines) = serve(&cfg, "text").await;
    let key = wait_for_file(&dir.path().join("admin.key")).await;
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", proc.0.id()))
            .unwrap()
            .count()
    };
    let before = threads();
    let client = client();
    let body = Bytes::from(r#"{"name": "many", "permissions": ["agreements"]}"#);
    // 24 clients: the admin listener admits 32 connections per address.
    let creates = (0..24).map(|_| {
        let (client, body, key) = (client.clone(), body.clone(), key.clone());
        let url = format!("http://{admin}/v1/tokens");
        tokio::spawn(async move {
            for _ in 0..8 {
                let a = send(&client, Method::POST, &url, Some(&key), body.clone()).await;
                assert_eq!(a.status, 201, "{}", a.text());
            }
        })
    });
    for c in creates.collect::<Vec<_>>() {
        c.await.unwrap();
    }
    // Idle blocking threads live on for 10 s, so the count now is the most there were.
    let after = threads();
    assert!(
        after <= before + 16,
        "{before} threads before 24 clients created 192 tokens at once, {after} after"
    );
}
