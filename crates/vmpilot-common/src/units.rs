//! Sizes and durations as users write them, in flags and in the config.
//!
//! Memory is counted in MiB everywhere inside vmpilot (what hypervisors and batch systems
//! agree on); a bare number means MiB, as in Slurm's `--mem`. Durations use humantime's
//! syntax (`90s`, `2h 30m`); a bare number means seconds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in whole MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct MemSize(pub u64);

impl MemSize {
    /// The size in MiB.
    pub fn mib(self) -> u64 {
        self.0
    }
}

/// Why a size or duration could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    /// The text is not a size.
    #[error("`{0}` is not a size: use a number of MiB or a number with M, G or T (e.g. 512M, 4G)")]
    BadSize(String),
    /// The text is not a duration.
    #[error("`{text}` is not a duration: {why} (use e.g. 90s, 15m, 2h 30m)")]
    BadDuration {
        /// What the user wrote.
        text: String,
        /// humantime's explanation.
        why: String,
    },
}

impl FromStr for MemSize {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || UnitError::BadSize(text.to_string());
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, suffix) = trimmed.split_at(split);
        let number: u64 = digits.parse().map_err(|_| bad())?;
        let factor = match suffix.trim().to_ascii_lowercase().as_str() {
            "" | "m" | "mb" | "mib" => 1,
            "g" | "gb" | "gib" => 1024,
            "t" | "tb" | "tib" => 1024 * 1024,
            _ => return Err(bad()),
        };
        number.checked_mul(factor).map(MemSize).ok_or_else(bad)
    }
}

impl fmt::Display for MemSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 && self.0.is_multiple_of(1024 * 1024) {
            write!(f, "{}T", self.0 / (1024 * 1024))
        } else if self.0 != 0 && self.0.is_multiple_of(1024) {
            write!(f, "{}G", self.0 / 1024)
        } else {
            write!(f, "{}M", self.0)
        }
    }
}

/// A span of time as the user wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// Build from whole seconds.
    pub fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    /// The std duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if let Ok(secs) = trimmed.parse::<u64>() {
            return Ok(Duration::from_secs(secs));
        }
        humantime::parse_duration(trimmed)
            .map(Duration)
            .map_err(|e| UnitError::BadDuration {
                text: text.to_string(),
                why: e.to_string(),
            })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A TOML value that may be written as a string (`"4G"`, `"90s"`) or a bare integer.
#[derive(Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Text(String),
    Number(u64),
}

impl<'de> Deserialize<'de> for MemSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match TextOrNumber::deserialize(d)? {
            TextOrNumber::Text(t) => t.parse().map_err(serde::de::Error::custom),
            TextOrNumber::Number(n) => Ok(MemSize(n)),
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match TextOrNumber::deserialize(d)? {
            TextOrNumber::Text(t) => t.parse().map_err(serde::de::Error::custom),
            TextOrNumber::Number(n) => Ok(Duration::from_secs(n)),
        }
    }
}

impl Serialize for MemSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_the_documented_forms() {
        assert_eq!("512".parse::<MemSize>(), Ok(MemSize(512)));
        assert_eq!("512M".parse::<MemSize>(), Ok(MemSize(512)));
        assert_eq!("4G".parse::<MemSize>(), Ok(MemSize(4096)));
        assert_eq!("4gib".parse::<MemSize>(), Ok(MemSize(4096)));
        assert_eq!("1T".parse::<MemSize>(), Ok(MemSize(1024 * 1024)));
        assert_eq!(" 2 G ".parse::<MemSize>(), Ok(MemSize(2048)));
    }

    #[test]
    fn sizes_reject_nonsense_and_overflow() {
        for bad in ["", "G", "4X", "-1", "1.5G", "4K", "99999999999999999999T"] {
            assert!(bad.parse::<MemSize>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(MemSize(512).to_string(), "512M");
        assert_eq!(MemSize(4096).to_string(), "4G");
        assert_eq!(MemSize(1536).to_string(), "1536M");
    }

    #[test]
    fn durations_accept_seconds_and_humantime() {
        assert_eq!("30".parse::<Duration>(), Ok(Duration::from_secs(30)));
        assert_eq!("30s".parse::<Duration>(), Ok(Duration::from_secs(30)));
        assert_eq!("1h 30m".parse::<Duration>(), Ok(Duration::from_secs(5400)));
        assert!("soon".parse::<Duration>().is_err());
    }
}
