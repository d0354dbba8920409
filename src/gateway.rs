//! The request path on the proxy listener, as named phases (after pingora's
//! `ProxyHttp`), each a call into the module that owns it:
//!
//! request_filter → authenticate → upstream_peer → upstream_request_filter → send →
//! response_filter → logging.
//!
//! Any phase may answer early with an [`ApiError`]; `logging` runs for every request.

use std::sync::Arc;

use http::{Method, Request, Response, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use jiff::Timestamp;

use crate::auth;
use crate::error::ApiError;
use crate::logging::{Exchange, Finished, Line};
use crate::metrics::Class;
use crate::proxy::{self, Peer, ResBody};
use crate::routes;
use crate::server::ConnInfo;
use crate::state::{Runtime, Shared};
use crate::store::AuthEntry;
use crate::token::TokenId;

/// What the phases learn about a request that `logging` needs, whatever the outcome.
#[derive(Default)]
struct Ctx {
    /// The normalised path (request_filter).
    path: Option<String>,
    /// The module the path maps to (request_filter).
    module: Option<usize>,
    /// The token that presented its correct secret (authenticate).
    token: Option<TokenId>,
}

/// Handles one request on the proxy listener. Never fails: every error is a response.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
) -> Response<ResBody> {
    let exchange = Exchange::begin(req.method(), req.headers(), &shared.request_ids);
    let rt = shared.runtime.load_full();
    let mut ctx = Ctx::default();
    let result = proxy_request(&shared, &rt, &mut ctx, &exchange, req, &conn).await;
    logging(&shared, &rt, &ctx, exchange, result)
}

/// The phases from the request head to the upstream's response head.
async fn proxy_request(
    shared: &Shared,
    rt: &Runtime,
    ctx: &mut Ctx,
    exchange: &Exchange,
    req: Request<Incoming>,
    conn: &ConnInfo,
) -> Result<Response<ResBody>, ApiError> {
    let path: &str = ctx.path.insert(request_filter(&req)?);
    // Looked up before authenticating only to label the metrics of auth failures; the
    // order of the checks (SPEC §2) is upstream_peer's.
    ctx.module = rt.routes.lookup(path);
    let entry = auth::authenticate(req.headers(), &shared.cache, &shared.store, &rt.config).await?;
    ctx.token = Some(entry.id);
    auth::check_usable(&entry, Timestamp::now().as_second())?;
    let peer = upstream_peer(rt, &entry, ctx.module)?;
    let version = req.version();
    let upstream_req =
        proxy::upstream_request_filter(req, path, &peer, &entry, conn, exchange.request_id())?;
    let res = proxy::send(&rt.upstreams, peer.module, upstream_req).await?;
    Ok(proxy::response_filter(res, version))
}

/// Rejects targets that are not origin-form and returns the normalised path (SPEC §2
/// check 1).
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

/// Chooses the upstream for an authenticated token: the module its path maps to, if
/// the token may use it (SPEC §2 checks 7–8). Usage policies (IP allow-list before
/// the module, rate limits and quota after the permission) belong here, in that order.
fn upstream_peer<'rt>(
    rt: &'rt Runtime,
    entry: &AuthEntry,
    module: Option<usize>,
) -> Result<Peer<'rt>, ApiError> {
    let index = module.ok_or(ApiError::RouteNotFound)?;
    if !entry.perms.allows(index) {
        return Err(ApiError::PermDenied);
    }
    let (Some(module), Some(module_name)) =
        (rt.config.modules.get(index), rt.module_names.get(index))
    else {
        return Err(ApiError::Internal);
    };
    let extension_name = rt
        .extension_names
        .get(usize::from(entry.extension))
        .or_else(|| rt.extension_names.first())
        .ok_or(ApiError::Internal)?;
    Ok(Peer {
        module,
        module_name,
        extension_name,
    })
}

/// The last phase: the answer, its log line, the token's statistics (SPEC §3: only a
/// request that presented a known id with its correct secret has `ctx.token`) and the
/// metrics.
fn logging(
    shared: &Shared,
    rt: &Runtime,
    ctx: &Ctx,
    exchange: Exchange,
    result: Result<Response<ResBody>, ApiError>,
) -> Response<ResBody> {
    let line = Line {
        token: ctx.token,
        module: Some(
            ctx.module
                .and_then(|i| rt.config.modules.get(i))
                .map_or("none", |m| m.name.as_str()),
        ),
        path: ctx.path.as_deref(),
    };
    let Finished {
        response,
        error,
        elapsed,
    } = exchange.finish(result, Either::Left, "request", line);
    let modules = rt.module_metrics(&shared.metrics);
    let slot = modules.slot(ctx.module);
    modules.observe_duration(slot, elapsed);
    if let Some(e) = &error {
        shared.metrics.count_error(modules, slot, e);
    }
    let class = Class::of(response.status().as_u16());
    shared.stats.record(ctx.token, modules, slot, class);
    response
}
