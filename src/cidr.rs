//! IPv4 and IPv6 networks in CIDR form, for `allowed_ips` and `proxy.trusted_proxies`
//! (SPEC §8). Plain data: no other module of the crate is used.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 or IPv6 network in CIDR form; host bits below the prefix are zero. Kept as
/// 128-bit words ([`key`]): a match is one mask and one comparison (every request of a
/// token with `allowed_ips`); the address and prefix length are read back from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    net: u128,
    mask: u128,
    v4: bool,
}

/// An address as one 128-bit word: IPv6 as it is, IPv4 as `::ffff:a.b.c.d`, plus
/// whether it is IPv4 — an IPv6 network never holds an IPv4 client, even `::/0` or
/// `::ffff:0:0/96`. Clients are keyed in [`canonical`] form (an IPv4-mapped IPv6
/// client is its IPv4 address); networks as written.
fn key(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(a.to_ipv6_mapped()), true),
        IpAddr::V6(a) => (u128::from(a), false),
    }
}

/// The network mask of a `len`-bit prefix of a 128-bit word.
fn mask128(len: u32) -> u128 {
    u128::MAX.checked_shl(128 - len).unwrap_or(0)
}

/// Bits of an IPv4 address's 128-bit word ahead of the address (`::ffff:`).
const V4_OFFSET: u32 = 96;

impl Cidr {
    /// Parses `"10.0.0.0/8"`, `"2001:db8::/32"` or a bare address (a /32 or /128).
    /// Host bits set below the prefix (`"10.1.2.3/8"`) are refused.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{:?} is not an IP address or CIDR block", short(s)))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && !l.starts_with('+') && (l == "0" || !l.starts_with('0')) => n,
                _ => return Err(format!("{:?}: the prefix length must be 0-{max}", short(s))),
            },
        };
        let (word, v4) = key(addr);
        let offset = if v4 { V4_OFFSET } else { 0 };
        let mask = mask128(offset + u32::from(len));
        let c = Cidr {
            net: word & mask,
            mask,
            v4,
        };
        if c.net != word {
            return Err(format!(
                "{:?} has host bits set below /{len} (did you mean {c}?)",
                short(s)
            ));
        }
        Ok(c)
    }

    /// The network's address.
    fn addr(&self) -> IpAddr {
        let a = Ipv6Addr::from(self.net);
        match a.to_ipv4_mapped() {
            Some(v4) if self.v4 => IpAddr::V4(v4),
            _ => IpAddr::V6(a),
        }
    }

    /// The prefix length, in the address family's own bits.
    fn prefix_len(&self) -> u32 {
        self.mask.count_ones() - if self.v4 { V4_OFFSET } else { 0 }
    }

    /// Whether `ip` is inside (an IPv4-mapped IPv6 address counts as its IPv4 form).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.contains_key(key(canonical(ip)))
    }

    fn contains_key(&self, (ip, v4): (u128, bool)) -> bool {
        v4 == self.v4 && ip & self.mask == self.net
    }
}

/// An IPv4-mapped IPv6 address as IPv4 (a dual-stack listener reports those).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix_len())
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        Cidr::parse(s)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Whether any of `nets` contains `ip`.
pub fn any_contains(nets: &[Cidr], ip: IpAddr) -> bool {
    let ip = key(canonical(ip));
    nets.iter().any(|n| n.contains_key(ip))
}

/// `s` cut to 64 characters for a message.
fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_show_and_match() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.200.1.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert_eq!(
            Cidr::parse("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            Cidr::parse("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(Cidr::parse("::1").unwrap().to_string(), "::1/128");
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        // An IPv6 network never holds an IPv4 client, even one that covers the
        // IPv4-mapped range; an IPv4 network holds the IPv4-mapped form.
        for v6 in ["::/0", "::ffff:0:0/96"] {
            let c = Cidr::parse(v6).unwrap();
            assert!(!c.contains("10.1.1.1".parse().unwrap()), "{v6}");
            assert!(!c.contains("::ffff:10.1.1.1".parse().unwrap()), "{v6}");
        }
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains("2001:db8::1".parse().unwrap())
        );
        let c = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!c.contains("2001:db9::1".parse().unwrap()));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.6".parse().unwrap()));
        assert!(!one.contains("::ffff:192.0.2.8".parse().unwrap()));
        assert!(any_contains(&[one, c], "::ffff:192.0.2.7".parse().unwrap()));
        assert!(!any_contains(&[], "192.0.2.7".parse().unwrap()));
        for (bad, meant) in [
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("2001:db8::1/32", "2001:db8::/32"),
        ] {
            let e = Cidr::parse(bad).unwrap_err();
            assert!(e.contains(&format!("did you mean {meant}?")), "{e}");
        }
        for bad in [
            "10.1.2.3/8",
            "10.0.0.0/33",
            "x",
            "",
            "10.0.0.0/",
            "10.0.0.0/08",
            "2001:db8::1/32",
            "1.2.3.4/+8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    /// The 128-bit match agrees with matching each family in its own width.
    #[test]
    fn wide_match_agrees_with_per_family_match() {
        let v4_mask = |len: u32| u32::MAX.checked_shl(32 - len).unwrap_or(0);
        let by_family = |c: &Cidr, ip: IpAddr| match (c.addr(), canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                u32::from(a) & v4_mask(c.prefix_len()) == u32::from(n)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                u128::from(a) & mask128(c.prefix_len()) == u128::from(n)
            }
            _ => false,
        };
        // `addr` with the bits below a `len`-bit prefix cleared, in its own width.
        let network = |addr: IpAddr, len: u32| match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & v4_mask(len)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(len)).into()),
        };
        let v4: [IpAddr; 4] = [
            "10.1.2.3".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            "::ffff:10.1.2.3".parse().unwrap(),
        ];
        let v6: [IpAddr; 3] = [
            "2001:db8::1".parse().unwrap(),
            "ffff::".parse().unwrap(),
            "::".parse().unwrap(),
        ];
        for ip in v4.iter().chain(&v6) {
            for len in 0..=128u32 {
                for (base, max) in [(v4[0], 32), (v4[1], 32), (v6[0], 128), (v6[1], 128)] {
                    if len > max {
                        continue;
                    }
                    let addr = network(base, len);
                    let c = Cidr::parse(&format!("{addr}/{len}")).unwrap();
                    assert_eq!(c.contains(*ip), by_family(&c, *ip), "{c} {ip}");
                }
            }
        }
    }
}
