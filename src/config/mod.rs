//! Configuration: the TOML file structs (serde, `deny_unknown_fields`) and their
//! conversion into the runtime [`Config`], one file and one function per section
//! (sozu-style): `proxy.rs`, `admin.rs`, `store.rs`, `stats.rs` (`[stats]` and
//! `[metrics]`), `extensions.rs`, `modules.rs`, `events.rs` (`[events]` and
//! `[[webhooks]]`). [`validate`] calls them in file order and adds the checks that
//! span two sections.
//!
//! Every error names the file, the key and the reason, and start-up stops on it.
//! This layer sits below every other module of the crate: it uses only the plain
//! grammars (`duration`, `cidr`, `permissions`, `routes`) and `error::shown`.

mod admin;
pub mod events;
mod extensions;
mod modules;
mod proxy;
mod stats;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::shown;
use crate::routes::RouteTable;

pub use self::admin::{
    AdminConfig, DEFAULT_ADMIN_LISTEN, DEFAULT_ADMIN_MAX_CONNECTIONS,
    DEFAULT_ADMIN_MAX_CONNECTIONS_PER_IP, DEFAULT_BOOTSTRAP_KEY_FILE,
};
pub use self::events::{EventsConfig, Webhook, WebhookSecret};
pub use self::extensions::{Extension, default_extensions};
pub use self::modules::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_UPSTREAM_CONNECTIONS, DEFAULT_UPSTREAM_TIMEOUT,
    MAX_MODULES, MAX_UPSTREAM_CONNECTIONS, Module, Upstream,
};
pub use self::proxy::{
    DEFAULT_BODY_READ_TIMEOUT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP,
    DEFAULT_MAX_HEADER_BYTES, DEFAULT_PROXY_LISTEN, ProxyConfig,
};
pub use self::stats::{
    DEFAULT_FLUSH_INTERVAL, DEFAULT_MAX_TOKEN_SERIES, DEFAULT_RETENTION_DAYS, MetricsConfig,
    StatsConfig,
};
pub use self::store::{
    Backend, DEFAULT_KEY_PREFIX, DEFAULT_MAX_STALE, DEFAULT_STORE_PATH, StoreConfig,
    redis_cluster_nodes, redis_url_redacted,
};
/// Durations are parsed by [`crate::duration::parse`], the grammar the admin API
/// shares; re-exported here for the callers that read it as a configuration rule.
pub use crate::duration::parse as parse_duration;
pub use crate::permissions::{ADMIN_MODULE, PERMISSION_ALL};

/// Default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "config/keygate.toml";

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

/// The file as written: one struct per section, each converted by its own function.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    proxy: proxy::ProxyFile,
    #[serde(default)]
    admin: admin::AdminFile,
    #[serde(default)]
    store: store::StoreFile,
    #[serde(default)]
    stats: stats::StatsFile,
    #[serde(default)]
    metrics: stats::MetricsFile,
    #[serde(default)]
    events: events::EventsFile,
    #[serde(default)]
    webhooks: Vec<events::WebhookFile>,
    extensions: Option<Vec<extensions::ExtensionFile>>,
    #[serde(default)]
    modules: Vec<modules::ModuleFile>,
}

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
    pub events: EventsConfig,
    /// Where events are delivered (`[[webhooks]]`).
    pub webhooks: Vec<Webhook>,
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

/// `[proxy.tls]` / `[admin.tls]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: PathBuf,
    key: PathBuf,
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

/// `KEYGATE_*` variables override the file (SPEC §5).
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

/// Checks a module or extension name: 1–64 of `a-z 0-9 _ -`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !name.starts_with(['-', '_'])
}

/// Converts the file section by section, in file order (the first error found is the
/// one reported), then checks what spans sections.
fn validate(f: FileConfig, path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let c = Check { file: &file };
    let proxy = proxy::proxy(f.proxy, c)?;
    let admin = admin::admin(f.admin, c)?;
    if admin.listen == proxy.listen && proxy.listen.port() != 0 {
        return Err(c.err("admin.listen", "must differ from proxy.listen"));
    }
    let store = store::store(f.store, c)?;
    let stats = stats::stats(f.stats, c)?;
    let metrics = stats::metrics(f.metrics);
    let extensions = extensions::extensions(f.extensions, c)?;
    let modules = modules::modules(f.modules, c)?;
    let events = events::events(f.events, c)?;
    let webhooks = events::webhooks(f.webhooks, c)?;
    extensions::check_permissions(&extensions, &modules, c)?;
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

/// The file being converted, and the checks every section shares; each error it makes
/// reads `file: key: reason`.
#[derive(Clone, Copy)]
struct Check<'a> {
    file: &'a str,
}

impl Check<'_> {
    /// The error for `key`.
    fn err(self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// A socket address, `default` when unset.
    fn addr(self, key: &str, v: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
        let v = v.unwrap_or_else(|| default.to_string());
        v.parse().map_err(|_| {
            self.err(
                key,
                format!("{} is not an address like 127.0.0.1:8080", shown(&v)),
            )
        })
    }

    /// A duration (`30s`, `5m`), `default` when unset.
    fn duration(
        self,
        key: &str,
        v: Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) => parse_duration(&v).map_err(|e| self.err(key, e)),
        }
    }

    /// A duration that must not be zero.
    fn positive_duration(
        self,
        key: &str,
        v: Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(key, v, default)?;
        if d.is_zero() {
            return Err(self.err(key, "must be greater than zero"));
        }
        Ok(d)
    }

    /// A count that must be at least 1, `default` when unset.
    fn at_least_one(
        self,
        key: &str,
        v: Option<usize>,
        default: usize,
    ) -> Result<usize, ConfigError> {
        match v {
            Some(0) => Err(self.err(key, "must be at least 1")),
            v => Ok(v.unwrap_or(default)),
        }
    }

    /// `[<key>]` TLS files, which must exist.
    fn tls(self, key: &str, t: Option<TlsFile>) -> Result<Option<TlsFiles>, ConfigError> {
        let Some(t) = t else {
            return Ok(None);
        };
        for (k, p) in [("cert", &t.cert), ("key", &t.key)] {
            if !p.is_file() {
                return Err(self.err(
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
