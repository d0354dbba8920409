//! The web console's files on the admin listener: served from the binary with the
//! security headers, right content types, caching by ETag, and nothing else taken over.

mod common;
use common::*;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

async fn gateway() -> (TestUpstream, TestGateway) {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&module_toml(
        "agreements",
        &["/public/v1/agreements"],
        &up.url(),
        "",
    ))
    .await;
    (up, gw)
}

/// Sends `method path` with extra headers to the admin listener.
async fn admin(gw: &TestGateway, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = Request::builder().method(method).uri(gw.admin_url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let res = client()
        .request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("request");
    let (parts, body) = res.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn console_files_are_served_with_csp_and_types() {
    let (_up, gw) = gateway().await;
    for (path, ctype, marker) in [
        ("/", "text/html; charset=utf-8", "<!doctype html>"),
        (
            "/console/app.js",
            "text/javascript; charset=utf-8",
            "'use strict'",
        ),
        ("/console/app.css", "text/css; charset=utf-8", ":root"),
        ("/console/icon.svg", "image/svg+xml", "<svg"),
    ] {
        let a = admin(&gw, Method::GET, path, &[]).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(header(&a, "content-type"), ctype, "{path}");
        assert_eq!(header(&a, "content-security-policy"), CSP, "{path}");
        assert_eq!(header(&a, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&a, "referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header(&a, "x-frame-options"), "DENY", "{path}");
        assert_eq!(header(&a, "cache-control"), "no-cache", "{path}");
        assert!(header(&a, "etag").starts_with('"'), "{path}");
        assert!(a.text().contains(marker), "{path}: {}", a.text());
        assert_eq!(
            header(&a, "content-length"),
            a.body.len().to_string(),
            "{path}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn page_loads_only_its_own_files() {
    let (_up, gw) = gateway().await;
    let page = admin(&gw, Method::GET, "/", &[]).await.text();
    assert!(page.contains(r#"<script src="/console/app.js" defer></script>"#));
    assert!(page.contains(r#"href="/console/app.css""#));
    // Nothing inline and nothing from another origin: the CSP would block it anyway.
    assert!(!page.contains("<style"));
    assert!(!page.contains("style=\""));
    assert!(!page.contains("<script>"));
    assert!(!page.contains("http://") && !page.contains("https://"));
    let js = admin(&gw, Method::GET, "/console/app.js", &[]).await.text();
    assert!(
        !js.contains("innerHTML"),
        "the console never parses data as HTML"
    );
    assert!(
        !js.contains("localStorage"),
        "the key is kept in sessionStorage only"
    );
    assert!(!js.contains("eval("));
    gw.stop().await;
}

#[tokio::test]
async fn etag_revalidation_answers_304() {
    let (_up, gw) = gateway().await;
    let first = admin(&gw, Method::GET, "/console/app.js", &[]).await;
    let etag = header(&first, "etag").to_string();
    let again = admin(
        &gw,
        Method::GET,
        "/console/app.js",
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(header(&again, "etag"), etag);
    assert_eq!(header(&again, "content-security-policy"), CSP);
    // Another file's tag does not match.
    let other = admin(&gw, Method::GET, "/", &[("if-none-match", &etag)]).await;
    assert_eq!(other.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn head_and_other_methods() {
    let (_up, gw) = gateway().await;
    let full = admin(&gw, Method::GET, "/", &[]).await;
    let head = admin(&gw, Method::HEAD, "/", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(header(&head, "content-length"), full.body.len().to_string());
    let post = admin(&gw, Method::POST, "/", &[]).await;
    assert_eq!(post.status, 405);
    assert_eq!(header(&post, "allow"), "GET, HEAD");
    assert_eq!(post.code(), "METHOD_NOT_ALLOWED");
    gw.stop().await;
}

#[tokio::test]
async fn unknown_console_paths_and_api_routes_are_not_taken_over() {
    let (_up, gw) = gateway().await;
    for path in [
        "/console/",
        "/console/missing.js",
        "/console/../console/app.js.map",
        "/index.html",
    ] {
        let a = admin(&gw, Method::GET, path, &[]).await;
        assert_eq!(a.status, 404, "{path}");
        assert!(a.headers.get("content-security-policy").is_none(), "{path}");
    }
    let health = admin(&gw, Method::GET, "/healthz", &[]).await;
    assert_eq!(health.status, 200);
    assert_eq!(header(&health, "content-type"), "application/json");
    // The proxy listener does not serve the console.
    let proxied = get(&gw.url("/"), None).await;
    assert_ne!(proxied.status, 200);
    gw.stop().await;
}
