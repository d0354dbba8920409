//! `[[modules]]`: path prefixes and the upstream that serves them.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use super::{Check, ConfigError, PERMISSION_ALL, valid_name};
use crate::error::shown;
use crate::routes::RouteTable;

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

/// `[[modules]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModuleFile {
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

/// Converts `[[modules]]`: each entry, then the prefixes of all of them together
/// (no prefix may belong to two modules).
pub(super) fn modules(list: Vec<ModuleFile>, c: Check) -> Result<Vec<Module>, ConfigError> {
    if list.len() > MAX_MODULES {
        return Err(c.err(
            "modules",
            format!("at most {MAX_MODULES} modules are supported"),
        ));
    }
    let mut names = HashSet::new();
    let mut modules = Vec::with_capacity(list.len());
    for (i, m) in list.into_iter().enumerate() {
        modules.push(module(i, m, &mut names, c)?);
    }
    let all_prefixes = modules
        .iter()
        .enumerate()
        .flat_map(|(i, m)| m.prefixes.iter().map(move |p| (p.clone(), i)));
    if let Err(e) = RouteTable::new(all_prefixes) {
        return Err(c.err("modules", e));
    }
    Ok(modules)
}

/// Converts `modules[i]`; `names` holds the names before it.
fn module(
    i: usize,
    m: ModuleFile,
    names: &mut HashSet<String>,
    c: Check,
) -> Result<Module, ConfigError> {
    let key = |k: &str| format!("modules[{i}].{k}");
    if !valid_name(&m.name) || m.name == PERMISSION_ALL {
        return Err(c.err(
            &key("name"),
            format!(
                "{} must be 1-64 of a-z, 0-9, '_' and '-', and not \"all\"",
                shown(&m.name)
            ),
        ));
    }
    if !names.insert(m.name.clone()) {
        return Err(c.err(&key("name"), format!("{} is listed twice", shown(&m.name))));
    }
    if m.prefixes.is_empty() {
        return Err(c.err(&key("prefixes"), "must list at least one prefix"));
    }
    for (j, p) in m.prefixes.iter().enumerate() {
        RouteTable::new([(p.clone(), i)])
            .map_err(|e| c.err(&format!("modules[{i}].prefixes[{j}]"), e))?;
    }
    let upstream = parse_upstream(&m.upstream).map_err(|e| c.err(&key("upstream"), e))?;
    if let Some(ca) = &m.ca_file {
        if !upstream.https {
            return Err(c.err(&key("ca_file"), "only used with an https:// upstream"));
        }
        if !ca.is_file() {
            return Err(c.err(
                &key("ca_file"),
                format!("{} is not a readable file", ca.display()),
            ));
        }
    }
    let timeout = c.positive_duration(&key("timeout"), m.timeout, DEFAULT_UPSTREAM_TIMEOUT)?;
    let max_upstream_connections = m
        .max_upstream_connections
        .unwrap_or(DEFAULT_MAX_UPSTREAM_CONNECTIONS);
    if !(1..=MAX_UPSTREAM_CONNECTIONS).contains(&max_upstream_connections) {
        return Err(c.err(
            &key("max_upstream_connections"),
            format!("must be between 1 and {MAX_UPSTREAM_CONNECTIONS}"),
        ));
    }
    Ok(Module {
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
