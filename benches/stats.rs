//! The per-request cost of counting: `Stats::record` for a token already seen (the hot
//! path of every authenticated request), with and without the per-token metric label.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use jiff::Timestamp;
use keygate::config::Config;
use keygate::metrics::{Class, Metrics};
use keygate::stats::{Stats, SystemClock};
use keygate::store::TokenCache;
use keygate::token::TokenId;

fn config(extra: &str) -> Config {
    let text = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
bootstrap_key_file = "/nonexistent/admin.key"
[store]
backend = "embedded"
path = "/nonexistent/keygate.redb"
{extra}
[[modules]]
name = "agreements"
description = "a"
prefixes = ["/a"]
upstream = "http://127.0.0.1:1"
[[modules]]
name = "billing"
description = "b"
prefixes = ["/b"]
upstream = "http://127.0.0.1:1"
"#
    );
    Config::parse(&text, std::path::Path::new("bench.toml"), |_| None).expect("config")
}

fn bench_record(c: &mut Criterion) {
    let mut g = c.benchmark_group("stats_record");
    for (name, extra) in [
        ("known_token", ""),
        (
            "known_token_per_token_false",
            "[metrics]\nper_token = false",
        ),
    ] {
        let config = config(extra);
        let metrics = Arc::new(
            Metrics::new(&config.metrics, Arc::new(TokenCache::new(true))).expect("metrics"),
        );
        let stats = Stats::new(
            Arc::clone(&metrics),
            config.metrics.max_token_series,
            Arc::new(SystemClock),
        );
        let modules = Arc::new(metrics.modules(&config));
        let slot = modules.slot(Some(0));
        // The request's clock read is the auth phase's (gateway::proxy_request).
        let id = TokenId::new(160_984_311).map(|id| (id, Timestamp::now()));
        // First sight (allocates the entry and its metric children) outside the loop.
        stats.record(id, &modules, slot, Class::Success);
        g.bench_function(name, |b| {
            b.iter(|| stats.record(black_box(id), &modules, black_box(slot), Class::Success))
        });
    }
    let config = config("");
    let metrics =
        Arc::new(Metrics::new(&config.metrics, Arc::new(TokenCache::new(true))).expect("metrics"));
    let stats = Stats::new(Arc::clone(&metrics), 10_000, Arc::new(SystemClock));
    let modules = Arc::new(metrics.modules(&config));
    let slot = modules.slot(None);
    g.bench_function("no_token", |b| {
        b.iter(|| {
            stats.record(
                black_box(None),
                &modules,
                black_box(slot),
                Class::ClientError,
            )
        })
    });
    // The whole per-request accounting of gateway::handle: latency histogram + record.
    let slot = modules.slot(Some(0));
    let id = TokenId::new(160_984_312).map(|id| (id, Timestamp::now()));
    g.bench_function("known_token_with_histogram", |b| {
        b.iter(|| {
            modules.observe_duration(slot, std::time::Duration::from_micros(250));
            stats.record(black_box(id), &modules, black_box(slot), Class::Success)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_record);
criterion_main!(benches);
