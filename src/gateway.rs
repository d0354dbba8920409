//! The request path on the proxy listener, one named step after another:
//! request_filter (target + path) → authenticate → authorize → forward → log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use jiff::Timestamp;

use crate::auth;
use crate::config::Config;
use crate::error::{ApiError, Source};
use crate::headers::{self, X_REQUEST_ID};
use crate::metrics::{Class, Metrics, ModuleMetrics};
use crate::proxy::{self, Forward, ResBody, Upstreams};
use crate::routes::{self, RouteTable};
use crate::server::ConnInfo;
use crate::stats::Stats;
use crate::store::{Store, TokenCache};
use crate::token::TokenId;

/// What one configuration generation derives: swapped whole on reload.
pub struct Runtime {
    /// The validated configuration.
    pub config: Config,
    /// Prefix → module index.
    pub routes: RouteTable,
    /// Module names as header values, by module index.
    pub module_names: Vec<HeaderValue>,
    /// Extension names as header values, by extension index.
    pub extension_names: Vec<HeaderValue>,
    /// Upstream client pool.
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
            config,
        })
    }

    /// The metric children of this generation's modules.
    pub fn module_metrics(&self, metrics: &Metrics) -> &Arc<ModuleMetrics> {
        self.module_metrics
            .get_or_init(|| Arc::new(metrics.modules(&self.config)))
    }
}

/// State shared by every request.
pub struct Shared {
    /// The current configuration generation.
    pub runtime: arc_swap::ArcSwap<Runtime>,
    /// The token store.
    pub store: Store,
    /// The token cache.
    pub cache: Arc<TokenCache>,
    /// Request id generator.
    pub request_ids: RequestIds,
    /// Per-token day counters.
    pub stats: Stats,
    /// The Prometheus registry.
    pub metrics: Arc<Metrics>,
}

/// Generates request ids: a random per-process prefix and a counter (unique, cheap).
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        RequestIds {
            prefix: u64::from_le_bytes(b),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// The next id, e.g. `5f0c1e9a2b7d4c3e-1a`.
    pub fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let s = format!("{:016x}-{n:x}", self.prefix);
        HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("unknown"))
    }
}

/// What the log line (and the counters) need to know about a request.
#[derive(Default)]
struct Record {
    token: Option<TokenId>,
    module: Option<usize>,
    path: Option<String>,
}

/// Handles one request on the proxy listener. Never fails: every error is a response.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
) -> Response<ResBody> {
    let started = Instant::now();
    let request_id =
        headers::client_request_id(req.headers()).unwrap_or_else(|| shared.request_ids.next());
    let method = req.method().clone();
    let rt = shared.runtime.load_full();
    let mut rec = Record::default();

    let result = process(&shared, &rt, req, &conn, &request_id, &mut rec).await;
    let (mut res, error) = match result {
        Ok(res) => (res, None),
        Err(e) => (e.to_response().map(Either::Left), Some(e)),
    };
    res.headers_mut().insert(X_REQUEST_ID, request_id.clone());

    let module = rec
        .module
        .and_then(|i| rt.config.modules.get(i))
        .map_or("none", |m| m.name.as_str());
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    count(&shared, &rt, &rec, status, error.as_ref(), elapsed);
    // Fields are formatted only when the line is enabled (nothing is built at `warn`).
    let token = OrDash(rec.token);
    let latency_us = elapsed.as_micros() as u64;
    let path = rec.path.as_deref().unwrap_or("-");
    let request_id = request_id.to_str().unwrap_or("-");
    let error_code = error.as_ref().map(ApiError::code);
    if error
        .as_ref()
        .is_some_and(|e| e.parts().2 != Source::Client)
    {
        tracing::warn!(request_id, token = %token, module, method = %method, path, status, latency_us, error_code, "request");
    } else {
        tracing::info!(request_id, token = %token, module, method = %method, path, status, latency_us, error_code, "request");
    }
    res
}

/// A token id for a log line, `-` when there is none.
struct OrDash(Option<TokenId>);

impl std::fmt::Display for OrDash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => std::fmt::Display::fmt(&id, f),
            None => f.write_str("-"),
        }
    }
}

/// Counts the response: token statistics (SPEC §3: only requests that presented a
/// known id with its correct secret have `rec.token`) and the metrics.
fn count(
    shared: &Shared,
    rt: &Runtime,
    rec: &Record,
    status: u16,
    error: Option<&ApiError>,
    elapsed: Duration,
) {
    let modules = rt.module_metrics(&shared.metrics);
    let slot = modules.slot(rec.module);
    modules.observe_duration(slot, elapsed);
    if let Some(e) = error {
        shared.metrics.count_error(modules, slot, e);
    }
    shared
        .stats
        .record(rec.token, modules, slot, Class::of(status));
}

async fn process(
    shared: &Shared,
    rt: &Runtime,
    req: Request<Incoming>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    rec: &mut Record,
) -> Result<Response<ResBody>, ApiError> {
    // request_filter: origin-form target, canonical path (kept in the record for the
    // log line; forwarding borrows it).
    let path: &str = rec.path.insert(request_filter(&req)?);

    // The module is looked up first only to label the metrics of auth failures; the
    // order of the checks (SPEC §2) is unchanged.
    let module_index = rt.routes.lookup(path);
    rec.module = module_index;

    // authenticate
    let entry = auth::authenticate(req.headers(), &shared.cache, &shared.store, &rt.config).await?;
    rec.token = Some(entry.id);
    auth::check_usable(&entry, Timestamp::now().as_second())?;

    // authorize: upstream_peer
    let module_index = module_index.ok_or(ApiError::RouteNotFound)?;
    if !entry.perms.allows(module_index) {
        return Err(ApiError::PermDenied);
    }
    let (Some(module), Some(module_name)) = (
        rt.config.modules.get(module_index),
        rt.module_names.get(module_index),
    ) else {
        return Err(ApiError::Internal);
    };
    let extension_name = rt
        .extension_names
        .get(usize::from(entry.extension))
        .or_else(|| rt.extension_names.first())
        .ok_or(ApiError::Internal)?;

    // upstream_request_filter + forward + response_filter
    proxy::forward(
        &rt.upstreams,
        Forward {
            module,
            module_name,
            extension_name,
            entry: &entry,
            path,
            conn,
            request_id,
        },
        req,
    )
    .await
}

/// Rejects targets that are not origin-form and returns the normalised path.
fn request_filter(req: &Request<Incoming>) -> Result<String, ApiError> {
    let uri = req.uri();
    // HTTP/2 requests always carry :scheme and :authority; in HTTP/1 those mean
    // absolute-form, which a gateway (not a forward proxy) refuses.
    let absolute =
        req.version() < Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some());
    if req.method() == Method::CONNECT || absolute {
        return Err(ApiError::Malformed(
            "the request target must be in origin form (/path?query)".into(),
        ));
    }
    routes::normalize_path(uri.path()).map_err(|e| ApiError::Malformed(e.to_string()))
}
