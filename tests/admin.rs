//! The admin API (SPEC §4): every route's success and error answers, the escalation and
//! self-lockout rules, paging, rotation grace, renewal, effect on the proxy, hostile input.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use http::Method;
use serde_json::{Value, json};

const GET: Method = Method::GET;
const POST: Method = Method::POST;
const PATCH: Method = Method::PATCH;
const DELETE: Method = Method::DELETE;

struct Env {
    gw: TestGateway,
    _up: TestUpstream,
}

impl Env {
    async fn new() -> Env {
        let up = spawn_upstream().await;
        // 200 concurrent creates come from one address: over the default per-address
        // admin limit (32), which would close the rest at once.
        let mut toml = "[admin]\nmax_connections_per_ip = 256\n".to_string();
        toml += &module_toml("agreements", &["/public/v1/agreements"], &up.url(), "");
        toml += &module_toml("billing", &["/public/v1/billing"], &up.url(), "");
        let gw = spawn_gateway(&toml).await;
        Env { gw, _up: up }
    }

    fn admin(&self) -> &str {
        &self.gw.admin_key
    }

    async fn call(&self, method: Method, path: &str, key: &str, body: &str) -> Answer {
        admin_call(&self.gw, method, path, Some(key), body).await
    }

    /// Creates a token through the API; returns its JSON (with `api_key`).
    async fn create(&self, key: &str, body: Value) -> Value {
        let a = self.call(POST, "/v1/tokens", key, &body.to_string()).await;
        assert_eq!(a.status, 201, "{}", a.text());
        a.json()
    }

    /// Status of a proxied request with `key`.
    async fn proxy_status(&self, key: &str) -> u16 {
        get(&self.gw.url("/public/v1/agreements/x"), Some(key))
            .await
            .status
            .as_u16()
    }
}

fn key_of(v: &Value) -> String {
    v["api_key"].as_str().expect("api_key").to_string()
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status.as_u16(), status, "{}", a.text());
    assert_eq!(a.code(), code, "{}", a.text());
    assert!(a.json()["errors"][0].is_string(), "{}", a.text());
    assert!(a.headers.contains_key("x-request-id"));
}

/// A 400 VALIDATION whose text mentions `field`.
fn assert_validation(a: &Answer, field: &str) {
    assert_error(a, 400, "VALIDATION");
    let text = a.json()["errors"][0].as_str().unwrap_or("").to_string();
    assert!(text.contains(field), "{field:?} not named in {text:?}");
}

#[tokio::test]
async fn caller_authentication_uses_the_proxy_codes() {
    let env = Env::new().await;
    let gw = &env.gw;
    // Missing / other scheme.
    let a = admin_call(gw, GET, "/v1/tokens", None, "").await;
    assert_error(&a, 401, "AUTH_MISSING");
    assert_eq!(a.headers["www-authenticate"], "ApiKey");
    let a = send(
        &client(),
        GET,
        &gw.admin_url("/v1/modules"),
        None,
        Default::default(),
    )
    .await;
    assert_error(&a, 401, "AUTH_MISSING");
    // Unknown id, wrong secret, garbage: one answer.
    let (id, key) = gw.token(&["integrations"]).await;
    let wrong = format!("{id}:{}", "0".repeat(40));
    for k in [
        "SU-000-000-001:0000000000000000000000000000000000000000",
        wrong.as_str(),
        "nonsense",
    ] {
        assert_error(
            &env.call(GET, "/v1/tokens", k, "").await,
            401,
            "AUTH_INVALID",
        );
    }
    // A module token without `integrations`.
    let (_, plain) = gw.token(&["agreements"]).await;
    assert_error(
        &env.call(GET, "/v1/tokens", &plain, "").await,
        403,
        "PERM_DENIED",
    );
    // `integrations` is enough.
    assert_eq!(env.call(GET, "/v1/tokens", &key, "").await.status, 200);
    // Disabled and expired admin tokens.
    let a = env
        .call(POST, &format!("/v1/tokens/{id}/disable"), env.admin(), "")
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_error(
        &env.call(GET, "/v1/tokens", &key, "").await,
        401,
        "AUTH_DISABLED",
    );
    let short = env
        .create(
            env.admin(),
            json!({"name": "short", "permissions": ["integrations"], "expires_in": "1s"}),
        )
        .await;
    let short_key = key_of(&short);
    assert!(
        eventually(Duration::from_secs(5), async || {
            env.call(GET, "/v1/tokens", &short_key, "").await.code() == "AUTH_EXPIRED"
        })
        .await
    );
    // Unauthenticated service routes.
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let a = admin_call(gw, GET, path, None, "").await;
        assert_eq!(a.status, 200, "{path}");
        assert!(a.headers.contains_key("x-request-id"));
    }
    // A sane client request id is kept.
    let res = client()
        .request(
            http::Request::get(gw.admin_url("/healthz"))
                .header("x-request-id", "trace-42")
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-42");
}

#[tokio::test]
async fn create_shows_every_field_and_the_key_once() {
    let env = Env::new().await;
    let v = env
        .create(
            env.admin(),
            json!({
                "name": "Zapier prod", "description": "orders", "external_id": "ZAP-1",
                "extension": "zapier", "permissions": ["agreements"], "expires_in": "30d"
            }),
        )
        .await;
    for field in [
        "id",
        "name",
        "description",
        "external_id",
        "extension",
        "permissions",
        "status",
        "expires_at",
        "created_at",
        "updated_at",
        "created_by",
        "last_used_at",
        "rate_limits",
        "quota",
        "quota_usage",
        "allowed_ips",
        "api_key",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    assert_eq!(v.as_object().unwrap().len(), 17, "{v}");
    assert_eq!(v["status"], "active");
    assert_eq!(v["extension"], "zapier");
    assert_eq!(v["last_used_at"], Value::Null);
    let admin_id = env.admin().split(':').next().unwrap();
    assert_eq!(v["created_by"], admin_id);
    // RFC 3339 UTC, second precision.
    let created = v["created_at"].as_str().unwrap();
    assert_eq!(created.len(), 20, "{created}");
    assert!(created.ends_with('Z'));
    let created: jiff::Timestamp = created.parse().unwrap();
    let expires: jiff::Timestamp = v["expires_at"].as_str().unwrap().parse().unwrap();
    let days = (expires.as_second() - created.as_second()) / 86_400;
    assert_eq!(days, 30);
    let key = key_of(&v);
    assert!(key.starts_with(&format!("{}:", id_of(&v))));
    // The proxy accepts it at once.
    assert_eq!(env.proxy_status(&key).await, 200);
    // Never again: details and list carry no key and no hash.
    let id = id_of(&v);
    let a = env
        .call(GET, &format!("/v1/tokens/{id}"), env.admin(), "")
        .await;
    assert_eq!(a.status, 200);
    assert!(a.json().get("api_key").is_none());
    let secret = key.split(':').nth(1).unwrap();
    for path in [format!("/v1/tokens/{id}"), "/v1/tokens".into()] {
        let text = env.call(GET, &path, env.admin(), "").await.text();
        assert!(!text.contains(secret));
        assert!(!text.contains("hash"));
    }
    // Presets, an explicit time, perpetual.
    for (preset, days) in [("7d", 7), ("90d", 90), ("1y", 365), ("2w", 14)] {
        let v = env
            .create(
                env.admin(),
                json!({"name": "p", "permissions": ["agreements"], "expires_in": preset}),
            )
            .await;
        let c: jiff::Timestamp = v["created_at"].as_str().unwrap().parse().unwrap();
        let e: jiff::Timestamp = v["expires_at"].as_str().unwrap().parse().unwrap();
        assert_eq!((e.as_second() - c.as_second()) / 86_400, days, "{preset}");
    }
    let v = env
        .create(
            env.admin(),
            json!({"name": "p", "permissions": ["all"], "expires_at": "2999-01-02T03:04:05+01:00"}),
        )
        .await;
    assert_eq!(v["expires_at"], "2999-01-02T02:04:05Z");
    let v = env
        .create(
            env.admin(),
            json!({"name": "p", "permissions": ["billing"]}),
        )
        .await;
    assert_eq!(v["expires_at"], Value::Null);
    assert_eq!(v["extension"], "custom");
    assert_eq!(v["description"], "");
}

#[tokio::test]
async fn create_rejects_bad_input_naming_the_field() {
    let env = Env::new().await;
    let long = "n".repeat(129);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"name": "x", "permissions": ["nope"]}), "permissions"),
        (json!({"name": "x", "permissions": []}), "permissions"),
        (
            json!({"name": "x", "permissions": ["all", "agreements"]}),
            "permissions",
        ),
        (
            json!({"name": "x", "permissions": ["agreements", "agreements"]}),
            "permissions",
        ),
        (
            json!({"name": "x", "permissions": ["agreements"], "extension": "nope"}),
            "extension",
        ),
        (
            json!({"name": "x", "permissions": ["agreements"], "expires_in": "7x"}),
            "expires_in",
        ),
        (
            json!({"name": "x", "permissions": ["agreements"], "expires_in": "0s"}),
            "expires_in",
        ),
        (
            json!({"name": "x", "permissions": ["agreements"], "expires_in": "-1d"}),
            "expires_in",
        ),
        (
            json!({"name": "x", "permissions": ["agreements"], "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"name": "x", "permissions": ["agreements"], "expires_at": "tomorrow"}),
            "expires_at",
        ),
        (
            json!({"name": "x", "permissions": ["agreements"], "expires_in": "7d", "expires_at": "2999-01-01T00:00:00Z"}),
            "expires_at, expires_in",
        ),
        (json!({"name": long, "permissions": ["agreements"]}), "name"),
        (json!({"name": "", "permissions": ["agreements"]}), "name"),
        (json!({"name": "  ", "permissions": ["agreements"]}), "name"),
        (
            json!({"name": "a\u{7}b", "permissions": ["agreements"]}),
            "name",
        ),
        (json!({"permissions": ["agreements"]}), "name"),
        (json!({"name": "x"}), "permissions"),
        (json!({"name": 5, "permissions": ["agreements"]}), "name"),
        (
            json!({"name": "x", "permissions": "agreements"}),
            "permissions",
        ),
        (json!({"name": "x", "permissions": [1]}), "permissions[0]"),
        (
            json!({"name": "x", "permissions": ["agreements"], "external_id": "has space"}),
            "external_id",
        ),
        (
            json!({"name": "x", "permissions": ["agreements"], "external_id": ""}),
            "external_id",
        ),
        (
            json!({"name": "x", "permissions": ["agreements"], "external_id": "x".repeat(65)}),
            "external_id",
        ),
        (
            json!({"name": "x", "permissions": ["agreements"], "description": "d".repeat(1025)}),
            "description",
        ),
        (
            json!({"name": "x", "permissions": ["agreements"], "secret": "mine"}),
            "secret",
        ),
        (
            json!({"name": "x", "permissions": ["agreements"], "status": "active"}),
            "status",
        ),
    ];
    for (body, field) in cases {
        let a = env
            .call(POST, "/v1/tokens", env.admin(), &body.to_string())
            .await;
        assert_validation(&a, field);
    }
    // Nothing was created.
    let a = env.call(GET, "/v1/tokens", env.admin(), "").await;
    assert_eq!(a.json().as_array().unwrap().len(), 1, "{}", a.text());
}

#[tokio::test]
async fn hostile_bodies_answer_4xx_never_5xx() {
    let env = Env::new().await;
    let (victim, _) = env.gw.token(&["agreements"]).await;
    let deep = "[".repeat(10_000);
    let bodies: Vec<String> = vec![
        "".into(),
        "{".into(),
        "}".into(),
        "null".into(),
        "[]".into(),
        "\"name\"".into(),
        "42".into(),
        "{\"name\": \"x\", \"permissions\": [\"agreements\"]} trailing".into(),
        "{\"name\": \"x\", \"name\": \"y\", \"permissions\": [\"agreements\"]}".into(),
        "{\"name\": \"\\ud800\", \"permissions\": [\"agreements\"]}".into(),
        "\u{feff}{}".into(),
        deep.clone(),
        format!("{{\"name\": {deep}}}"),
        "{\"name\": 1e999, \"permissions\": []}".into(),
        "{\"name\": \"x\", \"permissions\": [\"agreements\"], \"expires_in\": \"99999999999999999999y\"}".into(),
        "{\"name\": \"x\", \"permissions\": [\"agreements\"], \"expires_in\": \"1001y\"}".into(),
        "{\"name\": \"x\", \"permissions\": [\"agreements\"], \"expires_at\": \"10000-01-01T00:00:00Z\"}".into(),
        "{\"name\": \"x\", \"permissions\": [\"agreements\"], \"expires_at\": \"2999-02-30T00:00:00Z\"}".into(),
        "{\"name\": \"x\", \"permissions\": [\"agreements\"], \"expires_at\": 17}".into(),
    ];
    let paths = [
        (POST, "/v1/tokens".to_string()),
        (PATCH, format!("/v1/tokens/{victim}")),
        (POST, format!("/v1/tokens/{victim}/rotate")),
        (POST, format!("/v1/tokens/{victim}/renew")),
    ];
    for (method, path) in &paths {
        for body in &bodies {
            let a = env.call(method.clone(), path, env.admin(), body).await;
            let s = a.status.as_u16();
            assert!(
                (400..500).contains(&s) || (s < 300 && body.trim().is_empty()),
                "{method} {path} {body:.60?} -> {s} {}",
                a.text()
            );
            if s >= 400 {
                assert!(a.json()["error_code"].is_string());
            }
        }
    }
    // Raw invalid UTF-8 bytes.
    let a = send(
        &client(),
        POST,
        &env.gw.admin_url("/v1/tokens"),
        Some(env.admin()),
        bytes::Bytes::from_static(b"{\"name\": \"\xff\xfe\", \"permissions\": [\"agreements\"]}"),
    )
    .await;
    assert_error(&a, 400, "VALIDATION");
}

#[tokio::test]
async fn body_over_64_kib_is_413_validation() {
    let env = Env::new().await;
    let pad = 64 * 1024 + 1 - r#"{"name":"x","permissions":["agreements"],"description":""}"#.len();
    let body = format!(
        r#"{{"name":"x","permissions":["agreements"],"description":"{}"}}"#,
        "d".repeat(pad)
    );
    assert_eq!(body.len(), 64 * 1024 + 1);
    let a = env.call(POST, "/v1/tokens", env.admin(), &body).await;
    assert_error(&a, 413, "VALIDATION");
    // Exactly 64 KiB is read (and then refused for the description length).
    let a = env.call(POST, "/v1/tokens", env.admin(), &body[1..]).await;
    assert_eq!(a.status, 400, "{}", a.text());
    // A chunked body over the limit (no Content-Length).
    let chunk = "x".repeat(70 * 1024);
    let raw_req = format!(
        "POST /v1/tokens HTTP/1.1\r\nHost: a\r\nAuthorization: ApiKey {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        env.admin(),
        chunk.len()
    );
    let answer = raw(env.gw.admin, raw_req.as_bytes()).await;
    assert_eq!(raw_status(&answer), 413, "{answer:.300}");
}

#[tokio::test]
async fn get_unknown_and_misshapen_ids() {
    let env = Env::new().await;
    let (id, _) = env.gw.token(&["agreements"]).await;
    let a = env
        .call(GET, &format!("/v1/tokens/{id}"), env.admin(), "")
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["id"], id.to_string());
    for bad in [
        "SU-000-000-001",
        "su-000-000-001",
        "SU-1",
        "x",
        "%00",
        "SU-000-000-0011",
        "..",
    ] {
        for (m, suffix) in [
            (GET, ""),
            (PATCH, ""),
            (DELETE, ""),
            (POST, "/disable"),
            (POST, "/enable"),
            (POST, "/rotate"),
            (POST, "/renew"),
            (GET, "/events"),
        ] {
            let body = if m == PATCH { "{}" } else { "" };
            let a = env
                .call(
                    m.clone(),
                    &format!("/v1/tokens/{bad}{suffix}"),
                    env.admin(),
                    body,
                )
                .await;
            assert_error(&a, 404, "TOKEN_NOT_FOUND");
        }
    }
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let env = Env::new().await;
    for path in [
        "/v1/nope",
        "/v1/tokens/",
        "/v1/tokens/a/b",
        // "/" is the web console (tests/console.rs).
        "/v2/tokens",
    ] {
        assert_error(
            &env.call(GET, path, env.admin(), "").await,
            404,
            "NOT_FOUND",
        );
    }
    let a = env.call(Method::PUT, "/v1/tokens", env.admin(), "").await;
    assert_error(&a, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(a.headers["allow"], "GET, POST");
    let a = env
        .call(POST, "/v1/tokens/SU-000-000-001", env.admin(), "")
        .await;
    assert_error(&a, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(a.headers["allow"], "GET, PATCH, DELETE");
    let a = env.call(DELETE, "/healthz", env.admin(), "").await;
    assert_error(&a, 405, "METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn list_pages_with_content_range_newest_first() {
    let env = Env::new().await;
    let mut made = Vec::new();
    for i in 0..5 {
        let v = env
            .create(
                env.admin(),
                json!({"name": format!("t{i}"), "permissions": ["agreements"]}),
            )
            .await;
        made.push(id_of(&v));
    }
    // 6 tokens with the bootstrap admin; newest first.
    let a = env.call(GET, "/v1/tokens", env.admin(), "").await;
    assert_eq!(a.headers["content-range"], "items 0-5/6");
    let ids: Vec<String> = a.json().as_array().unwrap().iter().map(id_of).collect();
    let mut newest_first = made.clone();
    newest_first.reverse();
    assert_eq!(ids[..5], newest_first[..]);
    // Pages join up without overlap.
    let mut paged = Vec::new();
    for offset in [0, 2, 4] {
        let a = env
            .call(
                GET,
                &format!("/v1/tokens?limit=2&offset={offset}"),
                env.admin(),
                "",
            )
            .await;
        assert_eq!(a.status, 200);
        let n = a.json().as_array().unwrap().len();
        assert_eq!(
            a.headers["content-range"],
            format!("items {offset}-{}/6", offset + n - 1)
        );
        paged.extend(a.json().as_array().unwrap().iter().map(id_of));
    }
    assert_eq!(paged, ids);
    let a = env.call(GET, "/v1/tokens?offset=6", env.admin(), "").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["content-range"], "items */6");
    assert_eq!(a.json(), json!([]));
    let a = env
        .call(GET, "/v1/tokens?limit=1000&offset=5", env.admin(), "")
        .await;
    assert_eq!(a.headers["content-range"], "items 5-5/6");
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=", "limit"),
        ("offset=-1", "offset"),
        ("offset=1.5", "offset"),
        ("offset=99999999999999999999999", "offset"),
        ("status=gone", "status"),
        ("extension=nope", "extension"),
        ("colour=red", "colour"),
        ("limit=1&limit=2", "limit"),
        ("search=%zz", "search"),
        ("search=%ff", "search"),
    ] {
        let a = env
            .call(GET, &format!("/v1/tokens?{q}"), env.admin(), "")
            .await;
        assert_validation(&a, field);
    }
}

#[tokio::test]
async fn list_filters_status_extension_search() {
    let env = Env::new().await;
    let a = env
        .create(
            env.admin(),
            json!({"name": "Orders Sync", "permissions": ["agreements"], "extension": "zapier"}),
        )
        .await;
    let b = env
        .create(
            env.admin(),
            json!({"name": "reports", "description": "Nightly ORDERS export", "permissions": ["billing"], "extension": "reports"}),
        )
        .await;
    let c = env
        .create(
            env.admin(),
            json!({"name": "third", "external_id": "ext-ORD-7", "permissions": ["billing"]}),
        )
        .await;
    let d = env
        .create(
            env.admin(),
            json!({"name": "soon gone", "permissions": ["billing"], "expires_in": "1s"}),
        )
        .await;
    env.call(
        POST,
        &format!("/v1/tokens/{}/disable", id_of(&b)),
        env.admin(),
        "",
    )
    .await;
    let ids = async |q: &str| -> HashSet<String> {
        let a = env
            .call(GET, &format!("/v1/tokens?{q}"), env.admin(), "")
            .await;
        assert_eq!(a.status, 200, "{q}: {}", a.text());
        a.json().as_array().unwrap().iter().map(id_of).collect()
    };
    let set = |v: &[&Value]| v.iter().map(|x| id_of(x)).collect::<HashSet<_>>();
    assert_eq!(ids("extension=zapier").await, set(&[&a]));
    assert_eq!(ids("extension=reports").await, set(&[&b]));
    assert_eq!(ids("status=disabled").await, set(&[&b]));
    assert_eq!(ids("search=orders").await, set(&[&a, &b]));
    assert_eq!(ids("search=ord").await, set(&[&a, &b, &c]));
    assert_eq!(ids("search=orders+sync").await, set(&[&a]));
    assert_eq!(ids("search=Orders%20Sync").await, set(&[&a]));
    assert_eq!(ids("search=ord&status=active").await, set(&[&a, &c]));
    assert_eq!(ids("search=nothing-like-it").await, HashSet::new());
    assert!(
        eventually(Duration::from_secs(5), async || ids("status=expired").await
            == set(&[&d]))
        .await
    );
    assert!(!ids("status=active").await.contains(&id_of(&d)));
}

#[tokio::test]
async fn patch_changes_only_given_fields() {
    let env = Env::new().await;
    let v = env
        .create(
            env.admin(),
            json!({"name": "n", "description": "d", "external_id": "E-1",
                   "permissions": ["agreements"], "expires_in": "7d"}),
        )
        .await;
    let id = id_of(&v);
    let key = key_of(&v);
    let path = format!("/v1/tokens/{id}");
    let a = env
        .call(PATCH, &path, env.admin(), r#"{"name": "renamed"}"#)
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let t = a.json();
    assert_eq!(t["name"], "renamed");
    assert_eq!(t["description"], "d");
    assert_eq!(t["external_id"], "E-1");
    assert_eq!(t["expires_at"], v["expires_at"]);
    // null clears external_id; expires_at null = perpetual.
    let t = env
        .call(
            PATCH,
            &path,
            env.admin(),
            r#"{"external_id": null, "expires_at": null}"#,
        )
        .await
        .json();
    assert_eq!(t["external_id"], Value::Null);
    assert_eq!(t["expires_at"], Value::Null);
    let t = env
        .call(PATCH, &path, env.admin(), r#"{"expires_in": "90d"}"#)
        .await
        .json();
    assert!(t["expires_at"].is_string());
    // Permission change takes effect on the proxy at once.
    assert_eq!(env.proxy_status(&key).await, 200);
    let a = env
        .call(PATCH, &path, env.admin(), r#"{"permissions": ["billing"]}"#)
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(env.proxy_status(&key).await, 403);
    let a = env
        .call(PATCH, &path, env.admin(), r#"{"extension": "devops"}"#)
        .await;
    assert_eq!(a.json()["extension"], "devops");
    // Empty patch: unchanged.
    let a = env.call(PATCH, &path, env.admin(), "{}").await;
    assert_eq!(a.status, 200);
    // Errors.
    for (body, field) in [
        (
            r#"{"expires_in": "1d", "expires_at": "2999-01-01T00:00:00Z"}"#,
            "expires_at, expires_in",
        ),
        (r#"{"expires_at": "2001-01-01T00:00:00Z"}"#, "expires_at"),
        (r#"{"name": null}"#, "name"),
        (r#"{"permissions": null}"#, "permissions"),
        (r#"{"permissions": ["zzz"]}"#, "permissions"),
        (r#"{"extension": "zzz"}"#, "extension"),
        (r#"{"status": "disabled"}"#, "status"),
        (r#"{"id": "SU-000-000-001"}"#, "id"),
        (r#"{"external_id": 5}"#, "external_id"),
        ("", "body"),
    ] {
        assert_validation(&env.call(PATCH, &path, env.admin(), body).await, field);
    }
    assert_error(
        &env.call(PATCH, "/v1/tokens/SU-000-000-001", env.admin(), "{}")
            .await,
        404,
        "TOKEN_NOT_FOUND",
    );
}

#[tokio::test]
async fn no_permission_escalation() {
    let env = Env::new().await;
    let admin = env
        .create(
            env.admin(),
            json!({"name": "limited admin", "permissions": ["integrations", "agreements"]}),
        )
        .await;
    let limited = key_of(&admin);
    // Create: only held permissions.
    for perms in [
        json!(["billing"]),
        json!(["all"]),
        json!(["agreements", "billing"]),
    ] {
        let a = env
            .call(
                POST,
                "/v1/tokens",
                &limited,
                &json!({"name": "x", "permissions": perms}).to_string(),
            )
            .await;
        assert_error(&a, 403, "PERM_ESCALATION");
    }
    let mine = env
        .create(
            &limited,
            json!({"name": "x", "permissions": ["agreements"]}),
        )
        .await;
    let mine_id = id_of(&mine);
    // PATCH: not beyond its own.
    let a = env
        .call(
            PATCH,
            &format!("/v1/tokens/{mine_id}"),
            &limited,
            r#"{"permissions": ["billing"]}"#,
        )
        .await;
    assert_error(&a, 403, "PERM_ESCALATION");
    // Tokens with more than it holds are out of reach for every change, but readable.
    let (big, _) = env.gw.token(&["billing"]).await;
    let (all, _) = env.gw.token(&["all"]).await;
    for target in [big.to_string(), all.to_string()] {
        for (m, suffix, body) in [
            (PATCH, "", r#"{"name": "mine now"}"#),
            (POST, "/disable", ""),
            (POST, "/enable", ""),
            (POST, "/rotate", ""),
            (POST, "/renew", ""),
            (DELETE, "", ""),
        ] {
            let a = env
                .call(m, &format!("/v1/tokens/{target}{suffix}"), &limited, body)
                .await;
            assert_error(&a, 403, "PERM_ESCALATION");
        }
        let a = env
            .call(GET, &format!("/v1/tokens/{target}"), &limited, "")
            .await;
        assert_eq!(a.status, 200);
    }
    // Its own subset is fine.
    let a = env
        .call(POST, &format!("/v1/tokens/{mine_id}/disable"), &limited, "")
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
}

#[tokio::test]
async fn self_lockout_is_refused() {
    let env = Env::new().await;
    let me = env.admin().split(':').next().unwrap().to_string();
    let a = env
        .call(POST, &format!("/v1/tokens/{me}/disable"), env.admin(), "")
        .await;
    assert_error(&a, 409, "SELF_LOCKOUT");
    let a = env
        .call(DELETE, &format!("/v1/tokens/{me}"), env.admin(), "")
        .await;
    assert_error(&a, 409, "SELF_LOCKOUT");
    // Regression (review #5): a PATCH of its own permissions without `integrations`
    // or `all` locked the caller out just as well.
    for perms in [json!(["agreements"]), json!(["agreements", "billing"])] {
        let a = env
            .call(
                PATCH,
                &format!("/v1/tokens/{me}"),
                env.admin(),
                &json!({ "permissions": perms }).to_string(),
            )
            .await;
        assert_error(&a, 409, "SELF_LOCKOUT");
    }
    let a = env
        .call(
            PATCH,
            &format!("/v1/tokens/{me}"),
            env.admin(),
            r#"{"permissions": ["integrations", "agreements"]}"#,
        )
        .await;
    assert_eq!(a.status, 200, "keeping integrations is fine: {}", a.text());
    // Still works.
    assert_eq!(
        env.call(GET, "/v1/tokens", env.admin(), "").await.status,
        200
    );
}

#[tokio::test]
async fn disable_enable_delete_take_effect_on_the_proxy_at_once() {
    let env = Env::new().await;
    let v = env
        .create(
            env.admin(),
            json!({"name": "x", "permissions": ["agreements"]}),
        )
        .await;
    let (id, key) = (id_of(&v), key_of(&v));
    assert_eq!(env.proxy_status(&key).await, 200);
    let a = env
        .call(POST, &format!("/v1/tokens/{id}/disable"), env.admin(), "")
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["status"], "disabled");
    let p = get(&env.gw.url("/public/v1/agreements/x"), Some(&key)).await;
    assert_error(&p, 401, "AUTH_DISABLED");
    let a = env
        .call(POST, &format!("/v1/tokens/{id}/enable"), env.admin(), "")
        .await;
    assert_eq!(a.json()["status"], "active");
    assert_eq!(env.proxy_status(&key).await, 200);
    let a = env
        .call(DELETE, &format!("/v1/tokens/{id}"), env.admin(), "")
        .await;
    assert_eq!(a.status, 204);
    assert!(a.body.is_empty());
    let p = get(&env.gw.url("/public/v1/agreements/x"), Some(&key)).await;
    assert_error(&p, 401, "AUTH_INVALID");
    assert_error(
        &env.call(GET, &format!("/v1/tokens/{id}"), env.admin(), "")
            .await,
        404,
        "TOKEN_NOT_FOUND",
    );
    assert_error(
        &env.call(DELETE, &format!("/v1/tokens/{id}"), env.admin(), "")
            .await,
        404,
        "TOKEN_NOT_FOUND",
    );
    assert_error(
        &env.call(POST, &format!("/v1/tokens/{id}/enable"), env.admin(), "")
            .await,
        404,
        "TOKEN_NOT_FOUND",
    );
}

#[tokio::test]
async fn rotate_with_grace_then_old_secret_is_refused() {
    let env = Env::new().await;
    let v = env
        .create(
            env.admin(),
            json!({"name": "x", "permissions": ["agreements"]}),
        )
        .await;
    let (id, old) = (id_of(&v), key_of(&v));
    let a = env
        .call(
            POST,
            &format!("/v1/tokens/{id}/rotate"),
            env.admin(),
            r#"{"grace_period": "1s"}"#,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let new = key_of(&a.json());
    assert_ne!(new, old);
    assert!(new.starts_with(&format!("{id}:")));
    assert_eq!(env.proxy_status(&new).await, 200);
    // The old secret keeps working a little while, then is refused.
    assert!(
        eventually(Duration::from_secs(5), async || env
            .proxy_status(&old)
            .await
            == 401)
        .await
    );
    assert_eq!(env.proxy_status(&new).await, 200);
    // Default grace is 0s: the previous secret stops at once.
    let a = env
        .call(POST, &format!("/v1/tokens/{id}/rotate"), env.admin(), "")
        .await;
    let newer = key_of(&a.json());
    assert_eq!(env.proxy_status(&new).await, 401);
    assert_eq!(env.proxy_status(&newer).await, 200);
    let a = env
        .call(
            POST,
            &format!("/v1/tokens/{id}/rotate"),
            env.admin(),
            r#"{"grace_period": "7d"}"#,
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(env.proxy_status(&newer).await, 200);
    for body in [
        r#"{"grace_period": "8d"}"#,
        r#"{"grace_period": "7d1s"}"#,
        r#"{"grace_period": "soon"}"#,
        r#"{"grace_period": 5}"#,
        r#"{"grace_period": null}"#,
        r#"{"grace": "1s"}"#,
        // Not JSON: only an empty body (no bytes) stands for "no fields".
        " ",
        "\n",
        "[]",
    ] {
        let a = env
            .call(POST, &format!("/v1/tokens/{id}/rotate"), env.admin(), body)
            .await;
        assert_error(&a, 400, "VALIDATION");
    }
}

#[tokio::test]
async fn renew_extends_and_reactivates() {
    let env = Env::new().await;
    // Perpetual: not renewable.
    let p = env
        .create(
            env.admin(),
            json!({"name": "p", "permissions": ["agreements"]}),
        )
        .await;
    let a = env
        .call(
            POST,
            &format!("/v1/tokens/{}/renew", id_of(&p)),
            env.admin(),
            "",
        )
        .await;
    assert_error(&a, 409, "NOT_RENEWABLE");
    let a = env
        .call(
            POST,
            &format!("/v1/tokens/{}/renew", id_of(&p)),
            env.admin(),
            r#"{"expires_in": "7d"}"#,
        )
        .await;
    assert_error(&a, 409, "NOT_RENEWABLE");
    // Expired → active again, for the validity period last chosen.
    let v = env
        .create(
            env.admin(),
            json!({"name": "x", "permissions": ["agreements"], "expires_in": "2s"}),
        )
        .await;
    let (id, key) = (id_of(&v), key_of(&v));
    assert!(
        eventually(Duration::from_secs(6), async || env
            .proxy_status(&key)
            .await
            == 401)
        .await
    );
    let t = env
        .call(GET, &format!("/v1/tokens/{id}"), env.admin(), "")
        .await
        .json();
    assert_eq!(t["status"], "expired");
    let a = env
        .call(POST, &format!("/v1/tokens/{id}/renew"), env.admin(), "")
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["status"], "active");
    assert_eq!(env.proxy_status(&key).await, 200);
    // Explicit periods; the last one becomes the default of an empty renew.
    let a = env
        .call(
            POST,
            &format!("/v1/tokens/{id}/renew"),
            env.admin(),
            r#"{"expires_in": "30d"}"#,
        )
        .await;
    let t = a.json();
    let e: jiff::Timestamp = t["expires_at"].as_str().unwrap().parse().unwrap();
    let days = (e.as_second() - jiff::Timestamp::now().as_second() + 60) / 86_400;
    assert_eq!(days, 30);
    let t = env
        .call(POST, &format!("/v1/tokens/{id}/renew"), env.admin(), "{}")
        .await
        .json();
    let e: jiff::Timestamp = t["expires_at"].as_str().unwrap().parse().unwrap();
    let days = (e.as_second() - jiff::Timestamp::now().as_second() + 60) / 86_400;
    assert_eq!(days, 30);
    let a = env
        .call(
            POST,
            &format!("/v1/tokens/{id}/renew"),
            env.admin(),
            r#"{"expires_at": "2999-01-01T00:00:00Z"}"#,
        )
        .await;
    assert_eq!(a.json()["expires_at"], "2999-01-01T00:00:00Z");
    for (body, field) in [
        (r#"{"expires_at": "2001-01-01T00:00:00Z"}"#, "expires_at"),
        (r#"{"expires_at": null}"#, "expires_at"),
        (
            r#"{"expires_in": "1d", "expires_at": "2999-01-01T00:00:00Z"}"#,
            "expires_in",
        ),
        (r#"{"expires_in": "forever"}"#, "expires_in"),
        (r#"{"days": 3}"#, "days"),
    ] {
        let a = env
            .call(POST, &format!("/v1/tokens/{id}/renew"), env.admin(), body)
            .await;
        assert_validation(&a, field);
    }
}

#[tokio::test]
async fn audit_log_records_every_change_without_secrets() {
    let env = Env::new().await;
    let admin_id = env.admin().split(':').next().unwrap().to_string();
    let v = env
        .create(
            env.admin(),
            json!({"name": "x", "permissions": ["agreements"]}),
        )
        .await;
    let id = id_of(&v);
    let p = |s: &str| format!("/v1/tokens/{id}{s}");
    env.call(
        PATCH,
        &p(""),
        env.admin(),
        r#"{"name": "y", "description": "z"}"#,
    )
    .await;
    env.call(POST, &p("/disable"), env.admin(), "").await;
    env.call(POST, &p("/enable"), env.admin(), "").await;
    let rotated = env
        .call(
            POST,
            &p("/rotate"),
            env.admin(),
            r#"{"grace_period": "1m"}"#,
        )
        .await
        .json();
    env.call(PATCH, &p(""), env.admin(), r#"{"expires_in": "1d"}"#)
        .await;
    env.call(POST, &p("/renew"), env.admin(), "").await;
    env.call(DELETE, &p(""), env.admin(), "").await;
    // Readable after delete.
    let a = env.call(GET, &p("/events"), env.admin(), "").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let events = a.json();
    // The edit to a 1d expiry (within [events] expiring_before) also raised
    // `expiring`, by the gateway (no actor); the renew may raise another.
    let (raised, events): (Vec<Value>, Vec<Value>) = events
        .as_array()
        .unwrap()
        .iter()
        .cloned()
        .partition(|e| e["action"] == "expiring");
    assert!(!raised.is_empty() && raised.iter().all(|e| e["actor"].is_null()));
    let events = Value::from(events);
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "created", "updated", "disabled", "enabled", "rotated", "updated", "renewed", "deleted"
        ]
    );
    for e in events.as_array().unwrap() {
        assert_eq!(e["actor"], admin_id);
        assert!(e["at"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(events[1]["fields"], json!(["name", "description"]));
    assert_eq!(events[2]["fields"], json!(["status"]));
    let text = a.text();
    for key in [key_of(&v), key_of(&rotated)] {
        assert!(!text.contains(key.split(':').nth(1).unwrap()));
    }
    // The bootstrap token's creation is logged with no actor.
    let a = env
        .call(
            GET,
            &format!("/v1/tokens/{admin_id}/events"),
            env.admin(),
            "",
        )
        .await;
    assert_eq!(a.json()[0]["action"], "created");
    assert_eq!(a.json()[0]["actor"], Value::Null);
    // An id that never existed.
    assert_error(
        &env.call(GET, "/v1/tokens/SU-000-000-001/events", env.admin(), "")
            .await,
        404,
        "TOKEN_NOT_FOUND",
    );
}

#[tokio::test]
async fn modules_and_extensions_come_from_the_config() {
    let env = Env::new().await;
    let a = env.call(GET, "/v1/modules", env.admin(), "").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.json(),
        json!([
            {"name": "agreements", "description": "agreements module", "prefixes": ["/public/v1/agreements"]},
            {"name": "billing", "description": "billing module", "prefixes": ["/public/v1/billing"]},
        ])
    );
    let a = env.call(GET, "/v1/extensions", env.admin(), "").await;
    let names: Vec<String> = a
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["custom", "reports", "devops", "zapier", "flowgear"]);
    assert_eq!(a.json()[3]["code"], "EXT-816");
    // A configured catalogue replaces the default.
    let up = spawn_upstream().await;
    let toml = format!(
        "[[extensions]]\nname = \"custom\"\ncode = \"EXT-000\"\ndescription = \"Custom\"\n[[extensions]]\nname = \"inhouse\"\ncode = \"EXT-100\"\ndescription = \"In-house\"\n{}",
        module_toml("agreements", &["/public/v1/agreements"], &up.url(), "")
    );
    let gw = spawn_gateway(&toml).await;
    let a = admin_call(&gw, GET, "/v1/extensions", Some(&gw.admin_key), "").await;
    assert_eq!(
        a.json(),
        json!([
            {"name": "custom", "code": "EXT-000", "description": "Custom", "permissions": null},
            {"name": "inhouse", "code": "EXT-100", "description": "In-house", "permissions": null},
        ])
    );
}

#[tokio::test]
async fn concurrent_creates_never_share_an_id() {
    let env = Env::new().await;
    let key = env.admin().to_string();
    let url = env.gw.admin_url("/v1/tokens");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (key, url) = (key.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"name": format!("c{i}"), "permissions": ["agreements"]});
            let a = send(
                &client(),
                POST,
                &url,
                Some(&key),
                bytes::Bytes::from(body.to_string()),
            )
            .await;
            assert_eq!(a.status, 201, "{}", a.text());
            id_of(&a.json())
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        assert!(ids.insert(t.await.unwrap()), "duplicate id");
    }
    assert_eq!(ids.len(), 200);
    let a = env
        .call(GET, "/v1/tokens?limit=1000", env.admin(), "")
        .await;
    assert_eq!(a.headers["content-range"], "items 0-200/201");
}
