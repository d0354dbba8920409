//! The web console: static files compiled into the binary and served on the admin
//! listener. `GET /` is the page; its script, style sheet and icon live under
//! `/console/`. The page is a client of the admin API on the same origin, so one strict
//! Content-Security-Policy covers it: no inline code, nothing from other origins.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::error::ApiError;

/// The Content-Security-Policy of every console response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// Browsers revalidate every time (cheap 304s thanks to the ETag), so a new binary's
/// console is never mixed with a cached old script.
const CACHE_CONTROL: &str = "no-cache";

/// One file of the console.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// FNV-1a of the body, computed at compile time: the ETag.
    hash: u64,
}

const fn asset(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
    Asset {
        path,
        content_type,
        body,
        hash: fnv1a(body),
    }
}

/// 64-bit FNV-1a: not for security, only to tell versions of a file apart.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

const ASSETS: &[Asset] = &[
    asset(
        "/",
        "text/html; charset=utf-8",
        include_bytes!("console/index.html"),
    ),
    asset(
        "/console/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/app.js"),
    ),
    asset(
        "/console/app.css",
        "text/css; charset=utf-8",
        include_bytes!("console/app.css"),
    ),
    asset(
        "/console/icon.svg",
        "image/svg+xml",
        include_bytes!("console/icon.svg"),
    ),
];

/// The console's answer to `req`, or `None` when the path is not one of its files (the
/// admin router answers those). `GET` and `HEAD` are served; other methods get 405.
pub fn serve<B>(req: &Request<B>) -> Option<Response<Full<Bytes>>> {
    let asset = ASSETS.iter().find(|a| a.path == req.uri().path())?;
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut res = ApiError::MethodNotAllowed.to_response();
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(res);
    }
    let etag = format!("\"{:016x}\"", asset.hash);
    let fresh = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    let (status, body) = if fresh {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else if head {
        (StatusCode::OK, Bytes::new())
    } else {
        (StatusCode::OK, Bytes::from_static(asset.body))
    };
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    if !fresh {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(asset.body.len()));
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    Some(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, path: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
    }

    #[test]
    fn only_console_paths_are_taken() {
        assert!(serve(&req(Method::GET, "/")).is_some());
        assert!(serve(&req(Method::GET, "/console/app.js")).is_some());
        assert!(serve(&req(Method::GET, "/healthz")).is_none());
        assert!(serve(&req(Method::GET, "/v1/tokens")).is_none());
        assert!(serve(&req(Method::GET, "/console/")).is_none());
        assert!(serve(&req(Method::GET, "/console/../app.js")).is_none());
        assert!(serve(&req(Method::GET, "/console/missing.js")).is_none());
    }

    #[test]
    fn other_methods_are_refused() {
        let res = serve(&req(Method::POST, "/")).unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()[header::ALLOW], "GET, HEAD");
    }

    #[test]
    fn etags_differ_per_file() {
        let mut tags: Vec<u64> = ASSETS.iter().map(|a| a.hash).collect();
        tags.dedup();
        assert_eq!(tags.len(), ASSETS.len());
    }

    #[test]
    fn page_refers_only_to_served_files() {
        // Every `/console/...` reference in the page must be an asset we serve.
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        for part in html.split('"').filter(|p| p.starts_with("/console/")) {
            assert!(
                ASSETS.iter().any(|a| a.path == part),
                "{part} is not served"
            );
        }
        // CSP: no inline script or style anywhere in the page.
        assert!(!html.contains("<style"));
        assert!(!html.contains(" style="));
        assert!(!html.contains("<script>"));
        for (i, _) in html.match_indices(" on") {
            let rest = &html[i + 3..];
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            assert!(
                !rest[word.len()..].starts_with('='),
                "inline event handler on{word}="
            );
        }
    }
}
