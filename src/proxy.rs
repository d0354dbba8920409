//! Forwarding: the upstream request (headers policy, normalised path), the pooled
//! client, streaming bodies both ways, and 502/504 on upstream failure.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use http::uri::Authority;
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::config::{Config, Module};
use crate::error::{ApiError, UpstreamFailure, error_chain};
use crate::headers::{
    self, Scan, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_KEYGATE_EXTENSION,
    X_KEYGATE_EXTERNAL_ID, X_KEYGATE_MODULE, X_KEYGATE_TOKEN_ID, X_REQUEST_ID,
};
use crate::server::ConnInfo;
use crate::store::AuthEntry;
use crate::tls::{self, Trust};
use crate::upstream::{Pool, PooledBody, UpstreamError};

/// The body of every response keygate sends: its own (errors) or the upstream's, streamed.
pub type ResBody = Either<Full<Bytes>, PooledBody<LimitedBody>>;

/// The upstream pools of one configuration generation, one per module (by index),
/// sharing one rustls configuration per trust (system roots, each `ca_file`).
#[derive(Clone)]
pub struct Upstreams {
    pools: Vec<Arc<Pool<LimitedBody>>>,
}

impl Upstreams {
    /// Builds the pools `config`'s modules need. Fails (naming the module) when a
    /// `ca_file` is unusable, or when an https module relies on system roots and the
    /// system has none.
    pub fn new(config: &Config) -> Result<Upstreams, String> {
        let mut system: Option<Arc<rustls::ClientConfig>> = None;
        let mut by_ca: Vec<(PathBuf, Arc<rustls::ClientConfig>)> = Vec::new();
        let mut pools = Vec::with_capacity(config.modules.len());
        let workers = crate::server::worker_count(config.proxy.workers);
        for m in &config.modules {
            let tls = if !m.upstream.https {
                None
            } else if let Some(ca) = &m.ca_file {
                match by_ca.iter().find(|(p, _)| p == ca) {
                    Some((_, c)) => Some(Arc::clone(c)),
                    None => {
                        let c = Arc::new(
                            tls::client_config(Trust::File(ca))
                                .map_err(|e| format!("module {:?} ca_file: {e}", m.name))?,
                        );
                        by_ca.push((ca.clone(), Arc::clone(&c)));
                        Some(c)
                    }
                }
            } else {
                if system.is_none() {
                    system = Some(Arc::new(tls::client_config(Trust::System).map_err(
                        |e| format!("module {:?} (https upstream, system roots): {e}", m.name),
                    )?));
                }
                system.clone()
            };
            pools.push(
                Pool::new(m.upstream.clone(), tls, m.max_upstream_connections, workers)
                    .map_err(|e| format!("module {:?}: {e}", m.name))?,
            );
        }
        Ok(Upstreams { pools })
    }
}

/// The upstream a request goes to, chosen by `gateway::upstream_peer`.
pub struct Peer<'a> {
    /// The module.
    pub module: &'a Module,
    /// Its index in the configuration (its upstream pool).
    pub index: usize,
    /// Its name as a header value.
    pub module_name: &'a HeaderValue,
    /// The token's extension name as a header value.
    pub extension_name: &'a HeaderValue,
}

/// Builds the upstream request from the client's (SPEC §2 "To the upstream"): 413
/// early when the declared body is too large, the normalised path with the query as
/// sent, the module's upstream as the target, HTTP/1.1, the header policy of
/// [`filter_request_headers`], and the body wrapped to stop at `max_body_bytes`.
/// `scan` is [`headers::scan`] of the request's headers; `started` is when the request
/// started, the epoch of the body's read timing (one clock read fewer per request).
#[allow(clippy::too_many_arguments)]
pub fn upstream_request_filter(
    mut req: Request<Incoming>,
    scan: &Scan,
    path: &str,
    peer: &Peer<'_>,
    entry: &AuthEntry,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    started: std::time::Instant,
    body_read_timeout: Duration,
) -> Result<Request<LimitedBody>, ApiError> {
    let module = peer.module;
    if scan.content_length {
        check_declared_length(req.headers(), module.max_body_bytes)?;
    }
    let uri = std::mem::take(req.uri_mut());
    // The pool speaks HTTP/1.1 upstream whatever the client spoke.
    let version = std::mem::replace(req.version_mut(), Version::HTTP_11);
    let policy = HeaderPolicy {
        forward_authorization: module.forward_authorization,
        preserve_host: module.preserve_host,
        upstream_host: &module.upstream.host_header,
        // What the client called us by: on HTTP/2 `:authority`, which takes precedence
        // over a Host header (RFC 9113 §8.3.1).
        authority: uri.authority(),
        authority_first: version == Version::HTTP_2,
        request_id,
        token_id: token_id_header(entry),
        extension: peer.extension_name,
        module: peer.module_name,
        external_id: entry.external_id.as_deref(),
        client_ip: &conn.remote_ip,
        tls: conn.tls,
    };
    filter_request_headers(req.headers_mut(), scan, policy);
    *req.uri_mut() = upstream_uri(uri, path)?;
    Ok(req.map(|body| LimitedBody {
        inner: body,
        remaining: module.max_body_bytes,
        watch: Arc::new(BodyWatch::new(Instant::from_std(started))),
        read_timeout: body_read_timeout,
        stall: None,
        waiting: false,
    }))
}

/// 413 when `Content-Length` already says the body is over `max`; 400 when it is not
/// a number.
fn check_declared_length(h: &http::HeaderMap, max: u64) -> Result<(), ApiError> {
    let Some(len) = h.get(CONTENT_LENGTH) else {
        return Ok(());
    };
    match len.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
        Some(n) if n > max => Err(ApiError::BodyTooLarge(max)),
        Some(_) => Ok(()),
        None => Err(ApiError::Malformed("invalid Content-Length".into())),
    }
}

/// `<normalised path>?<query as sent>`, in origin form (RFC 9112 §3.2.1): the
/// connection it is sent on already goes to the module's upstream. When normalising
/// changed nothing (the common case) the client's path and query are reused as they
/// are, without parsing them again (~700 instructions, issue 13).
fn upstream_uri(uri: Uri, path: &str) -> Result<Uri, ApiError> {
    if let Some(pq) = uri.path_and_query()
        && pq.path() == path
    {
        if uri.scheme().is_none() && uri.authority().is_none() {
            return Ok(uri);
        }
        return Ok(Uri::from(pq.clone()));
    }
    let query = uri.query();
    let mut pq = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    Uri::try_from(pq).map_err(|_| ApiError::Malformed("the request target is not valid".into()))
}

/// What the upstream request's headers are made of besides the client's.
pub struct HeaderPolicy<'a> {
    /// Keep the client's `Authorization`.
    pub forward_authorization: bool,
    /// Keep the client's `Host` (when it sent one).
    pub preserve_host: bool,
    /// The upstream's `Host`.
    pub upstream_host: &'a HeaderValue,
    /// The request target's authority (HTTP/2 `:authority`; absent in origin form).
    pub authority: Option<&'a Authority>,
    /// Whether the authority names the client's host before `Host` does (HTTP/2).
    pub authority_first: bool,
    /// `X-Request-Id`.
    pub request_id: &'a HeaderValue,
    /// `X-Keygate-Token-Id`.
    pub token_id: HeaderValue,
    /// `X-Keygate-Extension`.
    pub extension: &'a HeaderValue,
    /// `X-Keygate-Module`.
    pub module: &'a HeaderValue,
    /// `X-Keygate-External-Id`, when the token has one.
    pub external_id: Option<&'a str>,
    /// The client's address, appended to `X-Forwarded-For`.
    pub client_ip: &'a HeaderValue,
    /// Whether the client connection is TLS (`X-Forwarded-Proto`).
    pub tls: bool,
}

/// The request header policy of SPEC §2: hop-by-hop and `x-keygate-*` headers out,
/// `Authorization` out unless forwarded, then keygate's own headers in. `scan` (of `h`,
/// [`headers::scan`]) says which rules have work: a request without hop-by-hop,
/// `x-keygate-*` or `X-Forwarded-*` headers costs only the inserts.
pub fn filter_request_headers(h: &mut http::HeaderMap, scan: &Scan, p: HeaderPolicy<'_>) {
    // The client's Host as sent, even when a `Connection` line names it.
    let mut named_host = None;
    if scan.hop_by_hop {
        named_host = h.get(HOST).cloned();
        headers::strip_hop_by_hop(h);
    }
    if scan.keygate {
        headers::strip_keygate(h);
    }
    if !p.forward_authorization && scan.authorizations > 0 {
        h.remove(AUTHORIZATION);
    }
    // After the hop-by-hop strip, so `Connection: x-request-id` cannot remove it.
    h.insert(X_REQUEST_ID, p.request_id.clone());
    h.insert(X_KEYGATE_TOKEN_ID, p.token_id);
    h.insert(X_KEYGATE_EXTENSION, p.extension.clone());
    h.insert(X_KEYGATE_MODULE, p.module.clone());
    if let Some(v) = p.external_id.and_then(|e| HeaderValue::from_str(e).ok()) {
        h.insert(X_KEYGATE_EXTERNAL_ID, v);
    }
    if scan.forwarded_for && h.contains_key(X_FORWARDED_FOR) {
        append_forwarded_for(h, p.client_ip);
    } else {
        // The common case: no proxy in front; the per-connection value, no allocation.
        h.insert(X_FORWARDED_FOR, p.client_ip.clone());
    }
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if p.tls { "https" } else { "http" }),
    );
    // The upstream's Host goes in first: what it replaces is the client's (one lookup
    // for both).
    let sent_host = h.insert(HOST, p.upstream_host.clone()).or(named_host);
    let authority = || {
        p.authority
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    };
    let client_host = if p.authority_first {
        authority().or(sent_host)
    } else {
        sent_host.or_else(authority)
    };
    match client_host {
        Some(host) => {
            if p.preserve_host {
                h.insert(HOST, host.clone());
            }
            h.insert(X_FORWARDED_HOST, host);
        }
        None => {
            if scan.forwarded_host {
                h.remove(X_FORWARDED_HOST);
            }
        }
    }
}

/// Sends the request to the module's upstream and waits for its response head. The
/// module's timeout is the upstream's time: it runs while keygate waits on the
/// upstream (connecting, taking the body, answering), restarting each time the wait
/// was on the client instead — so it is measured from the end of the request body to
/// the response head (Envoy's route timeout), and a slow upload is bounded by
/// `body_read_timeout`, never blamed on the upstream. Failures answer 502/504; a
/// failure of the client's body is the client's 408/413/400.
pub async fn send(
    upstreams: &Upstreams,
    peer: &Peer<'_>,
    req: Request<LimitedBody>,
) -> Result<Response<PooledBody<LimitedBody>>, ApiError> {
    let module = peer.module;
    let pool = upstreams.pools.get(peer.index).ok_or(ApiError::Internal)?;
    let watch = Arc::clone(&req.body().watch);
    // The wait for a free connection (at max_upstream_connections) is the upstream's
    // time too (SPEC §5).
    let send = pool.send(req);
    tokio::pin!(send);
    let result = loop {
        let deadline = watch.upstream_deadline(module.timeout);
        tokio::select! {
            r = &mut send => break r,
            () = tokio::time::sleep_until(deadline) => {
                if watch.upstream_deadline(module.timeout) <= Instant::now() {
                    return Err(ApiError::Upstream(UpstreamFailure::Timeout));
                }
            }
        }
    };
    match result {
        Ok(res) => Ok(res),
        Err(e) => {
            // The client's body failed first: the client's error, not the upstream's.
            match watch.failure() {
                Some(ClientBodyFailure::TooLarge) => {
                    return Err(ApiError::BodyTooLarge(module.max_body_bytes));
                }
                Some(ClientBodyFailure::Stalled | ClientBodyFailure::Closed) => {
                    return Err(ApiError::RequestTimeout);
                }
                Some(ClientBodyFailure::Malformed) => {
                    return Err(ApiError::Malformed(
                        "the request body is malformed (invalid chunked encoding)".into(),
                    ));
                }
                None => {}
            }
            let kind = if e.is_connect() {
                UpstreamFailure::Connect
            } else {
                UpstreamFailure::Protocol
            };
            log_failure(module, kind, &e);
            Err(ApiError::Upstream(kind))
        }
    }
}

fn log_failure(module: &Module, kind: UpstreamFailure, e: &UpstreamError) {
    match tls_failure(e) {
        Some(tls) => tracing::warn!(
            module = %module.name, kind = kind.as_str(), tls_error = %tls,
            error = %error_chain(e),
            "TLS handshake with the upstream failed (certificate not trusted? check the module's ca_file)"
        ),
        None => tracing::warn!(
            module = %module.name, kind = kind.as_str(), error = %error_chain(e),
            "upstream request failed"
        ),
    }
}

/// The upstream's response as the client gets it: hop-by-hop headers removed, in the
/// client's HTTP version (the version is hop-by-hop, RFC 9110 §6.2: an HTTP/1.0
/// upstream does not make a keep-alive HTTP/1.1 client connection close), body and
/// trailers streamed.
pub fn response_filter(
    res: Response<PooledBody<LimitedBody>>,
    client_version: Version,
) -> Response<ResBody> {
    let (mut parts, body) = res.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.version = client_version;
    Response::from_parts(parts, Either::Right(body))
}

fn token_id_header(entry: &AuthEntry) -> HeaderValue {
    let b = entry.id.to_bytes();
    HeaderValue::from_bytes(&b).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Appends the client address to `X-Forwarded-For` (joining earlier lines).
fn append_forwarded_for(h: &mut http::HeaderMap, client_ip: &HeaderValue) {
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
    joined.push_str(client_ip.to_str().unwrap_or("unknown"));
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

/// Why the client's body failed while it was streamed upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyFailure {
    /// Over the module's `max_body_bytes` (413).
    TooLarge = 1,
    /// Nothing arrived for `body_read_timeout` (408).
    Stalled = 2,
    /// The client's connection or stream ended before the body did (408).
    Closed = 3,
    /// Broken framing, e.g. a bad chunk-size line (400).
    Malformed = 4,
}

/// What the forwarder knows about the client's body while it is sent upstream: whose
/// turn it is (the client's to send more, or the upstream's to take it or answer) and
/// since when, and whether the body failed.
pub struct BodyWatch {
    epoch: Instant,
    /// Bit 63: waiting on the client; the rest: milliseconds since `epoch` of the last
    /// change of turn.
    turn: AtomicU64,
    /// A [`ClientBodyFailure`] as u8, 0 = none.
    failure: AtomicU8,
}

const ON_CLIENT: u64 = 1 << 63;

impl BodyWatch {
    /// A watch whose turns are timed from `epoch` (the request's start: no clock read).
    fn new(epoch: Instant) -> BodyWatch {
        BodyWatch {
            epoch,
            turn: AtomicU64::new(0),
            failure: AtomicU8::new(0),
        }
    }

    fn set_turn(&self, on_client: bool) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(ON_CLIENT - 1);
        let flag = if on_client { ON_CLIENT } else { 0 };
        self.turn.store(flag | (ms & !ON_CLIENT), Ordering::Release);
    }

    /// When the upstream has used up `timeout` of its own time, if the wait does not
    /// turn to the client before then. While it is the client's turn, `timeout` from
    /// now: the upstream's clock can only start later, so rechecking then is exact.
    fn upstream_deadline(&self, timeout: Duration) -> Instant {
        let turn = self.turn.load(Ordering::Acquire);
        if turn & ON_CLIENT != 0 {
            Instant::now() + timeout
        } else {
            self.epoch + Duration::from_millis(turn) + timeout
        }
    }

    fn fail(&self, f: ClientBodyFailure) {
        let _ = self
            .failure
            .compare_exchange(0, f as u8, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The client body's failure, if it failed.
    pub fn failure(&self) -> Option<ClientBodyFailure> {
        match self.failure.load(Ordering::Acquire) {
            1 => Some(ClientBodyFailure::TooLarge),
            2 => Some(ClientBodyFailure::Stalled),
            3 => Some(ClientBodyFailure::Closed),
            4 => Some(ClientBodyFailure::Malformed),
            _ => None,
        }
    }
}

/// Which client body failure a body error from hyper is: broken framing (hyper's
/// decoder reports `InvalidData`/`InvalidInput`), else the connection or stream ended.
fn classify(e: &hyper::Error) -> ClientBodyFailure {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    ClientBodyFailure::Malformed
                }
                _ => ClientBodyFailure::Closed,
            };
        }
        cur = c.source();
    }
    ClientBodyFailure::Closed
}

/// The client's body failed (see [`ClientBodyFailure`]).
#[derive(Debug, thiserror::Error)]
#[error("client request body failed: {0:?}")]
pub struct ClientBodyError(pub ClientBodyFailure);

pin_project_lite::pin_project! {
    /// The client's body, streamed upstream: fails once it passes the module's limit
    /// or stalls longer than `body_read_timeout`, and tells the [`BodyWatch`] whose
    /// turn it is.
    pub struct LimitedBody {
        #[pin]
        inner: Incoming,
        remaining: u64,
        watch: Arc<BodyWatch>,
        read_timeout: Duration,
        // Reused across stalls (one allocation per request at most).
        stall: Option<Pin<Box<Sleep>>>,
        waiting: bool,
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
        let polled = this.inner.poll_frame(cx);
        if polled.is_pending() {
            if !*this.waiting {
                *this.waiting = true;
                this.watch.set_turn(true);
                let at = Instant::now() + *this.read_timeout;
                match this.stall {
                    Some(s) => s.as_mut().reset(at),
                    None => *this.stall = Some(Box::pin(tokio::time::sleep_until(at))),
                }
            }
            if let Some(s) = this.stall
                && s.as_mut().poll(cx).is_ready()
            {
                this.watch.fail(ClientBodyFailure::Stalled);
                return Poll::Ready(Some(Err(Box::new(ClientBodyError(
                    ClientBodyFailure::Stalled,
                )))));
            }
            return Poll::Pending;
        }
        if *this.waiting {
            *this.waiting = false;
            this.watch.set_turn(false);
        }
        match polled {
            Poll::Pending | Poll::Ready(None) => polled.map(|_| None),
            Poll::Ready(Some(Err(e))) => {
                let f = classify(&e);
                this.watch.fail(f);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > *this.remaining {
                        this.watch.fail(ClientBodyFailure::TooLarge);
                        return Poll::Ready(Some(Err(Box::new(ClientBodyError(
                            ClientBodyFailure::TooLarge,
                        )))));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Module settings and client facts of one case.
    #[derive(Clone, Copy, Default)]
    struct Case {
        forward_authorization: bool,
        preserve_host: bool,
        tls: bool,
        external_id: Option<&'static str>,
    }

    fn filtered(input: &[(&str, &str)], c: Case) -> Vec<(String, String)> {
        let mut h = http::HeaderMap::new();
        for (k, v) in input {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let scan = headers::scan(&h);
        let v = HeaderValue::from_static;
        filter_request_headers(
            &mut h,
            &scan,
            HeaderPolicy {
                forward_authorization: c.forward_authorization,
                preserve_host: c.preserve_host,
                upstream_host: &v("up:7001"),
                authority: None,
                authority_first: false,
                request_id: &v("rid-1"),
                token_id: v("SU-000-000-001"),
                extension: &v("zapier"),
                module: &v("agreements"),
                external_id: c.external_id,
                client_ip: &v("192.0.2.7"),
                tls: c.tls,
            },
        );
        let mut out: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        out.sort();
        out
    }

    /// The headers keygate always adds, for a client that sent `host: gw`.
    fn added(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = [
            ("host", "up:7001"),
            ("x-forwarded-for", "192.0.2.7"),
            ("x-forwarded-host", "gw"),
            ("x-forwarded-proto", "http"),
            ("x-keygate-extension", "zapier"),
            ("x-keygate-module", "agreements"),
            ("x-keygate-token-id", "SU-000-000-001"),
            ("x-request-id", "rid-1"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        // A later entry for a name replaces the earlier one.
        v.reverse();
        let mut seen = std::collections::HashSet::new();
        v.retain(|(k, _)| seen.insert(k.clone()));
        v.sort();
        v
    }

    #[test]
    fn upstream_request_header_table() {
        let plain = Case::default();
        type Row<'a> = (&'a [(&'a str, &'a str)], Case, Vec<(String, String)>);
        let rows: Vec<Row> = vec![
            // Authorization is removed unless the module forwards it.
            (
                &[
                    ("host", "gw"),
                    ("authorization", "ApiKey x:y"),
                    ("accept", "*/*"),
                ],
                plain,
                added(&[("accept", "*/*")]),
            ),
            (
                &[("host", "gw"), ("authorization", "ApiKey x:y")],
                Case {
                    forward_authorization: true,
                    ..plain
                },
                added(&[("authorization", "ApiKey x:y")]),
            ),
            // Spoofed x-keygate-* and hop-by-hop headers go; a Connection line cannot
            // remove keygate's own headers.
            (
                &[
                    ("host", "gw"),
                    ("x-keygate-token-id", "SU-999-999-999"),
                    ("x-keygate-whatever", "1"),
                    ("connection", "x-request-id, x-a"),
                    ("x-a", "1"),
                    ("keep-alive", "5"),
                    ("te", "trailers"),
                ],
                plain,
                added(&[("te", "trailers")]),
            ),
            // A Connection line naming Host, X-Forwarded-For and Authorization: the
            // client's Host is still what it called us by (X-Forwarded-Host, and Host
            // when preserved); its X-Forwarded-For goes as hop-by-hop.
            (
                &[
                    ("host", "gw"),
                    ("connection", "host, x-forwarded-for, authorization"),
                    ("x-forwarded-for", "10.0.0.1"),
                    ("authorization", "ApiKey x:y"),
                ],
                Case {
                    preserve_host: true,
                    ..plain
                },
                added(&[("host", "gw")]),
            ),
            // The client's request id is replaced by the one chosen for the request.
            (
                &[("host", "gw"), ("x-request-id", "client-id")],
                plain,
                added(&[]),
            ),
            // X-Forwarded-For: earlier lines joined, the client appended.
            (
                &[
                    ("host", "gw"),
                    ("x-forwarded-for", "10.0.0.1"),
                    ("x-forwarded-for", "10.0.0.2"),
                ],
                plain,
                added(&[("x-forwarded-for", "10.0.0.1, 10.0.0.2, 192.0.2.7")]),
            ),
            // preserve_host keeps the client's Host; TLS shows in X-Forwarded-Proto.
            (
                &[("host", "gw")],
                Case {
                    preserve_host: true,
                    tls: true,
                    ..plain
                },
                added(&[("host", "gw"), ("x-forwarded-proto", "https")]),
            ),
            (
                &[("host", "gw")],
                Case {
                    external_id: Some("ext-42"),
                    ..plain
                },
                added(&[("x-keygate-external-id", "ext-42")]),
            ),
        ];
        for (input, case, want) in rows {
            assert_eq!(filtered(input, case), want, "{input:?}");
        }
    }

    #[test]
    fn without_a_client_host_the_upstream_host_is_used_even_when_preserved() {
        let got = filtered(
            &[("x-forwarded-host", "spoofed")],
            Case {
                preserve_host: true,
                ..Case::default()
            },
        );
        assert!(got.contains(&("host".into(), "up:7001".into())), "{got:?}");
        assert!(!got.iter().any(|(k, _)| k == "x-forwarded-host"), "{got:?}");
    }
}
