//! `[stats]` (per-token day counters) and `[metrics]` (Prometheus).

use std::time::Duration;

use serde::Deserialize;

use super::{Check, ConfigError};

/// Days of per-token statistics kept.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
/// How often counters are flushed to the store.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Distinct token label values before the rest count as `token="other"`.
pub const DEFAULT_MAX_TOKEN_SERIES: usize = 10_000;

/// `[stats]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatsFile {
    retention_days: Option<u32>,
    flush_interval: Option<String>,
}

/// `[metrics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetricsFile {
    per_token: Option<bool>,
    max_token_series: Option<usize>,
}

/// `[stats]`.
#[derive(Debug, Clone)]
pub struct StatsConfig {
    /// Days kept.
    pub retention_days: u32,
    /// Flush period.
    pub flush_interval: Duration,
}

/// `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Whether `keygate_requests_total` has a `token` label.
    pub per_token: bool,
    /// Distinct token label values before folding into `other`.
    pub max_token_series: usize,
}

/// Converts `[stats]`.
pub(super) fn stats(s: StatsFile, c: Check) -> Result<StatsConfig, ConfigError> {
    let retention_days = s.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
    if !(1..=3650).contains(&retention_days) {
        return Err(c.err("stats.retention_days", "must be between 1 and 3650"));
    }
    Ok(StatsConfig {
        retention_days,
        flush_interval: c.positive_duration(
            "stats.flush_interval",
            s.flush_interval,
            DEFAULT_FLUSH_INTERVAL,
        )?,
    })
}

/// Converts `[metrics]` (every value is valid).
pub(super) fn metrics(m: MetricsFile) -> MetricsConfig {
    MetricsConfig {
        per_token: m.per_token.unwrap_or(true),
        max_token_series: m.max_token_series.unwrap_or(DEFAULT_MAX_TOKEN_SERIES),
    }
}
