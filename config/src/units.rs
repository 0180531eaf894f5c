//! Byte sizes written the way Redis and nginx users write them.
//!
//! `32mb`, `8 MiB`, `512k` or a bare integer of bytes. Following Redis's
//! config rules, `k`/`m`/`g` are powers of 1000 and `kb`/`mb`/`gb` (and the
//! explicit `kib`/`mib`/`gib`) are powers of 1024, so a value copied from a
//! `redis.conf` means the same thing here.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `"32mb"`-style strings; the error text is shown to the user.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        if digits.is_empty() {
            return Err(format!(
                "`{text}` is not a size (expected e.g. 1024, 64kb, 32mb)"
            ));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{text}` is too large"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" => 1000,
            "kb" | "kib" => 1024,
            "m" => 1000 * 1000,
            "mb" | "mib" => 1024 * 1024,
            "g" => 1000 * 1000 * 1000,
            "gb" | "gib" => 1024 * 1024 * 1024,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{text}` (use b, k, kb, m, mb, g, gb)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
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
