//! Memory per cached token: fills a TokenCache with 1,000,000 tokens and reports the
//! resident-set growth per token. Run: `cargo bench --bench cache_memory`.

use std::path::Path;

use jiff::Timestamp;
use keygate::config::Config;
use keygate::store::TokenCache;
use keygate::token::{SecretHash, Token, TokenId};

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run small then.
    let n: u32 = if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        10_000
    };
    let mut text =
        String::from("[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    for name in ["agreements", "billing", "catalog", "subscriptions", "usage"] {
        text.push_str(&format!(
            "[[modules]]\nname = \"{name}\"\nprefixes = [\"/public/v1/{name}\"]\nupstream = \"http://127.0.0.1:7001\"\n"
        ));
    }
    let config = Config::parse(&text, Path::new("bench.toml"), |_| None).expect("config");
    let cache = TokenCache::new(true);
    let now = Timestamp::now();
    let mut template = Token {
        description: "and a description that the cache does not keep".into(),
        extension: "zapier".into(),
        expires_at: Some(now),
        validity_secs: Some(86_400),
        ..Token::new(
            "a token with a realistic name",
            &["agreements", "subscriptions"],
            SecretHash([7; 32]),
            now,
        )
    };
    let before = rss();
    for i in 0..n {
        template.id = TokenId::new(i * 997 % 1_000_000_000).expect("id");
        template.secret_hash.0[..4].copy_from_slice(&i.to_le_bytes());
        cache.put(&template, &config);
    }
    let after = rss();
    let per = (after.saturating_sub(before)) as f64 / f64::from(n);
    println!(
        "cache_memory: {} tokens, RSS +{:.1} MiB, {:.0} bytes per cached token",
        cache.len(),
        after.saturating_sub(before) as f64 / 1048576.0,
        per
    );
}
