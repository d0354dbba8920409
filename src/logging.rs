//! The last phase of every request on both listeners: the error (if any) becomes its
//! response, `X-Request-Id` is set, and one log line is written at the level of who
//! caused the outcome ([`Source`]): success and the client's mistakes at `info` (the
//! access log), the upstream's or the store's failures at `warn`, ours at `error`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response};
use http_body_util::Full;
use tracing::Level;

use crate::error::{ApiError, Source};
use crate::headers::{self, X_REQUEST_ID};
use crate::state::RequestIds;
use crate::token::TokenId;

/// A request being served: what its last phase needs from its first.
pub struct Exchange {
    started: Instant,
    request_id: HeaderValue,
    method: Method,
}

/// What the log line says about a request besides its answer.
#[derive(Default)]
pub struct Line<'a> {
    /// The token that presented its correct secret, if any.
    pub token: Option<TokenId>,
    /// The module (proxy listener only).
    pub module: Option<&'a str>,
    /// The path as logged (bounded; `-` when absent).
    pub path: Option<&'a str>,
}

/// A finished request: its response, the error it answers (if any), its latency.
pub struct Finished<B> {
    /// The response to send.
    pub response: Response<B>,
    /// The error the response answers.
    pub error: Option<ApiError>,
    /// Time from [`Exchange::begin`] to now.
    pub elapsed: Duration,
}

impl Exchange {
    /// Starts the clock; the request id is the client's when sane, else a new one.
    pub fn begin(method: &Method, headers: &HeaderMap, ids: &RequestIds) -> Exchange {
        Exchange::begin_with(method, headers::client_request_id(headers), ids)
    }

    /// [`Exchange::begin`] with the client's sane request id already looked for
    /// ([`headers::client_request_id`]; not looked up when a scan found none).
    pub fn begin_with(
        method: &Method,
        client_id: Option<HeaderValue>,
        ids: &RequestIds,
    ) -> Exchange {
        Exchange {
            started: Instant::now(),
            request_id: client_id.unwrap_or_else(|| ids.next()),
            method: method.clone(),
        }
    }

    /// When the request started (the exchange's one monotonic clock read before the
    /// answer).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The request id (forwarded upstream, returned to the client).
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    /// Turns `result` into the response (errors as their JSON answer, wrapped by
    /// `error_body`), sets `X-Request-Id` and writes the log line `message`.
    pub fn finish<B>(
        self,
        result: Result<Response<B>, ApiError>,
        error_body: impl FnOnce(Full<Bytes>) -> B,
        message: &'static str,
        line: Line<'_>,
    ) -> Finished<B> {
        let (mut response, error) = match result {
            Ok(res) => (res, None),
            Err(e) => (e.to_response().map(error_body), Some(e)),
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID, self.request_id.clone());
        let elapsed = self.started.elapsed();
        let level = match error.as_ref().map(|e| e.parts().2) {
            None | Some(Source::Client) => Level::INFO,
            Some(Source::Upstream) => Level::WARN,
            Some(Source::Internal) => Level::ERROR,
        };
        log(
            level,
            message,
            &self,
            &response,
            error.as_ref(),
            elapsed,
            &line,
        );
        Finished {
            response,
            error,
            elapsed,
        }
    }
}

/// Writes the line; its fields are formatted only when the level is enabled.
fn log<B>(
    level: Level,
    message: &'static str,
    x: &Exchange,
    res: &Response<B>,
    error: Option<&ApiError>,
    elapsed: Duration,
    line: &Line<'_>,
) {
    macro_rules! at {
        ($level:expr) => {
            tracing::event!(
                $level,
                request_id = x.request_id.to_str().unwrap_or("-"),
                token = %OrDash(line.token),
                module = line.module,
                method = %x.method,
                path = line.path.unwrap_or("-"),
                status = res.status().as_u16(),
                latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                error_code = error.map(ApiError::code),
                "{message}"
            )
        };
    }
    match level {
        Level::ERROR => at!(Level::ERROR),
        Level::WARN => at!(Level::WARN),
        _ => at!(Level::INFO),
    }
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
