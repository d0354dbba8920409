//! Token events (SPEC §9): what happened to a token, written to the store in the same
//! write as the change (the audit log of `GET /v1/tokens/{id}/events` is the same
//! record), and delivered to the configured webhooks by [`deliver`].
//!
//! The gateway raises three events itself: `token.expiring` and `token.expired`, found
//! by [`run_scanner`] every `[events] scan_interval` (and `token.expiring` also at the
//! create, edit or renew that sets a near expiry), and `token.quota_exceeded`
//! ([`quota_exceeded`]). Each is written at most once per token and expiry (per quota
//! period), by a marker checked and set in the same store write, so instances sharing
//! a store raise it once between them.

pub mod deliver;

pub use crate::config::events::{TYPES, glob_match};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Event, EventWrite, Once, Store, StoreResult};
use crate::token::{Token, TokenId, TokenView, rfc3339};

/// What the expiry scanner and the webhook worker use: the store, the metrics, and the
/// current configuration (read again every round, so a reload applies). They take these
/// parts rather than the gateway's shared state, which is built on top of this module.
pub struct Tasks {
    /// The token store (events and delivery state live there too).
    pub store: Store,
    /// Where delivery counts go.
    pub metrics: Arc<Metrics>,
    /// The configuration of the current generation.
    pub config: Box<dyn Fn() -> Arc<Config> + Send + Sync>,
}

/// A random event id (hex).
fn event_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Unique enough without OS randomness: time and a counter.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b[..8].copy_from_slice(&(Timestamp::now().as_nanosecond() as u64).to_le_bytes());
        b[8..].copy_from_slice(&n.to_le_bytes());
    }
    hex::encode(b)
}

/// The token as the admin API shows it at `now` (never a secret).
pub fn snapshot(token: &Token, now: Timestamp) -> Option<serde_json::Value> {
    serde_json::to_value(TokenView::new(token, now, None)).ok()
}

/// The event `action` (`created`, `disabled`, …) of `token`, by `actor`.
pub fn event(
    action: &str,
    actor: Option<TokenId>,
    fields: Vec<String>,
    token: &Token,
    now: Timestamp,
) -> EventWrite {
    EventWrite {
        event: Event {
            at: now,
            actor,
            action: action.to_string(),
            fields,
            id: event_id(),
            token: snapshot(token, now),
        },
        once: None,
    }
}

/// `token.expired` (at or after its expiry) or `token.expiring` (at most `before` left)
/// for `token` at `now`, once per expiry time; `None` for a perpetual token or one far
/// from expiry.
pub fn expiry_event(token: &Token, now: Timestamp, before: Duration) -> Option<EventWrite> {
    let at = token.expires_at?;
    let left = at.duration_since(now);
    let (action, kind) = if left <= SignedDuration::ZERO {
        ("expired", "expired")
    } else if left <= SignedDuration::try_from(before).unwrap_or(SignedDuration::MAX) {
        ("expiring", "expiring")
    } else {
        return None;
    };
    let mut e = event(action, None, vec!["expires_at".into()], token, now);
    e.once = Some(Once {
        kind,
        value: at.as_second().to_string(),
    });
    Some(e)
}

/// Raises `token.quota_exceeded` for `id` once per quota period (the period is named by
/// its start). Returns whether this call wrote it (`false`: raised before, by this or
/// another instance, or the token is gone).
pub async fn quota_exceeded(
    store: &Store,
    id: TokenId,
    period_start: Timestamp,
    now: Timestamp,
) -> StoreResult<bool> {
    let Some(token) = store.get(id).await? else {
        return Ok(false);
    };
    let mut e = event("quota_exceeded", None, vec!["quota".into()], &token, now);
    e.once = Some(Once {
        kind: "quota",
        value: period_start.as_second().to_string(),
    });
    Ok(store.raise(id, None, &[e]).await? > 0)
}

/// Expiry events this process has seen raised (token, marker, expiry): the scan does not
/// ask the store again for them.
pub type Raised = std::collections::HashSet<(TokenId, &'static str, String)>;

/// Looks once for tokens that are expiring or expired and raises their events; returns
/// how many were written. A token changed meanwhile is left to the next scan. `raised`
/// remembers what is done (an expired token stays due forever).
pub async fn scan(
    store: &Store,
    before: Duration,
    now: Timestamp,
    raised: &mut Raised,
) -> StoreResult<usize> {
    let tokens = store.list().await?;
    let live: std::collections::HashSet<TokenId> = tokens.iter().map(|t| t.id).collect();
    raised.retain(|(id, _, _)| live.contains(id));
    let mut written = 0;
    for t in tokens {
        let Some(e) = expiry_event(&t, now, before) else {
            continue;
        };
        let Some(once) = e.once.clone() else {
            continue;
        };
        let key = (t.id, once.kind, once.value);
        if raised.contains(&key) {
            continue;
        }
        let n = store.raise(t.id, Some(t.version), &[e]).await?;
        written += n;
        // Written now, or found already written (by another instance, or before a
        // restart); a version change leaves it for the next scan.
        if n > 0
            || store
                .get(t.id)
                .await?
                .is_some_and(|c| c.version == t.version)
        {
            raised.insert(key);
        }
    }
    Ok(written)
}

/// Scans every `[events] scan_interval` (read again after a reload) until `stop`.
pub async fn run_scanner(tasks: Arc<Tasks>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut raised = Raised::new();
    loop {
        let events = (tasks.config)().events.clone();
        let now = Timestamp::now();
        match scan(&tasks.store, events.expiring_before, now, &mut raised).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(events = n, "raised expiry events"),
            Err(e) => tracing::warn!(error = %e, "expiry scan failed; trying again next interval"),
        }
        tokio::select! {
            _ = tokio::time::sleep(events.scan_interval) => {}
            _ = &mut stop => return,
        }
    }
}

/// The JSON body of a delivery (SPEC §9).
#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    ty: String,
    timestamp: String,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    token: &'a serde_json::Value,
    actor: Option<TokenId>,
}

/// The type of `e` (`token.disabled`).
pub fn type_of(e: &Event) -> String {
    format!("token.{}", e.action)
}

/// The delivered body of `e`; `None` for an event recorded before webhooks existed.
pub fn payload(e: &Event) -> Option<Vec<u8>> {
    let token = e.token.as_ref()?;
    serde_json::to_vec(&Payload {
        ty: type_of(e),
        timestamp: rfc3339(e.at),
        data: Data {
            token,
            actor: e.actor,
        },
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "token.created"));
        assert!(glob_match("token.*", "token.created"));
        assert!(glob_match("token.created", "token.created"));
        assert!(glob_match("*expir*", "token.expiring"));
        assert!(glob_match("token.*d", "token.expired"));
        assert!(!glob_match("token.*d", "token.expiring"));
        assert!(!glob_match("token.create", "token.created"));
        assert!(!glob_match("user.*", "token.created"));
        assert!(glob_match("t*.*a*", "token.quota_exceeded"));
    }
}
