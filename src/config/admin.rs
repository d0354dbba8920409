//! `[admin]`: the admin listener.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Check, ConfigError, TlsFile, TlsFiles};

/// Default admin listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default path of the bootstrap admin key file.
pub const DEFAULT_BOOTSTRAP_KEY_FILE: &str = "data/admin.key";
/// Admin connections served at once.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 256;
/// Admin connections from one client address served at once.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS_PER_IP: usize = 32;

/// `[admin]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminFile {
    pub(super) listen: Option<String>,
    bootstrap_key_file: Option<PathBuf>,
    tls: Option<TlsFile>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
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

/// Converts `[admin]`.
pub(super) fn admin(a: AdminFile, c: Check) -> Result<AdminConfig, ConfigError> {
    Ok(AdminConfig {
        listen: c.addr("admin.listen", a.listen, DEFAULT_ADMIN_LISTEN)?,
        bootstrap_key_file: a
            .bootstrap_key_file
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BOOTSTRAP_KEY_FILE)),
        tls: c.tls("admin.tls", a.tls)?,
        max_connections: c.at_least_one(
            "admin.max_connections",
            a.max_connections,
            DEFAULT_ADMIN_MAX_CONNECTIONS,
        )?,
        max_connections_per_ip: c.at_least_one(
            "admin.max_connections_per_ip",
            a.max_connections_per_ip,
            DEFAULT_ADMIN_MAX_CONNECTIONS_PER_IP,
        )?,
    })
}
