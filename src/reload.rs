//! Configuration reload (SIGHUP): re-read the file, validate everything (config,
//! certificates, upstream CA files) before touching anything, then swap the module
//! table, upstream clients and listener certificates in at once. Requests in flight
//! keep the generation they started with; a file that fails is refused and the running
//! configuration stays.

use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::config::Config;
use crate::state::{Runtime, Shared};
use crate::tls::{self, ServerTls};

/// Reloads a running gateway's configuration. Cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) proxy_tls: Option<ServerTls>,
    pub(crate) admin_tls: Option<ServerTls>,
    /// One reload at a time, so generations do not race.
    pub(crate) lock: Arc<tokio::sync::Mutex<()>>,
}

/// A validated new generation, ready to swap in.
struct Prepared {
    runtime: Runtime,
    proxy_cert: Option<CertifiedKey>,
    admin_cert: Option<CertifiedKey>,
}

impl ReloadHandle {
    /// The configuration generation now serving new requests.
    pub fn current(&self) -> Arc<Runtime> {
        self.shared.runtime.load_full()
    }

    /// Re-reads the configuration file the gateway was started with (environment
    /// overrides applied again) and swaps in its modules, upstreams, extensions and TLS
    /// certificates. Settings that need a restart (listen addresses, workers, limits,
    /// store, stats, metrics, bootstrap key file, turning TLS on or off) keep their
    /// running values and are named in a warning. On error nothing changes and the
    /// error is logged and returned.
    pub async fn reload(&self) -> Result<(), String> {
        let _one = self.lock.lock().await;
        let old = self.shared.runtime.load_full();
        let path = old.config.source.clone();
        let (proxy_on, admin_on) = (self.proxy_tls.is_some(), self.admin_tls.is_some());
        let old_for_task = Arc::clone(&old);
        let prepared =
            tokio::task::spawn_blocking(move || prepare(&old_for_task.config, proxy_on, admin_on))
                .await
                .map_err(|e| format!("reload task failed: {e}"))
                .and_then(|r| r);
        let p = match prepared {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    file = %path.display(), error = %e,
                    "configuration reload refused; the running configuration stays"
                );
                return Err(e);
            }
        };
        // A webhook new to the store gets events from now on: recorded before the swap,
        // so no event written under the new list predates it.
        for w in &p.runtime.config.webhooks {
            if let Err(e) = self
                .shared
                .store
                .webhook_since(&w.name, jiff::Timestamp::now())
                .await
            {
                tracing::error!(webhook = %w.name, error = %e, "configuration reload refused: cannot record the new webhook");
                return Err(e.to_string());
            }
        }
        let generation = p.runtime.config.generation;
        let modules = p.runtime.config.modules.len();
        let presets_changed = !old
            .config
            .extensions
            .iter()
            .map(|e| (&e.name, &e.permissions))
            .eq(p
                .runtime
                .config
                .extensions
                .iter()
                .map(|e| (&e.name, &e.permissions)));
        let new_config = Arc::clone(&p.runtime.config);
        self.shared.runtime.store(Arc::new(p.runtime));
        if let (Some(t), Some(k)) = (&self.proxy_tls, p.proxy_cert) {
            t.swap(k);
        }
        if let (Some(t), Some(k)) = (&self.admin_tls, p.admin_cert) {
            t.swap(k);
        }
        tracing::info!(
            file = %path.display(), modules, generation,
            "configuration reloaded"
        );
        // Existing tokens of an extension whose preset changed take the new preset
        // (SPEC §8). The reload itself stands even if the store cannot be written now:
        // the next start applies the presets again.
        if presets_changed
            && let Err(e) = self
                .shared
                .tokens
                .apply_presets(&new_config, jiff::Timestamp::now())
                .await
        {
            tracing::error!(error = %e, "cannot give existing tokens their extension's new preset permissions");
        }
        Ok(())
    }
}

fn prepare(old: &Config, proxy_tls: bool, admin_tls: bool) -> Result<Prepared, String> {
    let mut new =
        Config::load(&old.source, |k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    let ignored = restart_only_changes(old, &new);
    if !ignored.is_empty() {
        tracing::warn!(
            settings = %ignored.join(", "),
            "these settings changed but take effect only after a restart; keeping the running values"
        );
    }
    // Keep what cannot change without a restart; TLS file paths may change.
    let proxy_tls_files = if proxy_tls {
        new.proxy.tls.clone().or_else(|| old.proxy.tls.clone())
    } else {
        None
    };
    let admin_tls_files = if admin_tls {
        new.admin.tls.clone().or_else(|| old.admin.tls.clone())
    } else {
        None
    };
    new.proxy = old.proxy.clone();
    new.proxy.tls = proxy_tls_files;
    new.admin = old.admin.clone();
    new.admin.tls = admin_tls_files;
    new.store = old.store.clone();
    new.stats = old.stats.clone();
    new.metrics = old.metrics.clone();
    // Cached permission bits and extension indices follow the module and extension
    // lists: a new generation makes the cache rebuild them (see TokenCache::lookup).
    let same_lists = old
        .modules
        .iter()
        .map(|m| &m.name)
        .eq(new.modules.iter().map(|m| &m.name))
        && old
            .extensions
            .iter()
            .map(|e| &e.name)
            .eq(new.extensions.iter().map(|e| &e.name));
    new.generation = if same_lists {
        old.generation
    } else {
        old.generation + 1
    };

    let proxy_cert = new
        .proxy
        .tls
        .as_ref()
        .map(tls::load_certified_key)
        .transpose()
        .map_err(|e| format!("proxy.tls: {e}"))?;
    let admin_cert = new
        .admin
        .tls
        .as_ref()
        .map(tls::load_certified_key)
        .transpose()
        .map_err(|e| format!("admin.tls: {e}"))?;
    let runtime = Runtime::new(new)?;
    Ok(Prepared {
        runtime,
        proxy_cert,
        admin_cert,
    })
}

/// Names of the settings that differ but need a restart.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (op, np) = (&old.proxy, &new.proxy);
    let (oa, na) = (&old.admin, &new.admin);
    let checks = [
        ("proxy.listen", op.listen != np.listen),
        ("proxy.workers", op.workers != np.workers),
        ("proxy.tls (on/off)", op.tls.is_some() != np.tls.is_some()),
        (
            "proxy.max_connections",
            op.max_connections != np.max_connections,
        ),
        (
            "proxy.max_connections_per_ip",
            op.max_connections_per_ip != np.max_connections_per_ip,
        ),
        (
            "proxy.body_read_timeout",
            op.body_read_timeout != np.body_read_timeout,
        ),
        (
            "proxy.header_read_timeout",
            op.header_read_timeout != np.header_read_timeout,
        ),
        ("proxy.idle_timeout", op.idle_timeout != np.idle_timeout),
        (
            "proxy.max_header_bytes",
            op.max_header_bytes != np.max_header_bytes,
        ),
        ("proxy.drain_timeout", op.drain_timeout != np.drain_timeout),
        ("admin.listen", oa.listen != na.listen),
        (
            "admin.bootstrap_key_file",
            oa.bootstrap_key_file != na.bootstrap_key_file,
        ),
        ("admin.tls (on/off)", oa.tls.is_some() != na.tls.is_some()),
        (
            "admin.max_connections",
            oa.max_connections != na.max_connections,
        ),
        (
            "admin.max_connections_per_ip",
            oa.max_connections_per_ip != na.max_connections_per_ip,
        ),
        ("store.backend", old.store.backend != new.store.backend),
        (
            "store.max_stale",
            old.store.max_stale != new.store.max_stale,
        ),
        (
            "stats.retention_days",
            old.stats.retention_days != new.stats.retention_days,
        ),
        (
            "stats.flush_interval",
            old.stats.flush_interval != new.stats.flush_interval,
        ),
        (
            "metrics.per_token",
            old.metrics.per_token != new.metrics.per_token,
        ),
        (
            "metrics.max_token_series",
            old.metrics.max_token_series != new.metrics.max_token_series,
        ),
    ];
    checks
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
}
