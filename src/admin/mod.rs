//! The admin listener: health, readiness, the OpenAPI document and the token API of
//! SPEC §4. Routing is one table ([`ROUTES`]) so the OpenAPI test can check that every
//! route is documented; each `/v1/*` route authenticates its caller first. The web
//! console's static files (`GET /`, `/console/*`) are answered before routing.

pub mod console;
pub mod openapi;
pub mod query;
pub mod stats;
pub mod tokens;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use jiff::Timestamp;

use crate::auth;
use crate::config::ADMIN_MODULE;
use crate::error::{ApiError, json_response};
use crate::headers::head_size;
use crate::logging::{Exchange, Line};
use crate::policy::Access;
use crate::server::ConnInfo;
use crate::state::{Runtime, Shared};
use crate::token::{Token, TokenId};
use crate::tokens::Tokens;

/// Largest admin request body (SPEC §4); larger ones answer 413 `VALIDATION`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest path written to a log line (ids are 14 characters; the rest is noise).
const MAX_LOGGED_PATH: usize = 128;

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `GET /healthz`.
    Healthz,
    /// `GET /readyz`.
    Readyz,
    /// `GET /openapi.json`.
    OpenApi,
    /// `GET /metrics`.
    Metrics,
    /// A `/v1/*` route: the caller must hold an admin token.
    Admin(AdminOp),
}

/// A `/v1/*` route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOp {
    /// `GET /v1/tokens`.
    ListTokens,
    /// `POST /v1/tokens`.
    CreateToken,
    /// `GET /v1/modules`.
    Modules,
    /// `GET /v1/extensions`.
    Extensions,
    /// A `/v1/tokens/{id}…` route.
    Token(TokenOp),
}

/// A `/v1/tokens/{id}…` route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOp {
    /// `GET /v1/tokens/{id}`.
    Get,
    /// `PATCH /v1/tokens/{id}`.
    Edit,
    /// `DELETE /v1/tokens/{id}`.
    Delete,
    /// `POST /v1/tokens/{id}/disable`.
    Disable,
    /// `POST /v1/tokens/{id}/enable`.
    Enable,
    /// `POST /v1/tokens/{id}/rotate`.
    Rotate,
    /// `POST /v1/tokens/{id}/renew`.
    Renew,
    /// `GET /v1/tokens/{id}/events`.
    Events,
    /// `GET /v1/tokens/{id}/stats`.
    Stats,
}

/// One route: method, path template (`{id}` matches one segment), operation.
#[derive(Debug, Clone)]
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path template as written in the OpenAPI document.
    pub path: &'static str,
    /// What it does.
    pub op: Op,
}

const fn route(method: Method, path: &'static str, op: Op) -> Route {
    Route { method, path, op }
}

const fn admin(method: Method, path: &'static str, op: AdminOp) -> Route {
    route(method, path, Op::Admin(op))
}

const fn token(method: Method, path: &'static str, op: TokenOp) -> Route {
    admin(method, path, AdminOp::Token(op))
}

/// Every route of the admin listener: the only place a path meets its handler. A new
/// route is a row here, an [`Op`], its handler in [`process`] or
/// [`tokens::dispatch`], and a `paths` entry in [`openapi::document`]. Templates with
/// `{id}` are exactly the [`AdminOp::Token`] rows (a unit test checks it).
pub const ROUTES: &[Route] = &[
    route(Method::GET, "/healthz", Op::Healthz),
    route(Method::GET, "/readyz", Op::Readyz),
    route(Method::GET, "/openapi.json", Op::OpenApi),
    route(Method::GET, "/metrics", Op::Metrics),
    admin(Method::GET, "/v1/tokens", AdminOp::ListTokens),
    admin(Method::POST, "/v1/tokens", AdminOp::CreateToken),
    token(Method::GET, "/v1/tokens/{id}", TokenOp::Get),
    token(Method::PATCH, "/v1/tokens/{id}", TokenOp::Edit),
    token(Method::DELETE, "/v1/tokens/{id}", TokenOp::Delete),
    token(Method::POST, "/v1/tokens/{id}/disable", TokenOp::Disable),
    token(Method::POST, "/v1/tokens/{id}/enable", TokenOp::Enable),
    token(Method::POST, "/v1/tokens/{id}/rotate", TokenOp::Rotate),
    token(Method::POST, "/v1/tokens/{id}/renew", TokenOp::Renew),
    token(Method::GET, "/v1/tokens/{id}/events", TokenOp::Events),
    token(Method::GET, "/v1/tokens/{id}/stats", TokenOp::Stats),
    admin(Method::GET, "/v1/modules", AdminOp::Modules),
    admin(Method::GET, "/v1/extensions", AdminOp::Extensions),
];

/// Matches `path` against a template; returns the `{id}` segment if there is one.
fn match_template<'p>(template: &str, path: &'p str) -> Option<Option<&'p str>> {
    let mut id = None;
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(seg)) if !seg.is_empty() => id = Some(seg),
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// The route for `method` and `path` with its `{id}` segment, or 404/405.
pub fn resolve<'p>(method: &Method, path: &'p str) -> Result<(Op, Option<&'p str>), ApiError> {
    let mut path_matched = false;
    for r in ROUTES {
        if let Some(id) = match_template(r.path, path) {
            path_matched = true;
            if r.method == method {
                return Ok((r.op, id));
            }
        }
    }
    Err(if path_matched {
        ApiError::MethodNotAllowed
    } else {
        ApiError::NotFound
    })
}

/// The methods allowed on `path` (the `Allow` header of a 405).
fn allowed(path: &str) -> String {
    let methods: Vec<&str> = ROUTES
        .iter()
        .filter(|r| match_template(r.path, path).is_some())
        .map(|r| r.method.as_str())
        .collect();
    methods.join(", ")
}

/// An authenticated admin caller: its stored token (fresh from the store, so its
/// permissions are current for the escalation rule).
pub struct Caller {
    /// The caller's token.
    pub token: Token,
}

/// Everything a handler needs.
pub struct Ctx<'a> {
    /// The shared state.
    pub shared: &'a Shared,
    /// The current configuration generation.
    pub rt: &'a Runtime,
    /// Token operations.
    pub tokens: &'a Tokens,
    /// The caller.
    pub caller: Caller,
    /// The request time.
    pub now: Timestamp,
    /// Rate-limit and quota state (for `quota_usage`).
    pub limiters: &'a crate::policy::Limiters,
}

/// Handles one request on the admin listener. Never fails: every error is a response.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
) -> Response<Full<Bytes>> {
    // A head over the limit gets process's 431 (JSON, X-Request-Id), console or not.
    let max_head = shared.runtime.load().config.proxy.max_header_bytes;
    if head_size(&req) <= max_head
        && let Some(res) = console::serve(&req)
    {
        return res;
    }
    let exchange = Exchange::begin(req.method(), req.headers(), &shared.request_ids);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut actor = None;
    let result = process(&shared, req, &conn, &mut actor).await;
    // Log the path only when it is a known route, so log lines stay bounded and clean.
    let logged_path = match resolve(&method, &path) {
        Ok(_) => Some(path.get(..MAX_LOGGED_PATH).unwrap_or(&path)),
        Err(_) => None,
    };
    let line = Line {
        token: actor,
        module: None,
        path: logged_path,
    };
    let mut finished = exchange.finish(result, |b| b, "admin request", line);
    if finished.error == Some(ApiError::MethodNotAllowed)
        && let Ok(v) = HeaderValue::from_str(&allowed(&path))
    {
        finished.response.headers_mut().insert(header::ALLOW, v);
    }
    finished.response
}

async fn process(
    shared: &Shared,
    req: Request<Incoming>,
    conn: &ConnInfo,
    actor: &mut Option<TokenId>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let max_head = shared.runtime.load().config.proxy.max_header_bytes;
    if head_size(&req) > max_head {
        return Err(ApiError::HeadersTooLarge(max_head));
    }
    let (op, id) = resolve(req.method(), req.uri().path())?;
    match op {
        Op::Healthz => Ok(json_static(StatusCode::OK, r#"{"status":"ok"}"#)),
        Op::Readyz => Ok(match shared.store.check().await {
            Ok(()) => json_static(StatusCode::OK, r#"{"status":"ready"}"#),
            Err(_) => json_static(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"store unavailable"}"#,
            ),
        }),
        Op::OpenApi => {
            let rt = shared.runtime.load();
            Ok(json_response(
                StatusCode::OK,
                openapi::document_bytes(&rt.config),
            ))
        }
        Op::Metrics => Ok(stats::metrics(shared).await),
        Op::Admin(op) => {
            // Templates without `{id}` give none; an empty id names no token.
            let id = id.unwrap_or_default().to_string();
            let rt = shared.runtime.load_full();
            let caller = authenticate(shared, &rt, &req, conn).await?;
            *actor = Some(caller.token.id);
            let query = req.uri().query().map(str::to_string);
            let body = read_body(req, rt.config.proxy.body_read_timeout).await?;
            let ctx = Ctx {
                shared,
                rt: &rt,
                tokens: &shared.tokens,
                caller,
                now: Timestamp::now(),
                limiters: &shared.limiters,
            };
            tokens::dispatch(&ctx, op, &id, query.as_deref(), &body).await
        }
    }
}

/// The proxy's credential check, the caller's `allowed_ips` against the TCP peer, then
/// the admin permission (SPEC §4, §8): `integrations` or `all` for every route,
/// `integrations:read` or `all:read` for `GET` routes only.
async fn authenticate(
    shared: &Shared,
    rt: &Runtime,
    req: &Request<Incoming>,
    conn: &ConnInfo,
) -> Result<Caller, ApiError> {
    let entry = auth::authenticate(req.headers(), &shared.cache, &shared.store, &rt.config).await?;
    auth::check_usable(&entry, Timestamp::now().as_second())?;
    // The cache entry proves the secret; the stored token carries the permission names
    // (`integrations` need not be a configured module, so the PermSet cannot tell).
    let token = match shared.tokens.get(entry.id).await {
        Ok(t) => t,
        // Deleted between the cache check and now.
        Err(ApiError::TokenNotFound(_)) => return Err(ApiError::AuthInvalid),
        Err(e) => return Err(e),
    };
    if !token.allowed_ips.is_empty()
        && !crate::policy::any_contains(&token.allowed_ips, conn.remote.ip())
    {
        return Err(ApiError::IpNotAllowed);
    }
    match token.access(ADMIN_MODULE) {
        Access::Full => {}
        Access::Read if req.method() == Method::GET => {}
        Access::Read | Access::None => return Err(ApiError::PermDenied),
    }
    Ok(Caller { token })
}

/// Reads the whole body, at most [`MAX_BODY_BYTES`], within `timeout` (the proxy's
/// `body_read_timeout`; for 64 KiB a deadline on the whole body is enough): else 408.
async fn read_body(
    req: Request<Incoming>,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let too_large = ApiError::AdminBodyTooLarge(MAX_BODY_BYTES);
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH)
        && len
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(too_large);
    }
    let collect = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
    let Ok(collected) = tokio::time::timeout(timeout, collect).await else {
        return Err(ApiError::RequestTimeout);
    };
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large),
        Err(_) => Err(ApiError::Validation(
            "body: the request body could not be read".into(),
        )),
    }
}

fn json_static(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    json_response(status, Bytes::from_static(body.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_table() {
        fn r(m: Method, p: &str) -> Result<(Op, Option<&str>), ApiError> {
            resolve(&m, p)
        }
        assert_eq!(
            r(Method::GET, "/v1/tokens").unwrap(),
            (Op::Admin(AdminOp::ListTokens), None)
        );
        assert_eq!(
            r(Method::POST, "/v1/tokens/SU-1/rotate").unwrap(),
            (Op::Admin(AdminOp::Token(TokenOp::Rotate)), Some("SU-1"))
        );
        assert_eq!(
            r(Method::GET, "/v1/tokens/x").unwrap(),
            (Op::Admin(AdminOp::Token(TokenOp::Get)), Some("x"))
        );
        assert_eq!(
            r(Method::PUT, "/v1/tokens/x"),
            Err(ApiError::MethodNotAllowed)
        );
        assert_eq!(r(Method::GET, "/v1/tokens/"), Err(ApiError::NotFound));
        assert_eq!(r(Method::GET, "/v1/tokens/x/y"), Err(ApiError::NotFound));
        assert_eq!(
            r(Method::GET, "/v1/tokens//rotate"),
            Err(ApiError::NotFound)
        );
        assert_eq!(r(Method::GET, "/nope"), Err(ApiError::NotFound));
        assert_eq!(allowed("/v1/tokens/x"), "GET, PATCH, DELETE");
    }

    #[test]
    fn id_templates_are_exactly_the_token_routes() {
        for r in ROUTES {
            assert_eq!(
                r.path.contains("{id}"),
                matches!(r.op, Op::Admin(AdminOp::Token(_))),
                "{} {}",
                r.method,
                r.path
            );
        }
    }
}
