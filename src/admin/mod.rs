//! The admin listener: health, readiness and (later) the token API.

pub mod stats;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::auth::{self, Presented};
use crate::config::ADMIN_MODULE;
use crate::error::ApiError;
use crate::gateway::Shared;
use crate::server::ConnInfo;
use crate::token::{Status, TokenId};

/// Handles one request on the admin listener.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    _conn: Arc<ConnInfo>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, r#"{"status":"ok"}"#),
        (&Method::GET, "/readyz") => match shared.store.ping().await {
            Ok(()) => json(StatusCode::OK, r#"{"status":"ready"}"#),
            Err(_) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"store unavailable"}"#,
            ),
        },
        (&Method::GET, "/metrics") => stats::metrics(&shared).await,
        (&Method::GET, path) if path.starts_with("/v1/tokens/") && path.ends_with("/stats") => {
            // Temporary glue until the admin router lands: authenticate, then route.
            if let Err(e) = minimal_admin_auth(&shared, &req).await {
                return e.to_response();
            }
            let id = path
                .strip_prefix("/v1/tokens/")
                .and_then(|p| p.strip_suffix("/stats"))
                .unwrap_or("");
            match TokenId::parse(id.as_bytes()) {
                Some(id) => stats::token_stats(&shared, id, req.uri().query()).await,
                None => ApiError::TokenNotFound(id.to_string()).to_response(),
            }
        }
        _ => ApiError::NotFound.to_response(),
    }
}

/// Temporary: an active token with the admin permission (replaced by the router's).
async fn minimal_admin_auth(shared: &Shared, req: &Request<Incoming>) -> Result<(), ApiError> {
    let c = match auth::presented(req.headers()) {
        Ok(Presented::Credential(c)) => c,
        Ok(Presented::Unparsable) => return Err(ApiError::AuthInvalid),
        Ok(Presented::Missing) => return Err(ApiError::AuthMissing),
        Err(_) => {
            return Err(ApiError::Malformed(
                "more than one Authorization header".into(),
            ));
        }
    };
    let token = match shared.store.get(c.id).await {
        Ok(Some(t)) if t.secret_hash.matches(&c.secret_hash()) => t,
        Ok(_) => return Err(ApiError::AuthInvalid),
        Err(_) => return Err(ApiError::StoreUnavailable),
    };
    match token.status(jiff::Timestamp::now()) {
        Status::Active if token.has_permission(ADMIN_MODULE) => Ok(()),
        Status::Active => Err(ApiError::PermDenied),
        Status::Disabled => Err(ApiError::AuthDisabled),
        Status::Expired => Err(ApiError::AuthExpired),
    }
}

fn json(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
