//! Forwarding: the upstream request (headers policy, normalised path), the pooled
//! client, streaming bodies both ways, and 502/504 on upstream failure.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Config, Module};
use crate::error::{ApiError, UpstreamFailure, error_chain};
use crate::headers::{
    self, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_KEYGATE_EXTENSION,
    X_KEYGATE_EXTERNAL_ID, X_KEYGATE_MODULE, X_KEYGATE_TOKEN_ID, X_REQUEST_ID,
};
use crate::server::ConnInfo;
use crate::store::AuthEntry;
use crate::tls::{self, Trust};

/// The body of every response keygate sends: its own (errors) or the upstream's, streamed.
pub type ResBody = Either<Full<Bytes>, Incoming>;

/// Idle upstream connections are closed after this; below common upstream keep-alive
/// timeouts (nginx 75s, Node 5s is the outlier: configure it higher) so a request
/// rarely races a closing connection.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections kept per upstream.
const POOL_MAX_IDLE_PER_HOST: usize = 256;
/// TCP connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connector: plain TCP for `http://`, rustls for `https://`.
type Connector = HttpsConnector<HttpConnector>;
/// One keep-alive pool.
type Pool = Client<Connector, LimitedBody>;

/// The pooled upstream clients of one configuration generation: one for modules using
/// the system roots (and plain HTTP), one per distinct `ca_file`.
#[derive(Clone)]
pub struct Upstreams {
    default: Pool,
    by_ca: Vec<(PathBuf, Pool)>,
}

impl Upstreams {
    /// Builds the clients `config`'s modules need. Fails (naming the module) when a
    /// `ca_file` is unusable, or when an https module relies on system roots and the
    /// system has none.
    pub fn new(config: &Config) -> Result<Upstreams, String> {
        let system = config
            .modules
            .iter()
            .find(|m| m.upstream.https && m.ca_file.is_none());
        let trust = match system {
            Some(_) => Trust::System,
            None => Trust::Nothing,
        };
        let default = pool(tls::client_config(trust).map_err(|e| match system {
            Some(m) => format!("module {:?} (https upstream, system roots): {e}", m.name),
            None => e,
        })?);
        let mut by_ca: Vec<(PathBuf, Pool)> = Vec::new();
        for m in &config.modules {
            let Some(ca) = &m.ca_file else { continue };
            if by_ca.iter().any(|(p, _)| p == ca) {
                continue;
            }
            let tls = tls::client_config(Trust::File(ca))
                .map_err(|e| format!("module {:?} ca_file: {e}", m.name))?;
            by_ca.push((ca.clone(), pool(tls)));
        }
        Ok(Upstreams { default, by_ca })
    }

    fn pool(&self, module: &Module) -> &Pool {
        module
            .ca_file
            .as_ref()
            .and_then(|ca| self.by_ca.iter().find(|(p, _)| p == ca))
            .map_or(&self.default, |(_, c)| c)
    }
}

/// A client with keep-alive pooling over `tls` (HTTP/1.1 only).
fn pool(tls: rustls::ClientConfig) -> Pool {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    // The https connector below decides by scheme.
    http.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build(connector)
}

/// What the upstream request needs besides the client's request.
pub struct Forward<'a> {
    /// The module.
    pub module: &'a Module,
    /// Its name as a header value.
    pub module_name: &'a HeaderValue,
    /// The token's extension name as a header value.
    pub extension_name: &'a HeaderValue,
    /// The token.
    pub entry: &'a AuthEntry,
    /// The normalised path.
    pub path: &'a str,
    /// The client connection.
    pub conn: &'a ConnInfo,
    /// The request id (the client's if sane, else generated).
    pub request_id: &'a HeaderValue,
}

/// Sends the request to the module's upstream and returns its response, streamed.
pub async fn forward(
    upstreams: &Upstreams,
    f: Forward<'_>,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let module = f.module;
    let (mut parts, body) = req.into_parts();

    // 413 early when the declared length is already too much.
    if let Some(len) = parts.headers.get(CONTENT_LENGTH) {
        match len.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(n) if n > module.max_body_bytes => {
                return Err(ApiError::BodyTooLarge(module.max_body_bytes));
            }
            Some(_) => {}
            None => return Err(ApiError::Malformed("invalid Content-Length".into())),
        }
    }

    // What the client called us by, before headers are rewritten.
    let client_host = parts.headers.get(HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });

    let query = parts.uri.query();
    let mut pq = String::with_capacity(f.path.len() + query.map_or(0, |q| q.len() + 1));
    pq.push_str(f.path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let path_and_query = PathAndQuery::try_from(pq)
        .map_err(|_| ApiError::Malformed("the request target is not valid".into()))?;
    let scheme = if module.upstream.https {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    let mut uri_parts = http::uri::Parts::default();
    uri_parts.scheme = Some(scheme);
    uri_parts.authority = Some(module.upstream.authority.clone());
    uri_parts.path_and_query = Some(path_and_query);
    parts.uri = Uri::from_parts(uri_parts).map_err(|_| ApiError::Internal)?;
    // The pool speaks HTTP/1.1 upstream whatever the client spoke.
    parts.version = Version::HTTP_11;

    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    headers::strip_keygate(h);
    if !module.forward_authorization {
        h.remove(AUTHORIZATION);
    }
    // After the hop-by-hop strip, so `Connection: x-request-id` cannot remove it.
    h.insert(X_REQUEST_ID, f.request_id.clone());
    h.insert(X_KEYGATE_TOKEN_ID, token_id_header(f.entry));
    h.insert(X_KEYGATE_EXTENSION, f.extension_name.clone());
    h.insert(X_KEYGATE_MODULE, f.module_name.clone());
    if let Some(v) = f
        .entry
        .external_id
        .as_deref()
        .and_then(|e| HeaderValue::from_str(e).ok())
    {
        h.insert(X_KEYGATE_EXTERNAL_ID, v);
    }
    append_forwarded_for(h, f.conn);
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if f.conn.tls { "https" } else { "http" }),
    );
    match &client_host {
        Some(host) => {
            h.insert(X_FORWARDED_HOST, host.clone());
        }
        None => {
            h.remove(X_FORWARDED_HOST);
        }
    }
    if !(module.preserve_host && client_host.is_some()) {
        h.insert(HOST, module.upstream.host_header.clone());
    } else if let Some(host) = client_host {
        h.insert(HOST, host);
    }

    let exceeded = Arc::new(AtomicBool::new(false));
    let body = LimitedBody {
        inner: body,
        remaining: module.max_body_bytes,
        exceeded: Arc::clone(&exceeded),
    };
    let req = Request::from_parts(parts, body);

    let res = match tokio::time::timeout(module.timeout, upstreams.pool(module).request(req)).await
    {
        Err(_) => return Err(ApiError::UpstreamTimeout),
        Ok(Err(e)) => {
            if exceeded.load(Ordering::Relaxed) {
                return Err(ApiError::BodyTooLarge(module.max_body_bytes));
            }
            let kind = if e.is_connect() {
                UpstreamFailure::Connect
            } else {
                UpstreamFailure::Protocol
            };
            match tls_failure(&e) {
                Some(tls) => tracing::warn!(
                    module = %module.name, kind = kind.as_str(), tls_error = %tls,
                    error = %error_chain(&e),
                    "TLS handshake with the upstream failed (certificate not trusted? check the module's ca_file)"
                ),
                None => {
                    tracing::warn!(module = %module.name, kind = kind.as_str(), error = %error_chain(&e), "upstream request failed")
                }
            }
            return Err(ApiError::UpstreamUnavailable(kind));
        }
        Ok(Ok(res)) => res,
    };
    let (mut parts, body) = res.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Either::Right(body)))
}

fn token_id_header(entry: &AuthEntry) -> HeaderValue {
    let b = entry.id.to_bytes();
    HeaderValue::from_bytes(&b).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Appends the client address to `X-Forwarded-For` (joining earlier lines).
fn append_forwarded_for(h: &mut http::HeaderMap, conn: &ConnInfo) {
    if !h.contains_key(X_FORWARDED_FOR) {
        // The common case: no proxy in front; the per-connection value, no allocation.
        h.insert(X_FORWARDED_FOR, conn.remote_ip.clone());
        return;
    }
    let mut joined = String::new();
    for v in h.get_all(X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            if !joined.is_empty() {
                joined.push_str(", ");
            }
            joined.push_str(s.trim());
        }
    }
    if !joined.is_empty() {
        joined.push_str(", ");
    }
    joined.push_str(conn.remote_ip.to_str().unwrap_or("unknown"));
    if let Ok(v) = HeaderValue::from_str(&joined) {
        h.insert(X_FORWARDED_FOR, v);
    }
}

/// The rustls error somewhere in `e`'s source chain, if the failure was TLS. io::Errors
/// wrap it (tokio-rustls, then hyper-rustls again) and their `source()` skips the
/// wrapped error itself, so each io::Error is opened with `get_ref`.
fn tls_failure<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        cur = match c.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => c.source(),
            },
            None => c.source(),
        };
    }
    None
}

/// The request body was over the module's limit.
#[derive(Debug, thiserror::Error)]
#[error("request body over the limit")]
pub struct BodyLimitExceeded;

pin_project_lite::pin_project! {
    /// The client's body, streamed upstream, failing once it passes the module's limit.
    pub struct LimitedBody {
        #[pin]
        inner: Incoming,
        remaining: u64,
        exceeded: Arc<AtomicBool>,
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > *this.remaining {
                        this.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded))));
                    }
                    *this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
