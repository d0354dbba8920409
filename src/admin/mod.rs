//! The admin listener: health, readiness, the web console and (later) the token API.

pub mod console;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::error::ApiError;
use crate::gateway::Shared;
use crate::server::ConnInfo;

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
        _ => console::serve(&req).unwrap_or_else(|| ApiError::NotFound.to_response()),
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
