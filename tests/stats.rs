//! Per-token statistics (SPEC §3), `GET /v1/tokens/{id}/stats` and `/metrics`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;
use jiff::Timestamp;
use keygate::stats::ManualClock;
use keygate::store::{EmbeddedStore, day_number};
use keygate::token::TokenId;

// ---------------------------------------------------------------------------------
// A strict parser of the Prometheus text exposition format (0.0.4).
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    helps: HashMap<String, String>,
    samples: Vec<Sample>,
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s
            .parse::<f64>()
            .map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// The family a sample belongs to (histogram/summary suffixes stripped when declared).
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            )
        {
            return base;
        }
    }
    name
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("sample without value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        loop {
            // label name
            let start = chars.peek().map(|&(i, _)| i).ok_or("unterminated labels")?;
            if r[start..].starts_with('}') {
                chars.next();
                rest = &r[start + 1..];
                break;
            }
            let eq = r[start..].find('=').ok_or("label without =")? + start;
            let lname = &r[start..eq];
            if !is_label_name(lname) {
                return Err(format!("bad label name {lname:?}"));
            }
            while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")?.1 {
                    '\\' => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    '"' => break,
                    '\n' => return Err("newline in label value".into()),
                    c => value.push(c),
                }
            }
            if labels.insert(lname.to_string(), value).is_some() {
                return Err(format!("duplicate label {lname}"));
            }
            match chars.next().map(|(_, c)| c) {
                Some(',') => {}
                Some('}') => {
                    let end = chars.peek().map_or(r.len(), |&(i, _)| i);
                    rest = &r[end..];
                    break;
                }
                other => return Err(format!("expected , or }} after label, got {other:?}")),
            }
        }
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut parts = rest.split(' ');
    let value = parse_value(parts.next().ok_or("no value")?)?;
    if let Some(ts) = parts.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if parts.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses the whole exposition, checking the rules Prometheus enforces.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut seen_series = std::collections::HashSet::new();
    let mut finished_families = std::collections::HashSet::<String>::new();
    let mut current: Option<String> = None;
    if !text.ends_with('\n') {
        return Err("exposition must end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(err("empty line".into()));
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut p = rest.splitn(3, ' ');
            let kind = p.next().unwrap_or("");
            if kind != "HELP" && kind != "TYPE" {
                continue; // a comment
            }
            let name = p.next().ok_or_else(|| err("no metric name".into()))?;
            if !is_metric_name(name) {
                return Err(err("bad metric name".into()));
            }
            let arg = p.next().ok_or_else(|| err("no text".into()))?.to_string();
            if finished_families.contains(name) {
                return Err(err("metadata after the family's samples".into()));
            }
            if current.as_deref() != Some(name) {
                if let Some(c) = current.take() {
                    finished_families.insert(c);
                }
                current = Some(name.to_string());
            }
            let map = if kind == "HELP" {
                &mut out.helps
            } else {
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg.as_str())
                {
                    return Err(err("unknown type".into()));
                }
                &mut out.types
            };
            if map.insert(name.to_string(), arg).is_some() {
                return Err(err(format!("second {kind}")));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let s = parse_sample(line).map_err(err)?;
        let family = family_of(&s.name, &out.types).to_string();
        if finished_families.contains(&family) {
            return Err(err("samples of a family are not contiguous".into()));
        }
        if current.as_deref() != Some(family.as_str()) {
            if let Some(c) = current.take() {
                finished_families.insert(c);
            }
            current = Some(family.clone());
        }
        if out.types.get(&family).map(String::as_str) == Some("counter") && s.value < 0.0 {
            return Err(err("negative counter".into()));
        }
        if !seen_series.insert((s.name.clone(), s.labels.clone())) {
            return Err(err("duplicate series".into()));
        }
        out.samples.push(s);
    }
    out.check_histograms()?;
    Ok(out)
}

impl Exposition {
    /// Histograms: cumulative buckets, a `+Inf` bucket equal to `_count`, a `_sum`.
    fn check_histograms(&self) -> Result<(), String> {
        for (family, t) in &self.types {
            if t != "histogram" {
                continue;
            }
            let mut groups: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
            for s in self
                .samples
                .iter()
                .filter(|s| s.name == format!("{family}_bucket"))
            {
                let mut labels = s.labels.clone();
                let le = labels.remove("le").ok_or("bucket without le")?;
                groups
                    .entry(labels)
                    .or_default()
                    .push((parse_value(&le)?, s.value));
            }
            for (labels, mut buckets) in groups {
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                    return Err(format!("{family}{labels:?}: buckets not cumulative"));
                }
                let inf = buckets
                    .last()
                    .filter(|b| b.0.is_infinite())
                    .ok_or("no +Inf bucket")?;
                let count = self
                    .get(&format!("{family}_count"), &labels)
                    .ok_or("histogram without _count")?;
                if inf.1 != count {
                    return Err(format!("{family}: +Inf bucket {} != count {count}", inf.1));
                }
                self.get(&format!("{family}_sum"), &labels)
                    .ok_or("histogram without _sum")?;
            }
        }
        Ok(())
    }

    fn get(&self, name: &str, labels: &BTreeMap<String, String>) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && &s.labels == labels)
            .map(|s| s.value)
    }

    /// The value of the series with exactly these labels (0 when absent).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.get(name, &labels).unwrap_or(0.0)
    }

    /// Series of `name` whose label `key` is `value`.
    fn series_with(&self, name: &str, key: &str, value: &str) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.labels.get(key).map(String::as_str) == Some(value))
            .collect()
    }
}

#[test]
fn parser_rejects_bad_expositions() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\\\"\"} 3\n";
    let e = parse_exposition(good).unwrap();
    assert_eq!(e.value("a_total", &[("x", "1\"")]), 3.0);
    for bad in [
        "a_total 1",                                 // no final newline
        "a_total{x=\"1\"} 1\na_total{x=\"1\"} 2\n",  // duplicate series
        "a_total{x=1} 1\n",                          // unquoted value
        "1a 1\n",                                    // bad name
        "a_total{x=\"1\",x=\"2\"} 1\n",              // duplicate label
        "a 1\nb 1\na 2\n",                           // not contiguous
        "# TYPE a counter\n# TYPE a counter\na 1\n", // two TYPEs
        "# TYPE a bogus\na 1\n",                     // unknown type
        "a one\n",                                   // bad value
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted: {bad:?}");
    }
}

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

const REQUESTS: &str = "keygate_requests_total";

async fn metrics(gw: &TestGateway) -> Exposition {
    let a = get(&gw.admin_url("/metrics"), None).await;
    assert_eq!(a.status, 200);
    assert!(
        a.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    parse_exposition(&a.text()).unwrap_or_else(|e| panic!("{e}\n{}", a.text()))
}

async fn stats(gw: &TestGateway, id: TokenId, query: &str) -> serde_json::Value {
    let a = get(
        &gw.admin_url(&format!("/v1/tokens/{id}/stats{query}")),
        Some(&gw.admin_key),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()
}

fn today_counts(v: &serde_json::Value) -> [u64; 4] {
    let last = v["days"].as_array().unwrap().last().unwrap().clone();
    ["2xx", "3xx", "4xx", "5xx"].map(|c| last[c].as_u64().unwrap())
}

fn totals(v: &serde_json::Value) -> [u64; 4] {
    ["2xx", "3xx", "4xx", "5xx"].map(|c| v["totals"][c].as_u64().unwrap())
}

async fn hit(gw: &TestGateway, path: &str, key: Option<&str>) -> u16 {
    get(&gw.url(path), key).await.status.as_u16()
}

/// A port with nothing listening (bound, then closed).
async fn dead_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// Waits until every count taken so far is in the store. `unflushed()` is 0 as soon as
/// a flush has taken the counts, before its write has landed (a test reading the store
/// then failed once in a full-suite run); one more flush waits on the flush lock for
/// the one under way, so the counts have landed when it returns.
async fn flushed(gw: &TestGateway) {
    let shared = Arc::clone(&gw.shared);
    assert!(
        eventually(Duration::from_secs(5), async || shared.stats.unflushed()
            == 0)
        .await,
        "counts were not flushed"
    );
    shared.stats.flush(&shared.store).await.expect("flush");
}

fn agreements(up: &TestUpstream, extra: &str) -> String {
    format!(
        "{extra}\n{}",
        module_toml("agreements", &["/public/v1/agreements"], &up.url(), "")
    )
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn every_class_counts_exactly_in_stats_and_metrics() {
    let up = spawn_upstream().await;
    let dead = dead_port().await;
    let toml = format!(
        "[stats]\nflush_interval = \"100ms\"\n{}{}{}{}",
        module_toml(
            "agreements",
            &["/public/v1/agreements"],
            &up.url(),
            "max_body_bytes = 10"
        ),
        module_toml("catalog", &["/public/v1/catalog"], &up.url(), ""),
        module_toml("slow", &["/slow"], &up.url(), "timeout = \"200ms\""),
        module_toml("dead", &["/dead"], &format!("http://127.0.0.1:{dead}"), ""),
    );
    let gw = spawn_gateway(&toml).await;
    let (a, key_a) = gw.token(&["agreements", "slow", "dead"]).await;
    let (b, key_b) = gw.token(&["agreements"]).await;
    let (e, key_e) = gw.token(&["agreements"]).await;
    let (c, key_c) = gw.token(&["agreements"]).await;
    let now = Timestamp::now();
    gw.tokens
        .modify(b, &gw.config, now, |t| {
            t.disabled = true;
            Ok(())
        })
        .await
        .unwrap();
    gw.tokens
        .modify(e, &gw.config, now, |t| {
            t.expires_at = Some(now - jiff::SignedDuration::from_secs(1));
            Ok(())
        })
        .await
        .unwrap();
    let ka = Some(key_a.as_str());

    // 2xx ×3, 3xx ×2 (upstream answers)
    for _ in 0..3 {
        assert_eq!(hit(&gw, "/public/v1/agreements/x", ka).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(
            hit(&gw, "/public/v1/agreements/x?status=302", ka).await,
            302
        );
    }
    // 4xx ×4: upstream 404, gateway 404 (no module), 403 (not permitted), 413
    assert_eq!(
        hit(&gw, "/public/v1/agreements/x?status=404", ka).await,
        404
    );
    assert_eq!(hit(&gw, "/nowhere", ka).await, 404);
    assert_eq!(hit(&gw, "/public/v1/catalog/x", ka).await, 403);
    let big = send(
        &client(),
        Method::POST,
        &gw.url("/public/v1/agreements/x"),
        ka,
        Bytes::from_static(b"more than ten bytes"),
    )
    .await;
    assert_eq!(big.status, 413);
    // 5xx ×3: upstream 503, 502 (connect), 504 (timeout)
    assert_eq!(
        hit(&gw, "/public/v1/agreements/x?status=503", ka).await,
        503
    );
    assert_eq!(hit(&gw, "/dead/x", ka).await, 502);
    assert_eq!(hit(&gw, "/slow/x?sleep_ms=2000", ka).await, 504);
    // Disabled and expired tokens: counted for their token as 4xx.
    for _ in 0..2 {
        assert_eq!(hit(&gw, "/public/v1/agreements/x", Some(&key_b)).await, 401);
    }
    assert_eq!(hit(&gw, "/public/v1/agreements/x", Some(&key_e)).await, 401);
    // Counted for no token: wrong secret (of a and of c), unknown id, malformed, missing.
    let wrong = |id: TokenId| format!("{id}:{}", "0".repeat(40));
    assert_eq!(
        hit(&gw, "/public/v1/agreements/x", Some(&wrong(a))).await,
        401
    );
    assert_eq!(
        hit(&gw, "/public/v1/agreements/x", Some(&wrong(c))).await,
        401
    );
    let unknown = TokenId::new(123_456_789).unwrap();
    assert_eq!(
        hit(&gw, "/public/v1/agreements/x", Some(&wrong(unknown))).await,
        401
    );
    assert_eq!(hit(&gw, "/public/v1/agreements/%2e%2e/x", ka).await, 400);
    assert_eq!(hit(&gw, "/public/v1/agreements/x", None).await, 401);
    let _ = key_c;

    // Exact at once (memory), and the same after the flush (store).
    for round in 0..2 {
        let v = stats(&gw, a, "").await;
        assert_eq!(v["token_id"], a.to_string());
        assert_eq!(v["days"].as_array().unwrap().len(), 30);
        assert_eq!(today_counts(&v), [3, 2, 4, 3], "round {round}: {v}");
        assert_eq!(totals(&v), [3, 2, 4, 3]);
        assert_eq!(today_counts(&stats(&gw, b, "").await), [0, 0, 2, 0]);
        assert_eq!(today_counts(&stats(&gw, e, "").await), [0, 0, 1, 0]);
        assert_eq!(totals(&stats(&gw, c, "").await), [0; 4]);
        flushed(&gw).await;
    }
    // The store has them, and last_used_at is set at flush time.
    let today = day_number(Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date());
    let stored = gw.shared.store.counts(a, today - 1, today).await.unwrap();
    assert_eq!(stored, vec![(today, [3, 2, 4, 3])]);
    assert!(gw.tokens.get(a).await.unwrap().last_used_at.is_some());
    assert!(gw.tokens.get(c).await.unwrap().last_used_at.is_none());

    let m = metrics(&gw).await;
    let (a_s, b_s) = (a.to_string(), b.to_string());
    let req = |token: &str, module: &str, class: &str| {
        m.value(
            REQUESTS,
            &[("token", token), ("module", module), ("class", class)],
        )
    };
    assert_eq!(req(&a_s, "agreements", "2xx"), 3.0);
    assert_eq!(req(&a_s, "agreements", "3xx"), 2.0);
    assert_eq!(req(&a_s, "agreements", "4xx"), 2.0); // upstream 404 + 413
    assert_eq!(req(&a_s, "none", "4xx"), 1.0); // no module
    assert_eq!(req(&a_s, "catalog", "4xx"), 1.0); // 403
    assert_eq!(req(&a_s, "agreements", "5xx"), 1.0);
    assert_eq!(req(&a_s, "dead", "5xx"), 1.0);
    assert_eq!(req(&a_s, "slow", "5xx"), 1.0);
    let a_total: f64 = m
        .series_with(REQUESTS, "token", &a_s)
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(a_total, 12.0);
    assert_eq!(req(&b_s, "agreements", "4xx"), 2.0);
    // Without a valid credential: token="none" (the module is labelled when the path
    // matched one, even though the answer was about the credential).
    assert_eq!(req("none", "agreements", "4xx"), 4.0);
    assert_eq!(req("none", "none", "4xx"), 1.0); // malformed
    assert!(m.series_with(REQUESTS, "token", &c.to_string()).is_empty());
    assert!(
        !m.samples
            .iter()
            .any(|s| s.labels.values().any(|v| v == &unknown.to_string()))
    );

    let auth = |reason: &str| m.value("keygate_auth_failures_total", &[("reason", reason)]);
    assert_eq!(auth("malformed"), 1.0);
    assert_eq!(auth("missing"), 1.0);
    assert_eq!(auth("invalid"), 3.0);
    assert_eq!(auth("disabled"), 2.0);
    assert_eq!(auth("expired"), 1.0);
    assert_eq!(auth("forbidden"), 1.0);
    let up_err = |module: &str, kind: &str| {
        m.value(
            "keygate_upstream_errors_total",
            &[("module", module), ("kind", kind)],
        )
    };
    assert_eq!(up_err("dead", "connect"), 1.0);
    assert_eq!(up_err("slow", "timeout"), 1.0);
    assert_eq!(up_err("agreements", "connect"), 0.0);
    let count = |module: &str| {
        m.value(
            "keygate_request_duration_seconds_count",
            &[("module", module)],
        )
    };
    // agreements: 3 + 2 + 404 + 413 + 503 + 2 disabled + 1 expired + 3 invalid + missing
    assert_eq!(count("agreements"), 15.0);
    assert_eq!(count("none"), 2.0); // no module + malformed
    assert_eq!(m.types["keygate_request_duration_seconds"], "histogram");
    assert_eq!(m.value("keygate_store_up", &[]), 1.0);
    assert!(m.value("keygate_token_cache_hits_total", &[]) >= 16.0);
    assert_eq!(m.value("keygate_stats_dropped_total", &[]), 0.0);
    assert!(m.types.contains_key("process_cpu_seconds_total"));
    for family in m.types.keys().filter(|k| k.starts_with("keygate_")) {
        assert!(m.helps.contains_key(family), "{family} has no HELP");
    }
    gw.stop().await;
}

/// An upstream, a gateway on a hand-set clock standing at `at` (statistics flushed every
/// 50 ms) and a token for agreements.
async fn gateway_at(at: &str) -> (TestUpstream, Arc<ManualClock>, TestGateway, TokenId, String) {
    let up = spawn_upstream().await;
    let clock = Arc::new(ManualClock::new(at.parse().unwrap()));
    let gw = spawn_gateway_with_clock(
        &agreements(&up, "[stats]\nflush_interval = \"50ms\""),
        tempfile::tempdir().unwrap(),
        clock.clone(),
    )
    .await;
    let (id, key) = gw.token(&["agreements"]).await;
    (up, clock, gw, id, key)
}

#[tokio::test]
async fn day_rollover_with_injected_clock() {
    let (_up, clock, gw, id, key) = gateway_at("2024-03-01T23:59:58Z").await;
    for _ in 0..2 {
        assert_eq!(hit(&gw, "/public/v1/agreements/x", Some(&key)).await, 200);
    }
    assert_eq!(
        hit(&gw, "/public/v1/agreements/x?status=500", Some(&key)).await,
        500
    );
    // Midnight passes with the counts still unflushed: they stay on their day.
    clock.set("2024-03-02T00:00:01Z".parse().unwrap());
    for _ in 0..3 {
        assert_eq!(hit(&gw, "/public/v1/agreements/x", Some(&key)).await, 200);
    }
    let v = stats(&gw, id, "?days=2").await;
    let days = v["days"].as_array().unwrap();
    assert_eq!(days.len(), 2, "{v}");
    assert_eq!(days[0]["date"], "2024-03-01");
    assert_eq!(days[1]["date"], "2024-03-02");
    assert_eq!(
        [days[0]["2xx"].as_u64(), days[0]["5xx"].as_u64()],
        [Some(2), Some(1)]
    );
    assert_eq!(days[1]["2xx"], 3);
    assert_eq!(totals(&v), [5, 0, 0, 1]);

    flushed(&gw).await;
    let d1 = day_number("2024-03-01".parse().unwrap());
    let stored = gw.shared.store.counts(id, d1 - 5, d1 + 5).await.unwrap();
    assert_eq!(stored, vec![(d1, [2, 0, 0, 1]), (d1 + 1, [3, 0, 0, 0])]);
    // last_used_at comes from the same clock, written at flush time.
    assert!(
        eventually(Duration::from_secs(5), async || {
            gw.tokens.get(id).await.unwrap().last_used_at
                == Some("2024-03-02T00:00:01Z".parse().unwrap())
        })
        .await
    );
    gw.stop().await;
}

/// A request counts on the UTC day it was authenticated on (its one clock read), even
/// when its upstream answers after midnight (docs/stats.md).
#[tokio::test]
async fn a_request_in_flight_at_midnight_counts_on_the_day_it_arrived() {
    let (up, clock, gw, id, key) = gateway_at("2024-03-01T23:59:59Z").await;
    let url = gw.url("/public/v1/agreements/x?sleep_ms=600");
    let slow = tokio::spawn(async move { get(&url, Some(&key)).await.status.as_u16() });
    // Midnight passes while the upstream holds the answer.
    assert!(eventually(Duration::from_secs(5), async || up.arrived() == 1).await);
    clock.set("2024-03-02T00:00:01Z".parse().unwrap());
    assert_eq!(slow.await.unwrap(), 200);
    let v = stats(&gw, id, "?days=2").await;
    let days = v["days"].as_array().unwrap();
    assert_eq!(days[0]["date"], "2024-03-01", "{v}");
    assert_eq!(days[0]["2xx"], 1, "{v}");
    assert_eq!(days[1]["date"], "2024-03-02", "{v}");
    assert_eq!(days[1]["2xx"], 0, "{v}");
    gw.stop().await;
}

#[tokio::test]
async fn days_older_than_retention_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new("2024-06-30T12:00:00Z".parse().unwrap()));
    let today = day_number("2024-06-30".parse().unwrap());
    let id = TokenId::new(111_222_333).unwrap();
    {
        let store = EmbeddedStore::open(&dir.path().join("keygate.redb")).unwrap();
        let rows: Vec<_> = [40, 10, 9, 0]
            .iter()
            .map(|ago| (id, today - ago, [1, 0, 0, 0]))
            .collect();
        store
            .add_counts(keygate::store::BatchId::random(), &rows)
            .unwrap();
    }
    let up = spawn_upstream().await;
    let gw = spawn_gateway_with_clock(
        &agreements(
            &up,
            "[stats]\nretention_days = 10\nflush_interval = \"50ms\"",
        ),
        dir,
        clock.clone(),
    )
    .await;
    let shared = Arc::clone(&gw.shared);
    let kept = async || shared.store.counts(id, today - 100, today).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || kept().await.len() == 2).await,
        "{:?}",
        kept().await
    );
    assert_eq!(
        kept().await,
        vec![(today - 9, [1, 0, 0, 0]), (today, [1, 0, 0, 0])]
    );
    // A day later, the oldest kept day goes too.
    clock.advance(Duration::from_secs(86_400));
    assert!(eventually(Duration::from_secs(5), async || kept().await.len() == 1).await);
    // days is bounded by the retention.
    let a = get(
        &gw.admin_url(&format!("/v1/tokens/{id}/stats?days=11")),
        Some(&gw.admin_key),
    )
    .await;
    assert_eq!((a.status.as_u16(), a.code()), (400, "VALIDATION".into()));
    gw.stop().await;
}

#[tokio::test]
async fn counts_survive_a_graceful_restart() {
    let up = spawn_upstream().await;
    // A flush interval so long that only the shutdown flush can write the counts.
    let toml = agreements(&up, "[stats]\nflush_interval = \"1h\"");
    let gw = spawn_gateway(&toml).await;
    let (id, key) = gw.token(&["agreements"]).await;
    for _ in 0..5 {
        assert_eq!(hit(&gw, "/public/v1/agreements/x", Some(&key)).await, 200);
    }
    assert_eq!(
        hit(&gw, "/public/v1/agreements/x?status=404", Some(&key)).await,
        404
    );
    // No flush tick yet (the first comes one interval after start): memory only.
    assert_eq!(gw.shared.stats.unflushed(), 6);
    let dir = gw.stop_keep_dir().await;

    let gw = spawn_gateway_in(&toml, dir).await;
    let v = stats(&gw, id, "?days=1").await;
    assert_eq!(totals(&v), [5, 0, 1, 0], "{v}");
    assert!(gw.tokens.get(id).await.unwrap().last_used_at.is_some());
    assert_eq!(hit(&gw, "/public/v1/agreements/x", Some(&key)).await, 200);
    assert_eq!(totals(&stats(&gw, id, "?days=1").await), [6, 0, 1, 0]);
    gw.stop().await;
}

#[tokio::test]
async fn tokens_over_the_series_cap_count_as_other() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&agreements(&up, "[metrics]\nmax_token_series = 2")).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (id, key) = gw.token(&["agreements"]).await;
        assert_eq!(hit(&gw, "/public/v1/agreements/x", Some(&key)).await, 200);
        assert_eq!(hit(&gw, "/public/v1/agreements/x", Some(&key)).await, 200);
        ids.push(id);
    }
    let m = metrics(&gw).await;
    let labelled = |id: &TokenId| m.series_with(REQUESTS, "token", &id.to_string()).len();
    assert_eq!(labelled(&ids[0]), 1);
    assert_eq!(labelled(&ids[1]), 1);
    assert_eq!(labelled(&ids[2]), 0);
    assert_eq!(labelled(&ids[3]), 0);
    assert_eq!(
        m.value(
            REQUESTS,
            &[
                ("token", "other"),
                ("module", "agreements"),
                ("class", "2xx")
            ]
        ),
        4.0
    );
    // The statistics are per token whatever the cap.
    for id in &ids {
        assert_eq!(totals(&stats(&gw, *id, "").await), [2, 0, 0, 0]);
    }
    gw.stop().await;
}

#[tokio::test]
async fn per_token_false_drops_the_token_label() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&agreements(&up, "[metrics]\nper_token = false")).await;
    let (id, key) = gw.token(&["agreements"]).await;
    for _ in 0..3 {
        assert_eq!(hit(&gw, "/public/v1/agreements/x", Some(&key)).await, 200);
    }
    assert_eq!(hit(&gw, "/public/v1/agreements/x", None).await, 401);
    let m = metrics(&gw).await;
    assert_eq!(
        m.value(REQUESTS, &[("module", "agreements"), ("class", "2xx")]),
        3.0
    );
    assert_eq!(
        m.value(REQUESTS, &[("module", "agreements"), ("class", "4xx")]),
        1.0
    );
    assert!(
        m.samples
            .iter()
            .filter(|s| s.name == REQUESTS)
            .all(|s| !s.labels.contains_key("token"))
    );
    assert_eq!(totals(&stats(&gw, id, "").await), [3, 0, 0, 0]);
    gw.stop().await;
}

#[tokio::test]
async fn stats_route_validates_and_authenticates() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&agreements(&up, "")).await;
    let (id, key) = gw.token(&["agreements"]).await;
    let url = |q: &str| gw.admin_url(&format!("/v1/tokens/{id}/stats{q}"));
    for q in [
        "?days=0",
        "?days=31",
        "?days=x",
        "?days=",
        "?days=-3",
        "?days=1&days=2",
    ] {
        let a = get(&url(q), Some(&gw.admin_key)).await;
        assert_eq!(a.status, 400, "{q}");
        assert_eq!(a.code(), "VALIDATION", "{q}");
        assert!(
            a.json()["errors"][0].as_str().unwrap().contains("days"),
            "{q}"
        );
    }
    let v = stats(&gw, id, "?days=7").await;
    let days = v["days"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    let dates: Vec<&str> = days.iter().map(|d| d["date"].as_str().unwrap()).collect();
    let mut sorted = dates.clone();
    sorted.sort();
    assert_eq!(dates, sorted, "oldest first");
    assert_eq!(
        dates[6],
        Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date()
            .to_string()
    );
    assert!(days.iter().all(|d| d["2xx"] == 0 && d["5xx"] == 0));

    let missing = TokenId::new(999_999_999).unwrap();
    let a = get(
        &gw.admin_url(&format!("/v1/tokens/{missing}/stats")),
        Some(&gw.admin_key),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (404, "TOKEN_NOT_FOUND".into())
    );
    // Authentication: none, and a token without the admin permission.
    let a = get(&url(""), None).await;
    assert_eq!((a.status.as_u16(), a.code()), (401, "AUTH_MISSING".into()));
    let a = get(&url(""), Some(&key)).await;
    assert_eq!((a.status.as_u16(), a.code()), (403, "PERM_DENIED".into()));
    // Admin traffic counts for no token.
    assert_eq!(totals(&stats(&gw, id, "").await), [0; 4]);
    gw.stop().await;
}

#[test]
fn shipped_dashboard_and_scrape_config_name_real_metrics() {
    use keygate::metrics::names;
    let known = [
        names::REQUESTS_TOTAL,
        names::AUTH_FAILURES_TOTAL,
        names::REQUEST_DURATION_SECONDS,
        names::UPSTREAM_ERRORS_TOTAL,
        names::TOKEN_CACHE_HITS_TOTAL,
        names::TOKEN_CACHE_MISSES_TOTAL,
        names::STORE_UP,
        names::STATS_DROPPED_TOTAL,
    ];
    let root = env!("CARGO_MANIFEST_DIR");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/config/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let scrape = std::fs::read_to_string(format!("{root}/config/prometheus.yml")).unwrap();
    assert!(scrape.contains("metrics_path: /metrics"));
    let mut exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    exprs.extend(
        scrape
            .lines()
            .filter(|l| l.contains("keygate_"))
            .map(String::from),
    );
    let mut used = 0;
    for e in &exprs {
        for (i, _) in e.match_indices("keygate_") {
            let name: String = e[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = name.strip_suffix("_bucket").unwrap_or(&name);
            assert!(known.contains(&base), "unknown metric {name} in {e}");
            used += 1;
        }
    }
    assert!(used >= 8);
    for title in ["by class", "by reason", "quantiles"] {
        assert!(
            dash["panels"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["title"].as_str().unwrap().contains(title)),
            "no panel {title}"
        );
    }
}

/// A `tracing` writer into a shared buffer, to read the log lines a test caused.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Regression (review E4): the stats route answered its errors as successes, so they
/// were logged without `error_code`, and its answers had no `Cache-Control: no-store`.
#[tokio::test]
async fn stats_errors_are_logged_with_error_code_and_answers_are_not_cached() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    // The default test runtime is single-threaded, so the gateway's tasks log here.
    let _guard = tracing::subscriber::set_default(subscriber);
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&agreements(&up, "")).await;
    let (id, _) = gw.token(&["agreements"]).await;
    let missing = TokenId::new(999_999_998).unwrap();
    // The request log line is one callsite for both listeners, so a test running in
    // parallel without a subscriber may register it first, racing `set_default` above;
    // once it is registered (this request), recompute its interest with ours in place.
    get(&gw.admin_url("/healthz"), None).await;
    tracing::callsite::rebuild_interest_cache();
    for (path, status, code) in [
        (format!("/v1/tokens/{id}/stats?days=0"), 400, "VALIDATION"),
        (
            format!("/v1/tokens/{missing}/stats"),
            404,
            "TOKEN_NOT_FOUND",
        ),
    ] {
        let a = get(&gw.admin_url(&path), Some(&gw.admin_key)).await;
        assert_eq!((a.status.as_u16(), a.code()), (status, code.into()));
        assert_eq!(a.headers["cache-control"], "no-store", "{path}");
        let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
        assert!(
            text.lines().any(|l| l.contains("admin request")
                && l.contains(&format!("status={status}"))
                && l.contains(&format!("error_code=\"{code}\""))),
            "no admin log line with error_code {code}:\n{text}"
        );
    }
    for path in [format!("/v1/tokens/{id}/stats"), "/metrics".to_string()] {
        let a = get(&gw.admin_url(&path), Some(&gw.admin_key)).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.headers["cache-control"], "no-store", "{path}");
    }
    gw.stop().await;
}
