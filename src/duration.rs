//! Durations as written in the configuration file and the admin API: an integer and a
//! unit, `ms`, `s`, `m` (minutes), `h`, `d`, `w` or `y` (365 days) — `"500ms"`,
//! `"30s"`, `"7d"`. One grammar for both, so a value that works in one works in the
//! other.

use std::time::Duration;

use crate::error::shown;

/// Longest duration accepted, in milliseconds: 1000 years.
pub const MAX_MS: u64 = 1000 * 365 * 86_400_000;

/// Longest duration accepted: 1000 years.
pub const MAX: Duration = Duration::from_millis(MAX_MS);

/// The units and their length in milliseconds (the OpenAPI patterns are built from
/// them too).
pub const UNITS: [(&str, u64); 7] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 7 * 86_400_000),
    ("y", 365 * 86_400_000),
];

/// Parses a duration (surrounding whitespace ignored); the error says why, quoting
/// the input.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    // Quoted and bounded: the input may be anything a client or a file sent.
    let q = shown(s);
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{q} has no unit (use ms, s, m, h, d, w or y)"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("{q} does not start with a number"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{q}: number out of range"))?;
    let unit_ms = UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, ms)| *ms)
        .ok_or_else(|| format!("{q}: unknown unit {unit:?} (use ms, s, m, h, d, w or y)"))?;
    let ms = n
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .filter(|d| *d <= MAX)
        .ok_or_else(|| format!("{q} is too long (at most 1000y)"))?;
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse("2w"), Ok(Duration::from_secs(14 * 86400)));
        assert_eq!(parse("1y"), Ok(Duration::from_secs(365 * 86400)));
        assert_eq!(parse(" 1s "), Ok(Duration::from_secs(1)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("1000y"), Ok(MAX));
    }

    #[test]
    fn refusals_say_why() {
        for (bad, why) in [
            ("", "no unit"),
            ("7", "no unit"),
            ("d", "does not start with a number"),
            ("7x", "unknown unit"),
            ("-1s", "does not start with a number"),
            ("+1s", "does not start with a number"),
            ("1.5h", "unknown unit"),
            ("7 d", "unknown unit"),
            ("7D", "unknown unit"),
            ("99999999999999999999s", "out of range"),
            ("1001y", "too long"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
