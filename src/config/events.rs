//! `[events]` and `[[webhooks]]` (SPEC §9): the file structs and their conversion into
//! the runtime settings, and the event types a webhook's globs may name.

use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use super::{Check, ConfigError, valid_name};

/// Remaining validity below which `token.expiring` is raised.
pub const DEFAULT_EXPIRING_BEFORE: Duration = Duration::from_secs(7 * 86_400);
/// How often tokens are scanned for `token.expiring` / `token.expired`.
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(30);
/// The first retry of a failed delivery waits about this long; each further one twice
/// as long, up to [`MAX_RETRY_INTERVAL`].
pub const DEFAULT_FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(3600);
/// Time a receiver has to answer one delivery.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `timeout`.
pub const MAX_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an event is retried before it is dropped.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(86_400);
/// Shortest `scan_interval`.
pub const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(10);
/// Decoded secret length, in bytes (Standard Webhooks: 24–64).
pub const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
/// Webhooks a configuration may hold.
pub const MAX_WEBHOOKS: usize = 64;

/// Every event type.
pub const TYPES: [&str; 10] = [
    "token.created",
    "token.updated",
    "token.disabled",
    "token.enabled",
    "token.rotated",
    "token.renewed",
    "token.deleted",
    "token.expiring",
    "token.expired",
    "token.quota_exceeded",
];

/// Matches `s` against a glob where `*` stands for any run of characters (`token.*`,
/// `*expir*`); everything else is literal.
pub fn glob_match(glob: &str, s: &str) -> bool {
    let (g, s) = (glob.as_bytes(), s.as_bytes());
    let (mut gi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if gi < g.len() && g[gi] == b'*' {
            star = Some((gi, si));
            gi += 1;
        } else if gi < g.len() && g[gi] == s[si] {
            gi += 1;
            si += 1;
        } else if let Some((sg, ss)) = star {
            gi = sg + 1;
            si = ss + 1;
            star = Some((sg, ss + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == b'*')
}

/// `[events]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsFile {
    expiring_before: Option<String>,
    scan_interval: Option<String>,
    /// Not in SPEC: the first back-off interval (tests set it short).
    first_retry: Option<String>,
}

/// One `[[webhooks]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WebhookFile {
    name: String,
    url: String,
    secret: String,
    events: Option<Vec<String>>,
    timeout: Option<String>,
    retry_for: Option<String>,
}

/// `[events]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// `token.expiring` when the remaining validity is at most this.
    pub expiring_before: Duration,
    /// Period of the expiry scan.
    pub scan_interval: Duration,
    /// First back-off interval of a failed delivery.
    pub first_retry: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            expiring_before: DEFAULT_EXPIRING_BEFORE,
            scan_interval: DEFAULT_SCAN_INTERVAL,
            first_retry: DEFAULT_FIRST_RETRY,
        }
    }
}

/// A webhook signing secret (decoded bytes). Its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// The key bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// One `[[webhooks]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Unique name; the metric label.
    pub name: String,
    /// Where events are POSTed.
    pub url: http::Uri,
    /// HMAC key.
    pub secret: WebhookSecret,
    /// Globs on the event type.
    pub events: Vec<String>,
    /// Time the receiver has to answer.
    pub timeout: Duration,
    /// An event not delivered this long after it happened is dropped.
    pub retry_for: Duration,
}

impl Webhook {
    /// Whether this webhook wants events of type `ty` (`token.created`).
    pub fn wants(&self, ty: &str) -> bool {
        self.events.iter().any(|g| glob_match(g, ty))
    }
}

/// Converts `[events]`.
pub(super) fn events(f: EventsFile, c: Check) -> Result<EventsConfig, ConfigError> {
    let scan_interval = c.positive_duration(
        "events.scan_interval",
        f.scan_interval,
        DEFAULT_SCAN_INTERVAL,
    )?;
    if scan_interval < MIN_SCAN_INTERVAL {
        return Err(c.err("events.scan_interval", "must be at least 10ms"));
    }
    Ok(EventsConfig {
        expiring_before: c.positive_duration(
            "events.expiring_before",
            f.expiring_before,
            DEFAULT_EXPIRING_BEFORE,
        )?,
        scan_interval,
        first_retry: c
            .positive_duration("events.first_retry", f.first_retry, DEFAULT_FIRST_RETRY)?
            .min(MAX_RETRY_INTERVAL),
    })
}

/// Converts the `[[webhooks]]` list.
pub(super) fn webhooks(list: Vec<WebhookFile>, c: Check) -> Result<Vec<Webhook>, ConfigError> {
    if list.len() > MAX_WEBHOOKS {
        return Err(c.err(
            "webhooks",
            format!("at most {MAX_WEBHOOKS} webhooks are supported"),
        ));
    }
    let mut out: Vec<Webhook> = Vec::with_capacity(list.len());
    for (i, w) in list.into_iter().enumerate() {
        let hook = webhook(i, w, &out, c)?;
        out.push(hook);
    }
    Ok(out)
}

/// Converts `webhooks[i]`; `before` holds the entries before it.
fn webhook(i: usize, w: WebhookFile, before: &[Webhook], c: Check) -> Result<Webhook, ConfigError> {
    let key = |k: &str| format!("webhooks[{i}].{k}");
    if !valid_name(&w.name) {
        return Err(c.err(
            &key("name"),
            format!("{:?} must be 1-64 of a-z, 0-9, '_' and '-'", w.name),
        ));
    }
    if before.iter().any(|o| o.name == w.name) {
        return Err(c.err(&key("name"), format!("{:?} is listed twice", w.name)));
    }
    let url = parse_url(&w.url).map_err(|e| c.err(&key("url"), e))?;
    let secret = parse_secret(&w.secret).map_err(|e| c.err(&key("secret"), e))?;
    let events = w.events.unwrap_or_else(|| vec!["*".into()]);
    if events.is_empty() {
        return Err(c.err(&key("events"), "must list at least one glob"));
    }
    for (j, g) in events.iter().enumerate() {
        if !TYPES.iter().any(|t| glob_match(g, t)) {
            return Err(c.err(
                &key(&format!("events[{j}]")),
                format!("{g:?} matches no event type (known: {})", TYPES.join(", ")),
            ));
        }
    }
    let timeout = c.positive_duration(&key("timeout"), w.timeout, DEFAULT_WEBHOOK_TIMEOUT)?;
    if timeout > MAX_WEBHOOK_TIMEOUT {
        return Err(c.err(&key("timeout"), "must be at most 5m"));
    }
    Ok(Webhook {
        name: w.name,
        url,
        secret,
        events,
        timeout,
        retry_for: c.positive_duration(&key("retry_for"), w.retry_for, DEFAULT_RETRY_FOR)?,
    })
}

/// An `http(s)://` URL; plain `http://` only to a loopback host (the body is signed,
/// not encrypted).
fn parse_url(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|_| format!("{s:?} is not a URL like https://hooks.example.com/keygate"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{s:?} must start with https:// or http://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{s:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{s:?} must not carry credentials"));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    if !https && !is_loopback(host) {
        return Err(format!(
            "{s:?}: http:// only to 127.0.0.0/8, [::1] or localhost; use https://"
        ));
    }
    Ok(uri)
}

fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(std::net::IpAddr::V6(v6)) => v6.is_loopback(),
        Err(_) => false,
    }
}

/// `whsec_` and the base64 of 24–64 bytes. Errors never repeat the secret.
fn parse_secret(s: &str) -> Result<WebhookSecret, String> {
    let b64 = s
        .strip_prefix("whsec_")
        .ok_or("must start with \"whsec_\" (Standard Webhooks secret format)")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "the part after \"whsec_\" is not valid base64".to_string())?;
    if !SECRET_BYTES.contains(&bytes.len()) {
        return Err(format!(
            "must encode 24 to 64 bytes (it encodes {})",
            bytes.len()
        ));
    }
    Ok(WebhookSecret(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for ok in [
            "https://hooks.example.com/keygate",
            "http://127.0.0.1:9000/h",
            "http://127.8.9.10/",
            "http://[::1]:8/x?y=1",
            "http://localhost:1",
            "http://LOCALHOST",
        ] {
            assert!(parse_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://example.com/x",
            "http://10.0.0.1/x",
            "http://128.0.0.1/",
            "http://localhost.evil.com/",
            "ftp://127.0.0.1/",
            "https://u:p@h/",
            "/relative",
            "nope",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets() {
        assert_eq!(
            parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap()
                .bytes()
                .len(),
            24
        );
        let long = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
        assert!(parse_secret(&format!("whsec_{long}")).is_ok());
        let too_long = base64::engine::general_purpose::STANDARD.encode([7u8; 65]);
        assert!(parse_secret(&format!("whsec_{too_long}")).is_err());
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 23]);
        let e = parse_secret(&format!("whsec_{short}")).unwrap_err();
        assert!(e.contains("24 to 64"), "{e}");
        assert!(parse_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        let e = parse_secret("whsec_not*base64!").unwrap_err();
        assert!(!e.contains("not*base64"), "error repeats the secret: {e}");
        assert_eq!(
            format!(
                "{:?}",
                parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
            ),
            "WebhookSecret(<redacted>)"
        );
    }
}
