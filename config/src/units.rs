//! Byte sizes written the way Redis and nginx users write them.
//!
//! `32mb`, `8 MiB`, `512k` or a bare integer of bytes. Following Redis's
//! config rules, `k`/`m`/`g` are powers of 1000 and `kb`/`mb`/`gb` (and the
//! explicit `kib`/`mib`/`gib`) are powers of 1024, so a value copied from a
//! `redis.conf` means the same thing here.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// Why a size, a duration or an IP network in a config does not parse;
/// the text is what the user is shown, beside the file, line and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("`{0}` is not a size (expected e.g. 1024, 64kb, 32mb)")]
    NotASize(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
    #[error("unknown size unit `{unit}` in `{text}` (use b, k, kb, m, mb, g, gb)")]
    SizeUnit { unit: String, text: String },
    #[error("`{0}` is not a duration (expected e.g. 250ms, 5s, 2m, 1h)")]
    NotADuration(String),
    #[error("unknown duration unit `{unit}` in `{text}` (use ms, s, m, h, d)")]
    DurationUnit { unit: String, text: String },
    #[error("`{0}` is too long")]
    TooLong(String),
    #[error("`{0}` is not an IP network (expected e.g. 10.0.0.0/8 or ::1)")]
    NotANetwork(String),
    #[error("`{text}`: prefix length must be 0..={max}")]
    Prefix { text: String, max: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `"32mb"`-style strings; the error text is shown to the user.
    pub fn parse(text: &str) -> Result<ByteSize, UnitError> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        if digits.is_empty() {
            return Err(UnitError::NotASize(text.into()));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| UnitError::TooLarge(text.into()))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" => 1000,
            "kb" | "kib" => 1024,
            "m" => 1000 * 1000,
            "mb" | "mib" => 1024 * 1024,
            "g" => 1000 * 1000 * 1000,
            "gb" | "gib" => 1024 * 1024 * 1024,
            other => {
                return Err(UnitError::SizeUnit {
                    unit: other.into(),
                    text: text.into(),
                })
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| UnitError::TooLarge(text.into()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes, as an integer or a string like \"32mb\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_style_units() {
        let cases = [
            ("0", 0),
            ("1024", 1024),
            ("1k", 1000),
            ("1kb", 1024),
            ("32mb", 32 * 1024 * 1024),
            ("8 MiB", 8 * 1024 * 1024),
            ("2m", 2_000_000),
            ("1gb", 1 << 30),
            ("1G", 1_000_000_000),
        ];
        for (text, want) in cases {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(want)), "{text}");
        }
    }

    #[test]
    fn rejects_nonsense() {
        for text in [
            "",
            "mb",
            "12xb",
            "-1",
            "99999999999999999999",
            "18446744073709551615gb",
        ] {
            assert!(ByteSize::parse(text).is_err(), "{text} should fail");
        }
    }
}

/// A duration written `250ms`, `5s`, `2m`, `1h`, `1d`, or a bare integer of
/// seconds; `0` usually means "no limit" where a setting says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn secs(s: u64) -> Duration {
        Duration(std::time::Duration::from_secs(s))
    }

    pub const fn millis(ms: u64) -> Duration {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    pub fn parse(text: &str) -> Result<Duration, UnitError> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| UnitError::NotADuration(text.into()))?;
        let ms: u64 = match unit.trim() {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(UnitError::DurationUnit {
                    unit: other.into(),
                    text: text.into(),
                })
            }
        };
        n.checked_mul(ms)
            .map(|ms| Duration(std::time::Duration::from_millis(ms)))
            .ok_or_else(|| UnitError::TooLong(text.into()))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration: seconds as an integer, or a string like \"250ms\", \"5s\", \"1h\"",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(Duration::secs)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::secs(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// An IP network such as `10.0.0.0/8` or `::1/128`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, UnitError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| UnitError::NotANetwork(text.into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| UnitError::Prefix {
                    text: text.into(),
                    max,
                })?,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        // An IPv4 client seen through an IPv6 socket is still that IPv4 client.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Cidr::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Duration::parse("250ms"), Ok(Duration::millis(250)));
        assert_eq!(Duration::parse("5s"), Ok(Duration::secs(5)));
        assert_eq!(Duration::parse("2m"), Ok(Duration::secs(120)));
        assert_eq!(Duration::parse("1h"), Ok(Duration::secs(3600)));
        assert_eq!(Duration::parse("7"), Ok(Duration::secs(7)));
        assert!(Duration::parse("5 parsecs").is_err());
        assert!(Duration::parse("-1s").is_err());
        assert_eq!(Duration::millis(1500).to_string(), "1500ms");
        assert_eq!(Duration::secs(60).to_string(), "60s");
    }

    #[test]
    fn cidrs() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.1.0.9".parse().unwrap()),
            "v4-mapped v6"
        );
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert_eq!(one.prefix, 32);
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let odd = Cidr::parse("192.168.1.128/25").unwrap();
        assert!(odd.contains("192.168.1.200".parse().unwrap()));
        assert!(!odd.contains("192.168.1.100".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("example.com").is_err());
    }
}
