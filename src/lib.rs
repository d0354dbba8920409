//! keygate: an authenticating reverse-proxy gateway.
//!
//! `main.rs` parses the command line and calls [`Gateway::start`] and [`Gateway::run`];
//! tests do the same with listeners bound to `127.0.0.1:0`.
//!
//! The request path on the proxy listener is `gateway.rs` (its phases call into
//! `routes`, `auth`, `proxy` and `logging`); the admin listener is `admin/`. Both take
//! the state of `state.rs`; the modules they call never take it back, so the module
//! graph has no cycle (`tests/architecture.rs` checks it; the README's code map lists
//! the modules in dependency order). Public modules are what `main.rs`, the tests and
//! the benches use.

pub mod admin;
pub mod auth;
pub mod cidr;
pub mod config;
mod duration;
pub mod error;
pub mod events;
mod gateway;
mod headers;
mod limits;
mod logging;
pub mod metrics;
mod permissions;
pub mod policy;
mod proxy;
mod reload;
pub mod routes;
mod server;
pub mod state;
pub mod stats;
pub mod store;
pub mod tls;
pub mod token;
pub mod tokens;
mod upstream;

use std::future::Future;
use std::sync::Arc;

use jiff::Timestamp;
use tokio::net::TcpListener;

use crate::config::{Backend, Config, TlsFiles};
use crate::metrics::Metrics;
use crate::server::Limits;
use crate::state::{RequestIds, Runtime, Shared};
use crate::stats::{Clock, Flusher, Stats, SystemClock};
use crate::store::{EmbeddedStore, RedisStore, Store, TokenCache};
use crate::tls::ServerTls;
use crate::tokens::Tokens;

pub use crate::reload::ReloadHandle;
pub use crate::server::Workers;

/// The two bound listeners.
pub struct Listeners {
    /// Proxy listener.
    pub proxy: TcpListener,
    /// Admin listener.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both addresses of `config`.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        Ok(Listeners {
            proxy: server::bind(config.proxy.listen)?,
            admin: server::bind(config.admin.listen)?,
        })
    }
}

/// A start-up failure.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened or read.
    #[error("{0}")]
    Store(String),
    /// The bootstrap token or its key file could not be made.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    /// The metrics registry could not be built (a bug).
    #[error("metrics: {0}")]
    Metrics(String),
    /// A listener certificate or an upstream's TLS trust could not be loaded.
    #[error("{0}")]
    Tls(String),
}

/// A gateway whose store is open and whose cache is loaded.
pub struct Gateway {
    shared: Arc<Shared>,
    reload: ReloadHandle,
}

impl Gateway {
    /// Opens the store, loads the cache and creates the bootstrap admin token if needed.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        Gateway::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Gateway::start`] with the clock the request path and the statistics use: a
    /// request's expiry check, rate limits and statistics day (tests move it by hand).
    pub async fn start_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Gateway, StartError> {
        // Certificates and upstream trust first: a bad file stops start-up before the
        // store is touched.
        let proxy_tls = load_tls("proxy.tls", config.proxy.tls.as_ref())?;
        let admin_tls = load_tls("admin.tls", config.admin.tls.as_ref())?;
        let runtime = Runtime::new(config.clone()).map_err(StartError::Tls)?;
        let store = match &config.store.backend {
            Backend::Embedded { path } => {
                let path = path.clone();
                let s = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path))
                    .await
                    .map_err(|e| StartError::Store(e.to_string()))?
                    .map_err(|e| StartError::Store(e.to_string()))?;
                Store::Embedded(Arc::new(s))
            }
            Backend::Redis { url, key_prefix } => Store::Redis(Arc::new(
                RedisStore::open(url, key_prefix)
                    .await
                    .map_err(|e| StartError::Store(e.to_string()))?,
            )),
        };
        // Before any event is written (bootstrap below): webhooks get events from the
        // time they were first configured.
        for w in &config.webhooks {
            store
                .webhook_since(&w.name, Timestamp::now())
                .await
                .map_err(|e| StartError::Store(e.to_string()))?;
        }
        let cache = Arc::new(TokenCache::new(store.is_exclusive()));
        if store.is_exclusive() {
            let all = store
                .list()
                .await
                .map_err(|e| StartError::Store(e.to_string()))?;
            cache.load_all(&all, &config);
        }
        let tokens = Tokens::new(store.clone(), Arc::clone(&cache));
        match tokens
            .bootstrap(&config.admin.bootstrap_key_file, &config, Timestamp::now())
            .await
            .map_err(StartError::Bootstrap)?
        {
            Some(id) => tracing::info!(
                token = %id,
                key_file = %config.admin.bootstrap_key_file.display(),
                "created the bootstrap admin token; its key is in the key file"
            ),
            None => tracing::debug!("an admin token exists; no bootstrap needed"),
        }
        // The file may have changed a preset while keygate was stopped (SPEC §8).
        match tokens.apply_presets(&config, Timestamp::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                tokens = n,
                "tokens given their extension's preset permissions"
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot give tokens their extension's preset permissions")
            }
        }
        let metrics = Arc::new(
            Metrics::new(&config.metrics, Arc::clone(&cache))
                .map_err(|e| StartError::Metrics(e.to_string()))?,
        );
        let stats = Arc::new(Stats::new(
            Arc::clone(&metrics),
            config.metrics.max_token_series,
            clock,
        ));
        let limiters = Arc::new(policy::Limiters::new());
        policy::load_quotas(&limiters, &store)
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;
        drop(config);
        let shared = Arc::new(Shared {
            runtime: arc_swap::ArcSwap::from_pointee(runtime),
            store,
            cache,
            tokens,
            request_ids: RequestIds::default(),
            stats,
            metrics,
            limiters,
            background: tokio::runtime::Handle::current(),
        });
        let reload = ReloadHandle {
            shared: Arc::clone(&shared),
            proxy_tls,
            admin_tls,
            lock: Arc::new(tokio::sync::Mutex::new(())),
        };
        Ok(Gateway { shared, reload })
    }

    /// A handle that re-reads the configuration file (what SIGHUP does).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// Token operations on this gateway's store and cache.
    pub fn tokens(&self) -> &Tokens {
        &self.shared.tokens
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<Runtime> {
        self.shared.runtime.load_full()
    }

    /// The shared state (statistics, metrics, store) — for tests and benches.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves both listeners until `shutdown` resolves, then drains in-flight requests
    /// and flushes the statistics before returning. The proxy's connections are served
    /// on `workers` when given (thread per core, [`Workers::for_config`]), else on this
    /// runtime; the admin listener and the background tasks run here. The workers end
    /// after the proxy listener has drained.
    pub async fn run(
        self,
        listeners: Listeners,
        workers: Option<server::Workers>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let workers = workers.map(Arc::new);
        let rt = self.shared.runtime.load_full();
        let p = &rt.config.proxy;
        let limits = Limits {
            max_connections: p.max_connections,
            max_connections_per_ip: p.max_connections_per_ip,
            header_read_timeout: p.header_read_timeout,
            idle_timeout: p.idle_timeout,
            max_header_bytes: p.max_header_bytes,
            drain_timeout: p.drain_timeout,
        };
        let admin_limits = Limits {
            max_connections: rt.config.admin.max_connections,
            max_connections_per_ip: rt.config.admin.max_connections_per_ip,
            ..limits.clone()
        };
        let flush_interval = rt.config.stats.flush_interval;
        let flusher = Arc::new(Flusher {
            stats: Arc::clone(&self.shared.stats),
            limiters: Arc::clone(&self.shared.limiters),
            store: self.shared.store.clone(),
            retention_days: rt.config.stats.retention_days,
        });
        drop(rt);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let proxy_shared = Arc::clone(&self.shared);
        let proxy_tls = self.reload.proxy_tls.as_ref().map(|t| t.acceptor().clone());
        let admin_tls = self.reload.admin_tls.as_ref().map(|t| t.acceptor().clone());
        let proxy = tokio::spawn(server::serve(
            listeners.proxy,
            limits,
            proxy_tls,
            workers.clone(),
            move |req, conn| gateway::handle(Arc::clone(&proxy_shared), req, conn),
            stopped(stop_rx.clone()),
        ));
        // A shared store: follow other instances' changes (see store::sync).
        let sync = match &self.shared.store {
            Store::Redis(redis) => {
                let shared = Arc::clone(&self.shared);
                let follower = store::sync::Follower {
                    cache: Arc::clone(&self.shared.cache),
                    store: self.shared.store.clone(),
                    config: Box::new(move || shared.config()),
                };
                Some(tokio::spawn(store::sync::run(
                    Arc::new(follower),
                    Arc::clone(redis),
                    stopped(stop_rx.clone()),
                )))
            }
            Store::Embedded(_) => None,
        };
        let admin_shared = Arc::clone(&self.shared);
        let admin = tokio::spawn(server::serve(
            listeners.admin,
            admin_limits,
            admin_tls,
            None,
            move |req, conn| admin::handle(Arc::clone(&admin_shared), req, conn),
            stopped(stop_rx.clone()),
        ));
        // Events: the expiry scanner and the webhook worker (crate::events).
        let shared = Arc::clone(&self.shared);
        let tasks = Arc::new(events::Tasks {
            store: self.shared.store.clone(),
            metrics: Arc::clone(&self.shared.metrics),
            config: Box::new(move || shared.config()),
        });
        let scanner = tokio::spawn(events::run_scanner(
            Arc::clone(&tasks),
            stopped(stop_rx.clone()),
        ));
        let webhooks = tokio::spawn(events::deliver::run(tasks, stopped(stop_rx.clone())));
        let flushing = Arc::clone(&flusher);
        let flush_task = tokio::spawn(async move { flushing.run(flush_interval, stop_rx).await });
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = proxy.await;
        // The proxy's connections are all closed: its workers have nothing left to do.
        if let Some(w) = workers.and_then(Arc::into_inner) {
            w.stop().await;
        }
        let _ = admin.await;
        let _ = flush_task.await;
        let _ = scanner.await;
        let _ = webhooks.await;
        // After the drain: every answered request is counted, none is still counting.
        flusher.final_flush().await;
        if let Some(sync) = sync {
            let _ = sync.await;
        }
        tracing::info!("stopped");
    }
}

fn load_tls(key: &str, files: Option<&TlsFiles>) -> Result<Option<ServerTls>, StartError> {
    files
        .map(|f| ServerTls::load(f).map_err(|e| StartError::Tls(format!("{key}: {e}"))))
        .transpose()
}
