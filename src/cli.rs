//! `keygate token …`: a client of the admin API (SPEC §6). Human tables by default,
//! `--json` prints the API's body unchanged; exit code 0, or non-zero with the server's
//! error text on stderr. `keygate healthcheck` is here too: both use the one admin
//! client of [`client`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use http::{Method, StatusCode};
use keygate::config::{Config, DEFAULT_CONFIG_PATH};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};

mod client;
mod stats;
mod table;

use client::{AdminClient, Answer, Verify};
use table::{Align, cell};

/// Whole-request deadline of `keygate token …`.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Longest name shown in a table cell.
const NAME_WIDTH: usize = 40;
/// What a path segment or query value keeps unencoded: RFC 3986 unreserved characters.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

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
    /// Admin API base URL, e.g. http://127.0.0.1:9090 or https://admin.example:9090.
    #[arg(long, global = true, env = "KEYGATE_ADMIN_URL")]
    admin_url: Option<String>,
    /// CA certificate (PEM) an https:// admin URL is verified against, instead of the
    /// system roots.
    #[arg(long, global = true, env = "KEYGATE_ADMIN_CA_FILE")]
    admin_ca_file: Option<PathBuf>,
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
    block_on(run_async(args))
}

fn block_on<T>(f: impl Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the tokio runtime: {e}")))?
        .block_on(f)
}

async fn run_async(args: TokenArgs) -> Result<(), CliError> {
    let api = Api::new(&args.conn)?;
    let (method, path, body, output) = plan(args.cmd)?;
    let answer = api.call(method, &path, body).await?;
    if args.conn.json {
        print_raw(&answer);
    } else {
        output.print(&answer);
    }
    Ok(())
}

/// How an answer is shown without `--json`.
enum Output {
    /// One token; with its API key on create and rotate.
    Token { shows_key: bool },
    /// A page of tokens.
    List,
    /// `deleted <id>`.
    Deleted(String),
    /// The day table and sparklines.
    Stats,
    /// The audit log.
    Events,
}

/// The admin API request of a subcommand, and how its answer is shown.
fn plan(cmd: TokenCmd) -> Result<(Method, String, Option<Value>, Output), CliError> {
    let tid = |id: &str| format!("/v1/tokens/{}", encode(id));
    let token = |shows_key| Output::Token { shows_key };
    Ok(match cmd {
        TokenCmd::Create { fields } => (
            Method::POST,
            "/v1/tokens".into(),
            Some(fields.body(false)?),
            token(true),
        ),
        TokenCmd::List {
            status,
            extension,
            search,
            limit,
            offset,
        } => {
            let query = [
                ("status", status),
                ("extension", extension),
                ("search", search),
                ("limit", limit),
                ("offset", offset),
            ];
            (
                Method::GET,
                with_query("/v1/tokens", &query),
                None,
                Output::List,
            )
        }
        TokenCmd::Show { id } => (Method::GET, tid(&id), None, token(false)),
        TokenCmd::Edit { id, fields } => (
            Method::PATCH,
            tid(&id),
            Some(fields.body(true)?),
            token(false),
        ),
        TokenCmd::Disable { id } => (Method::POST, tid(&id) + "/disable", None, token(false)),
        TokenCmd::Enable { id } => (Method::POST, tid(&id) + "/enable", None, token(false)),
        TokenCmd::Rotate { id, grace_period } => {
            let body = object([("grace_period", grace_period)]);
            (Method::POST, tid(&id) + "/rotate", Some(body), token(true))
        }
        TokenCmd::Renew {
            id,
            expires_in,
            expires_at,
        } => {
            let body = object([("expires_in", expires_in), ("expires_at", expires_at)]);
            (Method::POST, tid(&id) + "/renew", Some(body), token(false))
        }
        TokenCmd::Delete { id } => (Method::DELETE, tid(&id), None, Output::Deleted(id)),
        TokenCmd::Stats { id, days } => {
            let path = with_query(&(tid(&id) + "/stats"), &[("days", days)]);
            (Method::GET, path, None, Output::Stats)
        }
        TokenCmd::Events { id } => (Method::GET, tid(&id) + "/events", None, Output::Events),
    })
}

/// `path?k=v&…` with the given parameters, percent-encoded.
fn with_query(path: &str, params: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| Some(format!("{k}={}", encode(v.as_deref()?))))
        .collect();
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", q.join("&"))
    }
}

/// A JSON object of the given string fields.
fn object<const N: usize>(fields: [(&str, Option<String>); N]) -> Value {
    let m: Map<String, Value> = fields
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), Value::String(v?))))
        .collect();
    Value::Object(m)
}

/// `keygate healthcheck`: one `GET /healthz` on the configured admin listener
/// (`https://` when `[admin] tls` is set), within `timeout`.
pub fn healthcheck(config: &Config, timeout: Duration) -> Result<(), CliError> {
    let scheme = if config.admin.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let base = format!("{scheme}://{}", local_address(config.admin.listen));
    let client = AdminClient::new(&base, Verify::Nothing, timeout)?;
    let answer = block_on(client.send(Method::GET, "/healthz", None, None))?;
    if answer.status == StatusCode::OK {
        println!("ok");
        Ok(())
    } else {
        fail(format!(
            "{base}/healthz answered {}",
            answer.status.as_u16()
        ))
    }
}

/// `addr`, with an unspecified IP (listening on every interface) replaced by loopback.
fn local_address(mut addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
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

/// The admin API with the caller's key.
struct Api {
    client: AdminClient,
    key: String,
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
            (Some(u), _) => u.clone(),
            (None, Some(c)) => {
                let scheme = if c.admin.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", local_address(c.admin.listen))
            }
            (None, None) => return fail("no admin URL (use --admin-url)"),
        };
        let key = match (&conn.admin_key_file, env_key, &config) {
            (Some(f), _, _) => read_key(f)?,
            (None, Some(k), _) => k.trim().to_string(),
            (None, None, Some(c)) => read_key(&c.admin.bootstrap_key_file)?,
            (None, None, None) => {
                return fail("no admin key (use --admin-key-file or KEYGATE_ADMIN_KEY)");
            }
        };
        let verify = Verify::Roots(conn.admin_ca_file.as_deref());
        Ok(Api {
            client: AdminClient::new(&base, verify, TIMEOUT)?,
            key,
        })
    }

    /// Sends the request; a non-2xx answer is the server's error text.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, CliError> {
        let body = body.map(|v| v.to_string());
        let a = self
            .client
            .send(method, path, Some(&self.key), body)
            .await?;
        if !a.status.is_success() {
            return Err(server_error(a.status, &a.body));
        }
        Ok(a)
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

/// Percent-encodes a path segment or query value (everything but unreserved
/// characters).
fn encode(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

// ---------------------------------------------------------------------------
// Output.

impl Output {
    fn print(&self, a: &Answer) {
        match self {
            Output::Token { shows_key } => print_token(a, *shows_key),
            Output::List => print_list(a),
            Output::Deleted(id) => println!("deleted {id}"),
            Output::Stats => print_stats(a),
            Output::Events => print_events(a),
        }
    }
}

/// The body as JSON (`null` when it is not).
fn json_of(a: &Answer) -> Value {
    serde_json::from_slice(&a.body).unwrap_or(Value::Null)
}

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

/// `2026-11-23T10:00:00Z` → `2026-11-23 10:00` (UTC); anything else as it came.
fn short_time(v: &Value) -> String {
    match v.as_str() {
        Some(s) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => t.strftime("%Y-%m-%d %H:%M").to_string(),
            Err(_) => s.to_string(),
        },
        None => "never".into(),
    }
}

fn permissions_cell(v: &Value) -> String {
    match v.as_array().map(Vec::as_slice) {
        Some([only]) if only == "all" => "all".into(),
        Some(a) => a.len().to_string(),
        None => "-".into(),
    }
}

/// The rows of a JSON array answer, one per element.
fn rows_of(a: &Answer, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    json_of(a)
        .as_array()
        .map(|l| l.iter().map(row).collect())
        .unwrap_or_default()
}

fn print_token(a: &Answer, shows_key: bool) {
    let t = json_of(a);
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
    let rows = rows_of(a, |t| {
        vec![
            str_of(&t["id"]),
            cell(&str_of(&t["name"]), NAME_WIDTH),
            str_of(&t["extension"]),
            permissions_cell(&t["permissions"]),
            str_of(&t["status"]),
            short_time(&t["created_at"]),
            short_time(&t["expires_at"]),
        ]
    });
    let header = [
        "ID",
        "NAME",
        "EXTENSION",
        "PERMISSIONS",
        "STATUS",
        "CREATED",
        "EXPIRES",
    ];
    print!("{}", table::render(&header, &rows, &[Align::Left]));
    if let Some(range) = a.headers.get("content-range").and_then(|v| v.to_str().ok()) {
        println!("({range})");
    }
}

fn print_events(a: &Answer) {
    let rows = rows_of(a, |e| {
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
    });
    let header = ["AT", "ACTOR", "ACTION", "FIELDS"];
    print!("{}", table::render(&header, &rows, &[Align::Left]));
}

fn print_stats(a: &Answer) {
    let v = json_of(a);
    match stats::render(&v) {
        Some(text) => print!("{text}"),
        // Unknown shape: show it as it came.
        None => println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| json!(null).to_string())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("SU-160-984-311"), "SU-160-984-311");
        assert_eq!(encode("a b/c?d&e=é~._"), "a%20b%2Fc%3Fd%26e%3D%C3%A9~._");
        assert_eq!(
            with_query(
                "/v1/tokens",
                &[("search", Some("x&y".into())), ("limit", None)]
            ),
            "/v1/tokens?search=x%26y"
        );
        assert_eq!(with_query("/p", &[("days", None)]), "/p");
    }

    #[test]
    fn times_are_shortened_without_slicing_strings() {
        assert_eq!(
            short_time(&json!("2026-11-23T10:00:00Z")),
            "2026-11-23 10:00"
        );
        // Regression (issue #10): byte slicing panicked on a multi-byte character at
        // byte 16.
        assert_eq!(short_time(&json!("2026-11-23T10:0é")), "2026-11-23T10:0é");
        assert_eq!(short_time(&json!("soon")), "soon");
        assert_eq!(short_time(&Value::Null), "never");
    }
}
