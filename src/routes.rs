//! Request-path normalisation and segment-aware prefix routing.
//!
//! Every request path goes through [`normalize_path`] before it is matched
//! against the module table and before it is forwarded upstream, so the proxy
//! and the upstream always agree on which resource is being asked for. Inputs
//! that different parsers are known to read differently (encoded slashes,
//! encoded dots, `..;`, backslashes, overlong UTF-8, ...) are refused outright
//! instead of being "fixed", because any fix is a guess about what the
//! upstream would do.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use http::Uri;
use http::uri::PathAndQuery;

use crate::error::shown;

/// Why a request target was refused.
///
/// Each variant's [`Display`](fmt::Display) is a short human sentence that is
/// safe to show to the client (it never echoes the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Empty, or not starting with `/` (e.g. `*` or an absolute URI).
    NotOriginForm,
    /// A raw `\`, which some servers treat as a path separator.
    Backslash,
    /// A raw control character (bytes `0x00`-`0x1F` or `0x7F`).
    ControlChar,
    /// A raw `#`: fragments are never sent to a server (RFC 3986 §3.5).
    Fragment,
    /// A raw byte `>= 0x80`; RFC 3986 §2.1 requires it to be percent-encoded.
    NonAscii,
    /// A `%` not followed by two hex digits (RFC 3986 §2.1).
    BadPercentEncoding,
    /// `%2F`: an encoded `/` hides a segment boundary from the router.
    EncodedSlash,
    /// `%5C`: an encoded `\` may become a separator after decoding upstream.
    EncodedBackslash,
    /// `%2E`: an encoded `.` may form a dot segment after decoding upstream.
    EncodedDot,
    /// An encoded control character (`%00`-`%1F`, `%7F`).
    EncodedControlChar,
    /// A segment's percent-encoded bytes do not decode to valid UTF-8
    /// (overlong forms, lone continuation bytes, truncated sequences,
    /// surrogates, code points above U+10FFFF).
    InvalidUtf8,
    /// A `.` or `..` segment followed by `;` (e.g. `..;`), which servlet
    /// containers treat as a dot segment with a path parameter.
    DotSemicolon,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = match self {
            PathError::NotOriginForm => "the request target is not a path starting with '/'",
            PathError::Backslash => "the path contains a backslash",
            PathError::ControlChar => "the path contains a control character",
            PathError::Fragment => "the path contains a fragment delimiter ('#')",
            PathError::NonAscii => {
                "the path contains a non-ASCII character that is not percent-encoded"
            }
            PathError::BadPercentEncoding => {
                "the path contains a '%' not followed by two hex digits"
            }
            PathError::EncodedSlash => "the path contains an encoded slash (%2F)",
            PathError::EncodedBackslash => "the path contains an encoded backslash (%5C)",
            PathError::EncodedDot => "the path contains an encoded dot (%2E)",
            PathError::EncodedControlChar => "the path contains an encoded control character",
            PathError::InvalidUtf8 => {
                "the path contains percent-encoded bytes that are not valid UTF-8"
            }
            PathError::DotSemicolon => "the path contains a dot segment followed by ';'",
        };
        f.write_str(msg)
    }
}

impl std::error::Error for PathError {}

/// Bytes that may appear unencoded in an already-canonical path: visible
/// ASCII and space, minus the ones that need a closer look (`%`) or are
/// always refused (`\`, `#`). Control characters and non-ASCII are excluded.
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x20;
    while b < 0x7F {
        table[b] = !matches!(b as u8, b'%' | b'\\' | b'#');
        b += 1;
    }
    table
};

/// A normalised request path: the request target's own when it already was in
/// normal form (the common case: a reference-counted clone of what hyper parsed, no
/// copy), else the normalised copy.
#[derive(Debug, Clone)]
pub enum NormalPath {
    /// The target's path was its own normal form.
    AsSent(PathAndQuery),
    /// The normalised path differs from the target's.
    Normalised(String),
}

impl NormalPath {
    /// The path.
    pub fn as_str(&self) -> &str {
        match self {
            NormalPath::AsSent(pq) => pq.path(),
            NormalPath::Normalised(s) => s,
        }
    }
}

/// [`normalize_path`] of a request target's path, without copying it when it is
/// already in normal form (a `String` per request was ~150 instructions, issue 13).
///
/// # Errors
///
/// As [`normalize_path`].
pub fn normalize_target(uri: &Uri) -> Result<NormalPath, PathError> {
    if let Some(pq) = uri.path_and_query() {
        let raw = pq.path();
        if raw.starts_with('/') && is_canonical_fast(raw.as_bytes()) {
            return Ok(NormalPath::AsSent(pq.clone()));
        }
    }
    normalize_path(uri.path()).map(NormalPath::Normalised)
}

/// Normalises the path part of an origin-form request target (no query; the
/// caller splits it off).
///
/// Returns the canonical path that is both matched against modules and
/// forwarded upstream: unreserved characters decoded and other
/// percent-encodings uppercased (RFC 3986 §6.2.2.1-2), repeated slashes
/// collapsed, and dot segments resolved (RFC 3986 §5.2.4). The result always
/// starts with `/`, never contains `//` or a `.`/`..` segment, keeps a
/// trailing slash, and is a fixed point of this function.
///
/// # Errors
///
/// Returns a [`PathError`] naming the first problem found when the input is
/// ambiguous or malformed; see the variants for the rules.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if is_canonical_fast(raw.as_bytes()) {
        return Ok(raw.to_owned());
    }
    normalize_slow(raw)
}

/// True when `raw` (which starts with '/') has nothing to decode, validate or
/// resolve: only [`PLAIN`] bytes, no `//`, and no segment starting with `.`
/// (which covers `.`, `..` and `..;`). Such a path is its own normal form.
fn is_canonical_fast(raw: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in raw {
        if !PLAIN[usize::from(b)] || (prev == b'/' && (b == b'/' || b == b'.')) {
            return false;
        }
        prev = b;
    }
    true
}

/// The full single-pass normaliser: validates and canonicalises each segment
/// straight into the output buffer.
fn normalize_slow(raw: &str) -> Result<String, PathError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError::NotOriginForm);
    };
    // The output is never longer than the input: decoding shrinks, dot and
    // empty segments vanish, and each kept segment reuses its leading '/'.
    let mut out = String::with_capacity(raw.len());
    // `out` holds the path without a trailing slash ("" is the root), so
    // popping a segment for ".." is a truncate at the last '/'.
    let mut last_was_plain = false;
    for seg in rest.split('/') {
        last_was_plain = false;
        match seg {
            // RFC 3986 §5.2.4 steps 2B/2C, and empty segments from "//"
            // collapse.
            "" | "." => {}
            ".." => {
                // ".." above the root is dropped (§5.2.4 step 2C on "/").
                if let Some(i) = out.rfind('/') {
                    out.truncate(i);
                }
            }
            _ => {
                check_dot_semicolon(seg)?;
                out.push('/');
                push_segment(&mut out, seg)?;
                last_was_plain = true;
            }
        }
    }
    // A trailing "/", "." or ".." leaves a trailing slash (§5.2.4: "/a/b/.."
    // is "/a/"), and the root is "/".
    if !last_was_plain || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Refuses `.;`, `..;`, `.%3B` and `..%3B` at the start of a segment:
/// Tomcat-style containers strip the path parameter and then treat the rest
/// as a dot segment, which the router would not.
fn check_dot_semicolon(seg: &str) -> Result<(), PathError> {
    let after = seg.strip_prefix("..").or_else(|| seg.strip_prefix('.'));
    if let Some(after) = after {
        let after = after.as_bytes();
        if after.first() == Some(&b';')
            || after
                .get(..3)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"%3b"))
        {
            return Err(PathError::DotSemicolon);
        }
    }
    Ok(())
}

/// Validates one non-empty, non-dot segment and appends its canonical form
/// to `out`. Runs of plain bytes are copied as slices.
fn push_segment(out: &mut String, seg: &str) -> Result<(), PathError> {
    let bytes = seg.as_bytes();
    let mut utf8 = Utf8Check::default();
    let mut run_start = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            match b {
                b'\\' => return Err(PathError::Backslash),
                b'#' => return Err(PathError::Fragment),
                0x00..=0x1F | 0x7F => return Err(PathError::ControlChar),
                0x80..=0xFF => return Err(PathError::NonAscii),
                _ => utf8.ascii()?,
            }
            i += 1;
            continue;
        }
        // RFC 3986 §2.1: pct-encoded = "%" HEXDIG HEXDIG.
        let hi = bytes.get(i + 1).copied().and_then(hex_val);
        let lo = bytes.get(i + 2).copied().and_then(hex_val);
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(PathError::BadPercentEncoding);
        };
        let v = (hi << 4) | lo;
        match v {
            b'/' => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::EncodedBackslash),
            b'.' => return Err(PathError::EncodedDot),
            0x00..=0x1F | 0x7F => return Err(PathError::EncodedControlChar),
            _ => utf8.byte(v)?,
        }
        // Everything before `i` in this run is ASCII, so the slice is on char
        // boundaries; fail closed rather than drop bytes if it ever is not.
        out.push_str(seg.get(run_start..i).ok_or(PathError::InvalidUtf8)?);
        if is_unreserved(v) {
            // RFC 3986 §6.2.2.2: encoded unreserved characters are decoded.
            out.push(char::from(v));
        } else {
            // RFC 3986 §6.2.2.1: hex digits in percent-encodings are uppercase.
            out.push('%');
            out.push(hex_upper(v >> 4));
            out.push(hex_upper(v & 0x0F));
        }
        i += 3;
        run_start = i;
    }
    out.push_str(seg.get(run_start..).ok_or(PathError::InvalidUtf8)?);
    utf8.finish()
}

/// RFC 3986 §2.3 unreserved characters (an encoded '.' never gets here: it
/// is refused first, so decoding can never create a dot segment).
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~' | b'.')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Uppercase hex digit for a nibble (`n` is masked, so this cannot overflow).
fn hex_upper(n: u8) -> char {
    let n = n & 0x0F;
    char::from(if n < 10 { b'0' + n } else { b'A' + n - 10 })
}

/// Incremental UTF-8 validator over a segment's decoded bytes, with the same
/// acceptance as [`std::str::from_utf8`] (RFC 3629 §4: no overlong forms, no
/// surrogates, nothing above U+10FFFF), so no per-segment buffer is needed.
#[derive(Default)]
struct Utf8Check {
    /// Continuation bytes still expected.
    need: u8,
    /// Allowed range for the next continuation byte (narrowed after E0, ED,
    /// F0 and F4 leads; 80..=BF otherwise).
    lo: u8,
    hi: u8,
}

impl Utf8Check {
    /// A raw ASCII byte is valid only between characters.
    fn ascii(&self) -> Result<(), PathError> {
        self.finish()
    }

    /// Feeds one decoded byte.
    fn byte(&mut self, b: u8) -> Result<(), PathError> {
        if self.need > 0 {
            if b < self.lo || b > self.hi {
                return Err(PathError::InvalidUtf8);
            }
            self.need -= 1;
            self.lo = 0x80;
            self.hi = 0xBF;
            return Ok(());
        }
        let (need, lo, hi) = match b {
            0x00..=0x7F => return Ok(()),
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            // Lone continuation bytes, overlong leads C0/C1, and F5..FF.
            _ => return Err(PathError::InvalidUtf8),
        };
        self.need = need;
        self.lo = lo;
        self.hi = hi;
        Ok(())
    }

    /// A sequence may not be cut off by the end of the segment.
    fn finish(&self) -> Result<(), PathError> {
        if self.need == 0 {
            Ok(())
        } else {
            Err(PathError::InvalidUtf8)
        }
    }
}

/// Segment-aware longest-prefix table, built once from `(prefix,
/// module_index)` pairs and read on every request.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Every prefix except "/", which is kept apart as the catch-all.
    prefixes: HashMap<Box<str>, usize, BuildHasherDefault<WordHasher>>,
    /// The module for prefix "/", if configured.
    root: Option<usize>,
}

impl RouteTable {
    /// Builds the table.
    ///
    /// # Errors
    ///
    /// Returns a message naming the prefix and the reason when a prefix is
    /// not canonical (it must start with '/', contain no '%', and equal its
    /// own [`normalize_path`] form without a trailing '/', except "/"
    /// itself), or when the same prefix is given twice.
    pub fn new(prefixes: impl IntoIterator<Item = (String, usize)>) -> Result<RouteTable, String> {
        let mut table = RouteTable::default();
        for (prefix, module) in prefixes {
            check_prefix(&prefix)?;
            if prefix == "/" {
                if table.root.replace(module).is_some() {
                    return Err(format!(
                        "route prefix {} is configured twice",
                        shown(&prefix)
                    ));
                }
            } else if table
                .prefixes
                .insert(prefix.clone().into_boxed_str(), module)
                .is_some()
            {
                return Err(format!(
                    "route prefix {} is configured twice",
                    shown(&prefix)
                ));
            }
        }
        Ok(table)
    }

    /// Longest configured prefix matching `path` on a segment boundary →
    /// module index.
    ///
    /// `path` should be the output of [`normalize_path`]. A prefix matches
    /// when it equals the path (ignoring one trailing '/') or is followed in
    /// the path by '/'; "/" matches every path starting with '/'. Comparison
    /// is case-sensitive (RFC 3986 §6.2.2.1: paths are case-sensitive).
    /// Costs one hash lookup per segment and never allocates.
    pub fn lookup(&self, path: &str) -> Option<usize> {
        if !path.starts_with('/') {
            return None;
        }
        if !self.prefixes.is_empty() {
            // Longest candidate first: the whole path minus a trailing '/',
            // then each shorter one ending just before a '/'.
            let mut cand = path.strip_suffix('/').unwrap_or(path);
            while !cand.is_empty() {
                if let Some(&module) = self.prefixes.get(cand) {
                    return Some(module);
                }
                cand = match cand.rfind('/') {
                    Some(i) => cand.get(..i).unwrap_or(""),
                    None => "",
                };
            }
        }
        self.root
    }
}

/// A hasher for maps whose keys no client can choose: FxHash's multiply-rotate mix, a
/// word at a time. Used by the route table (keys from the configuration), the
/// statistics and the rate limiters (ids of tokens that presented their correct
/// secret), where SipHash's resistance to chosen collisions buys nothing; it cost ~90
/// instructions per candidate prefix, two or more per request (issue 13).
#[derive(Debug, Clone, Copy, Default)]
pub struct WordHasher(u64);

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.add(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        // The length keeps "a" and "a\0" apart.
        self.add(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Checks that a configured prefix is in the exact form [`RouteTable::lookup`]
/// compares against, so a typo cannot silently make a route unreachable.
fn check_prefix(prefix: &str) -> Result<(), String> {
    let q = shown(prefix);
    if !prefix.starts_with('/') {
        return Err(format!("route prefix {q} must start with '/'"));
    }
    if prefix.contains('%') {
        return Err(format!(
            "route prefix {q} must not contain '%' (write the decoded characters)"
        ));
    }
    let normal =
        normalize_path(prefix).map_err(|e| format!("route prefix {q} is not a valid path: {e}"))?;
    let canonical = if normal == "/" {
        "/"
    } else {
        normal.strip_suffix('/').unwrap_or(&normal)
    };
    if prefix != canonical {
        return Err(format!(
            "route prefix {q} is not canonical; write it as {}",
            shown(canonical)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use PathError::*;

    /// (input, expected) for `normalize_path`.
    const CASES: &[(&str, Result<&str, PathError>)] = &[
        // Already canonical (fast path).
        ("/", Ok("/")),
        ("/a", Ok("/a")),
        ("/a/b/", Ok("/a/b/")),
        (
            "/public/v1/agreements/AGR-1",
            Ok("/public/v1/agreements/AGR-1"),
        ),
        ("/a/b.c/d..e/...", Ok("/a/b.c/d..e/...")),
        ("/a;b=c/d", Ok("/a;b=c/d")),
        // Dot segments, RFC 3986 §5.2.4.
        ("/a/./b", Ok("/a/b")),
        ("/a/../b", Ok("/b")),
        ("/../../x", Ok("/x")),
        ("/../a", Ok("/a")),
        ("/a/b/..", Ok("/a/")),
        ("/a/b/.", Ok("/a/b/")),
        ("/a/b/../", Ok("/a/")),
        ("/a/./", Ok("/a/")),
        ("/.", Ok("/")),
        ("/..", Ok("/")),
        ("/a/..", Ok("/")),
        ("/a/b/c/../../d", Ok("/a/d")),
        ("/.a/..b/", Ok("/.a/..b/")),
        // Repeated slashes.
        ("//", Ok("/")),
        ("//a///b", Ok("/a/b")),
        ("/a//", Ok("/a/")),
        ("///..//a//.//", Ok("/a/")),
        // Unreserved decoding (§6.2.2.2) and hex case (§6.2.2.1).
        ("/public/v1/%61greements", Ok("/public/v1/agreements")),
        ("/%7E", Ok("/~")),
        ("/%7euser", Ok("/~user")),
        ("/%41%5a%30%2D%5F", Ok("/AZ0-_")),
        ("/%3F", Ok("/%3F")),
        ("/%3f", Ok("/%3F")),
        ("/a%20b", Ok("/a%20b")),
        ("/x%3by", Ok("/x%3By")),
        ("/%25", Ok("/%25")),
        ("/%252e", Ok("/%252e")),
        ("/%252E%2541", Ok("/%252E%2541")),
        ("/%C3%A9", Ok("/%C3%A9")),
        ("/%e2%82%ac", Ok("/%E2%82%AC")),
        ("/%F0%9F%98%80", Ok("/%F0%9F%98%80")),
        ("/%EF%BF%BF", Ok("/%EF%BF%BF")),
        ("/%F4%8F%BF%BF", Ok("/%F4%8F%BF%BF")),
        ("/a/%61/../b", Ok("/a/b")),
        // Not origin-form.
        ("", Err(NotOriginForm)),
        ("*", Err(NotOriginForm)),
        ("http://x/", Err(NotOriginForm)),
        ("a/b", Err(NotOriginForm)),
        // Raw forbidden characters.
        ("/a\\b", Err(Backslash)),
        ("/\\", Err(Backslash)),
        ("/a#b", Err(Fragment)),
        ("/a\0b", Err(ControlChar)),
        ("/a\tb", Err(ControlChar)),
        ("/a\nb", Err(ControlChar)),
        ("/a\x7f", Err(ControlChar)),
        ("/caf\u{e9}", Err(NonAscii)),
        ("/\u{1F600}", Err(NonAscii)),
        // Malformed percent-encoding.
        ("/%", Err(BadPercentEncoding)),
        ("/%4", Err(BadPercentEncoding)),
        ("/%4/", Err(BadPercentEncoding)),
        ("/%zz", Err(BadPercentEncoding)),
        ("/%g0", Err(BadPercentEncoding)),
        ("/a%", Err(BadPercentEncoding)),
        // Encoded forbidden characters, both hex cases.
        ("/a%2Fb", Err(EncodedSlash)),
        ("/a%2fb", Err(EncodedSlash)),
        ("/a%5Cb", Err(EncodedBackslash)),
        ("/a%5cb", Err(EncodedBackslash)),
        ("/%2E", Err(EncodedDot)),
        ("/%2e%2e/x", Err(EncodedDot)),
        ("/a/%2E%2E", Err(EncodedDot)),
        ("/.%2e/x", Err(EncodedDot)),
        ("/a%00", Err(EncodedControlChar)),
        ("/a%0a", Err(EncodedControlChar)),
        ("/a%1F", Err(EncodedControlChar)),
        ("/a%7f", Err(EncodedControlChar)),
        // Invalid UTF-8 after decoding.
        ("/%c0%ae", Err(InvalidUtf8)),
        ("/%c0%af", Err(InvalidUtf8)),
        ("/%C1%BF", Err(InvalidUtf8)),
        ("/%e0%80%ae", Err(InvalidUtf8)),
        ("/%f0%80%80%af", Err(InvalidUtf8)),
        ("/%80", Err(InvalidUtf8)),
        ("/%bf", Err(InvalidUtf8)),
        ("/%e2%82", Err(InvalidUtf8)),
        ("/%e2%82/%ac", Err(InvalidUtf8)),
        ("/%C3a%A9", Err(InvalidUtf8)),
        ("/%ed%a0%80", Err(InvalidUtf8)),
        ("/%f4%90%80%80", Err(InvalidUtf8)),
        ("/%f5%80%80%80", Err(InvalidUtf8)),
        ("/%ff", Err(InvalidUtf8)),
        // Dot segment with a path parameter.
        ("/a/..;/b", Err(DotSemicolon)),
        ("/a/.;x/b", Err(DotSemicolon)),
        ("/..;", Err(DotSemicolon)),
        ("/.;", Err(DotSemicolon)),
        ("/a/..%3B/b", Err(DotSemicolon)),
        ("/a/.%3b", Err(DotSemicolon)),
    ];

    #[test]
    fn normalize_table() {
        assert!(CASES.len() >= 40);
        for &(input, expected) in CASES {
            let got = normalize_path(input);
            assert_eq!(
                got.as_deref().map_err(|e| *e),
                expected,
                "normalize_path({input:?}) gave {got:?}"
            );
        }
    }

    #[test]
    fn fast_and_slow_paths_agree_on_table() {
        for &(input, _) in CASES {
            if input.starts_with('/') {
                assert_eq!(normalize_path(input), normalize_slow(input), "{input:?}");
            }
        }
    }

    #[test]
    fn display_is_a_short_sentence() {
        assert_eq!(
            EncodedSlash.to_string(),
            "the path contains an encoded slash (%2F)"
        );
        let all = [
            NotOriginForm,
            Backslash,
            ControlChar,
            Fragment,
            NonAscii,
            BadPercentEncoding,
            EncodedSlash,
            EncodedBackslash,
            EncodedDot,
            EncodedControlChar,
            InvalidUtf8,
            DotSemicolon,
        ];
        let mut seen = std::collections::HashSet::new();
        for e in all {
            let s = e.to_string();
            assert!(s.starts_with("the "), "{s}");
            assert!(seen.insert(s), "duplicate message for {e:?}");
            let _: &dyn std::error::Error = &e;
        }
    }

    fn table(prefixes: &[(&str, usize)]) -> RouteTable {
        RouteTable::new(prefixes.iter().map(|&(p, i)| (p.to_owned(), i))).expect("valid table")
    }

    #[test]
    fn lookup_segment_boundaries() {
        let t = table(&[("/public/v1/agreements", 1)]);
        assert_eq!(t.lookup("/public/v1/agreements"), Some(1));
        assert_eq!(t.lookup("/public/v1/agreements/"), Some(1));
        assert_eq!(t.lookup("/public/v1/agreements/AGR-1"), Some(1));
        assert_eq!(t.lookup("/public/v1/agreements/AGR-1/items/"), Some(1));
        assert_eq!(t.lookup("/public/v1/agreementsX"), None);
        assert_eq!(t.lookup("/public/v1/agreement"), None);
        assert_eq!(t.lookup("/public/v1"), None);
        assert_eq!(t.lookup("/public/v1/"), None);
        assert_eq!(t.lookup("/"), None);
        assert_eq!(t.lookup(""), None);
        assert_eq!(t.lookup("public/v1/agreements"), None);
    }

    #[test]
    fn lookup_longest_prefix_wins() {
        let t = table(&[("/a", 1), ("/a/b", 2), ("/a/b/c/d", 4)]);
        assert_eq!(t.lookup("/a/b/c"), Some(2));
        assert_eq!(t.lookup("/a/b"), Some(2));
        assert_eq!(t.lookup("/a/b/"), Some(2));
        assert_eq!(t.lookup("/a/bc"), Some(1));
        assert_eq!(t.lookup("/a/b/c/d/e"), Some(4));
        assert_eq!(t.lookup("/a/b/c/dd"), Some(2));
        assert_eq!(t.lookup("/a"), Some(1));
        assert_eq!(t.lookup("/ab"), None);
    }

    #[test]
    fn lookup_root_catch_all() {
        let t = table(&[("/", 0), ("/api", 1)]);
        assert_eq!(t.lookup("/"), Some(0));
        assert_eq!(t.lookup("/x"), Some(0));
        assert_eq!(t.lookup("/apix"), Some(0));
        assert_eq!(t.lookup("/api"), Some(1));
        assert_eq!(t.lookup("/api/"), Some(1));
        assert_eq!(t.lookup("/api/v1"), Some(1));
        assert_eq!(t.lookup("no-slash"), None);
        let only_root = table(&[("/", 7)]);
        assert_eq!(only_root.lookup("/anything/at/all/"), Some(7));
        let empty = table(&[]);
        assert_eq!(empty.lookup("/"), None);
    }

    #[test]
    fn lookup_is_case_sensitive() {
        let t = table(&[("/Public", 1), ("/public", 2)]);
        assert_eq!(t.lookup("/Public/x"), Some(1));
        assert_eq!(t.lookup("/public/x"), Some(2));
        assert_eq!(t.lookup("/PUBLIC/x"), None);
    }

    #[test]
    fn new_rejects_non_canonical_prefixes() {
        for bad in [
            "", "a", "a/b", "/a/", "/a//b", "//a", "/a/../b", "/a/./b", "/a/.", "/..", "/%61",
            "/a%2Fb", "/a\\b", "/a#b", "/\u{e9}", "/a/..;/b",
        ] {
            let err = RouteTable::new([(bad.to_owned(), 0)]).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        for good in ["/", "/a", "/a/b", "/a.b/c-d_e~f", "/a;v=1", "/.well-known"] {
            assert!(RouteTable::new([(good.to_owned(), 0)]).is_ok(), "{good}");
        }
    }

    #[test]
    fn new_rejects_duplicates() {
        for dup in ["/", "/a/b"] {
            let err = RouteTable::new([
                (dup.to_owned(), 0),
                ("/z".to_owned(), 1),
                (dup.to_owned(), 2),
            ])
            .expect_err(dup);
            assert!(
                err.contains("twice") && err.contains(&format!("{dup:?}")),
                "{err}"
            );
        }
    }

    /// Checks the output invariants and idempotence of one input.
    fn check_invariants(input: &str) -> Result<(), TestCaseError> {
        let result = normalize_path(input);
        if input.starts_with('/') {
            prop_assert_eq!(&result, &normalize_slow(input));
        }
        if let Ok(p) = result {
            prop_assert!(p.starts_with('/'), "{:?} -> {:?}", input, p);
            prop_assert!(!p.contains("//"), "{:?} -> {:?}", input, p);
            prop_assert!(
                p.split('/').all(|s| s != "." && s != ".."),
                "{:?} -> {:?}",
                input,
                p
            );
            prop_assert!(p.len() <= input.len(), "{:?} -> {:?}", input, p);
            prop_assert_eq!(normalize_path(&p), Ok(p.clone()), "input {:?}", input);
        }
        Ok(())
    }

    const ALPHABET: &[char] = &[
        '/', '.', 'a', 'b', '%', '2', 'e', 'E', 'f', 'F', ';', '\\', '5', 'c', '4', '1', '~', '3',
        'B', '7', '8', '0',
    ];

    fn alphabet_string() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(ALPHABET), 0..40)
            .prop_map(|cs| cs.into_iter().collect())
    }

    /// Segments made of percent-encoded arbitrary bytes (high bytes and
    /// letters, never a forbidden byte), to compare against `from_utf8`.
    fn encoded_segment() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![3 => 0x80u8..=0xFF, 1 => b'a'..=b'z', 1 => Just(b';')],
            1..8,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn alphabet_inputs_hold_invariants(s in alphabet_string()) {
            check_invariants(&s)?;
            check_invariants(&format!("/{s}"))?;
        }

        #[test]
        fn arbitrary_inputs_hold_invariants(s in "\\PC*") {
            check_invariants(&s)?;
            check_invariants(&format!("/{s}"))?;
        }

        #[test]
        fn utf8_check_matches_std(segs in prop::collection::vec(encoded_segment(), 1..4), lower in any::<bool>()) {
            let mut input = String::new();
            let mut expected = String::new();
            let mut valid = true;
            for seg in &segs {
                valid &= std::str::from_utf8(seg).is_ok();
                input.push('/');
                expected.push('/');
                for &b in seg {
                    if lower {
                        input.push_str(&format!("%{b:02x}"));
                    } else {
                        input.push_str(&format!("%{b:02X}"));
                    }
                    if b.is_ascii_alphanumeric() {
                        expected.push(char::from(b));
                    } else {
                        expected.push_str(&format!("%{b:02X}"));
                    }
                }
            }
            let got = normalize_path(&input);
            if valid {
                prop_assert_eq!(got, Ok(expected));
            } else {
                prop_assert_eq!(got, Err(InvalidUtf8));
            }
        }

        #[test]
        fn lookup_matches_naive_oracle(
            prefixes in prop::collection::btree_set("(/[ab]{1,2}){0,3}", 0..6),
            path in "(/[ab]{1,2}){0,4}/?",
        ) {
            let prefixes: Vec<(String, usize)> = prefixes
                .into_iter()
                .map(|p| if p.is_empty() { "/".to_owned() } else { p })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .enumerate()
                .map(|(i, p)| (p, i))
                .collect();
            let t = RouteTable::new(prefixes.clone()).map_err(TestCaseError::fail)?;
            let path = if path.is_empty() { "/".to_owned() } else { path };
            let expected = prefixes
                .iter()
                .filter(|(p, _)| {
                    p == "/"
                        || path == *p
                        || path.strip_prefix(p.as_str()).is_some_and(|r| r.starts_with('/'))
                })
                .max_by_key(|(p, _)| p.len())
                .map(|&(_, i)| i);
            prop_assert_eq!(t.lookup(&path), expected, "path {:?} prefixes {:?}", path, prefixes);
        }
    }
}
