//! Configuration: the TOML file structs (serde, `deny_unknown_fields`) and one
//! `validate()` that turns them into the runtime [`Config`].
//!
//! Every error names the file, the key and the reason, and start-up stops on it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use crate::error::shown;
use crate::routes::RouteTable;

/// Default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "config/keygate.toml";
/// Default proxy listen address.
pub const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default path of the bootstrap admin key file.
pub const DEFAULT_BOOTSTRAP_KEY_FILE: &str = "data/admin.key";
/// Default path of the embedded store.
pub const DEFAULT_STORE_PATH: &str = "data/keygate.redb";
/// Default Redis key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "keygate:";
/// Connections accepted at once; further ones wait in the kernel backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Proxy connections from one client address served at once; more are closed at once.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// A request body that delivers nothing for this long answers 408 `REQ_TIMEOUT`.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Admin connections served at once.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 256;
/// Admin connections from one client address served at once.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS_PER_IP: usize = 32;
/// Time a client has to send a whole request head (slowloris guard).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive connections with no request for this long are closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Request heads larger than this answer 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Graceful shutdown deadline.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long cached tokens are trusted while the store is down.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(600);
/// Days of per-token statistics kept.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
/// How often counters are flushed to the store.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Distinct token label values before the rest count as `token="other"`.
pub const DEFAULT_MAX_TOKEN_SERIES: usize = 10_000;
/// Per-module upstream answer timeout.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-module request body limit.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Default `modules[].max_upstream_connections` (SPEC §5).
pub const DEFAULT_MAX_UPSTREAM_CONNECTIONS: usize = 1024;
/// Largest `modules[].max_upstream_connections`.
pub const MAX_UPSTREAM_CONNECTIONS: usize = 1_000_000;
/// Modules a configuration may hold (permission sets are fixed-size bitsets).
pub const MAX_MODULES: usize = 256;
/// The permission that grants every module, present and future.
pub const PERMISSION_ALL: &str = "all";
/// The module whose permission gives access to the admin API.
pub const ADMIN_MODULE: &str = "integrations";

/// A configuration error: which file, which key, why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: String,
    /// The offending key, dotted (`modules[2].upstream`), or `-` for the whole file.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    proxy: ProxyFile,
    #[serde(default)]
    admin: AdminFile,
    #[serde(default)]
    store: StoreFile,
    #[serde(default)]
    stats: StatsFile,
    #[serde(default)]
    metrics: MetricsFile,
    #[serde(default)]
    events: crate::events::config::EventsFile,
    #[serde(default)]
    webhooks: Vec<crate::events::config::WebhookFile>,
    extensions: Option<Vec<ExtensionFile>>,
    #[serde(default)]
    modules: Vec<ModuleFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyFile {
    listen: Option<String>,
    workers: Option<usize>,
    tls: Option<TlsFile>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    body_read_timeout: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_header_bytes: Option<usize>,
    drain_timeout: Option<String>,
    trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminFile {
    listen: Option<String>,
    bootstrap_key_file: Option<PathBuf>,
    tls: Option<TlsFile>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    backend: Option<String>,
    path: Option<PathBuf>,
    url: Option<String>,
    key_prefix: Option<String>,
    max_stale: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsFile {
    retention_days: Option<u32>,
    flush_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    per_token: Option<bool>,
    max_token_series: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtensionFile {
    name: String,
    code: String,
    #[serde(default)]
    description: String,
    permissions: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleFile {
    name: String,
    #[serde(default)]
    description: String,
    prefixes: Vec<String>,
    upstream: String,
    timeout: Option<String>,
    #[serde(default)]
    forward_authorization: bool,
    #[serde(default)]
    preserve_host: bool,
    ca_file: Option<PathBuf>,
    max_body_bytes: Option<u64>,
    max_upstream_connections: Option<usize>,
}

// ---------------------------------------------------------------------------
// The validated configuration.

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages and SIGHUP reloads).
    pub source: PathBuf,
    /// Which reload this is (0 at start-up). Cached permission sets index the module
    /// list of one generation, so they are only used with that generation's table.
    pub generation: u64,
    /// The proxy listener.
    pub proxy: ProxyConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// The token store.
    pub store: StoreConfig,
    /// Per-token statistics.
    pub stats: StatsConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// Gateway-raised events (`[events]`).
    pub events: crate::events::config::EventsConfig,
    /// Where events are delivered (`[[webhooks]]`).
    pub webhooks: Vec<crate::events::config::Webhook>,
    /// The extension catalogue.
    pub extensions: Vec<Extension>,
    /// The modules, in file order; their index is their identity in permission sets.
    pub modules: Vec<Module>,
}

/// PEM certificate chain and private key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// `[proxy]`.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Tokio worker threads; `None` = one per core.
    pub workers: Option<usize>,
    /// TLS on the listener.
    pub tls: Option<TlsFiles>,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections served at once from one client address.
    pub max_connections_per_ip: usize,
    /// A request body stalled this long answers 408.
    pub body_read_timeout: Duration,
    /// Deadline for a request head.
    pub header_read_timeout: Duration,
    /// Keep-alive idle limit.
    pub idle_timeout: Duration,
    /// Request head size limit.
    pub max_header_bytes: usize,
    /// Graceful shutdown deadline.
    pub drain_timeout: Duration,
    /// Peers whose `X-Forwarded-For` is believed (SPEC §8).
    pub trusted_proxies: Vec<crate::policy::Cidr>,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Where the bootstrap admin key is written.
    pub bootstrap_key_file: PathBuf,
    /// TLS on the admin listener.
    pub tls: Option<TlsFiles>,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections served at once from one client address.
    pub max_connections_per_ip: usize,
}

/// `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Which backend.
    pub backend: Backend,
    /// How long cached tokens are trusted while the store is down.
    pub max_stale: Duration,
}

/// The store backend and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// redb file.
    Embedded {
        /// The database file.
        path: PathBuf,
    },
    /// Redis, standalone or cluster.
    Redis {
        /// `redis://…` or `redis+cluster://h1:p1,h2:p2`.
        url: String,
        /// Prefix of every key.
        key_prefix: String,
    },
}

/// `[stats]`.
#[derive(Debug, Clone)]
pub struct StatsConfig {
    /// Days kept.
    pub retention_days: u32,
    /// Flush period.
    pub flush_interval: Duration,
}

/// `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Whether `keygate_requests_total` has a `token` label.
    pub per_token: bool,
    /// Distinct token label values before folding into `other`.
    pub max_token_series: usize,
}

/// One entry of the extension catalogue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Extension {
    /// Short name used in the API (`zapier`).
    pub name: String,
    /// Catalogue code (`EXT-816`).
    pub code: String,
    /// Human description.
    pub description: String,
    /// The permissions every token of this extension gets (SPEC §8), if fixed.
    pub permissions: Option<Vec<String>>,
}

/// A module: a set of path prefixes served by one upstream.
#[derive(Debug, Clone)]
pub struct Module {
    /// Name used in permissions.
    pub name: String,
    /// Human description.
    pub description: String,
    /// Canonical path prefixes.
    pub prefixes: Vec<String>,
    /// Upstream origin.
    pub upstream: Upstream,
    /// Time the upstream has to answer (response head).
    pub timeout: Duration,
    /// Pass the client's `Authorization` header upstream.
    pub forward_authorization: bool,
    /// Keep the client's `Host` header.
    pub preserve_host: bool,
    /// CA bundle for an https upstream (default: system roots).
    pub ca_file: Option<PathBuf>,
    /// Request body limit.
    pub max_body_bytes: u64,
    /// Open upstream connections at most; more requests wait for one (within `timeout`).
    pub max_upstream_connections: usize,
}

/// An upstream origin (`scheme://authority`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `https` when true.
    pub https: bool,
    /// `host:port` (port always explicit).
    pub authority: http::uri::Authority,
    /// Value for the `Host` header.
    pub host_header: http::HeaderValue,
}

/// The default extension catalogue (SPEC §1).
pub fn default_extensions() -> Vec<Extension> {
    [
        ("custom", "EXT-000", "Custom integration"),
        ("reports", "EXT-569", "Custom Reports creation"),
        ("devops", "EXT-005", "Connect DevOps extensions"),
        ("zapier", "EXT-816", "Zapier workflow automation platform"),
        ("flowgear", "EXT-248", "Flowgear iPaaS platform"),
    ]
    .into_iter()
    .map(|(name, code, description)| Extension {
        name: name.into(),
        code: code.into(),
        description: description.into(),
        permissions: None,
    })
    .collect()
}

impl Config {
    /// Reads, parses and validates `path`, applying environment overrides from `env`.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "-".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, path, env)
    }

    /// Parses and validates TOML `text` (named `path` in errors).
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
            file: file.clone(),
            key: "-".into(),
            reason: toml_reason(text, &e),
        })?;
        let mut parsed: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError {
                file: file.clone(),
                key: if key == "." { "-".into() } else { key },
                reason: toml_reason(text, &e.into_inner()),
            }
        })?;
        apply_env(&mut parsed, &env);
        validate(parsed, path)
    }

    /// Index of the module named `name`.
    pub fn module_index(&self, name: &str) -> Option<usize> {
        self.modules.iter().position(|m| m.name == name)
    }

    /// Builds the prefix table of the modules.
    pub fn route_table(&self) -> RouteTable {
        let pairs = self
            .modules
            .iter()
            .enumerate()
            .flat_map(|(i, m)| m.prefixes.iter().map(move |p| (p.clone(), i)));
        // Prefixes were checked by validate(); a failure here is a bug, so fall back
        // to an empty table (everything 404) rather than panicking.
        RouteTable::new(pairs).unwrap_or_default()
    }
}

/// toml's Display spans several lines (a source excerpt); keep message and line number.
fn toml_reason(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |t| t.bytes().filter(|b| *b == b'\n').count())
                + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

fn apply_env(f: &mut FileConfig, env: &impl Fn(&str) -> Option<String>) {
    if let Some(v) = env("KEYGATE_PROXY_LISTEN") {
        f.proxy.listen = Some(v);
    }
    if let Some(v) = env("KEYGATE_ADMIN_LISTEN") {
        f.admin.listen = Some(v);
    }
    if let Some(v) = env("KEYGATE_STORE_BACKEND") {
        f.store.backend = Some(v);
    }
    if let Some(v) = env("KEYGATE_STORE_URL") {
        f.store.url = Some(v);
    }
    if let Some(v) = env("KEYGATE_STORE_PATH") {
        f.store.path = Some(PathBuf::from(v));
    }
}

/// Durations are parsed by [`crate::duration::parse`], the grammar the admin API
/// shares; re-exported here for the callers that read it as a configuration rule.
pub use crate::duration::parse as parse_duration;

/// Checks a module or extension name: 1–64 of `a-z 0-9 _ -`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !name.starts_with(['-', '_'])
}

fn validate(f: FileConfig, path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let err = |key: &str, reason: String| ConfigError {
        file: file.clone(),
        key: key.to_string(),
        reason,
    };
    let addr = |key: &str, v: Option<String>, default: &str| -> Result<SocketAddr, ConfigError> {
        let v = v.unwrap_or_else(|| default.to_string());
        v.parse().map_err(|_| {
            err(
                key,
                format!("{} is not an address like 127.0.0.1:8080", shown(&v)),
            )
        })
    };
    let dur = |key: &str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) => parse_duration(&v).map_err(|e| err(key, e)),
        }
    };
    let positive = |key: &str, d: Duration| -> Result<Duration, ConfigError> {
        if d.is_zero() {
            Err(err(key, "must be greater than zero".into()))
        } else {
            Ok(d)
        }
    };
    let tls = |key: &str, t: Option<TlsFile>| -> Result<Option<TlsFiles>, ConfigError> {
        match t {
            None => Ok(None),
            Some(t) => {
                for (k, p) in [("cert", &t.cert), ("key", &t.key)] {
                    if !p.is_file() {
                        return Err(err(
                            &format!("{key}.{k}"),
                            format!("{} is not a readable file", p.display()),
                        ));
                    }
                }
                Ok(Some(TlsFiles {
                    cert: t.cert,
                    key: t.key,
                }))
            }
        }
    };

    let p = f.proxy;
    if p.workers == Some(0) || p.workers.is_some_and(|w| w > 1024) {
        return Err(err("proxy.workers", "must be between 1 and 1024".into()));
    }
    let max_connections = p.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(err("proxy.max_connections", "must be at least 1".into()));
    }
    let at_least_one = |key: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(err(key, "must be at least 1".into())),
        v => Ok(v.unwrap_or(default)),
    };
    let max_connections_per_ip = at_least_one(
        "proxy.max_connections_per_ip",
        p.max_connections_per_ip,
        DEFAULT_MAX_CONNECTIONS_PER_IP,
    )?;
    let max_header_bytes = p.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
    if !(1024..=1024 * 1024).contains(&max_header_bytes) {
        return Err(err(
            "proxy.max_header_bytes",
            "must be between 1024 and 1048576".into(),
        ));
    }
    let proxy = ProxyConfig {
        listen: addr("proxy.listen", p.listen, DEFAULT_PROXY_LISTEN)?,
        workers: p.workers,
        tls: tls("proxy.tls", p.tls)?,
        max_connections,
        max_connections_per_ip,
        body_read_timeout: positive(
            "proxy.body_read_timeout",
            dur(
                "proxy.body_read_timeout",
                p.body_read_timeout,
                DEFAULT_BODY_READ_TIMEOUT,
            )?,
        )?,
        header_read_timeout: positive(
            "proxy.header_read_timeout",
            dur(
                "proxy.header_read_timeout",
                p.header_read_timeout,
                DEFAULT_HEADER_READ_TIMEOUT,
            )?,
        )?,
        idle_timeout: positive(
            "proxy.idle_timeout",
            dur("proxy.idle_timeout", p.idle_timeout, DEFAULT_IDLE_TIMEOUT)?,
        )?,
        max_header_bytes,
        drain_timeout: dur(
            "proxy.drain_timeout",
            p.drain_timeout,
            DEFAULT_DRAIN_TIMEOUT,
        )?,
        trusted_proxies: p
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                crate::policy::Cidr::parse(c)
                    .map_err(|e| err(&format!("proxy.trusted_proxies[{i}]"), e))
            })
            .collect::<Result<_, _>>()?,
    };

    let a = f.admin;
    let admin = AdminConfig {
        listen: addr("admin.listen", a.listen, DEFAULT_ADMIN_LISTEN)?,
        bootstrap_key_file: a
            .bootstrap_key_file
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BOOTSTRAP_KEY_FILE)),
        tls: tls("admin.tls", a.tls)?,
        max_connections: at_least_one(
            "admin.max_connections",
            a.max_connections,
            DEFAULT_ADMIN_MAX_CONNECTIONS,
        )?,
        max_connections_per_ip: at_least_one(
            "admin.max_connections_per_ip",
            a.max_connections_per_ip,
            DEFAULT_ADMIN_MAX_CONNECTIONS_PER_IP,
        )?,
    };
    if admin.listen == proxy.listen && proxy.listen.port() != 0 {
        return Err(err("admin.listen", "must differ from proxy.listen".into()));
    }

    let s = f.store;
    let backend = match s.backend.as_deref().unwrap_or("embedded") {
        "embedded" => {
            if s.url.is_some() {
                return Err(err(
                    "store.url",
                    "only used with backend = \"redis\"".into(),
                ));
            }
            let path = s.path.unwrap_or_else(|| PathBuf::from(DEFAULT_STORE_PATH));
            if path.as_os_str().is_empty() {
                return Err(err(
                    "store.path",
                    "must not be empty (is KEYGATE_STORE_PATH set to \"\"?)".into(),
                ));
            }
            Backend::Embedded { path }
        }
        "redis" => {
            let url = s
                .url
                .ok_or_else(|| err("store.url", "required with backend = \"redis\"".into()))?;
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+cluster://"))
            {
                return Err(err(
                    "store.url",
                    format!(
                        "{} must start with redis://, rediss:// or redis+cluster://",
                        shown(url.split('@').next_back().unwrap_or(""))
                    ),
                ));
            }
            crate::store::redis::check_url(&url).map_err(|e| err("store.url", e))?;
            Backend::Redis {
                url,
                key_prefix: s.key_prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.into()),
            }
        }
        other => {
            return Err(err(
                "store.backend",
                format!("{} is not \"embedded\" or \"redis\"", shown(other)),
            ));
        }
    };
    let store = StoreConfig {
        backend,
        max_stale: dur("store.max_stale", s.max_stale, DEFAULT_MAX_STALE)?,
    };

    let retention_days = f.stats.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
    if !(1..=3650).contains(&retention_days) {
        return Err(err(
            "stats.retention_days",
            "must be between 1 and 3650".into(),
        ));
    }
    let stats = StatsConfig {
        retention_days,
        flush_interval: positive(
            "stats.flush_interval",
            dur(
                "stats.flush_interval",
                f.stats.flush_interval,
                DEFAULT_FLUSH_INTERVAL,
            )?,
        )?,
    };
    let metrics = MetricsConfig {
        per_token: f.metrics.per_token.unwrap_or(true),
        max_token_series: f
            .metrics
            .max_token_series
            .unwrap_or(DEFAULT_MAX_TOKEN_SERIES),
    };

    let extensions = match f.extensions {
        None => default_extensions(),
        Some(list) => {
            if list.is_empty() {
                return Err(err("extensions", "must list at least one extension".into()));
            }
            let mut seen = HashSet::new();
            let mut out = Vec::with_capacity(list.len());
            for (i, e) in list.into_iter().enumerate() {
                if !valid_name(&e.name) {
                    return Err(err(
                        &format!("extensions[{i}].name"),
                        format!("{} must be 1-64 of a-z, 0-9, '_' and '-'", shown(&e.name)),
                    ));
                }
                if !seen.insert(e.name.clone()) {
                    return Err(err(
                        &format!("extensions[{i}].name"),
                        format!("{} is listed twice", shown(&e.name)),
                    ));
                }
                if e.code.is_empty() || e.code.len() > 64 {
                    return Err(err(
                        &format!("extensions[{i}].code"),
                        "must be 1-64 characters".into(),
                    ));
                }
                out.push(Extension {
                    name: e.name,
                    code: e.code,
                    description: e.description,
                    permissions: e.permissions,
                });
            }
            out
        }
    };
    if !extensions.iter().any(|e| e.name == "custom") {
        return Err(err(
            "extensions",
            "must include \"custom\" (the default extension of new tokens)".into(),
        ));
    }

    if f.modules.len() > MAX_MODULES {
        return Err(err(
            "modules",
            format!("at most {MAX_MODULES} modules are supported"),
        ));
    }
    let mut names = HashSet::new();
    let mut all_prefixes = Vec::new();
    let mut modules = Vec::with_capacity(f.modules.len());
    for (i, m) in f.modules.into_iter().enumerate() {
        let key = |k: &str| format!("modules[{i}].{k}");
        if !valid_name(&m.name) || m.name == PERMISSION_ALL {
            return Err(err(
                &key("name"),
                format!(
                    "{} must be 1-64 of a-z, 0-9, '_' and '-', and not \"all\"",
                    shown(&m.name)
                ),
            ));
        }
        if !names.insert(m.name.clone()) {
            return Err(err(
                &key("name"),
                format!("{} is listed twice", shown(&m.name)),
            ));
        }
        if m.prefixes.is_empty() {
            return Err(err(
                &key("prefixes"),
                "must list at least one prefix".into(),
            ));
        }
        for (j, p) in m.prefixes.iter().enumerate() {
            all_prefixes.push((p.clone(), i));
            RouteTable::new([(p.clone(), i)])
                .map_err(|e| err(&format!("modules[{i}].prefixes[{j}]"), e))?;
        }
        let upstream = parse_upstream(&m.upstream).map_err(|e| err(&key("upstream"), e))?;
        if let Some(ca) = &m.ca_file {
            if !upstream.https {
                return Err(err(
                    &key("ca_file"),
                    "only used with an https:// upstream".into(),
                ));
            }
            if !ca.is_file() {
                return Err(err(
                    &key("ca_file"),
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        let timeout = positive(
            &key("timeout"),
            dur(&key("timeout"), m.timeout, DEFAULT_UPSTREAM_TIMEOUT)?,
        )?;
        let max_upstream_connections = m
            .max_upstream_connections
            .unwrap_or(DEFAULT_MAX_UPSTREAM_CONNECTIONS);
        if !(1..=MAX_UPSTREAM_CONNECTIONS).contains(&max_upstream_connections) {
            return Err(err(
                &key("max_upstream_connections"),
                format!("must be between 1 and {MAX_UPSTREAM_CONNECTIONS}"),
            ));
        }
        modules.push(Module {
            name: m.name,
            description: m.description,
            prefixes: m.prefixes,
            upstream,
            timeout,
            forward_authorization: m.forward_authorization,
            preserve_host: m.preserve_host,
            ca_file: m.ca_file,
            max_body_bytes: m.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            max_upstream_connections,
        });
    }
    if let Err(e) = RouteTable::new(all_prefixes) {
        return Err(err("modules", e));
    }
    let events = crate::events::config::events(f.events, &file)?;
    let webhooks = crate::events::config::webhooks(f.webhooks, &file)?;
    let module_names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    for (i, e) in extensions.iter().enumerate() {
        if let Some(p) = &e.permissions {
            crate::policy::check_permission_list(p, &module_names)
                .map_err(|reason| err(&format!("extensions[{i}].permissions"), reason))?;
        }
    }

    Ok(Config {
        source: path.to_path_buf(),
        generation: 0,
        proxy,
        admin,
        store,
        stats,
        metrics,
        events,
        webhooks,
        extensions,
        modules,
    })
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let q = shown(s);
    let uri: Uri = s
        .parse()
        .map_err(|_| format!("{q} is not a URL like http://127.0.0.1:7001"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{q} must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{q} has no host"))?
        .clone();
    if authority.as_str().contains('@') {
        return Err(format!("{q} must not carry credentials"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{q} must be an origin (scheme://host:port) without path or query"
        ));
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host_header = http::HeaderValue::from_str(authority.as_str())
        .map_err(|_| format!("{q} has an invalid host"))?;
    let authority: http::uri::Authority = format!("{}:{port}", authority.host())
        .parse()
        .map_err(|_| format!("{q} has an invalid host"))?;
    Ok(Upstream {
        https,
        authority,
        host_header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), |_| None)
    }

    const MIN: &str = r#"
[[modules]]
name = "agreements"
prefixes = ["/public/v1/agreements"]
upstream = "http://127.0.0.1:7001"
"#;

    #[test]
    fn shipped_example_files_parse() {
        for entry in std::fs::read_dir("config").expect("config dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).expect("read");
                if let Err(e) = Config::parse(&text, &path, |_| None) {
                    panic!("{} does not validate: {e}", path.display());
                }
            }
        }
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MIN).expect("valid");
        assert_eq!(c.proxy.listen, DEFAULT_PROXY_LISTEN.parse().unwrap());
        assert_eq!(c.extensions, default_extensions());
        assert_eq!(c.modules[0].timeout, DEFAULT_UPSTREAM_TIMEOUT);
        assert_eq!(c.modules[0].upstream.authority.as_str(), "127.0.0.1:7001");
        assert_eq!(
            c.store.backend,
            Backend::Embedded {
                path: DEFAULT_STORE_PATH.into()
            }
        );
    }

    /// Each bad file names the key and a reason.
    #[test]
    fn bad_files_name_file_key_and_reason() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[proxy]\nlisten = \"nope\"\n",
                "proxy.listen",
                "not an address",
            ),
            ("[proxy]\nbogus = 1\n", "proxy.bogus", "unknown field"),
            ("bogus = 1\n", "bogus", "unknown field"),
            ("[proxy]\nworkers = 0\n", "proxy.workers", "between 1"),
            (
                "[proxy]\nidle_timeout = \"10 parsecs\"\n",
                "proxy.idle_timeout",
                "unit",
            ),
            (
                "[proxy]\nidle_timeout = \"0s\"\n",
                "proxy.idle_timeout",
                "greater than zero",
            ),
            (
                "[proxy]\nmax_header_bytes = 10\n",
                "proxy.max_header_bytes",
                "between",
            ),
            ("[proxy]\nlisten = 5\n", "proxy.listen", "invalid type"),
            (
                "[store]\nbackend = \"mongo\"\n",
                "store.backend",
                "not \"embedded\"",
            ),
            ("[store]\nbackend = \"redis\"\n", "store.url", "required"),
            (
                "[store]\nbackend = \"redis\"\nurl = \"http://x\"\n",
                "store.url",
                "must start with",
            ),
            (
                "[stats]\nretention_days = 0\n",
                "stats.retention_days",
                "between",
            ),
            (
                "[stats]\nflush_interval = \"-1s\"\n",
                "stats.flush_interval",
                "number",
            ),
            (
                "[[modules]]\nname = \"A\"\nprefixes = [\"/a\"]\nupstream = \"http://h:1\"\n",
                "modules[0].name",
                "a-z",
            ),
            (
                "[[modules]]\nname = \"all\"\nprefixes = [\"/a\"]\nupstream = \"http://h:1\"\n",
                "modules[0].name",
                "not \"all\"",
            ),
            (
                "[[modules]]\nname = \"a\"\nprefixes = []\nupstream = \"http://h:1\"\n",
                "modules[0].prefixes",
                "at least one",
            ),
            (
                "[[modules]]\nname = \"a\"\nprefixes = [\"/a/\"]\nupstream = \"http://h:1\"\n",
                "modules[0].prefixes[0]",
                "/a/",
            ),
            (
                "[[modules]]\nname = \"a\"\nprefixes = [\"/a\"]\nupstream = \"http://h:1\"\nmax_upstream_connections = 0\n",
                "modules[0].max_upstream_connections",
                "between 1",
            ),
            (
                "[[modules]]\nname = \"a\"\nprefixes = [\"/a\"]\nupstream = \"ftp://h:1\"\n",
                "modules[0].upstream",
                "http://",
            ),
            (
                "[[modules]]\nname = \"a\"\nprefixes = [\"/a\"]\nupstream = \"http://h:1/base\"\n",
                "modules[0].upstream",
                "without path",
            ),
            (
                "[[modules]]\nname = \"a\"\nprefixes = [\"/a\"]\nupstream = \"http://h:1\"\nca_file = \"x.pem\"\n",
                "modules[0].ca_file",
                "https",
            ),
            (
                "[[modules]]\nname = \"a\"\nprefixes = [\"/a\"]\nupstream = \"http://h:1\"\nflavour = 1\n",
                "modules[0].flavour",
                "unknown field",
            ),
            (
                "[[modules]]\nname = \"a\"\nprefixes = [\"/a\"]\nupstream = \"http://h:1\"\n[[modules]]\nname = \"a\"\nprefixes = [\"/b\"]\nupstream = \"http://h:1\"\n",
                "modules[1].name",
                "twice",
            ),
            (
                "[[modules]]\nname = \"a\"\nprefixes = [\"/a\"]\nupstream = \"http://h:1\"\n[[modules]]\nname = \"b\"\nprefixes = [\"/a\"]\nupstream = \"http://h:1\"\n",
                "modules",
                "/a",
            ),
            (
                "[[extensions]]\nname = \"zapier\"\ncode = \"EXT-816\"\n",
                "extensions",
                "custom",
            ),
            (
                "[[extensions]]\nname = \"custom\"\ncode = \"\"\n",
                "extensions[0].code",
                "1-64",
            ),
            ("[proxy\n", "-", "line 1"),
            // Regression (#14 item 8): check-config passed these.
            (
                "[store]\nbackend = \"redis\"\nurl = \"redis://[::1\"\n",
                "store.url",
                "not a valid Redis URL",
            ),
            (
                "[store]\nbackend = \"redis\"\nurl = \"redis+cluster://a:1,[::1\"\n",
                "store.url",
                "not a valid Redis URL",
            ),
            ("[store]\npath = \"\"\n", "store.path", "must not be empty"),
            (
                "[proxy]\nmax_connections_per_ip = 0\n",
                "proxy.max_connections_per_ip",
                "at least 1",
            ),
            (
                "[proxy]\nbody_read_timeout = \"0s\"\n",
                "proxy.body_read_timeout",
                "greater than zero",
            ),
            (
                "[admin]\nmax_connections = 0\n",
                "admin.max_connections",
                "at least 1",
            ),
        ];
        for (text, key, reason) in cases {
            match parse(text) {
                Ok(_) => panic!("accepted: {text}"),
                Err(e) => {
                    assert_eq!(e.file, "test.toml", "{text}");
                    assert_eq!(&e.key, key, "{text}: {e}");
                    assert!(
                        e.reason.to_lowercase().contains(&reason.to_lowercase()),
                        "{text}: reason {:?} lacks {reason:?}",
                        e.reason
                    );
                }
            }
        }
    }

    #[test]
    fn env_overrides_file() {
        let env = |k: &str| match k {
            "KEYGATE_PROXY_LISTEN" => Some("127.0.0.1:1111".to_string()),
            "KEYGATE_STORE_BACKEND" => Some("redis".to_string()),
            "KEYGATE_STORE_URL" => Some("redis://127.0.0.1:7777/0".to_string()),
            _ => None,
        };
        let c = Config::parse(MIN, Path::new("t.toml"), env).expect("valid");
        assert_eq!(c.proxy.listen.port(), 1111);
        assert!(
            matches!(c.store.backend, Backend::Redis { ref url, .. } if url.ends_with(":7777/0"))
        );
    }

    /// Regression (#14 item 8): an empty KEYGATE_STORE_PATH passed check-config.
    #[test]
    fn empty_store_path_from_env_is_an_error() {
        let env = |k: &str| (k == "KEYGATE_STORE_PATH").then(String::new);
        let e = Config::parse(MIN, Path::new("t.toml"), env).unwrap_err();
        assert_eq!(e.key, "store.path", "{e}");
    }

    /// Regression (#14 item 8): a 1 MB module name was echoed whole into the error.
    #[test]
    fn huge_module_name_is_truncated_in_the_error() {
        let name = "N".repeat(1 << 20);
        let text = format!(
            "[[modules]]\nname = \"{name}\"\nprefixes = [\"/a\"]\nupstream = \"http://h:1\"\n"
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "modules[0].name");
        assert!(e.to_string().len() < 300, "{} bytes", e.to_string().len());
        let text = format!(
            "[[modules]]\nname = \"a\"\nprefixes = [\"/{name}/\"]\nupstream = \"http://h:1\"\n"
        );
        assert!(parse(&text).unwrap_err().to_string().len() < 400);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("1y"), Ok(Duration::from_secs(365 * 86400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86400)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        for bad in [
            "",
            "7",
            "d",
            "7x",
            "-1s",
            "1.5h",
            "99999999999999999999s",
            "1001y",
            "7 d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
