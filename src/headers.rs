//! Header hygiene: hop-by-hop removal (RFC 9110 §7.6.1), `x-keygate-*` stripping,
//! the `X-Request-Id` rule, and the size of a request head.

use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, HeaderName, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Request, Version};

/// Hop-by-hop headers always removed (RFC 9110 §7.6.1 plus the legacy ones). As
/// `HeaderName`s: comparing a standard name is comparing an enum, not bytes.
const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHORIZATION,
    PROXY_AUTHENTICATE,
];

/// Longest `X-Request-Id` kept from a client.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The `x-request-id` header name.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Token id injected upstream.
pub const X_KEYGATE_TOKEN_ID: HeaderName = HeaderName::from_static("x-keygate-token-id");
/// Extension name injected upstream.
pub const X_KEYGATE_EXTENSION: HeaderName = HeaderName::from_static("x-keygate-extension");
/// Module name injected upstream.
pub const X_KEYGATE_MODULE: HeaderName = HeaderName::from_static("x-keygate-module");
/// External id injected upstream when the token has one.
pub const X_KEYGATE_EXTERNAL_ID: HeaderName = HeaderName::from_static("x-keygate-external-id");
/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The size of a request head as `proxy.max_header_bytes` counts it. HTTP/1: the bytes
/// of the request line and the header lines (RFC 9112 §2.1: CRLF endings, `name: value`).
/// HTTP/2: the header list size of RFC 9113 §6.5.2 (name + value + 32 octets per field,
/// the four pseudo-headers included), which `SETTINGS_MAX_HEADER_LIST_SIZE` bounds.
pub fn head_size<B>(req: &Request<B>) -> usize {
    let method = req.method().as_str().len();
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let fields = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len());
    if req.version() >= Version::HTTP_2 {
        let scheme = req.uri().scheme_str().map_or(0, str::len);
        let authority = req.uri().authority().map_or(0, |a| a.as_str().len());
        let pseudo = ":method".len() + method + ":path".len() + target;
        let pseudo = pseudo + ":scheme".len() + scheme + ":authority".len() + authority + 4 * 32;
        fields.map(|n| n + 32).fold(pseudo, usize::saturating_add)
    } else {
        // "GET /x HTTP/1.1\r\n", each "name: value\r\n", the empty line.
        let line = method + 1 + target + " HTTP/1.1\r\n".len() + 2;
        fields.map(|n| n + 4).fold(line, usize::saturating_add)
    }
}

/// What one pass over a request's header lines found: the counts and presence bits
/// the later phases need (SPEC §2's Host, Authorization and `X-Request-Id` rules, the
/// 413 check, the header policy). Each would otherwise be a hashed lookup of its own:
/// the request path looked names up ~10 times, ~100–160 instructions each (issue 13).
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// `Host` lines.
    pub hosts: u8,
    /// `Authorization` lines.
    pub authorizations: u8,
    /// The first `Authorization` value (a reference-counted clone: the scan outlives
    /// the borrow of the request, which moves on into the phases).
    pub authorization: Option<HeaderValue>,
    /// `X-Request-Id` lines.
    pub request_ids: u8,
    /// A `Content-Length` line.
    pub content_length: bool,
    /// A hop-by-hop header of the fixed list, or `TE`: [`strip_hop_by_hop`] has work.
    pub hop_by_hop: bool,
    /// An `x-keygate-*` header: [`strip_keygate`] has work.
    pub keygate: bool,
    /// An `X-Forwarded-For` line (keygate appends to it).
    pub forwarded_for: bool,
    /// An `X-Forwarded-Host` line (keygate replaces or removes it).
    pub forwarded_host: bool,
}

/// One pass over `headers` (names compare as enums for standard headers, by length
/// first for the others): see [`Scan`].
pub fn scan(headers: &HeaderMap) -> Scan {
    let mut s = Scan::default();
    for (name, value) in headers {
        if *name == HOST {
            s.hosts = s.hosts.saturating_add(1);
        } else if *name == AUTHORIZATION {
            s.authorizations = s.authorizations.saturating_add(1);
            if s.authorization.is_none() {
                s.authorization = Some(value.clone());
            }
        } else if *name == CONTENT_LENGTH {
            s.content_length = true;
        } else if *name == TE || HOP_BY_HOP.contains(name) {
            s.hop_by_hop = true;
        } else if *name == X_REQUEST_ID {
            s.request_ids = s.request_ids.saturating_add(1);
        } else if *name == X_FORWARDED_FOR {
            s.forwarded_for = true;
        } else if *name == X_FORWARDED_HOST {
            s.forwarded_host = true;
        } else if name.as_str().starts_with("x-keygate-") {
            s.keygate = true;
        }
    }
    s
}

/// Removes hop-by-hop headers: the fixed list, every header named in any `Connection`
/// line, and `TE` unless it is exactly `trailers` (the one value a proxy may pass on).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names says which of the fixed list are present (most messages
    // carry one, `Connection`, or none): looking every listed name up by hashing it
    // cost ~1,200 instructions per message (issue 13).
    let mut present = 0u32;
    let mut te = false;
    // Whether every `Connection` line says only `keep-alive` or `close`.
    let mut connection_plain = true;
    for (k, v) in headers.iter() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
            if i == 0 {
                let v = v.as_bytes();
                connection_plain &=
                    v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close");
            }
        } else if k == TE {
            te = true;
        }
    }
    if present == 0 && !te {
        return;
    }
    // Names listed in Connection (all lines, all comma-separated tokens; §7.6.1).
    // Tokens that name a header of the fixed list (or `close`, `te`) need no lookup;
    // the common `Connection: keep-alive` / `close` (what upstreams send) is told
    // apart in the pass above, without a lookup or splitting (~450 instructions,
    // issue 13).
    if present & 1 != 0 && !connection_plain {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| {
                !n.is_empty()
                    && !n.eq_ignore_ascii_case("close")
                    && !n.eq_ignore_ascii_case("te")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|h| n.eq_ignore_ascii_case(h.as_str()))
            })
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for name in named {
            remove_all(headers, &name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            remove_all(headers, name);
        }
    }
    if !te {
        return;
    }
    let te_ok = {
        let mut values = headers.get_all(TE).iter();
        match (values.next(), values.next()) {
            (None, _) => true,
            (Some(v), None) => v.as_bytes().eq_ignore_ascii_case(b"trailers"),
            _ => false,
        }
    };
    if !te_ok {
        remove_all(headers, TE);
    }
}

/// Removes every header whose name starts with `x-keygate-`.
pub fn strip_keygate(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| k.as_str().starts_with("x-keygate-")) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-keygate-"))
        .cloned()
        .collect();
    for name in names {
        remove_all(headers, &name);
    }
}

/// `HeaderMap::remove` drops every value of the name, but keep the intent explicit:
/// a header repeated on several lines must disappear entirely.
fn remove_all<K: http::header::AsHeaderName>(headers: &mut HeaderMap, name: K) {
    let _ = headers.remove(name);
}

/// The client's `X-Request-Id` if there is exactly one and it is sane
/// (1–128 visible ASCII characters).
pub fn client_request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(X_REQUEST_ID).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let b = v.as_bytes();
    (!b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| (0x21..=0x7e).contains(c)))
        .then(|| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn hop_by_hop_table() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (&[("connection", "close"), ("accept", "*/*")], &["accept"]),
            (&[("keep-alive", "timeout=5"), ("x-a", "1")], &["x-a"]),
            (&[("proxy-connection", "keep-alive")], &[]),
            (
                &[
                    ("proxy-authorization", "Basic x"),
                    ("authorization", "ApiKey y"),
                ],
                &["authorization"],
            ),
            (
                &[("upgrade", "websocket"), ("transfer-encoding", "chunked")],
                &[],
            ),
            // Every name in every Connection line goes.
            (
                &[
                    ("connection", "x-a, X-B"),
                    ("connection", "x-c"),
                    ("x-a", "1"),
                    ("x-b", "2"),
                    ("x-c", "3"),
                    ("x-d", "4"),
                ],
                &["x-d"],
            ),
            // TE: trailers is the one value that stays, even when Connection names it.
            (&[("te", "trailers"), ("connection", "te")], &["te"]),
            (&[("te", "gzip")], &[]),
            (&[("te", "trailers"), ("te", "gzip")], &[]),
            // `keep-alive` / `close` in any case name nothing else; a second line that
            // names a header still counts.
            (
                &[
                    ("connection", "Keep-Alive"),
                    ("keep-alive", "5"),
                    ("x-a", "1"),
                ],
                &["x-a"],
            ),
            (
                &[("connection", "close"), ("connection", "x-a"), ("x-a", "1")],
                &[],
            ),
            (
                &[
                    ("connection", "keep-alive, x-a"),
                    ("x-a", "1"),
                    ("x-b", "2"),
                ],
                &["x-b"],
            ),
            // Junk in Connection is ignored, not a panic.
            (
                &[("connection", ",,, ,bad header name,"), ("x-a", "1")],
                &["x-a"],
            ),
        ];
        for (input, want) in cases {
            let mut h = map(input);
            strip_hop_by_hop(&mut h);
            assert_eq!(names(&h), *want, "{input:?}");
        }
    }

    #[test]
    fn scan_counts_and_flags() {
        let h = map(&[
            ("host", "a"),
            ("Host", "b"),
            ("authorization", "ApiKey 1"),
            ("authorization", "ApiKey 2"),
            ("x-request-id", "r"),
            ("content-length", "3"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "h"),
            ("x-keygate-module", "m"),
        ]);
        let s = scan(&h);
        assert_eq!((s.hosts, s.authorizations, s.request_ids), (2, 2, 1));
        assert_eq!(
            s.authorization.as_ref().map(HeaderValue::as_bytes),
            Some(&b"ApiKey 1"[..])
        );
        assert!(s.content_length && s.forwarded_for && s.forwarded_host && s.keygate);
        assert!(!s.hop_by_hop);
        for hop in [
            "te",
            "connection",
            "keep-alive",
            "proxy-connection",
            "upgrade",
        ] {
            assert!(scan(&map(&[(hop, "x")])).hop_by_hop, "{hop}");
        }
        let plain = map(&[("accept", "*/*"), ("x-keygatex", "1")]);
        let none = scan(&plain);
        assert!(!(none.hop_by_hop || none.keygate || none.forwarded_for || none.content_length));
        assert_eq!(
            (none.hosts, none.authorizations, none.request_ids),
            (0, 0, 0)
        );
        assert!(none.authorization.is_none());
    }

    #[test]
    fn keygate_headers_are_stripped() {
        let mut h = map(&[
            ("x-keygate-token-id", "SU-000-000-001"),
            ("X-Keygate-Module", "x"),
            ("x-keygate-anything", "1"),
            ("x-keygate-token-id", "again"),
            ("x-keygatex", "kept"),
            ("accept", "*/*"),
        ]);
        strip_keygate(&mut h);
        assert_eq!(names(&h), ["accept", "x-keygatex"]);
    }

    #[test]
    fn request_id_sanity() {
        assert!(client_request_id(&map(&[("x-request-id", "abc-123")])).is_some());
        assert!(client_request_id(&map(&[("x-request-id", &"a".repeat(128))])).is_some());
        assert!(client_request_id(&map(&[("x-request-id", &"a".repeat(129))])).is_none());
        assert!(client_request_id(&map(&[("x-request-id", "has space")])).is_none());
        assert!(client_request_id(&map(&[("x-request-id", "")])).is_none());
        assert!(client_request_id(&map(&[("x-request-id", "a"), ("x-request-id", "b")])).is_none());
        assert!(client_request_id(&map(&[])).is_none());
    }
}
