//! Usage policies (SPEC §8, §2 rows 6a/8/8a/8b): read-only permissions, IP allow-lists
//! behind trusted proxies, rate limits, quotas and extension presets, through the
//! admin API and on the proxy, on the embedded store and on one Redis shared by two
//! instances (standalone and cluster).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};

const FAST_FLUSH: &str = "[stats]\nflush_interval = \"200ms\"\n";

async fn gateway(extra: &str) -> (TestUpstream, TestGateway) {
    let up = spawn_upstream().await;
    let toml = format!(
        "{FAST_FLUSH}{extra}{}{}",
        module_toml("agreements", &["/public/v1/agreements"], &up.url(), ""),
        module_toml("billing", &["/public/v1/billing"], &up.url(), "")
    );
    (up, spawn_gateway(&toml).await)
}

async fn call(gw: &TestGateway, method: Method, path: &str, key: &str) -> Answer {
    send(&client(), method, &gw.url(path), Some(key), Bytes::new()).await
}

async fn with_xff(gw: &TestGateway, key: &str, xff: &str) -> Answer {
    send_with(
        &client(),
        Method::GET,
        &gw.url("/public/v1/agreements"),
        Some(key),
        &[("x-forwarded-for", xff)],
        Bytes::new(),
    )
    .await
}

/// Fires `n` concurrent GETs with `key` on `gws` (round robin); returns the answers.
async fn burst(gws: &[&TestGateway], key: &str, n: usize) -> Vec<Answer> {
    let c = client();
    let calls = (0..n).map(|i| {
        let url = gws[i % gws.len()].url("/public/v1/agreements");
        let c = c.clone();
        async move { send(&c, Method::GET, &url, Some(key), Bytes::new()).await }
    });
    futures_util::future::join_all(calls).await
}

/// The status of a GET of `path` with `key`.
async fn status_of(gw: &TestGateway, path: &str, key: &str) -> StatusCode {
    call(gw, Method::GET, path, key).await.status
}

/// Token `id` as `GET /v1/tokens/{id}` shows it.
async fn token_json(gw: &TestGateway, admin: &str, id: &str) -> Value {
    admin_call(
        gw,
        Method::GET,
        &format!("/v1/tokens/{id}"),
        Some(admin),
        "",
    )
    .await
    .json()
}

fn count(answers: &[Answer], status: StatusCode) -> usize {
    answers.iter().filter(|a| a.status == status).count()
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn read_permissions_allow_only_get_head_options() {
    let (up, gw) = gateway("").await;
    let admin = gw.admin_key.clone();
    let (_, key, v) = create_token(
        &gw,
        &admin,
        json!({"name": "r", "permissions": ["agreements:read", "billing"]}),
    )
    .await;
    assert_eq!(v["permissions"], json!(["agreements:read", "billing"]));
    for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
        let a = call(&gw, m.clone(), "/public/v1/agreements/1", &key).await;
        assert_eq!(a.status, StatusCode::OK, "{m}");
    }
    let seen = up.count();
    for m in ["POST", "PUT", "PATCH", "DELETE", "TRACE", "PROPFIND"] {
        let m = Method::from_bytes(m.as_bytes()).unwrap();
        let a = call(&gw, m.clone(), "/public/v1/agreements/1", &key).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{m}");
        assert_eq!(a.code(), "PERM_DENIED");
    }
    assert_eq!(up.count(), seen, "a refused method reached the upstream");
    let a = call(&gw, Method::DELETE, "/public/v1/billing/1", &key).await;
    assert_eq!(a.status, StatusCode::OK);
    // all:read covers every module, also with full permissions beside it.
    let (_, key, _) = create_token(
        &gw,
        &admin,
        json!({"name": "ar", "permissions": ["all:read", "billing"]}),
    )
    .await;
    assert_eq!(status_of(&gw, "/public/v1/agreements", &key).await, 200);
    assert_eq!(
        call(&gw, Method::POST, "/public/v1/agreements", &key)
            .await
            .status,
        403
    );
    assert_eq!(
        call(&gw, Method::POST, "/public/v1/billing", &key)
            .await
            .status,
        200
    );
    assert!(metric(&gw, "keygate_auth_failures_total{reason=\"forbidden\"}").await >= 7.0);
}

#[tokio::test]
async fn allowed_ips_use_the_peer_and_ignore_a_spoofed_forwarded_for() {
    let (up, gw) = gateway("").await;
    let admin = gw.admin_key.clone();
    let (_, outside, v) = create_token(
        &gw,
        &admin,
        json!({"name": "ip", "permissions": ["agreements"], "allowed_ips": ["192.0.2.7", "10.0.0.0/8"]}),
    )
    .await;
    assert_eq!(v["allowed_ips"], json!(["192.0.2.7/32", "10.0.0.0/8"]));
    let a = call(&gw, Method::GET, "/public/v1/agreements", &outside).await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::FORBIDDEN, "IP_NOT_ALLOWED")
    );
    // Row 6a comes before 7: an unknown path still answers IP_NOT_ALLOWED.
    let a = call(&gw, Method::GET, "/nowhere", &outside).await;
    assert_eq!(a.code(), "IP_NOT_ALLOWED");
    // No trusted proxies: X-Forwarded-For is ignored.
    let a = with_xff(&gw, &outside, "192.0.2.7").await;
    assert_eq!(a.code(), "IP_NOT_ALLOWED");
    assert_eq!(up.count(), 0);
    let (_, inside, _) = create_token(
        &gw,
        &admin,
        json!({"name": "lo", "permissions": ["agreements"], "allowed_ips": ["127.0.0.0/8"]}),
    )
    .await;
    assert_eq!(status_of(&gw, "/public/v1/agreements", &inside).await, 200);
    assert_eq!(
        metric(&gw, "keygate_auth_failures_total{reason=\"ip\"}").await,
        3.0
    );

    // Behind a trusted proxy (the test client on 127.0.0.1).
    let (_up, gw) = gateway("[proxy]\ntrusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n").await;
    let admin = gw.admin_key.clone();
    let (_, key, _) = create_token(
        &gw,
        &admin,
        json!({"name": "ip", "permissions": ["agreements"], "allowed_ips": ["192.0.2.7"]}),
    )
    .await;
    for (xff, want) in [
        ("192.0.2.7", 200),
        ("192.0.2.7, 10.1.1.1", 200),
        ("203.0.113.5, 192.0.2.7, 10.1.1.1", 200),
        ("192.0.2.7, 203.0.113.5", 403),
        ("192.0.2.7, junk, 10.1.1.1", 403),
        ("10.2.2.2, 10.1.1.1", 403),
    ] {
        assert_eq!(with_xff(&gw, &key, xff).await.status, want, "{xff}");
    }
    assert_eq!(status_of(&gw, "/public/v1/agreements", &key).await, 403);
}

#[tokio::test]
async fn exactly_n_of_a_2n_burst_then_n_again_after_per() {
    let (up, gw) = gateway("").await;
    let admin = gw.admin_key.clone();
    let (id, key, v) = create_token(
        &gw,
        &admin,
        json!({"name": "rl", "permissions": ["agreements"],
               "rate_limits": [{"requests": 8, "per": "2s"}, {"requests": 1000, "per": "1h"}]}),
    )
    .await;
    assert_eq!(v["rate_limits"][0], json!({"requests": 8, "per": "2s"}));
    let answers = burst(&[&gw], &key, 16).await;
    assert_eq!(count(&answers, StatusCode::OK), 8);
    assert_eq!(count(&answers, StatusCode::TOO_MANY_REQUESTS), 8);
    assert_eq!(up.count(), 8);
    for a in &answers {
        assert_eq!(
            header(a, "ratelimit-policy"),
            "\"8/2s\";q=8;w=2, \"1000/1h\";q=1000;w=3600"
        );
        let rl = header(a, "ratelimit");
        assert!(rl.starts_with("\"8/2s\";r="), "{rl}");
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(a.code(), "RATE_LIMITED");
            let retry: u64 = header(a, "retry-after").parse().unwrap();
            assert!((1..=2).contains(&retry), "{retry}");
            assert!(rl.starts_with("\"8/2s\";r=0;t="), "{rl}");
        }
    }
    let mut rs: Vec<u64> = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .map(|a| {
            let rl = header(a, "ratelimit");
            rl.split(";r=")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    rs.sort_unstable();
    assert_eq!(rs, (0..8).collect::<Vec<_>>());
    // The limit's period without traffic: N again (refusals consumed nothing).
    tokio::time::sleep(Duration::from_millis(2050)).await;
    let answers = burst(&[&gw], &key, 16).await;
    assert_eq!(count(&answers, StatusCode::OK), 8);
    // 429s count as the token's 4xx.
    let ok = eventually(Duration::from_secs(5), async || {
        let s = admin_call(
            &gw,
            Method::GET,
            &format!("/v1/tokens/{id}/stats?days=1"),
            Some(&admin),
            "",
        )
        .await;
        s.json()["totals"] == json!({"2xx": 16, "3xx": 0, "4xx": 16, "5xx": 0})
    })
    .await;
    assert!(ok, "429s are not counted as 4xx");
    assert_eq!(
        metric(&gw, "keygate_auth_failures_total{reason=\"rate_limited\"}").await,
        16.0
    );
    // A token without limits gets no RateLimit headers.
    let (_, plain, _) = create_token(
        &gw,
        &admin,
        json!({"name": "p", "permissions": ["agreements"]}),
    )
    .await;
    let a = call(&gw, Method::GET, "/public/v1/agreements", &plain).await;
    assert!(a.headers.get("ratelimit").is_none() && a.headers.get("ratelimit-policy").is_none());
}

#[tokio::test]
async fn quota_is_exact_all_or_nothing_and_survives_a_restart() {
    let up = spawn_upstream().await;
    let toml = format!(
        "{FAST_FLUSH}{}",
        module_toml("agreements", &["/public/v1/agreements"], &up.url(), "")
    );
    let gw = spawn_gateway(&toml).await;
    let admin = gw.admin_key.clone();
    let (id, key, v) = create_token(
        &gw,
        &admin,
        json!({"name": "q", "permissions": ["agreements"],
               "rate_limits": [{"requests": 4, "per": "1h"}],
               "quota": {"requests": 3, "period": "day"}}),
    )
    .await;
    assert_eq!(v["quota_usage"]["used"], 0);
    let answers = burst(&[&gw], &key, 6).await;
    assert_eq!(count(&answers, StatusCode::OK), 3);
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(refused.iter().all(|a| a.code() == "QUOTA_EXCEEDED"));
    assert_one_quota_event(&gw, &admin, &id).await;
    let now = jiff::Timestamp::now().as_second();
    let midnight = (now / 86_400 + 1) * 86_400;
    let retry: i64 = header(refused[0], "retry-after").parse().unwrap();
    assert!((midnight - now - retry).abs() <= 2, "{retry}");
    let t = token_json(&gw, &admin, &id).await;
    assert_eq!(t["quota_usage"]["used"], 3);
    let day = jiff::Timestamp::from_second(midnight - 86_400)
        .unwrap()
        .to_string();
    assert_eq!(t["quota_usage"]["period_start"], day.as_str());
    // Raising N keeps the count; the rate limit (4/h) was charged only for admitted ones.
    let patch = json!({"quota": {"requests": 5, "period": "day"}}).to_string();
    let a = admin_call(
        &gw,
        Method::PATCH,
        &format!("/v1/tokens/{id}"),
        Some(&admin),
        &patch,
    )
    .await;
    assert_eq!(a.json()["quota_usage"]["used"], 3, "{}", a.text());
    let answers = burst(&[&gw], &key, 3).await;
    assert_eq!(count(&answers, StatusCode::OK), 1);
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.status == 429 && a.code() == "RATE_LIMITED")
            .count(),
        2
    );
    assert_eq!(
        metric(
            &gw,
            "keygate_auth_failures_total{reason=\"quota_exceeded\"}"
        )
        .await,
        3.0
    );

    // A graceful restart keeps the count.
    let dir = gw.stop_keep_dir().await;
    let gw = spawn_gateway_in(&toml, dir).await;
    let t = token_json(&gw, &admin, &id).await;
    assert_eq!(t["quota_usage"]["used"], 4);
    // PATCH with null clears the quota and the limits.
    let patch = json!({"quota": null, "rate_limits": null}).to_string();
    let a = admin_call(
        &gw,
        Method::PATCH,
        &format!("/v1/tokens/{id}"),
        Some(&admin),
        &patch,
    )
    .await;
    assert_eq!(
        (a.json()["quota"].clone(), a.json()["quota_usage"].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(a.json()["rate_limits"], json!([]));
    assert_eq!(status_of(&gw, "/public/v1/agreements", &key).await, 200);
}

#[tokio::test]
async fn read_only_admin_tokens_and_escalation_per_module() {
    let (_up, gw) = gateway("").await;
    let admin = gw.admin_key.clone();
    let (_, reader, _) = create_token(
        &gw,
        &admin,
        json!({"name": "ro", "permissions": ["integrations:read"]}),
    )
    .await;
    let a = admin_call(&gw, Method::GET, "/v1/tokens", Some(&reader), "").await;
    assert_eq!(a.status, StatusCode::OK);
    let body = json!({"name": "x", "permissions": ["agreements"]}).to_string();
    let a = admin_call(&gw, Method::POST, "/v1/tokens", Some(&reader), &body).await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::FORBIDDEN, "PERM_DENIED")
    );

    let (_, caller, _) = create_token(
        &gw,
        &admin,
        json!({"name": "c", "permissions": ["integrations", "agreements:read", "billing"]}),
    )
    .await;
    let try_create = |perms: Value| {
        let gw = &gw;
        let caller = caller.clone();
        async move {
            let body = json!({"name": "n", "permissions": perms}).to_string();
            admin_call(gw, Method::POST, "/v1/tokens", Some(&caller), &body).await
        }
    };
    for (perms, want) in [
        (json!(["agreements:read"]), "201"),
        (json!(["billing:read"]), "201"),
        (json!(["billing"]), "201"),
        (json!(["agreements"]), "PERM_ESCALATION"),
        (json!(["all:read"]), "PERM_ESCALATION"),
        (json!(["all"]), "PERM_ESCALATION"),
    ] {
        let a = try_create(perms.clone()).await;
        let got = if a.status == 201 {
            "201".to_string()
        } else {
            a.code()
        };
        assert_eq!(got, want, "{perms}");
    }
    // Changing a token needs at least its access in every module.
    let (full_id, _, _) = create_token(
        &gw,
        &admin,
        json!({"name": "f", "permissions": ["agreements"]}),
    )
    .await;
    let a = admin_call(
        &gw,
        Method::POST,
        &format!("/v1/tokens/{full_id}/disable"),
        Some(&caller),
        "",
    )
    .await;
    assert_eq!(a.code(), "PERM_ESCALATION");
    let (read_id, _, _) = create_token(
        &gw,
        &admin,
        json!({"name": "r", "permissions": ["agreements:read"]}),
    )
    .await;
    let a = admin_call(
        &gw,
        Method::POST,
        &format!("/v1/tokens/{read_id}/disable"),
        Some(&caller),
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    // all:read admits creating all:read, not all.
    let (_, wide, _) = create_token(
        &gw,
        &admin,
        json!({"name": "w", "permissions": ["all:read", "integrations"]}),
    )
    .await;
    let body = json!({"name": "n", "permissions": ["all:read"]}).to_string();
    assert_eq!(
        admin_call(&gw, Method::POST, "/v1/tokens", Some(&wide), &body)
            .await
            .status,
        201
    );

    // An admin token's allowed_ips are checked against the TCP peer.
    let (_, far, _) = create_token(
        &gw,
        &admin,
        json!({"name": "far", "permissions": ["integrations"], "allowed_ips": ["192.0.2.0/24"]}),
    )
    .await;
    let a = admin_call(&gw, Method::GET, "/v1/tokens", Some(&far), "").await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::FORBIDDEN, "IP_NOT_ALLOWED")
    );
}

#[tokio::test]
async fn validation_names_the_field() {
    let (_up, gw) = gateway("").await;
    let admin = gw.admin_key.clone();
    let base = |extra: Value| {
        let mut b = json!({"name": "v", "permissions": ["agreements"]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b.to_string()
    };
    let limit = |n: u64, per: &str| json!({"requests": n, "per": per});
    for (extra, field) in [
        (json!({"allowed_ips": ["10.1.2.3/8"]}), "allowed_ips[0]"),
        (
            json!({"allowed_ips": ["1.2.3.4", "nope"]}),
            "allowed_ips[1]",
        ),
        (json!({"allowed_ips": vec!["10.0.0.1"; 65]}), "allowed_ips"),
        (
            json!({"rate_limits": [limit(0, "1s")]}),
            "rate_limits[0].requests",
        ),
        (
            json!({"rate_limits": [limit(1_000_000_001, "1s")]}),
            "rate_limits[0].requests",
        ),
        (
            json!({"rate_limits": [limit(5, "1s"), limit(5, "2d")]}),
            "rate_limits[1].per",
        ),
        (
            json!({"rate_limits": [limit(5, "500ms")]}),
            "rate_limits[0].per",
        ),
        (
            json!({"rate_limits": vec![limit(5, "1s"); 5]}),
            "rate_limits",
        ),
        (
            json!({"quota": {"requests": 0, "period": "day"}}),
            "quota.requests",
        ),
        (
            json!({"quota": {"requests": 1_000_000_000_001u64, "period": "day"}}),
            "quota.requests",
        ),
        (
            json!({"quota": {"requests": 5, "period": "week"}}),
            "quota.period",
        ),
        (
            json!({"permissions": ["agreements", "agreements:read"]}),
            "permissions",
        ),
        (
            json!({"permissions": ["all:read", "billing:read"]}),
            "permissions",
        ),
        (json!({"permissions": ["nope:read"]}), "permissions"),
        (json!({"permissions": ["all", "all:read"]}), "permissions"),
    ] {
        let a = admin_call(
            &gw,
            Method::POST,
            "/v1/tokens",
            Some(&admin),
            &base(extra.clone()),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{extra}");
        assert_eq!(a.code(), "VALIDATION");
        let text = a.json()["errors"][0].as_str().unwrap().to_string();
        assert!(text.starts_with(&format!("{field}:")), "{extra}: {text}");
    }
}

#[tokio::test]
async fn extension_presets_fix_the_permissions() {
    let extensions = "[[extensions]]\nname = \"custom\"\ncode = \"EXT-000\"\n\
        [[extensions]]\nname = \"reports\"\ncode = \"EXT-569\"\npermissions = [\"agreements:read\"]\n";
    let (_up, gw) = gateway(extensions).await;
    let admin = gw.admin_key.clone();
    let a = admin_call(&gw, Method::GET, "/v1/extensions", Some(&admin), "").await;
    assert_eq!(a.json()[0]["permissions"], Value::Null);
    assert_eq!(a.json()[1]["permissions"], json!(["agreements:read"]));
    let (id, _, v) = create_token(&gw, &admin, json!({"name": "r", "extension": "reports"})).await;
    assert_eq!(v["permissions"], json!(["agreements:read"]));
    let body = json!({"name": "r", "extension": "reports", "permissions": ["billing"]}).to_string();
    let a = admin_call(&gw, Method::POST, "/v1/tokens", Some(&admin), &body).await;
    assert_eq!(a.code(), "VALIDATION");
    assert!(a.text().contains("permissions:"), "{}", a.text());
    let body = json!({"permissions": ["billing"]}).to_string();
    let a = admin_call(
        &gw,
        Method::PATCH,
        &format!("/v1/tokens/{id}"),
        Some(&admin),
        &body,
    )
    .await;
    assert_eq!(a.code(), "VALIDATION");
    // A PATCH to the extension sets its preset.
    let (other, _, _) = create_token(
        &gw,
        &admin,
        json!({"name": "c", "permissions": ["billing"]}),
    )
    .await;
    let body = json!({"extension": "reports"}).to_string();
    let a = admin_call(
        &gw,
        Method::PATCH,
        &format!("/v1/tokens/{other}"),
        Some(&admin),
        &body,
    )
    .await;
    assert_eq!(
        a.json()["permissions"],
        json!(["agreements:read"]),
        "{}",
        a.text()
    );
    // Without a preset, permissions are required.
    let a = admin_call(
        &gw,
        Method::POST,
        "/v1/tokens",
        Some(&admin),
        &json!({"name": "x"}).to_string(),
    )
    .await;
    assert_eq!(a.code(), "VALIDATION");
}

/// A reload that changes an extension's preset gives the existing tokens of that
/// extension the new preset (a tightened preset must not leave old tokens with more),
/// with a `token.updated` event naming `permissions`.
#[tokio::test]
async fn a_reloaded_preset_applies_to_existing_tokens() {
    let up = spawn_upstream().await;
    let toml = |preset: &str| {
        format!(
            "{FAST_FLUSH}[[extensions]]\nname = \"custom\"\ncode = \"EXT-000\"\n\
             [[extensions]]\nname = \"reports\"\ncode = \"EXT-569\"\npermissions = {preset}\n{}{}",
            module_toml("agreements", &["/public/v1/agreements"], &up.url(), ""),
            module_toml("billing", &["/public/v1/billing"], &up.url(), "")
        )
    };
    let gw = spawn_gateway(&toml("[\"agreements\", \"billing\"]")).await;
    let admin = gw.admin_key.clone();
    let (id, key, _) =
        create_token(&gw, &admin, json!({"name": "r", "extension": "reports"})).await;
    let (other, other_key, _) = create_token(
        &gw,
        &admin,
        json!({"name": "c", "permissions": ["billing"]}),
    )
    .await;
    assert_eq!(status_of(&gw, "/public/v1/billing", &key).await, 200);

    gw.write_config(&toml("[\"agreements:read\"]"));
    gw.reload.reload().await.unwrap();
    assert_eq!(status_of(&gw, "/public/v1/billing", &key).await, 403);
    assert_eq!(status_of(&gw, "/public/v1/agreements", &key).await, 200);
    let put = call(&gw, Method::PUT, "/public/v1/agreements", &key).await;
    assert_eq!(put.status, 403);
    let t = token_json(&gw, &admin, &id).await;
    assert_eq!(t["permissions"], json!(["agreements:read"]));
    let events = admin_call(
        &gw,
        Method::GET,
        &format!("/v1/tokens/{id}/events"),
        Some(&admin),
        "",
    )
    .await
    .json();
    let last = events.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "updated", "{events}");
    assert_eq!(last["fields"], json!(["permissions"]), "{events}");
    // Tokens of other extensions are untouched.
    assert_eq!(status_of(&gw, "/public/v1/billing", &other_key).await, 200);
    let t = token_json(&gw, &admin, &other).await;
    assert_eq!(t["permissions"], json!(["billing"]));

    // A preset changed while keygate was stopped applies at the next start.
    let dir = gw.stop_keep_dir().await;
    let gw = spawn_gateway_in(&toml("[\"billing:read\"]"), dir).await;
    assert_eq!(status_of(&gw, "/public/v1/billing", &key).await, 200);
    assert_eq!(status_of(&gw, "/public/v1/agreements", &key).await, 403);
}

/// Regression: deleting a token left its rate-limit/quota state in the limiter and its
/// quota row in the embedded store (and a request admitted during the delete wrote
/// the row back at the next flush).
#[tokio::test]
async fn deleting_a_token_drops_its_limiter_state_and_quota_row() {
    // No background flush during the test: the test flushes itself.
    let up = spawn_upstream().await;
    let toml = format!(
        "[stats]\nflush_interval = \"1h\"\n{}",
        module_toml("agreements", &["/public/v1/agreements"], &up.url(), "")
    );
    let gw = spawn_gateway(&toml).await;
    let admin = gw.admin_key.clone();
    let (id, key, _) = create_token(
        &gw,
        &admin,
        json!({"name": "d", "permissions": ["agreements"],
               "rate_limits": [{"requests": 10, "per": "1m"}],
               "quota": {"requests": 10, "period": "day"}}),
    )
    .await;
    assert_eq!(status_of(&gw, "/public/v1/agreements", &key).await, 200);
    let tid: keygate::token::TokenId = id.parse().unwrap();
    let keygate::store::Store::Embedded(store) = &gw.shared.store else {
        panic!("embedded store expected")
    };
    let has_row = || store.quotas().unwrap().iter().any(|r| r.0 == tid);
    let limiters = &gw.shared.limiters;
    keygate::policy::sync_quotas(limiters, &gw.shared.store)
        .await
        .unwrap();
    assert!(has_row() && limiters.tracks(tid));

    let a = admin_call(
        &gw,
        Method::DELETE,
        &format!("/v1/tokens/{id}"),
        Some(&admin),
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text());
    assert!(!limiters.tracks(tid), "limiter state left behind");
    assert!(!has_row(), "quota row left behind");

    // A request of the token admitted while it was being deleted counts in memory;
    // the next flush must not write its row back.
    let policy = keygate::policy::Policy::of(
        &[],
        Some(keygate::policy::Quota {
            requests: 10,
            period: keygate::policy::Period::Day,
        }),
        &[],
    )
    .unwrap();
    let now_ms = jiff::Timestamp::now().as_millisecond();
    assert!(matches!(
        limiters.admit(tid, &policy, now_ms, false),
        keygate::policy::Admission::Admitted(_)
    ));
    keygate::policy::sync_quotas(limiters, &gw.shared.store)
        .await
        .unwrap();
    assert!(!has_row(), "a late count wrote the quota row back");
}

/// Two instances on one Redis admit exactly N of a burst split between them, and
/// exactly the quota.
async fn two_instances_share_limits(redis: &TestRedis, prefix: &str) {
    let up = spawn_upstream().await;
    let toml = format!(
        "{FAST_FLUSH}{}{}",
        redis_store_toml(redis, prefix, ""),
        module_toml("agreements", &["/public/v1/agreements"], &up.url(), "")
    );
    let a = spawn_gateway(&toml).await;
    let b = spawn_gateway(&toml).await;
    let admin = if a.admin_key.is_empty() {
        b.admin_key.clone()
    } else {
        a.admin_key.clone()
    };
    let (_, key, _) = create_token(
        &a,
        &admin,
        json!({"name": "rl", "permissions": ["agreements"], "rate_limits": [{"requests": 10, "per": "1h"}]}),
    )
    .await;
    let answers = burst(&[&a, &b], &key, 20).await;
    assert_eq!(count(&answers, StatusCode::OK), 10);
    assert_eq!(count(&answers, StatusCode::TOO_MANY_REQUESTS), 10);
    let (id, key, _) = create_token(
        &a,
        &admin,
        json!({"name": "q", "permissions": ["agreements"], "quota": {"requests": 7, "period": "month"}}),
    )
    .await;
    let answers = burst(&[&a, &b], &key, 14).await;
    assert_eq!(count(&answers, StatusCode::OK), 7);
    assert!(
        answers
            .iter()
            .filter(|x| x.status == 429)
            .all(|x| x.code() == "QUOTA_EXCEEDED")
    );
    for gw in [&a, &b] {
        let t = admin_call(
            gw,
            Method::GET,
            &format!("/v1/tokens/{id}"),
            Some(&admin),
            "",
        )
        .await;
        assert_eq!(t.json()["quota_usage"]["used"], 7);
    }
    assert_one_quota_event(&a, &admin, &id).await;
}

/// `token.quota_exceeded` is recorded once for the period, however many refusals and
/// instances saw it.
async fn assert_one_quota_event(gw: &TestGateway, admin: &str, id: &str) {
    let count = async || {
        let a = admin_call(
            gw,
            Method::GET,
            &format!("/v1/tokens/{id}/events"),
            Some(admin),
            "",
        )
        .await;
        let events = a.json();
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "quota_exceeded")
            .count()
    };
    assert!(
        eventually(Duration::from_secs(5), async || count().await == 1).await,
        "no quota_exceeded event"
    );
    // More refusals in the same period add none.
    tokio::task::yield_now().await;
    assert_eq!(count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_redis_admit_exactly_n_and_the_quota() {
    let redis = spawn_redis().await;
    two_instances_share_limits(&redis, "pol:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_a_redis_cluster_admit_exactly_n_and_the_quota() {
    let redis = spawn_redis_cluster().await;
    two_instances_share_limits(&redis, "polc:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_redis_is_down_an_instance_enforces_alone_and_counts_reconcile() {
    let mut redis = spawn_redis().await;
    let up = spawn_upstream().await;
    let toml = format!(
        "{FAST_FLUSH}{}{}",
        redis_store_toml(&redis, "down:", ""),
        module_toml("agreements", &["/public/v1/agreements"], &up.url(), "")
    );
    let gw = spawn_gateway(&toml).await;
    let admin = gw.admin_key.clone();
    let (id, key, _) = create_token(
        &gw,
        &admin,
        json!({"name": "q", "permissions": ["agreements"], "quota": {"requests": 5, "period": "day"}}),
    )
    .await;
    assert_eq!(
        burst(&[&gw], &key, 2)
            .await
            .iter()
            .filter(|a| a.status == 200)
            .count(),
        2
    );
    redis.kill();
    // Alone, from the count it last saw: 3 more, then refused.
    let answers = burst(&[&gw], &key, 5).await;
    assert_eq!(
        count(&answers, StatusCode::OK),
        3,
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert_eq!(count(&answers, StatusCode::TOO_MANY_REQUESTS), 2);
    redis.restart().await;
    // The 3 counted alone reach Redis: a fresh instance sees all 5.
    let other = spawn_gateway(&toml).await;
    let ok = eventually(Duration::from_secs(10), async || {
        let t = admin_call(
            &other,
            Method::GET,
            &format!("/v1/tokens/{id}"),
            Some(&admin),
            "",
        )
        .await;
        t.status == 200 && t.json()["quota_usage"]["used"] == 5
    })
    .await;
    assert!(ok, "quota counts made while redis was down were not added");
    let a = call(&other, Method::GET, "/public/v1/agreements", &key).await;
    assert_eq!(a.code(), "QUOTA_EXCEEDED");
}
