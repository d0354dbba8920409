//! Prometheus metrics: one custom registry (not the process-global one), every name
//! in [`names`], labelled children resolved once and cached so the request path does
//! no label formatting.
//!
//! Per-module children live in a [`ModuleMetrics`] built once per configuration
//! generation (module indices change on reload); per-token children are cached in the
//! token's statistics entry (`stats.rs`).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::config::{Config, MetricsConfig};
use crate::error::{ApiError, UpstreamFailure};
use crate::store::TokenCache;

/// Every metric and label name, in one place.
pub mod names {
    /// Counter: proxy requests by token, module and status class.
    pub const REQUESTS_TOTAL: &str = "keygate_requests_total";
    /// Counter: failed authentications and authorizations by reason.
    pub const AUTH_FAILURES_TOTAL: &str = "keygate_auth_failures_total";
    /// Histogram: whole-request latency by module.
    pub const REQUEST_DURATION_SECONDS: &str = "keygate_request_duration_seconds";
    /// Counter: upstream failures by module and kind.
    pub const UPSTREAM_ERRORS_TOTAL: &str = "keygate_upstream_errors_total";
    /// Counter: token cache hits.
    pub const TOKEN_CACHE_HITS_TOTAL: &str = "keygate_token_cache_hits_total";
    /// Counter: token cache misses.
    pub const TOKEN_CACHE_MISSES_TOTAL: &str = "keygate_token_cache_misses_total";
    /// Gauge: 1 when the store answered the last check.
    pub const STORE_UP: &str = "keygate_store_up";
    /// Counter: request counts the statistics could not keep (memory bound hit).
    pub const STATS_DROPPED_TOTAL: &str = "keygate_stats_dropped_total";
    /// Counter: failed statistics flushes to the store.
    pub const STATS_FLUSH_ERRORS_TOTAL: &str = "keygate_stats_flush_errors_total";
    /// Counter `{webhook, result}`: delivery attempts by outcome (`ok`, `retry`, `dropped`).
    pub const WEBHOOK_DELIVERIES_TOTAL: &str = "keygate_webhook_deliveries_total";
    /// Gauge `{webhook}`: events waiting for delivery to a webhook.
    pub const WEBHOOK_PENDING: &str = "keygate_webhook_pending";
    /// Label: webhook name (from the configuration).
    pub const WEBHOOK: &str = "webhook";
    /// Label: delivery outcome.
    pub const RESULT: &str = "result";

    /// Label: token id, `other` (over the series cap) or `none` (no valid credential).
    pub const TOKEN: &str = "token";
    /// Label: module name or `none`.
    pub const MODULE: &str = "module";
    /// Label: `2xx`, `3xx`, `4xx`, `5xx`.
    pub const CLASS: &str = "class";
    /// Label: auth failure reason.
    pub const REASON: &str = "reason";
    /// Label: upstream failure kind.
    pub const KIND: &str = "kind";

    /// `module` value when no module matched.
    pub const NO_MODULE: &str = "none";
    /// `token` value when the request presented no valid credential.
    pub const NO_TOKEN: &str = "none";
    /// `token` value for tokens beyond `metrics.max_token_series`.
    pub const OTHER_TOKEN: &str = "other";
}

/// Latency buckets (seconds): a gateway answers its own errors in microseconds and
/// proxies upstreams that may take up to their timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Status class of a response sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx (and the impossible final 1xx).
    Success = 0,
    /// 3xx.
    Redirect = 1,
    /// 4xx.
    ClientError = 2,
    /// 5xx (and non-standard 6xx–9xx from an upstream).
    ServerError = 3,
}

impl Class {
    /// Every class, in storage order (`[2xx, 3xx, 4xx, 5xx]`).
    pub const ALL: [Class; 4] = [
        Class::Success,
        Class::Redirect,
        Class::ClientError,
        Class::ServerError,
    ];

    /// The class of `status`.
    pub fn of(status: u16) -> Class {
        match status {
            0..=299 => Class::Success,
            300..=399 => Class::Redirect,
            400..=499 => Class::ClientError,
            _ => Class::ServerError,
        }
    }

    /// The label value and JSON key.
    pub fn label(self) -> &'static str {
        ["2xx", "3xx", "4xx", "5xx"][self as usize]
    }
}

/// Why a request failed authentication or authorization (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// 400 `REQ_MALFORMED`.
    Malformed = 0,
    /// 401 `AUTH_MISSING`.
    Missing = 1,
    /// 401 `AUTH_INVALID`.
    Invalid = 2,
    /// 401 `AUTH_DISABLED`.
    Disabled = 3,
    /// 401 `AUTH_EXPIRED`.
    Expired = 4,
    /// 403 `PERM_DENIED`.
    Forbidden = 5,
    /// 403 `IP_NOT_ALLOWED`.
    Ip = 6,
    /// 429 `RATE_LIMITED`.
    RateLimited = 7,
    /// 429 `QUOTA_EXCEEDED`.
    QuotaExceeded = 8,
}

impl AuthFailure {
    const ALL: [AuthFailure; 9] = [
        AuthFailure::Malformed,
        AuthFailure::Missing,
        AuthFailure::Invalid,
        AuthFailure::Disabled,
        AuthFailure::Expired,
        AuthFailure::Forbidden,
        AuthFailure::Ip,
        AuthFailure::RateLimited,
        AuthFailure::QuotaExceeded,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        [
            "malformed",
            "missing",
            "invalid",
            "disabled",
            "expired",
            "forbidden",
            "ip",
            "rate_limited",
            "quota_exceeded",
        ][self as usize]
    }
}

/// The counter an error answer on the proxy listener increments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorMetric {
    /// `keygate_auth_failures_total{reason}`.
    Auth(AuthFailure),
    /// `keygate_upstream_errors_total{module, kind}`.
    Upstream(UpstreamFailure),
    /// Neither (counted only in `keygate_requests_total`).
    None,
}

impl ErrorMetric {
    /// The one mapping from an error to its metric label.
    pub fn of(error: &ApiError) -> ErrorMetric {
        use ErrorMetric::{Auth, Upstream};
        match error {
            ApiError::Malformed(_) => Auth(AuthFailure::Malformed),
            ApiError::AuthMissing => Auth(AuthFailure::Missing),
            ApiError::AuthInvalid => Auth(AuthFailure::Invalid),
            ApiError::AuthDisabled => Auth(AuthFailure::Disabled),
            ApiError::AuthExpired => Auth(AuthFailure::Expired),
            ApiError::PermDenied => Auth(AuthFailure::Forbidden),
            ApiError::IpNotAllowed => Auth(AuthFailure::Ip),
            ApiError::RateLimited(_) => Auth(AuthFailure::RateLimited),
            ApiError::QuotaExceeded(_) => Auth(AuthFailure::QuotaExceeded),
            ApiError::Upstream(kind) => Upstream(*kind),
            _ => ErrorMetric::None,
        }
    }
}

const UPSTREAM_KINDS: [UpstreamFailure; 3] = [
    UpstreamFailure::Connect,
    UpstreamFailure::Timeout,
    UpstreamFailure::Protocol,
];

/// The registry and the process-wide metric families.
pub struct Metrics {
    registry: Registry,
    per_token: bool,
    requests: IntCounterVec,
    auth_failures: [IntCounter; 9],
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    store_up: IntGauge,
    /// Request counts dropped by the statistics (see `stats.rs`).
    pub stats_dropped: IntCounter,
    /// Failed statistics flushes.
    pub flush_errors: IntCounter,
    /// Webhook deliveries by webhook and result.
    pub webhook_deliveries: IntCounterVec,
    /// Events waiting per webhook.
    pub webhook_pending: prometheus::IntGaugeVec,
}

impl Metrics {
    /// Builds the registry. `cache` is read at scrape time for the hit/miss counters.
    pub fn new(config: &MetricsConfig, cache: Arc<TokenCache>) -> prometheus::Result<Metrics> {
        use names::*;
        let registry = Registry::new();
        let request_labels: &[&str] = if config.per_token {
            &[TOKEN, MODULE, CLASS]
        } else {
            &[MODULE, CLASS]
        };
        let requests = IntCounterVec::new(
            Opts::new(
                REQUESTS_TOTAL,
                "Requests on the proxy listener by token, module and status class of the response sent.",
            ),
            request_labels,
        )?;
        let auth_vec = IntCounterVec::new(
            Opts::new(
                AUTH_FAILURES_TOTAL,
                "Requests refused before reaching an upstream, by reason.",
            ),
            &[REASON],
        )?;
        let auth_failures = AuthFailure::ALL.map(|r| auth_vec.with_label_values(&[r.label()]));
        let duration = HistogramVec::new(
            HistogramOpts::new(
                REQUEST_DURATION_SECONDS,
                "Time from receiving a request to sending the response head, by module.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &[MODULE],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                UPSTREAM_ERRORS_TOTAL,
                "Upstream requests that failed without an answer, by module and kind.",
            ),
            &[MODULE, KIND],
        )?;
        let store_up = IntGauge::new(
            STORE_UP,
            "Whether the token store answered the last check (1) or not (0).",
        )?;
        let stats_dropped = IntCounter::new(
            STATS_DROPPED_TOTAL,
            "Request counts dropped because the unflushed statistics reached their memory bound.",
        )?;
        let flush_errors = IntCounter::new(
            STATS_FLUSH_ERRORS_TOTAL,
            "Statistics flushes to the store that failed (the counts are kept and retried).",
        )?;
        let webhook_deliveries = IntCounterVec::new(
            Opts::new(
                WEBHOOK_DELIVERIES_TOTAL,
                "Webhook delivery outcomes: ok (2xx in time), retry (failed, retried later), dropped (given up after retry_for).",
            ),
            &[WEBHOOK, RESULT],
        )?;
        let webhook_pending = prometheus::IntGaugeVec::new(
            Opts::new(
                WEBHOOK_PENDING,
                "Events not yet delivered to a webhook (as this instance last looked).",
            ),
            &[WEBHOOK],
        )?;
        registry.register(Box::new(webhook_deliveries.clone()))?;
        registry.register(Box::new(webhook_pending.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(auth_vec))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(store_up.clone()))?;
        registry.register(Box::new(stats_dropped.clone()))?;
        registry.register(Box::new(flush_errors.clone()))?;
        registry.register(Box::new(CacheCollector::new(cache)?))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        store_up.set(1);
        Ok(Metrics {
            registry,
            per_token: config.per_token,
            requests,
            auth_failures,
            duration,
            upstream_errors,
            store_up,
            stats_dropped,
            flush_errors,
            webhook_deliveries,
            webhook_pending,
        })
    }

    /// Whether `keygate_requests_total` has the `token` label.
    pub fn per_token(&self) -> bool {
        self.per_token
    }

    /// Per-module handles for one configuration generation.
    pub fn modules(&self, config: &Config) -> ModuleMetrics {
        let mut names: Vec<Box<str>> = config
            .modules
            .iter()
            .map(|m| Box::from(m.name.as_str()))
            .collect();
        names.push(Box::from(names::NO_MODULE));
        let duration = names
            .iter()
            .map(|n| self.duration.with_label_values(&[n.as_ref()]))
            .collect();
        let upstream = config
            .modules
            .iter()
            .map(|m| {
                UPSTREAM_KINDS.map(|k| {
                    self.upstream_errors
                        .with_label_values(&[m.name.as_str(), k.as_str()])
                })
            })
            .collect();
        let lazy = || names.iter().map(|_| ClassChildren::default()).collect();
        ModuleMetrics {
            other: lazy(),
            anonymous: lazy(),
            names,
            duration,
            upstream,
        }
    }

    /// Counts an error answer: auth failure reason and/or upstream failure kind.
    pub fn count_error(&self, modules: &ModuleMetrics, slot: usize, error: &ApiError) {
        match ErrorMetric::of(error) {
            ErrorMetric::Auth(reason) => self.auth_failures[reason as usize].inc(),
            ErrorMetric::Upstream(kind) => {
                if let Some(children) = modules.upstream.get(slot) {
                    children[kind as usize].inc();
                }
            }
            ErrorMetric::None => {}
        }
    }

    /// The `keygate_requests_total` child for `token` (a label value) or, without the
    /// token label, for module and class only.
    pub(crate) fn request_child(
        &self,
        token: &str,
        module: &str,
        class: Class,
    ) -> Option<IntCounter> {
        // Only a label-count bug could fail; such a child then counts nowhere.
        let found = if self.per_token {
            self.requests
                .get_metric_with_label_values(&[token, module, class.label()])
        } else {
            self.requests
                .get_metric_with_label_values(&[module, class.label()])
        };
        found.ok()
    }

    /// Records the store's reachability.
    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> (Vec<u8>, &'static str) {
        let encoder = TextEncoder::new();
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec fails only on malformed families, which we never build.
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        (out, prometheus::TEXT_FORMAT)
    }
}

/// `keygate_requests_total` children for the four classes, made on first use.
#[derive(Default)]
pub(crate) struct ClassChildren([OnceLock<Option<IntCounter>>; 4]);

impl ClassChildren {
    /// Increments the child of `class`, resolving it with `make` the first time.
    pub(crate) fn inc(&self, class: Class, make: impl FnOnce() -> Option<IntCounter>) {
        if let Some(c) = self.0[class as usize].get_or_init(make) {
            c.inc();
        }
    }
}

/// Per-module metric handles of one configuration generation. Index `i` is module `i`
/// of that configuration; index `modules.len()` is `module="none"`.
pub struct ModuleMetrics {
    names: Vec<Box<str>>,
    duration: Vec<Histogram>,
    upstream: Vec<[IntCounter; 3]>,
    /// `token="other"` (or no token label when `per_token = false`).
    other: Vec<ClassChildren>,
    /// `token="none"`: requests without a valid credential.
    anonymous: Vec<ClassChildren>,
}

impl ModuleMetrics {
    /// The slot of a matched module index, or the `none` slot.
    pub fn slot(&self, module: Option<usize>) -> usize {
        let none = self.names.len() - 1;
        module.filter(|&i| i < none).unwrap_or(none)
    }

    /// Number of slots (modules + `none`).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false: there is at least the `none` slot.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The `module` label of `slot`.
    pub fn name(&self, slot: usize) -> &str {
        self.names
            .get(slot)
            .map_or(names::NO_MODULE, |n| n.as_ref())
    }

    /// Observes a request's latency.
    pub fn observe_duration(&self, slot: usize, elapsed: Duration) {
        if let Some(h) = self.duration.get(slot) {
            h.observe(elapsed.as_secs_f64());
        }
    }

    /// Counts a request that has no token series of its own: `token` is `none` for
    /// requests without a valid credential, `other` for tokens over the cap.
    pub(crate) fn inc_shared(&self, metrics: &Metrics, anonymous: bool, slot: usize, class: Class) {
        let (set, token) = if anonymous && metrics.per_token {
            (&self.anonymous, names::NO_TOKEN)
        } else {
            (&self.other, names::OTHER_TOKEN)
        };
        if let Some(children) = set.get(slot) {
            children.inc(class, || {
                metrics.request_child(token, self.name(slot), class)
            });
        }
    }
}

/// Reads the token cache's hit/miss totals at scrape time.
struct CacheCollector {
    cache: Arc<TokenCache>,
    hits: IntCounter,
    misses: IntCounter,
    /// Serialises scrapes so two concurrent ones cannot both add the same delta.
    sync: Mutex<()>,
}

impl CacheCollector {
    fn new(cache: Arc<TokenCache>) -> prometheus::Result<CacheCollector> {
        Ok(CacheCollector {
            cache,
            hits: IntCounter::new(
                names::TOKEN_CACHE_HITS_TOTAL,
                "Token lookups answered from the in-process cache.",
            )?,
            misses: IntCounter::new(
                names::TOKEN_CACHE_MISSES_TOTAL,
                "Token lookups the in-process cache could not answer.",
            )?,
            sync: Mutex::new(()),
        })
    }
}

impl Collector for CacheCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.hits.desc();
        d.extend(self.misses.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _sync = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        let (hits, misses) = self.cache.hit_miss();
        self.hits.inc_by(hits.saturating_sub(self.hits.get()));
        self.misses.inc_by(misses.saturating_sub(self.misses.get()));
        let mut out = self.hits.collect();
        out.extend(self.misses.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(Class::of(200), Class::Success);
        assert_eq!(Class::of(204), Class::Success);
        assert_eq!(Class::of(301), Class::Redirect);
        assert_eq!(Class::of(404), Class::ClientError);
        assert_eq!(Class::of(502), Class::ServerError);
        assert_eq!(Class::of(799), Class::ServerError);
        assert_eq!(Class::ClientError.label(), "4xx");
    }

    #[test]
    fn error_metric_labels() {
        assert_eq!(
            ErrorMetric::of(&ApiError::Malformed("x".into())),
            ErrorMetric::Auth(AuthFailure::Malformed)
        );
        assert_eq!(AuthFailure::Forbidden.label(), "forbidden");
        assert_eq!(
            ErrorMetric::of(&ApiError::PermDenied),
            ErrorMetric::Auth(AuthFailure::Forbidden)
        );
        assert_eq!(ErrorMetric::of(&ApiError::RouteNotFound), ErrorMetric::None);
        let timeout = ApiError::Upstream(UpstreamFailure::Timeout);
        assert_eq!(
            ErrorMetric::of(&timeout),
            ErrorMetric::Upstream(UpstreamFailure::Timeout)
        );
        assert_eq!(UpstreamFailure::Timeout.as_str(), "timeout");
        assert_eq!(timeout.code(), "UPSTREAM_TIMEOUT");
    }
}
