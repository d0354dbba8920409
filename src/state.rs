//! The state every request shares, and what one configuration generation derives.
//!
//! This module only holds state; it calls nothing that calls back into it. The request
//! paths (`gateway`, `admin`) and the reload handle borrow what they use from here;
//! the statistics flusher, the store sync task and the event tasks (expiry scanner,
//! webhook worker: `events::Tasks`) take their parts, not [`Shared`], so the module
//! graph has no cycle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;

use crate::config::Config;
use crate::metrics::{Metrics, ModuleMetrics};
use crate::proxy::Upstreams;
use crate::routes::RouteTable;
use crate::stats::Stats;
use crate::store::{Store, TokenCache};
use crate::tokens::Tokens;

/// What one configuration generation derives: swapped whole on reload, so a request
/// keeps the generation it started with.
pub struct Runtime {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Prefix → module index.
    pub routes: RouteTable,
    /// Module names as header values, by module index.
    pub module_names: Vec<HeaderValue>,
    /// Extension names as header values, by extension index.
    pub extension_names: Vec<HeaderValue>,
    /// Upstream clients.
    pub upstreams: Upstreams,
    /// Metric children of this generation's modules, made on first use.
    module_metrics: OnceLock<Arc<ModuleMetrics>>,
}

impl Runtime {
    /// Derives the runtime tables and upstream clients from `config`; fails when an
    /// upstream's TLS trust cannot be set up (unreadable `ca_file`, no system roots).
    pub fn new(config: Config) -> Result<Runtime, String> {
        let header =
            |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("invalid"));
        Ok(Runtime {
            routes: config.route_table(),
            module_names: config.modules.iter().map(|m| header(&m.name)).collect(),
            extension_names: config.extensions.iter().map(|e| header(&e.name)).collect(),
            upstreams: Upstreams::new(&config)?,
            module_metrics: OnceLock::new(),
            config: Arc::new(config),
        })
    }

    /// The metric children of this generation's modules.
    pub fn module_metrics(&self, metrics: &Metrics) -> &Arc<ModuleMetrics> {
        self.module_metrics
            .get_or_init(|| Arc::new(metrics.modules(&self.config)))
    }
}

/// State shared by every request on both listeners.
pub struct Shared {
    /// The current configuration generation.
    pub runtime: ArcSwap<Runtime>,
    /// The token store.
    pub store: Store,
    /// The token cache.
    pub cache: Arc<TokenCache>,
    /// Token operations on `store`, keeping `cache` current.
    pub tokens: Tokens,
    /// Request id generator.
    pub request_ids: RequestIds,
    /// Per-token day counters.
    pub stats: Arc<Stats>,
    /// The Prometheus registry.
    pub metrics: Arc<Metrics>,
    /// Rate-limit and quota state of this process (SPEC §8).
    pub limiters: Arc<crate::policy::Limiters>,
    /// The runtime of the background tasks: work a request raises that must outlive
    /// it (an event write) runs there, not on a proxy worker, which ends right after
    /// the drain.
    pub background: tokio::runtime::Handle,
}

impl Shared {
    /// The configuration of the current generation (what the store sync task reads).
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.runtime.load().config)
    }
}

/// Generates request ids: a random per-process prefix and a counter (unique, cheap).
pub struct RequestIds {
    /// The prefix in hex and the dash, written once.
    prefix: [u8; 17],
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        RequestIds::new(u64::from_le_bytes(b), 1)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl RequestIds {
    fn new(prefix: u64, next: u64) -> RequestIds {
        let mut p = [b'-'; 17];
        for (i, b) in p[..16].iter_mut().enumerate() {
            *b = HEX[((prefix >> (60 - 4 * i)) & 0xf) as usize];
        }
        RequestIds {
            prefix: p,
            next: AtomicU64::new(next),
        }
    }

    /// The next id, e.g. `5f0c1e9a2b7d4c3e-1a`.
    pub fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Hex digits into a stack buffer: `format!` cost ~1,500 instructions, the
        // prefix's digits ~80 more when they were written per request (issue 13).
        let mut id = Id {
            buf: [0u8; 33],
            len: 0,
        };
        id.buf[..17].copy_from_slice(&self.prefix);
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            id.buf[17 + i] = HEX[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
        }
        id.len = 17 + digits;
        // Owned by one reference-counted allocation: the clones for the upstream request
        // and the answer are counter increments (a copied `Bytes` allocated again on its
        // first clone).
        HeaderValue::from_maybe_shared(Bytes::from_owner(id))
            .unwrap_or(HeaderValue::from_static("unknown"))
    }
}

/// A request id's text.
struct Id {
    buf: [u8; 33],
    len: usize,
}

impl AsRef<[u8]> for Id {
    fn as_ref(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

#[cfg(test)]
mod request_id_tests {
    use super::*;

    #[test]
    fn request_ids_are_prefix_dash_counter_in_hex() {
        for (prefix, next) in [
            (0u64, 0u64),
            (0x5f0c_1e9a_2b7d_4c3e, 0x1a),
            (u64::MAX, u64::MAX),
        ] {
            let ids = RequestIds::new(prefix, next);
            assert_eq!(
                ids.next().to_str().unwrap(),
                format!("{prefix:016x}-{next:x}")
            );
        }
    }
}
