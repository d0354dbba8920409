//! `GET /v1/tokens/{id}/stats` and `GET /metrics`.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::query::Query;
use crate::error::{ApiError, json_response, own_response};
use crate::metrics::Class;
use crate::state::{Runtime, Shared};
use crate::store::day_from_number;
use crate::token::TokenId;

/// Days shown when the query has no `days`.
pub const DEFAULT_DAYS: u32 = 30;

/// `GET /v1/tokens/{id}/stats?days=N`: one entry per UTC day, oldest first, zeros
/// included, then the totals — the store's counts plus those not yet flushed.
/// Errors are returned, not answered, so the admin handler logs them with their
/// `error_code` like every other admin error.
pub async fn token_stats(
    shared: &Shared,
    rt: &Runtime,
    id: TokenId,
    query: Option<&str>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let retention = rt.config.stats.retention_days;
    let days = parse_days(query, retention)?;
    match shared.store.get(id).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(ApiError::TokenNotFound(id.to_string())),
        Err(e) => {
            tracing::error!(token = %id, error = %e, "cannot read the token for its stats");
            return Err(ApiError::StoreUnavailable);
        }
    }
    let today = shared.stats.today();
    // `days` ≤ retention ≤ 3650, so this cannot overflow.
    let from = today - i32::try_from(days).unwrap_or(1) + 1;
    let counts = match shared
        .stats
        .day_counts(&shared.store, id, from, today)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(token = %id, error = %e, "cannot read the token's day counts");
            return Err(ApiError::StoreUnavailable);
        }
    };
    let mut totals = [0u64; 4];
    let days: Vec<serde_json::Value> = (from..=today)
        .zip(&counts)
        .map(|(day, c)| {
            for (t, n) in totals.iter_mut().zip(c) {
                *t += n;
            }
            let mut o = classes(c);
            o.insert(
                "date".into(),
                serde_json::Value::String(day_from_number(day).to_string()),
            );
            serde_json::Value::Object(o)
        })
        .collect();
    let body = serde_json::json!({
        "token_id": id.to_string(),
        "days": days,
        "totals": classes(&totals),
    });
    Ok(json_response(StatusCode::OK, Bytes::from(body.to_string())))
}

fn classes(c: &[u64; 4]) -> serde_json::Map<String, serde_json::Value> {
    Class::ALL
        .iter()
        .zip(c)
        .map(|(class, n)| (class.label().to_string(), (*n).into()))
        .collect()
}

/// `days`: an integer in `1..=retention`; absent = min(30, retention). Other query
/// parameters are ignored; a repeated `days` is refused.
fn parse_days(query: Option<&str>, retention: u32) -> Result<u32, ApiError> {
    let reason = format!("must be an integer from 1 to {retention}");
    let days = Query::parse(query)?.integer("days", 1, u64::from(retention), &reason)?;
    Ok(days.map_or(DEFAULT_DAYS.min(retention), |d| {
        u32::try_from(d).unwrap_or(retention)
    }))
}

/// `GET /metrics`: Prometheus text format. Checks the store first so
/// `keygate_store_up` is current (at once while it is known to be down).
pub async fn metrics(shared: &Shared) -> Response<Full<Bytes>> {
    let up = shared.store.check().await.is_ok();
    shared.metrics.set_store_up(up);
    let (body, content_type) = shared.metrics.render();
    own_response(StatusCode::OK, content_type, Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_parameter() {
        assert_eq!(parse_days(None, 30), Ok(30));
        assert_eq!(parse_days(Some(""), 30), Ok(30));
        assert_eq!(parse_days(Some("days=7"), 30), Ok(7));
        assert_eq!(parse_days(Some("x=1&days=30"), 30), Ok(30));
        assert_eq!(parse_days(None, 10), Ok(10));
        // Form-decoded like every admin query (issue #10).
        assert_eq!(parse_days(Some("days=%33"), 30), Ok(3));
        for bad in [
            "days=0",
            "days=31",
            "days=",
            "days",
            "days=-1",
            "days=+3",
            "days=1.5",
            "days=abc",
            "days=%2B3",
            "days=99999999999",
            "days=1&days=2",
        ] {
            let e = parse_days(Some(bad), 30).unwrap_err();
            assert_eq!(e.code(), "VALIDATION", "{bad}");
            assert!(e.to_string().starts_with("days"), "{bad}: {e}");
        }
    }
}
