//! `[proxy]`: the proxy listener.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{Check, ConfigError, TlsFile, TlsFiles};
use crate::cidr::Cidr;

/// Default proxy listen address.
pub const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:8080";
/// Connections accepted at once; further ones wait in the kernel backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Proxy connections from one client address served at once; more are closed at once.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// A request body that delivers nothing for this long answers 408 `REQ_TIMEOUT`.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a client has to send a whole request head (slowloris guard).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive connections with no request for this long are closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Request heads larger than this answer 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Graceful shutdown deadline.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// `[proxy]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProxyFile {
    pub(super) listen: Option<String>,
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
    pub trusted_proxies: Vec<Cidr>,
}

/// Converts `[proxy]`.
pub(super) fn proxy(p: ProxyFile, c: Check) -> Result<ProxyConfig, ConfigError> {
    if p.workers == Some(0) || p.workers.is_some_and(|w| w > 1024) {
        return Err(c.err("proxy.workers", "must be between 1 and 1024"));
    }
    let max_connections = p.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(c.err("proxy.max_connections", "must be at least 1"));
    }
    let max_connections_per_ip = c.at_least_one(
        "proxy.max_connections_per_ip",
        p.max_connections_per_ip,
        DEFAULT_MAX_CONNECTIONS_PER_IP,
    )?;
    let max_header_bytes = p.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
    if !(1024..=1024 * 1024).contains(&max_header_bytes) {
        return Err(c.err("proxy.max_header_bytes", "must be between 1024 and 1048576"));
    }
    Ok(ProxyConfig {
        listen: c.addr("proxy.listen", p.listen, DEFAULT_PROXY_LISTEN)?,
        workers: p.workers,
        tls: c.tls("proxy.tls", p.tls)?,
        max_connections,
        max_connections_per_ip,
        body_read_timeout: c.positive_duration(
            "proxy.body_read_timeout",
            p.body_read_timeout,
            DEFAULT_BODY_READ_TIMEOUT,
        )?,
        header_read_timeout: c.positive_duration(
            "proxy.header_read_timeout",
            p.header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT,
        )?,
        idle_timeout: c.positive_duration(
            "proxy.idle_timeout",
            p.idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
        )?,
        max_header_bytes,
        drain_timeout: c.duration(
            "proxy.drain_timeout",
            p.drain_timeout,
            DEFAULT_DRAIN_TIMEOUT,
        )?,
        trusted_proxies: trusted_proxies(p.trusted_proxies.unwrap_or_default(), c)?,
    })
}

fn trusted_proxies(list: Vec<String>, c: Check) -> Result<Vec<Cidr>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| Cidr::parse(s).map_err(|e| c.err(&format!("proxy.trusted_proxies[{i}]"), e)))
        .collect()
}
