//! Tokens: ids, secrets (redacted in `Debug`), hashing and constant-time verification,
//! and the stored token record.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::cidr::Cidr;
use crate::limits::{Quota, QuotaUsage, RateLimit};
use crate::permissions::Access;

/// Length of a secret in hex characters (160 bits).
pub const SECRET_HEX_LEN: usize = 40;

/// A token id, `SU-ddd-ddd-ddd`, kept as its 9-digit number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(u32);

impl TokenId {
    /// Largest id number (`SU-999-999-999`).
    pub const MAX: u32 = 999_999_999;

    /// The id with number `n`, if it has at most 9 digits.
    pub fn new(n: u32) -> Option<TokenId> {
        (n <= Self::MAX).then_some(TokenId(n))
    }

    /// A uniformly random id from the OS CSPRNG.
    pub fn random() -> TokenId {
        loop {
            let mut b = [0u8; 4];
            fill_random(&mut b);
            // Rejection sampling below the largest multiple of 10^9 keeps it uniform.
            let n = u32::from_le_bytes(b);
            if n < 4_000_000_000 {
                return TokenId(n % 1_000_000_000);
            }
        }
    }

    /// The 9-digit number.
    pub fn number(self) -> u32 {
        self.0
    }

    /// Parses exactly `SU-ddd-ddd-ddd` (ASCII digits, upper-case prefix).
    pub fn parse(s: &[u8]) -> Option<TokenId> {
        if s.len() != 14 || &s[..3] != b"SU-" || s[6] != b'-' || s[10] != b'-' {
            return None;
        }
        let mut n: u32 = 0;
        for &b in s[3..6].iter().chain(&s[7..10]).chain(&s[11..14]) {
            if !b.is_ascii_digit() {
                return None;
            }
            n = n * 10 + u32::from(b - b'0');
        }
        Some(TokenId(n))
    }

    /// The id as text, without allocating.
    pub fn to_bytes(self) -> [u8; 14] {
        let mut out = *b"SU-000-000-000";
        let mut n = self.0;
        for pos in [13, 12, 11, 9, 8, 7, 5, 4, 3] {
            out[pos] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.to_bytes();
        // to_bytes only yields ASCII.
        f.write_str(std::str::from_utf8(&b).unwrap_or("SU-???-???-???"))
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for TokenId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        TokenId::parse(s.as_bytes()).ok_or(())
    }
}

impl Serialize for TokenId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TokenId::parse(s.as_bytes())
            .ok_or_else(|| serde::de::Error::custom("token id must look like SU-123-456-789"))
    }
}

fn fill_random(buf: &mut [u8]) {
    // The OS CSPRNG failing is unrecoverable: we must never hand out a weak secret.
    if let Err(e) = getrandom::fill(buf) {
        panic!("OS random number generator failed: {e}");
    }
}

/// A token secret: 20 random bytes, shown to the client as 40 lowercase hex characters.
/// Its `Debug` is redacted; it has no `Display`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// A new secret from the OS CSPRNG.
    pub fn generate() -> Secret {
        let mut b = [0u8; 20];
        fill_random(&mut b);
        Secret(hex::encode(b))
    }

    /// The hex text, for the one response that shows it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its hash, the only form kept at rest.
    pub fn hash(&self) -> SecretHash {
        SecretHash::of(self.0.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// SHA-256 of a secret. Secrets carry 160 bits of entropy, so a fast hash is enough:
/// there is nothing to brute-force (unlike passwords).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// Hash of presented secret bytes.
    pub fn of(secret: &[u8]) -> SecretHash {
        SecretHash(Sha256::digest(secret).into())
    }

    /// Constant-time comparison: the differences of all 32 bytes are folded into one
    /// word, eight bytes at a time, with no branch on any of them; only the folded
    /// word is compared (by `subtle`). As constant-time as `subtle`'s byte loop, which
    /// cost ~170 instructions per comparison (issue 13).
    pub fn matches(&self, other: &SecretHash) -> bool {
        let mut diff = 0u64;
        for (a, b) in self.0.chunks_exact(8).zip(other.0.chunks_exact(8)) {
            let (mut wa, mut wb) = ([0u8; 8], [0u8; 8]);
            wa.copy_from_slice(a);
            wb.copy_from_slice(b);
            diff |= u64::from_ne_bytes(wa) ^ u64::from_ne_bytes(wb);
        }
        diff.ct_eq(&0).into()
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(<redacted>)")
    }
}

impl Serialize for SecretHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for SecretHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(SecretHash(out))
    }
}

/// A token's derived status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Usable.
    Active,
    /// Switched off by an operator.
    Disabled,
    /// Past `expires_at`.
    Expired,
}

impl Status {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Disabled => "disabled",
            Status::Expired => "expired",
        }
    }
}

/// A secret replaced by rotation that keeps working until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// Hash of the old secret.
    pub hash: SecretHash,
    /// End of the grace period.
    pub until: Timestamp,
}

/// The stored token record. Never serialised to clients as is (it holds the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Id.
    pub id: TokenId,
    /// 1-128 characters.
    pub name: String,
    /// 0-1024 characters.
    pub description: String,
    /// 1-64 printable ASCII characters without spaces.
    pub external_id: Option<String>,
    /// Extension name.
    pub extension: String,
    /// Module names, or `["all"]`.
    pub permissions: Vec<String>,
    /// Disabled by an operator.
    pub disabled: bool,
    /// Expiry; `None` = perpetual.
    pub expires_at: Option<Timestamp>,
    /// The validity period last chosen (seconds), used by an empty renew.
    pub validity_secs: Option<i64>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// The token that created it through the admin API.
    pub created_by: Option<TokenId>,
    /// Last request seen (approximate).
    pub last_used_at: Option<Timestamp>,
    /// Hash of the current secret.
    pub secret_hash: SecretHash,
    /// The secret before the last rotation, during its grace period.
    pub previous_secret: Option<PreviousSecret>,
    /// Incremented on every change (optimistic concurrency).
    pub version: u64,
    /// Rate limits (SPEC §8); empty = none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
    /// Quota (SPEC §8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// Client networks allowed (SPEC §8); empty = any address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<Cidr>,
}

impl Token {
    /// A fresh active record: random id, `custom` extension, perpetual, version 1,
    /// created by nobody; callers override what differs with struct update syntax.
    pub fn new(name: &str, permissions: &[&str], secret_hash: SecretHash, now: Timestamp) -> Token {
        Token {
            id: TokenId::random(),
            name: name.into(),
            description: String::new(),
            external_id: None,
            extension: "custom".into(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
            disabled: false,
            expires_at: None,
            validity_secs: None,
            created_at: now,
            updated_at: now,
            created_by: None,
            last_used_at: None,
            secret_hash,
            previous_secret: None,
            version: 1,
            rate_limits: Vec::new(),
            quota: None,
            allowed_ips: Vec::new(),
        }
    }

    /// Status at `now`.
    pub fn status(&self, now: Timestamp) -> Status {
        if self.disabled {
            Status::Disabled
        } else if self.expires_at.is_some_and(|e| e <= now) {
            Status::Expired
        } else {
            Status::Active
        }
    }

    /// Whether the token holds full access to module `name` (`all` or the module).
    pub fn has_permission(&self, name: &str) -> bool {
        self.access(name) == Access::Full
    }

    /// What the token may do in module `name` (`all`, `all:read` and `:read` forms).
    pub fn access(&self, name: &str) -> Access {
        crate::permissions::access(&self.permissions, name)
    }
}

/// A parsed `<id>:<secret>` credential. The secret bytes are only hashed.
pub struct Credential<'a> {
    /// The id.
    pub id: TokenId,
    /// The secret as presented.
    secret: &'a [u8],
}

impl<'a> Credential<'a> {
    /// Parses `<id>:<secret>`; the secret must be 40 lowercase hex characters.
    pub fn parse(s: &'a [u8]) -> Option<Credential<'a>> {
        if s.len() != 14 + 1 + SECRET_HEX_LEN || s[14] != b':' {
            return None;
        }
        let id = TokenId::parse(&s[..14])?;
        let secret = &s[15..];
        // Every byte, without an early exit: the compiler turns this into a few vector
        // compares (a byte-by-byte `all` cost ~450 instructions per request, issue 13).
        let hex = secret.iter().fold(true, |ok, &b| {
            ok & ((b.wrapping_sub(b'0') < 10) | (b.wrapping_sub(b'a') < 6))
        });
        if !hex {
            return None;
        }
        Some(Credential { id, secret })
    }

    /// Hash of the presented secret.
    pub fn secret_hash(&self) -> SecretHash {
        SecretHash::of(self.secret)
    }
}

impl fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}:<redacted>)", self.id)
    }
}

// ---------------------------------------------------------------------------
// How the API shows a token (admin answers, event payloads).

/// RFC 3339 UTC with second precision (`2026-11-23T10:00:00Z`).
pub fn rfc3339(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

fn rfc3339_opt(t: Option<Timestamp>) -> Option<String> {
    t.map(rfc3339)
}

/// A token as the API shows it: every field of SPEC §1, never the hash.
#[derive(Serialize)]
pub struct TokenView<'a> {
    id: TokenId,
    name: &'a str,
    description: &'a str,
    external_id: Option<&'a str>,
    extension: &'a str,
    permissions: &'a [String],
    status: Status,
    expires_at: Option<String>,
    created_at: String,
    updated_at: String,
    created_by: Option<TokenId>,
    last_used_at: Option<String>,
    rate_limits: &'a [RateLimit],
    quota: Option<Quota>,
    quota_usage: Option<QuotaUsage>,
    allowed_ips: &'a [Cidr],
    /// `<id>:<secret>`, only in the answers to create and rotate.
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
}

impl<'a> TokenView<'a> {
    /// The view of `t` at `now`, with the secret when it has just been made.
    pub fn new(t: &'a Token, now: Timestamp, secret: Option<&Secret>) -> TokenView<'a> {
        TokenView {
            id: t.id,
            name: &t.name,
            description: &t.description,
            external_id: t.external_id.as_deref(),
            extension: &t.extension,
            permissions: &t.permissions,
            status: t.status(now),
            expires_at: rfc3339_opt(t.expires_at),
            created_at: rfc3339(t.created_at),
            updated_at: rfc3339(t.updated_at),
            created_by: t.created_by,
            last_used_at: rfc3339_opt(t.last_used_at),
            rate_limits: &t.rate_limits,
            quota: t.quota,
            quota_usage: None,
            allowed_ips: &t.allowed_ips,
            api_key: secret.map(|s| format!("{}:{}", t.id, s.expose())),
        }
    }

    /// The view with `quota_usage` filled in.
    pub fn with_quota_usage(mut self, usage: Option<QuotaUsage>) -> TokenView<'a> {
        self.quota_usage = usage;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trip() {
        for n in [0, 7, 160_984_311, TokenId::MAX] {
            let id = TokenId::new(n).unwrap();
            let s = id.to_string();
            assert_eq!(s.len(), 14);
            assert_eq!(TokenId::parse(s.as_bytes()), Some(id));
        }
        assert_eq!(
            TokenId::parse(b"SU-160-984-311").unwrap().number(),
            160_984_311
        );
        assert_eq!(TokenId::new(1_000_000_000), None);
    }

    #[test]
    fn id_parse_rejects_other_shapes() {
        for bad in [
            &b""[..],
            b"SU-160-984-31",
            b"SU-160-984-3111",
            b"su-160-984-311",
            b"SU-16a-984-311",
            b"SU_160-984-311",
            b"SU-160+984-311",
            b"SU-\xff60-984-311",
        ] {
            assert_eq!(TokenId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn random_ids_are_valid_and_vary() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| TokenId::random()).collect();
        assert!(ids.len() > 990);
    }

    #[test]
    fn secrets_are_40_hex_and_redacted() {
        let s = Secret::generate();
        assert_eq!(s.expose().len(), SECRET_HEX_LEN);
        assert!(
            s.expose()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(s.expose(), Secret::generate().expose());
        let dbg = format!("{s:?} {:?}", s.hash());
        assert!(!dbg.contains(s.expose()));
        assert!(!dbg.contains(&hex::encode(s.hash().0)));
    }

    #[test]
    fn credential_parse_and_verify() {
        let s = Secret::generate();
        let text = format!("SU-160-984-311:{}", s.expose());
        let c = Credential::parse(text.as_bytes()).unwrap();
        assert_eq!(c.id.to_string(), "SU-160-984-311");
        assert!(c.secret_hash().matches(&s.hash()));
        assert!(!format!("{c:?}").contains(s.expose()));
        let other = Secret::generate();
        assert!(!c.secret_hash().matches(&other.hash()));
        let fixed = "f45bee7e79b10ff6eff67902ccb4f3d46724ceb8";
        assert!(Credential::parse(format!("SU-160-984-311:{fixed}").as_bytes()).is_some());
        for bad in [
            "SU-160-984-311".to_string(),
            format!("SU-160-984-311:{}", &fixed[1..]),
            format!("SU-160-984-311:{fixed}0"),
            format!("SU-160-984-311;{fixed}"),
            format!("SU-160-984-311:{}", fixed.to_uppercase()),
            format!("XX-160-984-311:{fixed}"),
            format!("SU-160-984-311:{}g", &fixed[1..]),
        ] {
            assert!(Credential::parse(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn secret_characters_and_hash_compare_byte_by_byte() {
        let fixed = *b"f45bee7e79b10ff6eff67902ccb4f3d46724ceb8";
        for pos in [0, 7, 8, 39] {
            for b in 0..=255u8 {
                let mut secret = fixed;
                secret[pos] = b;
                let mut text = b"SU-160-984-311:".to_vec();
                text.extend_from_slice(&secret);
                let lower_hex = b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
                assert_eq!(Credential::parse(&text).is_some(), lower_hex, "{pos} {b}");
            }
        }
        let h = SecretHash::of(b"x");
        assert!(h.matches(&h));
        for i in 0..32 {
            for bit in [0x01, 0x80] {
                let mut other = h;
                other.0[i] ^= bit;
                assert!(!h.matches(&other), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn status_is_derived() {
        let now = Timestamp::now();
        let mut t = Token::new("n", &["all"], Secret::generate().hash(), now);
        assert_eq!(t.status(now), Status::Active);
        t.expires_at = Some(now);
        assert_eq!(t.status(now), Status::Expired);
        t.disabled = true;
        assert_eq!(t.status(now), Status::Disabled);
    }
}
