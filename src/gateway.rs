//! The request path on the proxy listener, as named phases (after pingora's
//! `ProxyHttp`), each a call into the module that owns it:
//!
//! request_filter → authenticate → upstream_peer → upstream_request_filter → send →
//! response_filter → logging.
//!
//! Any phase may answer early with an [`ApiError`]; `logging` runs for every request.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use jiff::Timestamp;

use crate::auth;
use crate::error::ApiError;
use crate::headers::{self, Scan};
use crate::logging::{Exchange, Finished, Line};
use crate::metrics::Class;
use crate::policy::{self, Access, Admission, Refusal};
use crate::proxy::{self, Peer, ResBody};
use crate::routes::{self, NormalPath};
use crate::server::ConnInfo;
use crate::state::{Runtime, Shared};
use crate::store::AuthEntry;
use crate::token::TokenId;

/// What the phases learn about a request that `logging` needs, whatever the outcome.
#[derive(Default)]
struct Ctx {
    /// The normalised path (request_filter).
    path: Option<NormalPath>,
    /// The module the path maps to (request_filter).
    module: Option<usize>,
    /// The token that presented its correct secret, and the request's one wall-clock
    /// read (authenticate): statistics count the request on that day.
    token: Option<(TokenId, Timestamp)>,
    /// `RateLimit-Policy` and `RateLimit` for the answer (upstream_peer, tokens with
    /// rate limits).
    ratelimit: Option<(HeaderValue, HeaderValue)>,
}

/// Handles one request on the proxy listener. Never fails: every error is a response.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
) -> Response<ResBody> {
    // One pass over the header names answers every "is there a …" of the phases.
    let scan = headers::scan(req.headers());
    let client_id = if scan.request_ids == 1 {
        headers::client_request_id(req.headers())
    } else {
        None
    };
    let exchange = Exchange::begin_with(req.method(), client_id, &shared.request_ids);
    let rt = shared.runtime.load_full();
    let mut ctx = Ctx::default();
    let result = proxy_request(&shared, &rt, &mut ctx, &exchange, req, scan, &conn).await;
    logging(&shared, &rt, ctx, exchange, result)
}

/// The phases from the request head to the upstream's response head.
async fn proxy_request(
    shared: &Shared,
    rt: &Runtime,
    ctx: &mut Ctx,
    exchange: &Exchange,
    req: Request<Incoming>,
    scan: Scan,
    conn: &ConnInfo,
) -> Result<Response<ResBody>, ApiError> {
    let path = ctx
        .path
        .insert(request_filter(
            &req,
            &scan,
            rt.config.proxy.max_header_bytes,
        )?)
        .as_str();
    // Looked up before authenticating only to label the metrics of auth failures; the
    // order of the checks (SPEC §2) is upstream_peer's.
    ctx.module = rt.routes.lookup(path);
    let presented = auth::presented_in(scan.authorizations, scan.authorization.as_ref());
    // One wall-clock read for the grace period of a previous secret, the expiry, the
    // rate limits and the statistics day: the gateway's clock, which statistics count by.
    let now = shared.stats.clock().now();
    let (cache, store) = (&shared.cache, &shared.store);
    let entry =
        auth::authenticate_presented(presented, cache, store, &rt.config, now.as_second()).await?;
    ctx.token = Some((entry.id, now));
    auth::check_usable(&entry, now.as_second())?;
    let peer = upstream_peer(
        shared,
        rt,
        &entry,
        ctx.module,
        &req,
        conn,
        &mut ctx.ratelimit,
        now,
    )
    .await?;
    let version = req.version();
    let upstream_req = proxy::upstream_request_filter(
        req,
        &scan,
        path,
        &peer,
        &entry,
        conn,
        exchange.request_id(),
        exchange.started(),
        rt.config.proxy.body_read_timeout,
    )?;
    let res = proxy::send(&rt.upstreams, &peer, upstream_req).await?;
    Ok(proxy::response_filter(res, version))
}

/// Rejects heads over `max_header_bytes` (SPEC §2 row 0) and targets that are not
/// origin-form, and returns the normalised path (check 1). `scan` is
/// [`headers::scan`] of the request's headers.
fn request_filter(
    req: &Request<Incoming>,
    scan: &Scan,
    max_header_bytes: usize,
) -> Result<NormalPath, ApiError> {
    if headers::head_size(req) > max_header_bytes {
        return Err(ApiError::HeadersTooLarge(max_header_bytes));
    }
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
    // RFC 9112 §3.2: an HTTP/1.1 request without Host, or with more than one, is a 400
    // (two Hosts are a classic way to make a proxy and an upstream disagree).
    if req.version() == Version::HTTP_11 {
        match scan.hosts {
            1 => {}
            0 => {
                return Err(ApiError::Malformed(
                    "an HTTP/1.1 request needs a Host header".into(),
                ));
            }
            _ => return Err(ApiError::Malformed("more than one Host header".into())),
        }
    }
    routes::normalize_target(uri).map_err(|e| ApiError::Malformed(e.to_string()))
}

/// Chooses the upstream for an authenticated token, in the order of SPEC §2: the
/// client address against `allowed_ips` (6a), the module the path maps to (7), the
/// token's access to it — full, or `:read` for GET/HEAD/OPTIONS (8) — and its rate
/// limits and quota (8a, 8b), at `now` (the request's one clock read). A token without
/// policies skips them on one pointer test.
#[allow(clippy::too_many_arguments)]
async fn upstream_peer<'rt>(
    shared: &Shared,
    rt: &'rt Runtime,
    entry: &AuthEntry,
    module: Option<usize>,
    req: &Request<Incoming>,
    conn: &ConnInfo,
    ratelimit: &mut Option<(HeaderValue, HeaderValue)>,
    now: Timestamp,
) -> Result<Peer<'rt>, ApiError> {
    let policy = entry.policy.as_deref();
    if let Some(p) = policy.filter(|p| !p.allowed_ips.is_empty()) {
        let trusted = &rt.config.proxy.trusted_proxies;
        let ip = policy::client_ip(conn.remote.ip(), req.headers(), trusted);
        if !policy::any_contains(&p.allowed_ips, ip) {
            return Err(ApiError::IpNotAllowed);
        }
    }
    let index = module.ok_or(ApiError::RouteNotFound)?;
    match entry.perms.access(index) {
        Access::Full => {}
        Access::Read if policy::is_read_method(req.method()) => {}
        Access::Read | Access::None => return Err(ApiError::PermDenied),
    }
    if let Some(p) = policy.filter(|p| p.counts()) {
        let decision = policy::admit(
            &shared.limiters,
            &shared.store,
            entry.id,
            p,
            now.as_millisecond(),
        )
        .await;
        limits_answer(shared, p, decision, ratelimit, entry.id)?;
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
        index,
        module_name,
        extension_name,
    })
}

/// Turns a limiter decision into the `RateLimit` headers of the answer, or the 429.
fn limits_answer(
    shared: &Shared,
    p: &policy::Policy,
    decision: Admission,
    out: &mut Option<(HeaderValue, HeaderValue)>,
    id: TokenId,
) -> Result<(), ApiError> {
    let headroom = match decision {
        Admission::Admitted(h) => h,
        Admission::Refused(Refusal::RateLimited {
            retry_after,
            headroom,
        }) => {
            *out = policy::ratelimit_headers(p, headroom);
            return Err(ApiError::RateLimited(retry_after));
        }
        Admission::Refused(Refusal::QuotaExceeded {
            retry_after,
            first_in_period,
            period_start,
        }) => {
            if first_in_period {
                // `token.quota_exceeded` (SPEC §9), once per token and quota period: the
                // store dedupes it across instances; written off the request path.
                tracing::info!(token = %id, "quota exceeded for the current period");
                let store = shared.store.clone();
                let start = Timestamp::from_second(period_start).unwrap_or(Timestamp::UNIX_EPOCH);
                shared.background.spawn(async move {
                    if let Err(e) =
                        crate::events::quota_exceeded(&store, id, start, Timestamp::now()).await
                    {
                        tracing::warn!(token = %id, error = %e, "cannot raise token.quota_exceeded");
                    }
                });
            }
            return Err(ApiError::QuotaExceeded(retry_after));
        }
    };
    *out = policy::ratelimit_headers(p, headroom);
    Ok(())
}

/// The last phase: the answer, its log line, the token's statistics (SPEC §3: only a
/// request that presented a known id with its correct secret has `ctx.token`) and the
/// metrics.
fn logging(
    shared: &Shared,
    rt: &Runtime,
    mut ctx: Ctx,
    exchange: Exchange,
    result: Result<Response<ResBody>, ApiError>,
) -> Response<ResBody> {
    let line = Line {
        token: ctx.token.map(|(id, _)| id),
        module: Some(
            ctx.module
                .and_then(|i| rt.config.modules.get(i))
                .map_or("none", |m| m.name.as_str()),
        ),
        path: ctx.path.as_ref().map(NormalPath::as_str),
    };
    let Finished {
        mut response,
        error,
        elapsed,
    } = exchange.finish(result, Either::Left, "request", line);
    // Moved, not cloned: a clone of the fresh `RateLimit` value would allocate.
    if let Some((policy_header, state)) = ctx.ratelimit.take() {
        let h = response.headers_mut();
        h.insert(policy::RATELIMIT_POLICY, policy_header);
        h.insert(policy::RATELIMIT, state);
    }
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
