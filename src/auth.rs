//! The `Authorization` header → a presented credential → a verified token. Bounded,
//! never panics. Shared by the proxy and the admin listener so both answer alike.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use jiff::Timestamp;

use crate::config::Config;
use crate::error::ApiError;
use crate::store::{AuthEntry, Lookup, Store, TokenCache};
use crate::token::Credential;

/// Longest `Authorization` value we look at; anything longer cannot be a credential.
const MAX_AUTHORIZATION_LEN: usize = 256;

/// What the client presented.
#[derive(Debug)]
pub enum Presented<'a> {
    /// No `Authorization` header, or another scheme (answers `AUTH_MISSING`).
    Missing,
    /// The `ApiKey` scheme with something that is not `<id>:<secret>` (`AUTH_INVALID`).
    Unparsable,
    /// A well-formed credential, still to be verified.
    Credential(Credential<'a>),
}

/// More than one `Authorization` header (answers `REQ_MALFORMED`).
#[derive(Debug, PartialEq, Eq)]
pub struct MultipleAuthorization;

/// Reads the `Authorization` header(s).
pub fn presented(headers: &HeaderMap) -> Result<Presented<'_>, MultipleAuthorization> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(Presented::Missing);
    };
    if values.next().is_some() {
        return Err(MultipleAuthorization);
    }
    Ok(parse(value.as_bytes()))
}

/// [`presented`] from what a [`Scan`](crate::headers::Scan) of the headers found: the
/// number of `Authorization` lines and the first one's value (no lookup).
pub fn presented_in(
    lines: u8,
    first: Option<&HeaderValue>,
) -> Result<Presented<'_>, MultipleAuthorization> {
    match (lines, first) {
        (0, _) | (_, None) => Ok(Presented::Missing),
        (1, Some(value)) => Ok(parse(value.as_bytes())),
        _ => Err(MultipleAuthorization),
    }
}

/// Parses one header value: scheme `ApiKey` (any case), one or more spaces, `<id>:<secret>`.
///
/// `ApiKey` followed by nothing or only spaces is the scheme with an empty credential
/// (`Unparsable`, so `AUTH_INVALID`): HTTP/1 trims trailing spaces from header values
/// and HTTP/2 does not, and both must answer alike. Anything that does not start with
/// `apikey` plus a space (or is exactly `apikey`) is another scheme (`Missing`).
pub fn parse(value: &[u8]) -> Presented<'_> {
    const SCHEME: &[u8] = b"apikey";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return Presented::Missing;
    }
    let rest = &value[SCHEME.len()..];
    let credential = match rest.iter().position(|&b| b != b' ') {
        // "ApiKeyX…" is another scheme.
        Some(0) => return Presented::Missing,
        Some(n) => &rest[n..],
        // "ApiKey" alone or followed by spaces: the scheme with no credential.
        None => return Presented::Unparsable,
    };
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Presented::Unparsable;
    }
    // Trailing whitespace is trimmed by the HTTP layer; anything else must parse exactly.
    match Credential::parse(credential) {
        Some(c) => Presented::Credential(c),
        None => Presented::Unparsable,
    }
}

/// Checks the credential: the header, the token, the secret (SPEC §2 checks 1-4).
/// Returns the token's entry; whether it may be used is [`check_usable`]'s answer.
pub async fn authenticate(
    headers: &HeaderMap,
    cache: &TokenCache,
    store: &Store,
    config: &Config,
) -> Result<Arc<AuthEntry>, ApiError> {
    let now = Timestamp::now().as_second();
    authenticate_presented(presented(headers), cache, store, config, now).await
}

/// [`authenticate`] with the credential already read ([`presented`], [`presented_in`])
/// and the clock already read (`now_unix`, also what [`check_usable`] is given).
pub async fn authenticate_presented(
    presented: Result<Presented<'_>, MultipleAuthorization>,
    cache: &TokenCache,
    store: &Store,
    config: &Config,
    now_unix: i64,
) -> Result<Arc<AuthEntry>, ApiError> {
    let (id, hash) = match presented {
        Err(MultipleAuthorization) => {
            return Err(ApiError::Malformed(
                "more than one Authorization header".into(),
            ));
        }
        Ok(Presented::Missing) => return Err(ApiError::AuthMissing),
        Ok(Presented::Unparsable) => return Err(ApiError::AuthInvalid),
        Ok(Presented::Credential(c)) => (c.id, c.secret_hash()),
    };
    let entry = match cache.lookup(id, store, config).await {
        Lookup::Found(e) => e,
        Lookup::Unknown => return Err(ApiError::AuthInvalid),
        Lookup::Unavailable => return Err(ApiError::StoreUnavailable),
    };
    if !entry.verify(&hash, now_unix) {
        return Err(ApiError::AuthInvalid);
    }
    Ok(entry)
}

/// Checks that an authenticated token may be used at `now_unix` (SPEC §2 checks 5-6).
pub fn check_usable(entry: &AuthEntry, now_unix: i64) -> Result<(), ApiError> {
    if entry.disabled {
        return Err(ApiError::AuthDisabled);
    }
    if entry.expired(now_unix) {
        return Err(ApiError::AuthExpired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "SU-160-984-311:f45bee7e79b10ff6eff67902ccb4f3d46724ceb8";

    fn kind(v: &str) -> &'static str {
        match parse(v.as_bytes()) {
            Presented::Missing => "missing",
            Presented::Unparsable => "unparsable",
            Presented::Credential(_) => "credential",
        }
    }

    #[test]
    fn schemes_and_spacing() {
        let cases = [
            (format!("ApiKey {GOOD}"), "credential"),
            (format!("apikey {GOOD}"), "credential"),
            (format!("APIKEY {GOOD}"), "credential"),
            (format!("ApiKey    {GOOD}"), "credential"),
            (format!("ApiKey{GOOD}"), "missing"),
            (format!("ApiKey\t{GOOD}"), "missing"),
            (format!("Bearer {GOOD}"), "missing"),
            (format!("Basic {GOOD}"), "missing"),
            ("ApiKey".to_string(), "unparsable"),
            ("apikey".to_string(), "unparsable"),
            ("ApiKey ".to_string(), "unparsable"),
            ("ApiKey    ".to_string(), "unparsable"),
            ("ApiKe".to_string(), "missing"),
            ("".to_string(), "missing"),
            ("ApiKey SU-160-984-311".to_string(), "unparsable"),
            ("ApiKey SU-160-984-311:".to_string(), "unparsable"),
            (format!("ApiKey {GOOD} extra"), "unparsable"),
            (format!("ApiKey {GOOD}{}", "0".repeat(300)), "unparsable"),
            (format!("ApiKey {}", GOOD.replace(':', "")), "unparsable"),
            (format!("ApiKey  {}", GOOD.to_uppercase()), "unparsable"),
        ];
        for (v, want) in cases {
            assert_eq!(kind(&v), want, "{v:?}");
        }
    }

    /// Regression (review #7): HTTP/1 trims `ApiKey ` to `ApiKey` and answered
    /// AUTH_MISSING while HTTP/2 kept the space and answered AUTH_INVALID.
    #[test]
    fn empty_apikey_credential_is_invalid_on_h1_and_h2_alike() {
        for v in ["ApiKey", "ApiKey ", "APIKEY  ", "apikey"] {
            assert_eq!(kind(v), "unparsable", "{v:?}");
        }
    }

    #[test]
    fn multiple_headers_are_malformed() {
        let mut h = HeaderMap::new();
        assert!(matches!(presented(&h), Ok(Presented::Missing)));
        h.append(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("ApiKey {GOOD}")).unwrap(),
        );
        assert!(matches!(presented(&h), Ok(Presented::Credential(_))));
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(presented(&h).err(), Some(MultipleAuthorization));
    }

    #[test]
    fn presented_in_a_scan_reads_as_presented() {
        let mut h = HeaderMap::new();
        let same = |h: &HeaderMap| {
            let a = presented(h).map(|p| format!("{p:?}"));
            let scan = crate::headers::scan(h);
            let b = presented_in(scan.authorizations, scan.authorization.as_ref())
                .map(|p| format!("{p:?}"));
            assert_eq!(a, b);
        };
        same(&h);
        h.append(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("ApiKey {GOOD}")).unwrap(),
        );
        same(&h);
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        same(&h);
        let mut other = HeaderMap::new();
        other.append(AUTHORIZATION, HeaderValue::from_static("ApiKey x"));
        same(&other);
    }

    proptest::proptest! {
        /// Any header value, bytes as they come: parsing never panics, and only a value
        /// starting with the scheme and a space can be a credential.
        #[test]
        fn arbitrary_bytes_never_panic(v in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let parsed = parse(&v);
            if matches!(parsed, Presented::Credential(_)) {
                proptest::prop_assert!(v.len() <= MAX_AUTHORIZATION_LEN);
                proptest::prop_assert!(v[..7].eq_ignore_ascii_case(b"apikey "));
            }
        }

        /// The scheme followed by arbitrary bytes: never panics, never a credential
        /// over the length bound.
        #[test]
        fn arbitrary_credentials_never_panic(
            scheme in "(?i)apikey",
            spaces in " {0,3}",
            rest in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let mut v = format!("{scheme}{spaces}").into_bytes();
            v.extend_from_slice(&rest);
            if let Presented::Credential(_) = parse(&v) {
                proptest::prop_assert!(v.len() <= MAX_AUTHORIZATION_LEN);
            }
        }
    }
}
