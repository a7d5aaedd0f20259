//! Human-friendly value types for the configuration file: durations like `10m` or `30d` and sizes
//! like `500GiB`. They validate while deserialising, so a bad value is reported by the TOML parser
//! with the key's line and column, like every other error in the file.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written the way people write them: `90s`, `10m`, `12h`, `30d`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| {
                format!("invalid duration {s:?} ({e}); write e.g. \"90s\", \"10m\", \"30d\"")
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A byte size: `500GiB`, `10 GB`, `64MiB`, or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn gib(n: u64) -> Self {
        ByteSize(n << 30)
    }
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| ByteSize(b.as_u64()))
            .map_err(|e| {
                format!("invalid size {s:?} ({e}); write e.g. \"500GiB\", \"10GB\", \"64MiB\"")
            })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"500GiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl ByteSize {
    /// The exact form written back into TOML: the largest IEC unit the size is a whole multiple
    /// of (`5020GiB`), else plain bytes. `Display` rounds (`4.9 TiB`), which would silently
    /// change the size when a serialised configuration is read again.
    pub fn exact(&self) -> String {
        const UNITS: [&str; 6] = ["EiB", "PiB", "TiB", "GiB", "MiB", "KiB"];
        for (i, unit) in UNITS.iter().enumerate() {
            let shift = 10 * (UNITS.len() - i) as u32;
            if self.0 != 0 && self.0.trailing_zeros() >= shift {
                return format!("{}{unit}", self.0 >> shift);
            }
        }
        format!("{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.exact())
    }
}

/// A bandwidth: bits per second with `bit`, `Kbit`, `Mbit`, `Gbit` (decimal: `100Mbit` is
/// 100 000 000 bit/s), or bytes per second with `B`, `KB`, `MB`, `GB` (decimal) and `KiB`,
/// `MiB`, `GiB`; an optional `/s` is allowed. `0` (number or string) means no cap. Kept as
/// bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Rate(pub u64);

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid rate {s:?}; write e.g. \"200Mbit\", \"1Gbit\", \"25MB\" (bytes per second) or 0 for no cap"
            )
        };
        let t = s.trim();
        let t = t.strip_suffix("/s").unwrap_or(t).trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| bad())?;
        let bytes_per_unit: f64 = match unit.trim() {
            "" if num == 0.0 => 0.0,
            "bit" | "bps" => 1.0 / 8.0,
            "Kbit" | "kbit" => 1e3 / 8.0,
            "Mbit" | "mbit" => 1e6 / 8.0,
            "Gbit" | "gbit" => 1e9 / 8.0,
            "B" => 1.0,
            "KB" | "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "KiB" => 1024.0,
            "MiB" => (1u64 << 20) as f64,
            "GiB" => (1u64 << 30) as f64,
            _ => return Err(bad()),
        };
        let v = num * bytes_per_unit;
        if !v.is_finite() || v >= u64::MAX as f64 {
            return Err(bad());
        }
        if num > 0.0 && v < 1.0 {
            return Err(format!("rate {s:?} is below one byte per second"));
        }
        Ok(Rate(v.round() as u64))
    }
}

impl fmt::Display for Rate {
    /// Bits per second, the way links are sold: `100Mbit`, or `0` for none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.0 as u128 * 8;
        if bits == 0 {
            return f.write_str("0");
        }
        for (unit, n) in [
            ("Gbit", 1_000_000_000u128),
            ("Mbit", 1_000_000),
            ("Kbit", 1000),
        ] {
            if bits % n == 0 {
                return write!(f, "{}{unit}", bits / n);
            }
        }
        if self.0 % 1_000_000 == 0 {
            return write!(f, "{}MB", self.0 / 1_000_000);
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate such as \"200Mbit\" or 0")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Rate, E> {
                if v == 0 {
                    Ok(Rate(0))
                } else {
                    Err(E::custom(format!(
                        "a rate needs a unit (\"{v}Mbit\", \"{v}MB\"); only 0 goes without"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Rate, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("a rate cannot be negative ({v})")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Rate, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!("100Mbit".parse::<Rate>().unwrap(), Rate(12_500_000));
        assert_eq!("1Gbit".parse::<Rate>().unwrap(), Rate(125_000_000));
        assert_eq!("25MB".parse::<Rate>().unwrap(), Rate(25_000_000));
        assert_eq!("2MiB/s".parse::<Rate>().unwrap(), Rate(2 << 20));
        assert_eq!("0".parse::<Rate>().unwrap(), Rate(0));
        assert!("100".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
        for r in ["100Mbit", "1Gbit", "25MB", "3B", "0"] {
            let v: Rate = r.parse().unwrap();
            assert_eq!(v.to_string().parse::<Rate>().unwrap(), v, "{r}");
        }
        assert_eq!(Rate(12_500_000).to_string(), "100Mbit");
    }

    #[test]
    fn durations() {
        assert_eq!(
            "10m".parse::<HumanDuration>().unwrap(),
            HumanDuration::secs(600)
        );
        assert_eq!(
            "30d".parse::<HumanDuration>().unwrap(),
            HumanDuration::secs(30 * 86400)
        );
        assert_eq!(
            "1h 30m".parse::<HumanDuration>().unwrap(),
            HumanDuration::secs(5400)
        );
        assert!("ten minutes".parse::<HumanDuration>().is_err());
        assert!("-5m".parse::<HumanDuration>().is_err());
    }

    /// Found by the `config_parse` fuzz target: `max_size = "5020GiB"` serialised as
    /// `"4.9 TiB"` and so read back as a different size.
    #[test]
    fn sizes_serialise_exactly() {
        for n in [
            0,
            1,
            1023,
            1024,
            5020 << 30,
            (5020 << 30) + 1,
            10_000_000_000,
            u64::MAX,
            1 << 63,
        ] {
            let text = ByteSize(n).exact();
            assert_eq!(text.parse::<ByteSize>().unwrap(), ByteSize(n), "{text}");
        }
        assert_eq!(ByteSize::gib(5020).exact(), "5020GiB");
        assert_eq!(ByteSize(1536).exact(), "1536B");
    }

    #[test]
    fn sizes() {
        assert_eq!("500GiB".parse::<ByteSize>().unwrap(), ByteSize::gib(500));
        assert_eq!("64 MiB".parse::<ByteSize>().unwrap(), ByteSize::mib(64));
        assert_eq!(
            "10GB".parse::<ByteSize>().unwrap(),
            ByteSize(10_000_000_000)
        );
        assert!("lots".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize::gib(500).to_string(), "500.0 GiB");
    }
}
