//! The error enum of both listeners and the ONE mapping to status code, `error_code`
//! and JSON body.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// How an upstream failed to answer: 502 `UPSTREAM_UNAVAILABLE` for `Connect` and
/// `Protocol`, 504 `UPSTREAM_TIMEOUT` for `Timeout` (and the `kind` label of
/// `keygate_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Could not connect (refused, unreachable, DNS, TLS handshake).
    Connect,
    /// No answer within the module's timeout.
    Timeout,
    /// The connection broke or the answer was not HTTP.
    Protocol,
}

impl UpstreamFailure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Protocol => "protocol",
        }
    }
}

/// Who caused an error: decides the level of the request's log line (`logging.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something wrong: `info`, like a success (the access log); it
    /// is nothing an operator must act on.
    Client,
    /// The upstream or the store failed: `warn`.
    Upstream,
    /// A bug or resource problem on our side: `error`.
    Internal,
}

fn upstream_text(kind: UpstreamFailure) -> &'static str {
    match kind {
        UpstreamFailure::Timeout => "the upstream service did not answer in time",
        UpstreamFailure::Connect | UpstreamFailure::Protocol => {
            "the upstream service is unavailable"
        }
    }
}

/// Every error a client can be answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Request head over `proxy.max_header_bytes` (SPEC §2 row 0).
    #[error("the request head exceeds {0} bytes")]
    HeadersTooLarge(usize),
    /// Path or headers malformed.
    #[error("{0}")]
    Malformed(String),
    /// No ApiKey credential.
    #[error("an Authorization header with the ApiKey scheme is required")]
    AuthMissing,
    /// Store down and the token not cached.
    #[error("the token store is unavailable; try again later")]
    StoreUnavailable,
    /// Unparsable credential, unknown id or wrong secret: one answer for all three.
    #[error("the API key is not valid")]
    AuthInvalid,
    /// Disabled token.
    #[error("the API token is disabled")]
    AuthDisabled,
    /// Expired token.
    #[error("the API token has expired")]
    AuthExpired,
    /// Client address outside the token's `allowed_ips`.
    #[error("the API token may not be used from this address")]
    IpNotAllowed,
    /// No module for the path.
    #[error("no module serves this path")]
    RouteNotFound,
    /// Token lacks the module.
    #[error("the API token is not permitted for this module")]
    PermDenied,
    /// Over one of the token's rate limits; retry after this many seconds.
    #[error("rate limit exceeded; retry in {0} s")]
    RateLimited(u64),
    /// Over the token's quota; retry after this many seconds (the period's end).
    #[error("quota exceeded for the current period; retry in {0} s")]
    QuotaExceeded(u64),
    /// Body over the module's limit (proxy).
    #[error("the request body exceeds {0} bytes")]
    BodyTooLarge(u64),
    /// The client's request body stalled longer than `body_read_timeout`, or its
    /// connection closed before the body was complete.
    #[error("the request body was not received in time (stalled or cut off)")]
    RequestTimeout,
    /// The upstream did not answer: refused, reset, unreachable, or too slow.
    #[error("{}", upstream_text(*.0))]
    Upstream(UpstreamFailure),
    /// Admin input invalid (field or parameter named in the text).
    #[error("{0}")]
    Validation(String),
    /// Admin body over 64 KiB.
    #[error("the request body exceeds {0} bytes")]
    AdminBodyTooLarge(usize),
    /// Granting or touching more than the caller holds.
    #[error("{0}")]
    PermEscalation(String),
    /// No such token.
    #[error("token {0} does not exist")]
    TokenNotFound(String),
    /// A token may not disable or delete itself.
    #[error("a token cannot {0} itself")]
    SelfLockout(&'static str),
    /// Renew of a perpetual token.
    #[error("a perpetual token cannot be renewed")]
    NotRenewable,
    /// Unknown admin route.
    #[error("no such route")]
    NotFound,
    /// Wrong method on an admin route.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Our own failure.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// The one mapping: status, `error_code`, and who caused it.
    pub fn parts(&self) -> (StatusCode, &'static str, Source) {
        use ApiError::*;
        match self {
            HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HEADERS_TOO_LARGE",
                Source::Client,
            ),
            Malformed(_) => (StatusCode::BAD_REQUEST, "REQ_MALFORMED", Source::Client),
            AuthMissing => (StatusCode::UNAUTHORIZED, "AUTH_MISSING", Source::Client),
            StoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "STORE_UNAVAILABLE",
                Source::Upstream,
            ),
            AuthInvalid => (StatusCode::UNAUTHORIZED, "AUTH_INVALID", Source::Client),
            AuthDisabled => (StatusCode::UNAUTHORIZED, "AUTH_DISABLED", Source::Client),
            AuthExpired => (StatusCode::UNAUTHORIZED, "AUTH_EXPIRED", Source::Client),
            IpNotAllowed => (StatusCode::FORBIDDEN, "IP_NOT_ALLOWED", Source::Client),
            RouteNotFound => (StatusCode::NOT_FOUND, "ROUTE_NOT_FOUND", Source::Client),
            RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                Source::Client,
            ),
            QuotaExceeded(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "QUOTA_EXCEEDED",
                Source::Client,
            ),
            PermDenied => (StatusCode::FORBIDDEN, "PERM_DENIED", Source::Client),
            BodyTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "BODY_TOO_LARGE",
                Source::Client,
            ),
            RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "REQ_TIMEOUT", Source::Client),
            Upstream(UpstreamFailure::Timeout) => (
                StatusCode::GATEWAY_TIMEOUT,
                "UPSTREAM_TIMEOUT",
                Source::Upstream,
            ),
            Upstream(UpstreamFailure::Connect | UpstreamFailure::Protocol) => (
                StatusCode::BAD_GATEWAY,
                "UPSTREAM_UNAVAILABLE",
                Source::Upstream,
            ),
            Validation(_) => (StatusCode::BAD_REQUEST, "VALIDATION", Source::Client),
            AdminBodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "VALIDATION", Source::Client),
            PermEscalation(_) => (StatusCode::FORBIDDEN, "PERM_ESCALATION", Source::Client),
            TokenNotFound(_) => (StatusCode::NOT_FOUND, "TOKEN_NOT_FOUND", Source::Client),
            SelfLockout(_) => (StatusCode::CONFLICT, "SELF_LOCKOUT", Source::Client),
            NotRenewable => (StatusCode::CONFLICT, "NOT_RENEWABLE", Source::Client),
            NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND", Source::Client),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                Source::Client,
            ),
            Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                Source::Internal,
            ),
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The `error_code`.
    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    /// The JSON body `{"error_code": "...", "errors": ["..."]}`.
    pub fn body(&self) -> Bytes {
        let body = serde_json::json!({
            "error_code": self.code(),
            "errors": [self.to_string()],
        });
        Bytes::from(body.to_string())
    }

    /// The whole response.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut res = json_response(self.status(), self.body());
        let h = res.headers_mut();
        match self {
            ApiError::AuthMissing => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"));
            }
            ApiError::RateLimited(secs) | ApiError::QuotaExceeded(secs) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            _ => {}
        }
        res
    }
}

/// Longest piece of client or file input echoed in an error message.
pub const MAX_SHOWN_CHARS: usize = 64;

/// `s` quoted for an error message, cut to [`MAX_SHOWN_CHARS`] characters (a 1 MB
/// name must not come back whole in an answer or a log line).
pub fn shown(s: &str) -> String {
    match s.char_indices().nth(MAX_SHOWN_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &s[..cut], s.len()),
    }
}

/// An answer of keygate's own (an error, the admin API, metrics): its `Content-Type`
/// and `Cache-Control: no-store`, since no shared cache may keep API answers.
pub fn own_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// A JSON answer of keygate's own.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    own_response(status, "application/json", body)
}

/// An error and all its sources on one line (`outer: inner: root`), for log lines and
/// CLI messages.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let b = ApiError::PermDenied.body();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error_code"], "PERM_DENIED");
        assert!(v["errors"][0].as_str().unwrap().contains("not permitted"));
    }

    #[test]
    fn huge_input_is_truncated_in_messages() {
        assert_eq!(shown("abc"), "\"abc\"");
        let long = "x".repeat(1 << 20);
        let s = shown(&long);
        assert!(s.len() < 100, "{s}");
        assert!(s.ends_with("… (1048576 bytes)"), "{s}");
        // Cut on a character boundary.
        assert!(shown(&"é".repeat(100)).contains('é'));
    }

    #[test]
    fn invalid_credentials_share_one_answer() {
        // Unknown id, wrong secret and unparsable credential must be indistinguishable.
        let e = ApiError::AuthInvalid;
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(e.code(), "AUTH_INVALID");
    }
}
