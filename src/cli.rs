//! `keygate token …`: a client of the admin API (SPEC §6). Human tables by default,
//! `--json` prints the API's body unchanged; exit code 0, or non-zero with the server's
//! error text on stderr.

use keygate::error::error_chain;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate::config::{Config, DEFAULT_CONFIG_PATH};
use serde_json::{Map, Value, json};

mod stats;

/// Whole-request deadline.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Longest name shown in a table cell.
const NAME_WIDTH: usize = 40;

/// A failure of the command: printed as `keygate: <text>`, exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(String);

fn fail<T>(msg: impl Into<String>) -> Result<T, CliError> {
    Err(CliError(msg.into()))
}

/// `keygate token …`.
#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    cmd: TokenCmd,
    #[command(flatten)]
    conn: Connection,
}

/// Where the admin API is and which key to use.
#[derive(Args)]
struct Connection {
    /// Configuration file: its admin.listen and admin.bootstrap_key_file are the
    /// defaults of --admin-url and --admin-key-file.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Admin API base URL, e.g. http://127.0.0.1:9090.
    #[arg(long, global = true, env = "KEYGATE_ADMIN_URL")]
    admin_url: Option<String>,
    /// File holding the admin key `<id>:<secret>` (else $KEYGATE_ADMIN_KEY, else the
    /// config's admin.bootstrap_key_file).
    #[arg(long, global = true)]
    admin_key_file: Option<PathBuf>,
    /// Print the admin API's JSON body unchanged.
    #[arg(long, global = true)]
    json: bool,
}

/// Token fields settable at create and edit.
#[derive(Args)]
struct Fields {
    /// Name (1-128 characters).
    #[arg(long)]
    name: Option<String>,
    /// Description (0-1024 characters).
    #[arg(long)]
    description: Option<String>,
    /// External id (1-64 printable ASCII characters); "" clears it (edit).
    #[arg(long)]
    external_id: Option<String>,
    /// Extension name (see GET /v1/extensions); default custom.
    #[arg(long)]
    extension: Option<String>,
    /// Module names, comma-separated, each optionally `:read` (GET/HEAD/OPTIONS only),
    /// or `all`, or `all:read` (e.g. `agreements:read,billing`).
    #[arg(long)]
    permissions: Option<String>,
    /// A rate limit `<requests>/<per>`, e.g. `100/1m` (repeatable, at most 4); `none`
    /// clears them (edit).
    #[arg(long = "rate-limit")]
    rate_limit: Vec<String>,
    /// A quota `<requests>/<day|month>`, e.g. `100000/month`; `none` clears it (edit).
    #[arg(long)]
    quota: Option<String>,
    /// Client addresses or CIDR blocks, comma-separated (e.g. `10.0.0.0/8,192.0.2.7`);
    /// `none` clears them (edit).
    #[arg(long)]
    allowed_ips: Option<String>,
    /// Validity from now: 7d, 30d, 90d, 1y, 12h …
    #[arg(long, conflicts_with = "expires_at")]
    expires_in: Option<String>,
    /// Expiry time (RFC 3339); `never` makes the token perpetual (edit).
    #[arg(long)]
    expires_at: Option<String>,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token; prints its API key once.
    Create {
        #[command(flatten)]
        fields: Fields,
    },
    /// List tokens, newest first.
    List {
        /// active, disabled or expired.
        #[arg(long)]
        status: Option<String>,
        /// Extension name.
        #[arg(long)]
        extension: Option<String>,
        /// Case-insensitive text in name, description or external id.
        #[arg(long)]
        search: Option<String>,
        /// Page size (1-1000, default 100).
        #[arg(long)]
        limit: Option<String>,
        /// Tokens to skip.
        #[arg(long)]
        offset: Option<String>,
    },
    /// Show one token.
    Show {
        /// Token id (SU-ddd-ddd-ddd).
        id: String,
    },
    /// Change some fields of a token.
    Edit {
        /// Token id.
        id: String,
        #[command(flatten)]
        fields: Fields,
    },
    /// Disable a token.
    Disable {
        /// Token id.
        id: String,
    },
    /// Enable a token.
    Enable {
        /// Token id.
        id: String,
    },
    /// Replace a token's secret; prints the new API key once.
    Rotate {
        /// Token id.
        id: String,
        /// How long the old secret keeps working (default 0s, at most 7d).
        #[arg(long)]
        grace_period: Option<String>,
    },
    /// Extend a token's expiry (default: the validity period last chosen).
    Renew {
        /// Token id.
        id: String,
        /// New validity from now.
        #[arg(long, conflicts_with = "expires_at")]
        expires_in: Option<String>,
        /// New expiry time (RFC 3339).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Delete a token (its id is never reused).
    Delete {
        /// Token id.
        id: String,
    },
    /// Requests per day by response class.
    Stats {
        /// Token id.
        id: String,
        /// Days to show (default 30).
        #[arg(long)]
        days: Option<String>,
    },
    /// The token's audit log.
    Events {
        /// Token id.
        id: String,
    },
}

/// Runs `keygate token …`.
pub fn run(args: TokenArgs) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the tokio runtime: {e}")))?;
    rt.block_on(run_async(args))
}

async fn run_async(args: TokenArgs) -> Result<(), CliError> {
    let api = Api::new(&args.conn)?;
    let json = args.conn.json;
    let tid = |id: &str| format!("/v1/tokens/{}", encode(id));
    match args.cmd {
        TokenCmd::Create { fields } => {
            let body = fields.body(false)?;
            let a = api.call(Method::POST, "/v1/tokens", Some(body)).await?;
            print_token(&a, json, true);
        }
        TokenCmd::List {
            status,
            extension,
            search,
            limit,
            offset,
        } => {
            let mut q = Vec::new();
            for (k, v) in [
                ("status", status),
                ("extension", extension),
                ("search", search),
                ("limit", limit),
                ("offset", offset),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", encode(&v)));
                }
            }
            let path = if q.is_empty() {
                "/v1/tokens".to_string()
            } else {
                format!("/v1/tokens?{}", q.join("&"))
            };
            let a = api.call(Method::GET, &path, None).await?;
            if json {
                print_raw(&a);
            } else {
                print_list(&a);
            }
        }
        TokenCmd::Show { id } => {
            let a = api.call(Method::GET, &tid(&id), None).await?;
            print_token(&a, json, false);
        }
        TokenCmd::Edit { id, fields } => {
            let body = fields.body(true)?;
            let a = api.call(Method::PATCH, &tid(&id), Some(body)).await?;
            print_token(&a, json, false);
        }
        TokenCmd::Disable { id } => {
            let a = api
                .call(Method::POST, &format!("{}/disable", tid(&id)), None)
                .await?;
            print_token(&a, json, false);
        }
        TokenCmd::Enable { id } => {
            let a = api
                .call(Method::POST, &format!("{}/enable", tid(&id)), None)
                .await?;
            print_token(&a, json, false);
        }
        TokenCmd::Rotate { id, grace_period } => {
            let mut body = Map::new();
            if let Some(g) = grace_period {
                body.insert("grace_period".into(), Value::String(g));
            }
            let a = api
                .call(
                    Method::POST,
                    &format!("{}/rotate", tid(&id)),
                    Some(Value::Object(body)),
                )
                .await?;
            print_token(&a, json, true);
        }
        TokenCmd::Renew {
            id,
            expires_in,
            expires_at,
        } => {
            let mut body = Map::new();
            if let Some(v) = expires_in {
                body.insert("expires_in".into(), Value::String(v));
            }
            if let Some(v) = expires_at {
                body.insert("expires_at".into(), Value::String(v));
            }
            let a = api
                .call(
                    Method::POST,
                    &format!("{}/renew", tid(&id)),
                    Some(Value::Object(body)),
                )
                .await?;
            print_token(&a, json, false);
        }
        TokenCmd::Delete { id } => {
            let a = api.call(Method::DELETE, &tid(&id), None).await?;
            if json {
                print_raw(&a);
            } else {
                println!("deleted {id}");
            }
        }
        TokenCmd::Stats { id, days } => {
            let path = match days {
                Some(d) => format!("{}/stats?days={}", tid(&id), encode(&d)),
                None => format!("{}/stats", tid(&id)),
            };
            let a = api.call(Method::GET, &path, None).await?;
            if json {
                print_raw(&a);
            } else {
                print_stats(&a);
            }
        }
        TokenCmd::Events { id } => {
            let a = api
                .call(Method::GET, &format!("{}/events", tid(&id)), None)
                .await?;
            if json {
                print_raw(&a);
            } else {
                print_events(&a);
            }
        }
    }
    Ok(())
}

impl Fields {
    /// The JSON body; on edit, `--external-id ""` and `--expires-at never` send `null`.
    fn body(self, edit: bool) -> Result<Value, CliError> {
        let mut m = Map::new();
        let s = |v: String| Value::String(v);
        if let Some(v) = self.name {
            m.insert("name".into(), s(v));
        }
        if let Some(v) = self.description {
            m.insert("description".into(), s(v));
        }
        if let Some(v) = self.external_id {
            let v = if edit && v.is_empty() {
                Value::Null
            } else {
                s(v)
            };
            m.insert("external_id".into(), v);
        }
        if let Some(v) = self.extension {
            m.insert("extension".into(), s(v));
        }
        if let Some(v) = self.permissions {
            let list: Vec<Value> = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| s(p.to_string()))
                .collect();
            m.insert("permissions".into(), Value::Array(list));
        }
        if let Some(v) = self.expires_in {
            m.insert("expires_in".into(), s(v));
        }
        if self.rate_limit.iter().any(|r| r == "none") {
            if !edit || self.rate_limit.len() != 1 {
                return fail("--rate-limit none: only alone, on edit (it clears the limits)");
            }
            m.insert("rate_limits".into(), Value::Array(Vec::new()));
        } else if !self.rate_limit.is_empty() {
            let mut list = Vec::new();
            for r in &self.rate_limit {
                let l = keygate::policy::RateLimit::parse_short(r)
                    .map_err(|e| CliError(format!("--rate-limit: {e}")))?;
                list.push(serde_json::json!({ "requests": l.requests, "per": l.per }));
            }
            m.insert("rate_limits".into(), Value::Array(list));
        }
        if let Some(v) = self.quota {
            if v == "none" {
                if !edit {
                    return fail("--quota none: only on edit (it clears the quota)");
                }
                m.insert("quota".into(), Value::Null);
            } else {
                let q = keygate::policy::Quota::parse_short(&v)
                    .map_err(|e| CliError(format!("--quota: {e}")))?;
                m.insert(
                    "quota".into(),
                    serde_json::json!({ "requests": q.requests, "period": q.period.as_str() }),
                );
            }
        }
        if let Some(v) = self.allowed_ips {
            let list: Vec<Value> = if v == "none" {
                if !edit {
                    return fail("--allowed-ips none: only on edit (it clears the list)");
                }
                Vec::new()
            } else {
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| s(p.to_string()))
                    .collect()
            };
            m.insert("allowed_ips".into(), Value::Array(list));
        }
        if let Some(v) = self.expires_at {
            let v = if v == "never" {
                if !edit {
                    return fail(
                        "--expires-at never: leave both --expires-at and --expires-in out for a perpetual token",
                    );
                }
                Value::Null
            } else {
                s(v)
            };
            m.insert("expires_at".into(), v);
        }
        Ok(Value::Object(m))
    }
}

/// An answer of the admin API (2xx only; errors become [`CliError`]).
struct Answer {
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// The admin API client.
struct Api {
    base: String,
    key: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    fn new(conn: &Connection) -> Result<Api, CliError> {
        let env_key = std::env::var("KEYGATE_ADMIN_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty());
        let needs_config =
            conn.admin_url.is_none() || (conn.admin_key_file.is_none() && env_key.is_none());
        let config = if needs_config {
            Some(load_config(&conn.config)?)
        } else {
            None
        };
        let base = match (&conn.admin_url, &config) {
            (Some(u), _) => u.trim_end_matches('/').to_string(),
            (None, Some(c)) => {
                let mut addr = c.admin.listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{addr}")
            }
            (None, None) => return fail("no admin URL (use --admin-url)"),
        };
        if base.starts_with("https://") {
            return fail(
                "https admin URLs are not supported by this client; use an http:// address on a trusted network",
            );
        }
        let key = match (&conn.admin_key_file, env_key, &config) {
            (Some(f), _, _) => read_key(f)?,
            (None, Some(k), _) => k.trim().to_string(),
            (None, None, Some(c)) => read_key(&c.admin.bootstrap_key_file)?,
            (None, None, None) => {
                return fail("no admin key (use --admin-key-file or KEYGATE_ADMIN_KEY)");
            }
        };
        Ok(Api {
            base,
            key,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, CliError> {
        let url = format!("{}{path}", self.base);
        let uri: Uri = url
            .parse()
            .map_err(|e| CliError(format!("bad admin URL {url:?}: {e}")))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("ApiKey {}", self.key));
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| CliError(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let res = self.client.request(req).await.map_err(|e| {
                CliError(format!(
                    "cannot reach the admin API at {}: {}",
                    self.base,
                    error_chain(&e)
                ))
            })?;
            let (parts, body) = res.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| CliError(format!("reading the answer failed: {e}")))?
                .to_bytes();
            Ok::<_, CliError>((parts.status, parts.headers, body))
        };
        let (status, headers, body) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| CliError(format!("no answer from {} within 30s", self.base)))??;
        if !status.is_success() {
            return Err(server_error(status, &body));
        }
        Ok(Answer { headers, body })
    }
}

/// `<STATUS> <error_code>: <errors>` from the JSON error body.
fn server_error(status: StatusCode, body: &[u8]) -> CliError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = v["error_code"].as_str().unwrap_or("");
    let texts: Vec<&str> = v["errors"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let text = if texts.is_empty() {
        String::from_utf8_lossy(body).trim().to_string()
    } else {
        texts.join("; ")
    };
    CliError(format!("{} {code}: {text}", status.as_u16()))
}

fn load_config(path: &Path) -> Result<Config, CliError> {
    Config::load(path, |k| std::env::var(k).ok()).map_err(|e| {
        CliError(format!(
            "{e} (the admin address and key come from the config unless --admin-url and --admin-key-file or KEYGATE_ADMIN_KEY are given)"
        ))
    })
}

fn read_key(path: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError(format!(
            "cannot read the admin key file {}: {e}",
            path.display()
        ))
    })?;
    let key = text.trim();
    if key.is_empty() {
        return fail(format!("the admin key file {} is empty", path.display()));
    }
    Ok(key.to_string())
}

/// Percent-encodes a path segment or query value (everything but unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Output.

fn print_raw(a: &Answer) {
    let text = String::from_utf8_lossy(&a.body);
    if !text.is_empty() {
        println!("{}", text.trim_end());
    }
}

fn str_of(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `2026-11-23T10:00:00Z` → `2026-11-23 10:00`.
fn short_time(v: &Value) -> String {
    match v.as_str() {
        Some(s) if s.len() >= 16 => s[..16].replace('T', " "),
        Some(s) => s.to_string(),
        None => "never".into(),
    }
}

fn permissions_cell(v: &Value) -> String {
    match v.as_array() {
        Some(a) if a.len() == 1 && a[0] == "all" => "all".into(),
        Some(a) => a.len().to_string(),
        None => "-".into(),
    }
}

fn cell(s: &str, width: usize) -> String {
    if s.chars().count() > width {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        s.to_string()
    }
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn print_token(a: &Answer, json: bool, shows_key: bool) {
    if json {
        print_raw(a);
        return;
    }
    let t = a.json();
    let perms = t["permissions"]
        .as_array()
        .map(|p| p.iter().map(str_of).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let expires = match &t["expires_at"] {
        Value::Null => "never".to_string(),
        v => str_of(v),
    };
    for (k, v) in [
        ("ID", str_of(&t["id"])),
        ("Name", str_of(&t["name"])),
        ("Description", str_of(&t["description"])),
        ("External ID", str_of(&t["external_id"])),
        ("Extension", str_of(&t["extension"])),
        ("Permissions", perms),
        ("Status", str_of(&t["status"])),
        ("Expires", expires),
        ("Created", str_of(&t["created_at"])),
        ("Updated", str_of(&t["updated_at"])),
        ("Created by", str_of(&t["created_by"])),
        ("Last used", str_of(&t["last_used_at"])),
        ("Rate limits", rate_limits_text(&t["rate_limits"])),
        ("Quota", quota_text(&t["quota"], &t["quota_usage"])),
        ("Allowed IPs", list_text(&t["allowed_ips"], "any")),
    ] {
        println!("{k:<12} {v}");
    }
    if shows_key && let Some(key) = t["api_key"].as_str() {
        println!();
        println!("API key (shown only this once; store it now):");
        println!("{key}");
    }
}

/// `100/1m, 10/1s`, or `none`.
fn rate_limits_text(v: &Value) -> String {
    let list: Vec<String> = v
        .as_array()
        .map(|l| {
            l.iter()
                .map(|r| format!("{}/{}", r["requests"], str_of(&r["per"])))
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// `100000/month (used 12 until 2026-12-01T00:00:00Z)`, or `none`.
fn quota_text(q: &Value, usage: &Value) -> String {
    if q.is_null() {
        return "none".into();
    }
    format!(
        "{}/{} (used {} until {})",
        q["requests"],
        str_of(&q["period"]),
        usage["used"],
        str_of(&usage["period_end"])
    )
}

/// A JSON array of strings joined by `, `, or `empty`.
fn list_text(v: &Value, empty: &str) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a.iter().map(str_of).collect::<Vec<_>>().join(", "),
        _ => empty.into(),
    }
}

fn print_list(a: &Answer) {
    let list = a.json();
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(|l| {
            l.iter()
                .map(|t| {
                    vec![
                        str_of(&t["id"]),
                        cell(&str_of(&t["name"]), NAME_WIDTH),
                        str_of(&t["extension"]),
                        permissions_cell(&t["permissions"]),
                        str_of(&t["status"]),
                        short_time(&t["created_at"]),
                        short_time(&t["expires_at"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_table(
        &[
            "ID",
            "NAME",
            "EXTENSION",
            "PERMISSIONS",
            "STATUS",
            "CREATED",
            "EXPIRES",
        ],
        &rows,
    );
    if let Some(range) = a.headers.get("content-range").and_then(|v| v.to_str().ok()) {
        println!("({range})");
    }
}

fn print_events(a: &Answer) {
    let rows: Vec<Vec<String>> = a
        .json()
        .as_array()
        .map(|l| {
            l.iter()
                .map(|e| {
                    let fields = e["fields"]
                        .as_array()
                        .map(|f| f.iter().map(str_of).collect::<Vec<_>>().join(","))
                        .unwrap_or_default();
                    vec![
                        str_of(&e["at"]),
                        str_of(&e["actor"]),
                        str_of(&e["action"]),
                        fields,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_table(&["AT", "ACTOR", "ACTION", "FIELDS"], &rows);
}

fn print_stats(a: &Answer) {
    let v = a.json();
    match stats::render(&v) {
        Some(text) => print!("{text}"),
        // Unknown shape: show it as it came.
        None => println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| json!(null).to_string())
        ),
    }
}
