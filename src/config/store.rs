//! `[store]`: which backend holds the tokens, and the Redis URL grammar it accepts.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Check, ConfigError};
use crate::error::shown;

/// Default path of the embedded store.
pub const DEFAULT_STORE_PATH: &str = "data/keygate.redb";
/// Default Redis key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "keygate:";
/// How long cached tokens are trusted while the store is down.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(600);

/// `[store]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoreFile {
    pub(super) backend: Option<String>,
    pub(super) path: Option<PathBuf>,
    pub(super) url: Option<String>,
    key_prefix: Option<String>,
    max_stale: Option<String>,
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

/// Converts `[store]`.
pub(super) fn store(s: StoreFile, c: Check) -> Result<StoreConfig, ConfigError> {
    let backend = match s.backend.as_deref().unwrap_or("embedded") {
        "embedded" => embedded(s.url.is_some(), s.path, c)?,
        "redis" => redis(s.url, s.key_prefix, c)?,
        other => {
            return Err(c.err(
                "store.backend",
                format!("{} is not \"embedded\" or \"redis\"", shown(other)),
            ));
        }
    };
    Ok(StoreConfig {
        backend,
        max_stale: c.duration("store.max_stale", s.max_stale, DEFAULT_MAX_STALE)?,
    })
}

fn embedded(has_url: bool, path: Option<PathBuf>, c: Check) -> Result<Backend, ConfigError> {
    if has_url {
        return Err(c.err("store.url", "only used with backend = \"redis\""));
    }
    let path = path.unwrap_or_else(|| PathBuf::from(DEFAULT_STORE_PATH));
    if path.as_os_str().is_empty() {
        return Err(c.err(
            "store.path",
            "must not be empty (is KEYGATE_STORE_PATH set to \"\"?)",
        ));
    }
    Ok(Backend::Embedded { path })
}

fn redis(
    url: Option<String>,
    key_prefix: Option<String>,
    c: Check,
) -> Result<Backend, ConfigError> {
    let url = url.ok_or_else(|| c.err("store.url", "required with backend = \"redis\""))?;
    if !(url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+cluster://"))
    {
        return Err(c.err(
            "store.url",
            format!(
                "{} must start with redis://, rediss:// or redis+cluster://",
                shown(url.split('@').next_back().unwrap_or(""))
            ),
        ));
    }
    check_redis_url(&url).map_err(|e| c.err("store.url", e))?;
    Ok(Backend::Redis {
        url,
        key_prefix: key_prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.into()),
    })
}

/// Splits `redis+cluster://[user:pass@]h1:p1,h2:p2` into one `redis://` URL per node.
pub fn redis_cluster_nodes(url: &str) -> Result<Vec<String>, String> {
    let rest = url
        .strip_prefix("redis+cluster://")
        .ok_or("cluster URL must start with redis+cluster://")?;
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let hosts = hosts.trim_end_matches('/');
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{auth}{h}"))
        .collect();
    if nodes.is_empty() {
        return Err("redis+cluster:// URL names no node".into());
    }
    Ok(nodes)
}

/// Checks that `url` (`redis://`, `rediss://` or `redis+cluster://h1:p1,…`) parses as
/// the Redis client will read it, so `check-config` catches what `serve` would fail on.
fn check_redis_url(url: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    let nodes = if url.starts_with("redis+cluster://") {
        redis_cluster_nodes(url)?
    } else {
        vec![url.to_string()]
    };
    for node in &nodes {
        if let Err(e) = node.as_str().into_connection_info() {
            return Err(format!(
                "{} is not a valid Redis URL: {e}",
                shown(&redis_url_redacted(node))
            ));
        }
    }
    Ok(())
}

/// The URL without its password, for error messages.
pub fn redis_url_redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => "<url>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_split_per_node() {
        assert_eq!(
            redis_cluster_nodes("redis+cluster://a:1,b:2").unwrap(),
            vec!["redis://a:1", "redis://b:2"]
        );
        assert_eq!(
            redis_cluster_nodes("redis+cluster://u:p@a:1,b:2/").unwrap(),
            vec!["redis://u:p@a:1", "redis://u:p@b:2"]
        );
        assert!(redis_cluster_nodes("redis+cluster://").is_err());
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redis_url_redacted("redis://u:secret@h:1/0"),
            "redis://***@h:1/0"
        );
        assert_eq!(redis_url_redacted("redis://h:1"), "redis://h:1");
    }
}
