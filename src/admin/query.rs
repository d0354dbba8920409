//! The one query-string parser of the admin API: `application/x-www-form-urlencoded`
//! pairs (`+` is a space, `%XX` a byte, the result UTF-8), and integers as plain ASCII
//! digits. Every refusal is a `VALIDATION` naming the parameter.

use crate::error::ApiError;

/// Longest integer parameter, in digits (bounds the parse; larger values are out of
/// range anyway).
const MAX_DIGITS: usize = 19;

/// A decoded query string.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

/// At most 64 characters of client text, for error messages.
fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A `VALIDATION` error naming parameter `name`.
pub fn invalid(name: &str, reason: &str) -> ApiError {
    ApiError::Validation(format!("{}: {reason}", shorten(name)))
}

impl Query {
    /// Decodes every pair of `raw` (the part after `?`).
    pub fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let malformed = || invalid(k, "malformed percent-encoding");
            let key = form_decode(k).ok_or_else(malformed)?;
            let value = form_decode(v).ok_or_else(malformed)?;
            pairs.push((key, value));
        }
        Ok(Query { pairs })
    }

    /// Refuses a parameter not in `known`, or one given twice.
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        for (i, (k, _)) in self.pairs.iter().enumerate() {
            if !known.contains(&k.as_str()) {
                return Err(invalid(
                    k,
                    &format!("unknown query parameter (use {})", known.join(", ")),
                ));
            }
            if self.pairs[..i].iter().any(|(seen, _)| seen == k) {
                return Err(invalid(k, "given more than once"));
            }
        }
        Ok(())
    }

    /// The value of `name`; refused when given twice.
    pub fn get(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.pairs.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(invalid(name, "given more than once"));
        }
        Ok(first)
    }

    /// `name` as an integer in `min..=max` (ASCII digits only: no sign, no spaces);
    /// `reason` is the refusal's text.
    pub fn integer(
        &self,
        name: &str,
        min: u64,
        max: u64,
        reason: &str,
    ) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(name)? else {
            return Ok(None);
        };
        let digits =
            !v.is_empty() && v.len() <= MAX_DIGITS && v.bytes().all(|b| b.is_ascii_digit());
        digits
            .then(|| v.parse::<u64>().ok())
            .flatten()
            .filter(|n| (min..=max).contains(n))
            .map(Some)
            .ok_or_else(|| invalid(name, reason))
    }
}

/// Decodes form-encoded text; `None` when a `%` is not followed by two hex digits or
/// the bytes are not UTF-8 (overlong forms included).
fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                // Two hex digits exactly: `from_str_radix` alone would take "+1" as 1.
                let hi = b.get(i + 1).copied().and_then(hex)?;
                let lo = b.get(i + 2).copied().and_then(hex)?;
                out.push(hi << 4 | lo);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%20c").as_deref(), Some("a b c"));
        assert_eq!(form_decode("%C3%A9").as_deref(), Some("\u{e9}"));
        assert_eq!(form_decode("%33").as_deref(), Some("3"));
        for bad in [
            "%", "%4", "%zz", "%ff", "%c0%ae", "%+1", "%-1", "% 1", "%1+",
        ] {
            assert_eq!(form_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn integers_are_plain_digits_after_decoding() {
        let q = |s: &str| Query::parse(Some(s)).unwrap();
        let int = |s: &str| q(s).integer("n", 1, 1000, "out of range");
        assert_eq!(int("n=7"), Ok(Some(7)));
        // Regression (issue #10): `days=%33` was refused while `limit=%33` was decoded.
        assert_eq!(int("n=%33"), Ok(Some(3)));
        assert_eq!(int("x=1"), Ok(None));
        for bad in [
            "n=",
            "n=0",
            "n=1001",
            "n=+5",
            "n=-5",
            "n=5%20",
            "n=1e3",
            "n=99999999999999999999999",
        ] {
            assert!(int(bad).is_err(), "{bad:?}");
        }
        assert!(int("n=1&n=2").is_err());
    }

    #[test]
    fn unknown_and_repeated_parameters() {
        let q = Query::parse(Some("a=1&b=2")).unwrap();
        assert!(q.only(&["a", "b"]).is_ok());
        let e = q.only(&["a"]).unwrap_err().to_string();
        assert!(e.starts_with("b: unknown query parameter (use a)"), "{e}");
        let q = Query::parse(Some("a=1&a=2")).unwrap();
        assert_eq!(
            q.only(&["a"]).unwrap_err().to_string(),
            "a: given more than once"
        );
        let e = Query::parse(Some("k%zz=1")).unwrap_err().to_string();
        assert_eq!(e, "k%zz: malformed percent-encoding");
    }
}
