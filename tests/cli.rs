//! `keygate token …` through the built binary against a running gateway.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;
use http::Method;
use serde_json::Value;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "stderr: {}\nstdout: {}",
            self.stderr, self.stdout
        );
        &self.stdout
    }
    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
    fn fails_with(&self, text: &str) {
        assert_ne!(self.code, 0, "stdout: {}", self.stdout);
        assert!(
            self.stderr.contains(text),
            "{text:?} not in stderr {:?}",
            self.stderr
        );
    }
}

/// Runs the binary with `args` and exactly the `env` given among the KEYGATE_ ones.
async fn keygate(args: &[&str], env: &[(&str, &str)]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let out: Output = tokio::task::spawn_blocking(move || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keygate"));
        c.args(&args)
            .env_remove("KEYGATE_ADMIN_URL")
            .env_remove("KEYGATE_ADMIN_KEY")
            .env_remove("KEYGATE_ADMIN_LISTEN");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run keygate")
    })
    .await
    .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

struct Cli {
    gw: TestGateway,
    _up: TestUpstream,
    url: String,
    key_file: PathBuf,
}

impl Cli {
    async fn new() -> Cli {
        let up = spawn_upstream().await;
        let mut toml = module_toml("agreements", &["/public/v1/agreements"], &up.url(), "");
        toml += &module_toml("billing", &["/public/v1/billing"], &up.url(), "");
        let gw = spawn_gateway(&toml).await;
        let url = format!("http://{}", gw.admin);
        let key_file = gw.dir.path().join("admin.key");
        Cli {
            gw,
            _up: up,
            url,
            key_file,
        }
    }

    /// `keygate token <args> --admin-url … --admin-key-file …`.
    async fn token(&self, args: &[&str]) -> Run {
        let mut all = vec!["token"];
        all.extend_from_slice(args);
        let key_file = self.key_file.display().to_string();
        all.extend_from_slice(&["--admin-url", &self.url, "--admin-key-file", &key_file]);
        keygate(&all, &[]).await
    }

    async fn proxy_status(&self, key: &str) -> u16 {
        get(&self.gw.url("/public/v1/agreements/x"), Some(key))
            .await
            .status
            .as_u16()
    }
}

#[tokio::test]
async fn lifecycle_through_the_binary() {
    let cli = Cli::new().await;
    // create (JSON: the API body unchanged, with the key).
    let created = cli
        .token(&[
            "create",
            "--name",
            "Zapier prod",
            "--description",
            "orders sync",
            "--external-id",
            "ZAP-7",
            "--extension",
            "zapier",
            "--permissions",
            "agreements,billing",
            "--expires-in",
            "30d",
            "--json",
        ])
        .await
        .json();
    let id = created["id"].as_str().unwrap().to_string();
    let key = created["api_key"].as_str().unwrap().to_string();
    assert_eq!(
        created["permissions"],
        serde_json::json!(["agreements", "billing"])
    );
    assert_eq!(cli.proxy_status(&key).await, 200);

    // create (human): the key is printed once.
    let human = cli
        .token(&["create", "--name", "second", "--permissions", "all"])
        .await;
    let out = human.ok();
    assert!(out.contains("API key"), "{out}");
    let second_key = out
        .lines()
        .find(|l| l.starts_with("SU-") && l.contains(':'))
        .expect("key line")
        .to_string();
    assert_eq!(cli.proxy_status(&second_key).await, 200);

    // list: table and JSON.
    let table = cli.token(&["list"]).await;
    let out = table.ok();
    let header = out.lines().next().unwrap();
    for col in [
        "ID",
        "NAME",
        "EXTENSION",
        "PERMISSIONS",
        "STATUS",
        "CREATED",
        "EXPIRES",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row = out.lines().find(|l| l.starts_with(&id)).expect("row");
    assert!(row.contains("Zapier prod") && row.contains("zapier") && row.contains("active"));
    assert!(out.contains("items 0-2/3"), "{out}");
    let list = cli
        .token(&["list", "--json", "--search", "zapier prod", "--limit", "5"])
        .await
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert!(list[0].get("api_key").is_none());
    let list = cli
        .token(&["list", "--json", "--status", "disabled"])
        .await
        .json();
    assert_eq!(list, serde_json::json!([]));

    // show.
    let out = cli.token(&["show", &id]).await;
    let out = out.ok();
    assert!(
        out.contains("Zapier prod") && out.contains("ZAP-7"),
        "{out}"
    );
    assert!(!out.contains(key.split(':').nth(1).unwrap()));
    let shown = cli.token(&["show", &id, "--json"]).await.json();
    assert_eq!(shown["status"], "active");

    // edit: rename, clear the external id, narrow the permissions.
    let edited = cli
        .token(&[
            "edit",
            &id,
            "--name",
            "renamed",
            "--external-id",
            "",
            "--permissions",
            "billing",
            "--json",
        ])
        .await
        .json();
    assert_eq!(edited["name"], "renamed");
    assert_eq!(edited["external_id"], Value::Null);
    assert_eq!(cli.proxy_status(&key).await, 403);
    cli.token(&["edit", &id, "--permissions", "agreements"])
        .await
        .ok();

    // disable / enable: at once on the proxy.
    let out = cli.token(&["disable", &id]).await;
    assert!(out.ok().contains("disabled"));
    assert_eq!(cli.proxy_status(&key).await, 401);
    cli.token(&["enable", &id]).await.ok();
    assert_eq!(cli.proxy_status(&key).await, 200);

    // rotate: new key once, old one refused (no grace).
    let rotated = cli
        .token(&["rotate", &id, "--grace-period", "0s", "--json"])
        .await
        .json();
    let new_key = rotated["api_key"].as_str().unwrap().to_string();
    assert_eq!(cli.proxy_status(&key).await, 401);
    assert_eq!(cli.proxy_status(&new_key).await, 200);

    // renew: for the period last chosen, or a given one.
    let renewed = cli.token(&["renew", &id, "--json"]).await.json();
    assert_eq!(renewed["status"], "active");
    let renewed = cli
        .token(&[
            "renew",
            &id,
            "--expires-at",
            "2999-01-01T00:00:00Z",
            "--json",
        ])
        .await
        .json();
    assert_eq!(renewed["expires_at"], "2999-01-01T00:00:00Z");
    cli.token(&["edit", &id, "--expires-at", "never"])
        .await
        .ok();
    cli.token(&["renew", &id]).await.fails_with("NOT_RENEWABLE");

    // events.
    let out = cli.token(&["events", &id]).await;
    let out = out.ok();
    for action in [
        "created", "updated", "disabled", "enabled", "rotated", "renewed",
    ] {
        assert!(out.contains(action), "{action} missing in {out}");
    }

    // delete.
    let out = cli.token(&["delete", &id]).await;
    assert!(out.ok().contains(&id));
    assert_eq!(cli.proxy_status(&new_key).await, 401);
    cli.token(&["show", &id])
        .await
        .fails_with("TOKEN_NOT_FOUND");
    cli.token(&["delete", &id]).await.fails_with("404");
}

#[tokio::test]
async fn error_answers_exit_non_zero_with_the_server_text() {
    let cli = Cli::new().await;
    let r = cli
        .token(&["create", "--name", "x", "--permissions", "nope"])
        .await;
    r.fails_with("VALIDATION");
    r.fails_with("permissions");
    cli.token(&["create", "--permissions", "agreements"])
        .await
        .fails_with("name");
    cli.token(&["show", "SU-000-000-001"])
        .await
        .fails_with("TOKEN_NOT_FOUND");
    cli.token(&["show", "not/an id"]).await.fails_with("404");
    cli.token(&["list", "--limit", "0"])
        .await
        .fails_with("limit");
    let me = cli.gw.admin_key.split(':').next().unwrap().to_string();
    cli.token(&["disable", &me])
        .await
        .fails_with("SELF_LOCKOUT");
    cli.token(&["stats", "SU-000-000-001"])
        .await
        .fails_with("404 TOKEN_NOT_FOUND");
    // A wrong key.
    let bad = cli.gw.dir.path().join("bad.key");
    std::fs::write(
        &bad,
        "SU-000-000-001:0000000000000000000000000000000000000000\n",
    )
    .unwrap();
    keygate(
        &[
            "token",
            "list",
            "--admin-url",
            &cli.url,
            "--admin-key-file",
            bad.to_str().unwrap(),
        ],
        &[],
    )
    .await
    .fails_with("AUTH_INVALID");
    // Nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    keygate(
        &[
            "token",
            "list",
            "--admin-url",
            &dead,
            "--admin-key-file",
            cli.key_file.to_str().unwrap(),
        ],
        &[],
    )
    .await
    .fails_with("cannot reach");
    // Usage errors.
    let r = keygate(&["token", "rotate"], &[]).await;
    assert_ne!(r.code, 0);
    let r = keygate(&["token", "frobnicate"], &[]).await;
    assert_ne!(r.code, 0);
}

#[tokio::test]
async fn defaults_from_config_and_environment() {
    let cli = Cli::new().await;
    // The config's admin.listen and admin.bootstrap_key_file.
    let config = cli.gw.dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"{}\"\nbootstrap_key_file = {:?}\n[store]\npath = {:?}\n[[modules]]\nname = \"agreements\"\nprefixes = [\"/a\"]\nupstream = \"http://127.0.0.1:1\"\n",
            cli.gw.admin,
            cli.key_file.display().to_string(),
            cli.gw.dir.path().join("unused.redb").display().to_string(),
        ),
    )
    .unwrap();
    let r = keygate(
        &[
            "token",
            "list",
            "--json",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    // Environment: the URL and the key itself.
    let r = keygate(
        &["token", "list", "--json"],
        &[
            ("KEYGATE_ADMIN_URL", &cli.url),
            ("KEYGATE_ADMIN_KEY", &cli.gw.admin_key),
        ],
    )
    .await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    // Flags win over the environment.
    let r = keygate(
        &[
            "token",
            "list",
            "--json",
            "--admin-url",
            &cli.url,
            "--admin-key-file",
            cli.key_file.to_str().unwrap(),
        ],
        &[
            ("KEYGATE_ADMIN_URL", "http://127.0.0.1:1"),
            ("KEYGATE_ADMIN_KEY", "garbage"),
        ],
    )
    .await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    // No config file and nothing else: a clear message.
    let r = keygate(
        &["token", "list", "--config", "/nonexistent/keygate.toml"],
        &[],
    )
    .await;
    r.fails_with("--admin-url");
}

/// The days rows of the `stats` table: `(date, [2xx, 3xx, 4xx, 5xx])`, then the total.
fn stats_rows(out: &str) -> (Vec<(String, [u64; 4])>, [u64; 4]) {
    let parse = |l: &str| {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 5, "{l:?}");
        let n = |i: usize| f[i].parse::<u64>().unwrap_or_else(|e| panic!("{e}: {l:?}"));
        (f[0].to_string(), [n(1), n(2), n(3), n(4)])
    };
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["DATE", "2XX", "3XX", "4XX", "5XX"]);
    let mut days = Vec::new();
    for l in lines.by_ref() {
        let (label, c) = parse(l);
        if label == "total" {
            return (days, c);
        }
        days.push((label, c));
    }
    panic!("no total row in {out}");
}

#[tokio::test]
async fn stats_table_sparklines_and_json() {
    let cli = Cli::new().await;
    let (id, key) = cli.gw.token(&["agreements"]).await;
    let id = id.to_string();
    // 3 × 2xx, 1 × 3xx, 2 × 4xx, 1 × 5xx. The route adds the counts not yet flushed
    // to the store, and a response is counted before it is sent: no waiting needed.
    for (status, times) in [(200, 3), (302, 1), (404, 2), (503, 1)] {
        for _ in 0..times {
            let a = get(
                &cli.gw
                    .url(&format!("/public/v1/agreements/x?status={status}")),
                Some(&key),
            )
            .await;
            assert_eq!(a.status.as_u16(), status);
        }
    }

    let r = cli.token(&["stats", &id]).await;
    let out = r.ok();
    let (days, total) = stats_rows(out);
    assert_eq!(total, [3, 1, 2, 1], "{out}");
    assert_eq!(days.len(), 30, "{out}");
    assert_eq!(days.last().unwrap().1, [3, 1, 2, 1]);
    assert!(days[..29].iter().all(|(_, c)| *c == [0, 0, 0, 0]), "{out}");
    // One sparkline per class: blanks for the idle days, a full bar for today, the
    // class total at the end; the whole output fits in 80 columns.
    for (class, n) in [("2xx", 3), ("3xx", 1), ("4xx", 2), ("5xx", 1)] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{class} |")))
            .unwrap_or_else(|| panic!("no {class} sparkline in {out}"));
        assert_eq!(line, format!("{class} |{}█|  {n}", " ".repeat(29)), "{out}");
    }
    assert!(out.lines().all(|l| l.chars().count() <= 80), "{out}");

    // --json: the route's body unchanged.
    let printed = cli.token(&["stats", &id, "--json"]).await.json();
    let direct = admin_call(
        &cli.gw,
        Method::GET,
        &format!("/v1/tokens/{id}/stats"),
        Some(&cli.gw.admin_key),
        "",
    )
    .await
    .json();
    assert_eq!(printed, direct);
    let week = cli
        .token(&["stats", &id, "--days", "7", "--json"])
        .await
        .json();
    assert_eq!(week["days"].as_array().unwrap().len(), 7);
    assert_eq!(week["totals"], direct["totals"]);
    let (days, _) = stats_rows(cli.token(&["stats", &id, "--days", "1"]).await.ok());
    assert_eq!(days.len(), 1);

    // Errors: the server's text, exit non-zero.
    let r = cli.token(&["stats", &id, "--days", "0"]).await;
    r.fails_with("400 VALIDATION");
    r.fails_with("days");
    assert!(r.stdout.is_empty());
    cli.token(&["stats", &id, "--days", "31"])
        .await
        .fails_with("days");
    cli.token(&["stats", "SU-000-000-001"])
        .await
        .fails_with("404 TOKEN_NOT_FOUND");
    cli.token(&["stats", "SU-000-000-001", "--json"])
        .await
        .fails_with("TOKEN_NOT_FOUND");
}
