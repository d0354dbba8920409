//! `[events]` and `[[webhooks]]` (SPEC §9): the file structs and their conversion into
//! the runtime settings, one function per section like the rest of `config`.

use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use super::{TYPES, glob_match};
use crate::config::{ConfigError, parse_duration, valid_name};

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

/// `[events]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsFile {
    expiring_before: Option<String>,
    scan_interval: Option<String>,
    /// Not in SPEC: the first back-off interval (tests set it short).
    first_retry: Option<String>,
}

/// One `[[webhooks]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
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

fn dur(
    file: &str,
    key: &str,
    v: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let err = |reason: String| ConfigError {
        file: file.to_string(),
        key: key.to_string(),
        reason,
    };
    let d = match v {
        None => default,
        Some(v) => parse_duration(&v).map_err(err)?,
    };
    if d.is_zero() {
        return Err(err("must be greater than zero".into()));
    }
    Ok(d)
}

/// Converts `[events]`.
pub fn events(f: EventsFile, file: &str) -> Result<EventsConfig, ConfigError> {
    let scan_interval = dur(
        file,
        "events.scan_interval",
        f.scan_interval,
        DEFAULT_SCAN_INTERVAL,
    )?;
    if scan_interval < MIN_SCAN_INTERVAL {
        return Err(ConfigError {
            file: file.to_string(),
            key: "events.scan_interval".into(),
            reason: "must be at least 10ms".into(),
        });
    }
    Ok(EventsConfig {
        expiring_before: dur(
            file,
            "events.expiring_before",
            f.expiring_before,
            DEFAULT_EXPIRING_BEFORE,
        )?,
        scan_interval,
        first_retry: dur(
            file,
            "events.first_retry",
            f.first_retry,
            DEFAULT_FIRST_RETRY,
        )?
        .min(MAX_RETRY_INTERVAL),
    })
}

/// Converts the `[[webhooks]]` list.
pub fn webhooks(list: Vec<WebhookFile>, file: &str) -> Result<Vec<Webhook>, ConfigError> {
    if list.len() > MAX_WEBHOOKS {
        return Err(ConfigError {
            file: file.to_string(),
            key: "webhooks".into(),
            reason: format!("at most {MAX_WEBHOOKS} webhooks are supported"),
        });
    }
    let mut out: Vec<Webhook> = Vec::with_capacity(list.len());
    for (i, w) in list.into_iter().enumerate() {
        let key = |k: &str| format!("webhooks[{i}].{k}");
        let err = |k: &str, reason: String| ConfigError {
            file: file.to_string(),
            key: key(k),
            reason,
        };
        if !valid_name(&w.name) {
            return Err(err(
                "name",
                format!("{:?} must be 1-64 of a-z, 0-9, '_' and '-'", w.name),
            ));
        }
        if out.iter().any(|o| o.name == w.name) {
            return Err(err("name", format!("{:?} is listed twice", w.name)));
        }
        let url = parse_url(&w.url).map_err(|e| err("url", e))?;
        let secret = parse_secret(&w.secret).map_err(|e| err("secret", e))?;
        let events = w.events.unwrap_or_else(|| vec!["*".into()]);
        if events.is_empty() {
            return Err(err("events", "must list at least one glob".into()));
        }
        for (j, g) in events.iter().enumerate() {
            if !TYPES.iter().any(|t| glob_match(g, t)) {
                return Err(err(
                    &format!("events[{j}]"),
                    format!("{g:?} matches no event type (known: {})", TYPES.join(", ")),
                ));
            }
        }
        let timeout = dur(file, &key("timeout"), w.timeout, DEFAULT_WEBHOOK_TIMEOUT)?;
        if timeout > MAX_WEBHOOK_TIMEOUT {
            return Err(err("timeout", "must be at most 5m".into()));
        }
        let retry_for = dur(file, &key("retry_for"), w.retry_for, DEFAULT_RETRY_FOR)?;
        out.push(Webhook {
            name: w.name,
            url,
            secret,
            events,
            timeout,
            retry_for,
        });
    }
    Ok(out)
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
