//! The auth decision on a cache hit: header parse + cache lookup + secret verify +
//! path normalisation + route lookup + permission check — the per-request work keygate
//! does before forwarding — for a token without policies and for one with two rate
//! limits and an IP allow-list (SPEC §8; the embedded store's in-process limiter,
//! and the `RateLimit-Policy`/`RateLimit` values its answer carries); and that policy
//! part alone (`policy_check_*`).
//! Run: `cargo bench --bench auth`.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use jiff::Timestamp;
use keygate::auth::{Presented, presented};
use keygate::config::Config;
use keygate::policy::{self, Access, Admission, Cidr, Limiters, RateLimit};
use keygate::routes::normalize_path;
use keygate::store::{AuthEntry, TokenCache};
use keygate::token::{Secret, Token, TokenId};

// The allocator the keygate binary runs with (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config() -> Config {
    let mut text =
        String::from("[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    for name in [
        "agreements",
        "billing",
        "catalog",
        "contracts",
        "customers",
        "devops",
        "forms",
        "helpdesk",
        "integrations",
        "leads",
        "listings",
        "localization",
        "marketplaces",
        "notifications",
        "reports",
        "subscriptions",
        "usage",
    ] {
        text.push_str(&format!(
            "[[modules]]\nname = \"{name}\"\nprefixes = [\"/public/v1/{name}\"]\nupstream = \"http://127.0.0.1:7001\"\n"
        ));
    }
    Config::parse(&text, Path::new("bench.toml"), |_| None).expect("config")
}

fn token(id: u32, secret: &Secret, perms: &[&str]) -> Token {
    Token {
        id: TokenId::new(id).expect("id"),
        ..Token::new("bench", perms, secret.hash(), Timestamp::now())
    }
}

fn bench(c: &mut Criterion) {
    let config = config();
    let routes = config.route_table();
    let cache = TokenCache::new(true);
    let secret = Secret::generate();
    // 10,000 other tokens so the map is not trivially small.
    for i in 0..10_000u32 {
        cache.put(
            &token(i * 7 + 1, &Secret::generate(), &["agreements"]),
            &config,
        );
    }
    let id = 160_984_311;
    cache.put(
        &token(id, &secret, &["agreements", "subscriptions"]),
        &config,
    );
    let mut headers = HeaderMap::new();
    let value = format!("ApiKey SU-160-984-311:{}", secret.expose());
    headers.insert(
        "authorization",
        HeaderValue::from_str(&value).expect("header"),
    );
    let path = "/public/v1/subscriptions/AS-1234-5678/items";

    // The same token with two limits that never trip here and a 3-entry IP list.
    let pid = 260_984_311;
    let limit = |per: &str| RateLimit {
        requests: 1_000_000_000,
        per: per.into(),
    };
    cache.put(
        &Token {
            rate_limits: vec![limit("1s"), limit("1d")],
            allowed_ips: ["10.0.0.0/8", "192.0.2.7", "127.0.0.0/8"]
                .iter()
                .map(|c| Cidr::parse(c).expect("cidr"))
                .collect(),
            ..token(pid, &secret, &["agreements", "subscriptions"])
        },
        &config,
    );
    let mut policy_headers = HeaderMap::new();
    let value = format!("ApiKey SU-260-984-311:{}", secret.expose());
    policy_headers.insert(
        "authorization",
        HeaderValue::from_str(&value).expect("header"),
    );
    let limiters = Limiters::new();
    let peer: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
    let trusted = config.proxy.trusted_proxies.clone();

    // What gateway::upstream_peer adds for a token with policies: the client address
    // against `allowed_ips`, the limiter, and the `RateLimit-Policy`/`RateLimit` values
    // the answer will carry. `None`: refused.
    type Headers = Option<(HeaderValue, HeaderValue)>;
    let policy_check = |entry: &AuthEntry, headers: &HeaderMap, now_ms: i64| -> Option<Headers> {
        let policy = entry.policy.as_deref();
        if let Some(p) = policy.filter(|p| !p.allowed_ips.is_empty())
            && !policy::any_contains(&p.allowed_ips, policy::client_ip(peer, headers, &trusted))
        {
            return None;
        }
        let mut ratelimit = None;
        if let Some(p) = policy.filter(|p| p.counts()) {
            let Admission::Admitted(headroom) = limiters.admit(entry.id, p, now_ms, false) else {
                return None;
            };
            ratelimit = policy::ratelimit_headers(p, headroom);
        }
        Some(ratelimit)
    };

    // The whole decision: what gateway::proxy_request does before forwarding.
    let decide = |headers: &HeaderMap, path: &str| -> Option<(usize, Headers)> {
        let Ok(Presented::Credential(cred)) = presented(headers) else {
            return None;
        };
        let entry = cache.get(cred.id)?;
        // One clock read, as proxy_request's for the grace period, the expiry and the
        // rate limits.
        let now = Timestamp::now();
        let secs = now.as_second();
        if !entry.verify(&cred.secret_hash(), secs) || entry.disabled || entry.expired(secs) {
            return None;
        }
        let path = normalize_path(path).ok()?;
        let module = routes.lookup(&path)?;
        if entry.perms.access(module) != Access::Full {
            return None;
        }
        let ratelimit = policy_check(&entry, headers, now.as_millisecond())?;
        Some((module, ratelimit))
    };
    assert!(decide(&headers, path).is_some_and(|(_, h)| h.is_none()));
    assert!(decide(&policy_headers, path).is_some_and(|(_, h)| h.is_some()));

    c.bench_function("auth_decision_cache_hit", |b| {
        b.iter(|| decide(black_box(&headers), black_box(path)))
    });
    c.bench_function("auth_decision_cache_hit_two_limits_ip_list", |b| {
        b.iter(|| decide(black_box(&policy_headers), black_box(path)))
    });
    // The policy part alone, on the cached entries: what a token with two limits and an
    // IP list adds, measured directly instead of as the difference of two noisy figures
    // of ~400 ns. The clock is read once before each run (in the request path that read
    // is the one the expiry check makes anyway); the limits are far from tripping within
    // a run, and the `RateLimit` values still change with every request.
    let plain = cache.get(TokenId::new(id).expect("id")).expect("entry");
    let limited = cache.get(TokenId::new(pid).expect("id")).expect("entry");
    let now_ms = || Timestamp::now().as_millisecond();
    assert!(policy_check(&plain, &headers, now_ms()).is_some_and(|h| h.is_none()));
    assert!(policy_check(&limited, &policy_headers, now_ms()).is_some_and(|h| h.is_some()));
    c.bench_function("policy_check_without_policies", |b| {
        let now = now_ms();
        b.iter(|| policy_check(black_box(&plain), black_box(&headers), now))
    });
    c.bench_function("policy_check_two_limits_ip_list", |b| {
        let now = now_ms();
        b.iter(|| policy_check(black_box(&limited), black_box(&policy_headers), now))
    });
    // Its two costly parts alone: the limiter's decision, and the two header values.
    let compiled = limited.policy.as_deref().expect("policy");
    c.bench_function("policy_limiter_admit_two_limits", |b| {
        let now = now_ms();
        b.iter(|| limiters.admit(black_box(limited.id), black_box(compiled), now, false))
    });
    let Admission::Admitted(headroom) = limiters.admit(limited.id, compiled, now_ms(), false)
    else {
        panic!("the limits trip");
    };
    c.bench_function("policy_ratelimit_header_values", |b| {
        b.iter(|| policy::ratelimit_headers(black_box(compiled), black_box(headroom)))
    });
    c.bench_function("normalize_path_dot_segments", |b| {
        b.iter(|| normalize_path(black_box("/public/v1//subscriptions/./x/../AS-1/%7Eitems")))
    });
    c.bench_function("secret_hash_verify", |b| {
        let entry = cache.get(TokenId::new(id).expect("id")).expect("entry");
        let hash = secret.hash();
        b.iter(|| entry.verify(black_box(&hash), 0))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
