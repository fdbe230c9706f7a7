//! Sizes and durations as people write and read them: `256MiB`, `1.5GB`,
//! `4096`; `1s`, `250ms`, `2m`, `1h30m`, `1.5`. One parser and one printer
//! of each for every crate and flag (Slurm's own `HH:MM:SS` walltimes are
//! `wrun-slurm`'s, since they are Slurm's format, not ours).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Parses a size in bytes: a number with an optional unit. Binary units
/// (`KiB`, `MiB`, `GiB`, `TiB`, and `K`, `M`, `G`, `T` alone) are powers of
/// 1024; decimal ones (`KB`, `MB`, `GB`, `TB`) powers of 1000; `B` or no
/// unit means bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (try 256MiB or 1GB)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration: one or more `<number><unit>` parts with units `us`,
/// `ms`, `s`, `m`, `h`, `d`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration (try 1s, 250ms, 2m or 1h30m)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if let Ok(seconds) = rest.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|_| bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..split].parse().map_err(|_| bad())?;
        rest = &rest[split..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => number / 1e3,
            "us" | "µs" => number / 1e6,
            "s" | "sec" => number,
            "m" | "min" => number * 60.0,
            "h" => number * 3600.0,
            "d" => number * 86400.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(seconds).map_err(|_| bad())?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// `1.5 s`, `250 ms`: a duration for people.
pub fn humanize_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{} s", trim_float(d.as_secs_f64()))
    } else {
        format!("{} ms", trim_float(d.as_secs_f64() * 1e3))
    }
}

/// `256 MiB`, `1.5 KiB`, `17 B`: a size for people.
pub fn humanize_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{} {}", trim_float(value), UNITS[unit])
}

fn trim_float(x: f64) -> String {
    let text = format!("{x:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A size that parses with [`parse_size`] and prints in a form it parses
/// again (`256MiB`), for flags whose default is shown in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(text: &str) -> Result<ByteSize, String> {
        parse_size(text).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A duration that parses with [`parse_duration`] and prints in a form it
/// parses again (`60s`, `250ms`), for flags whose default is shown in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(text: &str) -> Result<HumanDuration, String> {
        parse_duration(text).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.as_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}us", d.as_micros())
        }
    }
}

/// Sizes and durations in files (TOML, JSON) are written as people write
/// them (`"1GiB"`, `"10m"`); a bare number of bytes or seconds is taken too.
macro_rules! serde_as_text {
    ($type:ty, $from_number:expr) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$type, D::Error> {
                #[derive(serde::Deserialize)]
                #[serde(untagged)]
                enum Text {
                    Number(u64),
                    Text(String),
                }
                match Text::deserialize(d)? {
                    Text::Number(n) => Ok($from_number(n)),
                    Text::Text(text) => text.parse().map_err(serde::de::Error::custom),
                }
            }
        }
    };
}

serde_as_text!(ByteSize, ByteSize);
serde_as_text!(HumanDuration, |n| HumanDuration(Duration::from_secs(n)));

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

impl From<ByteSize> for u64 {
    fn from(size: ByteSize) -> u64 {
        size.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(
            parse_size("5 parsecs")
                .unwrap_err()
                .contains("unknown size unit")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn printed_forms_parse_back() {
        for bytes in [0, 1, 1000, 1 << 10, 256 << 20, 3 << 30, (1 << 20) + 1] {
            let printed = ByteSize(bytes).to_string();
            assert_eq!(printed.parse::<ByteSize>().unwrap().0, bytes, "{printed}");
        }
        assert_eq!(ByteSize(256 << 20).to_string(), "256MiB");
        for d in [
            Duration::ZERO,
            Duration::from_secs(60),
            Duration::from_millis(250),
            Duration::from_micros(1500),
        ] {
            let printed = HumanDuration(d).to_string();
            assert_eq!(printed.parse::<HumanDuration>().unwrap().0, d, "{printed}");
        }
        assert_eq!(humanize_bytes(256 << 20), "256 MiB");
        assert_eq!(humanize_duration(Duration::from_millis(1500)), "1.5 s");
    }
}
