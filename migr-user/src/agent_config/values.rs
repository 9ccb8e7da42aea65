//! Setting values that carry their own range check, so that a flag and a
//! config-file key refuse the same values with the same words: each type
//! parses from a string (clap) and deserializes (serde, for TOML) through
//! one `check`.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

/// `FromStr` (a flag), `Deserialize` (a config key) and `Serialize` for a
/// newtype over `$raw` whose `check(raw)` decides what it takes: the raw
/// value is parsed (a flag that does not parse is "not $what") and checked.
macro_rules! checked_value {
    ($ty:ident, $raw:ty, $what:literal) => {
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let v = s
                    .parse::<$raw>()
                    .map_err(|e| format!("{s:?} is not {}: {e}", $what))?;
                Self::check(v)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::check(<$raw>::deserialize(d)?).map_err(D::Error::custom)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }
    };
}

/// An integer in `MIN..=MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounded<const MIN: u64, const MAX: u64>(pub u64);

impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
    fn check(v: u64) -> Result<Self, String> {
        match (v >= MIN, v <= MAX, MAX) {
            (true, true, _) => Ok(Self(v)),
            (_, _, u64::MAX) => Err(format!("{v} is out of range: must be at least {MIN}")),
            _ => Err(format!("{v} is out of range: must be from {MIN} to {MAX}")),
        }
    }
}

impl<const MIN: u64, const MAX: u64> FromStr for Bounded<MIN, MAX> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v = s
            .parse::<u64>()
            .map_err(|e| format!("{s:?} is not a whole number: {e}"))?;
        Self::check(v)
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::check(u64::deserialize(d)?).map_err(D::Error::custom)
    }
}

impl<const MIN: u64, const MAX: u64> Serialize for Bounded<MIN, MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// At least 1 (a bound of 0 would refuse everything).
pub type AtLeastOne = Bounded<1, { u64::MAX }>;
/// The datapath lease: long enough to outlast a scheduling hiccup, short
/// enough that a dead agent's frames pass within the hour.
pub type LeaseMs = Bounded<100, 3_600_000>;

/// The kernel park ring's size: the kernel takes only a power of two that
/// is a whole number of pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBytes(pub u32);

impl RingBytes {
    pub const MIN: u32 = 4096;
    fn check(v: u64) -> Result<Self, String> {
        match u32::try_from(v) {
            Ok(v) if v.is_power_of_two() && v >= Self::MIN => Ok(Self(v)),
            _ => Err(format!(
                "{v} is out of range: must be a power of two from {} to {}",
                Self::MIN,
                1u64 << 31
            )),
        }
    }
}

checked_value!(RingBytes, u64, "a whole number");

/// A positive, finite number of seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Seconds(pub f64);

impl Seconds {
    fn check(v: f64) -> Result<Self, String> {
        if v.is_finite() && v > 0.0 {
            Ok(Self(v))
        } else {
            Err(format!(
                "{v} is out of range: must be a positive number of seconds"
            ))
        }
    }
}

checked_value!(Seconds, f64, "a number");

/// An interface name as the kernel takes it: 1 to 15 bytes, no `/`, no
/// white space, not `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfName(pub String);

impl IfName {
    fn check(name: String) -> Result<Self, String> {
        let bad_char = name.chars().any(|c| c == '/' || c.is_whitespace());
        if name.is_empty() || name.len() > 15 || bad_char || name == "." || name == ".." {
            return Err(format!(
                "{name:?} is not an interface name (1 to 15 bytes, no '/' or white space)"
            ));
        }
        Ok(Self(name))
    }
}

checked_value!(IfName, String, "a string");

/// serde for the agent's enums that have `FromStr` and `Display` (the
/// attach mode, the forward path): the config file spells them as the flag
/// does.
pub mod as_text {
    use super::*;

    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: fmt::Display,
    {
        let text = String::deserialize(d)?;
        text.parse().map(Some).map_err(D::Error::custom)
    }

    pub fn serialize<S: Serializer, T: fmt::Display>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }
}
