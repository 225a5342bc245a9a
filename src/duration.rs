//! Durations as the config writes them: a number with a unit (`500ms`, `90s`, `30m`, `4h`, `1d`),
//! or `0` (off). A bare number other than 0 is refused: `30` could mean seconds or minutes.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A config duration; `Display` gives back the canonical form (`90s`, `4h`, `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// True for `0` (the feature it configures is off).
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// Seconds (whole and fractional).
    pub fn as_secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }
}

const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

impl FromStr for ConfigDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "0" {
            return Ok(ConfigDuration(Duration::ZERO));
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || {
            format!("duration {s:?} is not a number with a unit (ms, s, m, h, d), e.g. 90s, 30m, 4h; or 0")
        };
        if num.is_empty() {
            return Err(bad());
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        let (_, ms) = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(bad)?;
        let total = n
            .checked_mul(*ms)
            .filter(|&v| v <= 366 * 86_400_000)
            .ok_or_else(|| format!("duration {s:?} is longer than a year"))?;
        Ok(ConfigDuration(Duration::from_millis(total)))
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis() as u64;
        if ms == 0 {
            return f.write_str("0");
        }
        let (unit, per) = UNITS
            .iter()
            .rev()
            .find(|(_, per)| ms.is_multiple_of(*per))
            .copied()
            .unwrap_or(("ms", 1));
        write!(f, "{}{unit}", ms / per)
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // YAML reads `0` as a number; everything else must be a string with a unit.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(0) => Ok(ConfigDuration(Duration::ZERO)),
            Raw::Int(n) => Err(serde::de::Error::custom(format!(
                "duration {n} has no unit; write {n}s, {n}m or {n}h (or 0 for off)"
            ))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl serde::Serialize for ConfigDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::ConfigDuration;
    use std::time::Duration;

    #[test]
    fn parses_units_and_zero_and_refuses_the_rest() {
        let p = |s: &str| s.parse::<ConfigDuration>().map(|d| d.0);
        assert_eq!(p("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(p("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(p("4h"), Ok(Duration::from_secs(14_400)));
        assert_eq!(p("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(p("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(p("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "30", "1.5h", "-1s", "5 m", "3w", "400d"] {
            assert!(p(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        for (s, shown) in [
            ("90s", "90s"),
            ("120s", "2m"),
            ("240m", "4h"),
            ("1500ms", "1500ms"),
            ("0", "0"),
        ] {
            assert_eq!(s.parse::<ConfigDuration>().unwrap().to_string(), shown);
        }
    }

    #[test]
    fn yaml_bare_zero_is_off_and_other_bare_numbers_are_refused() {
        let z: ConfigDuration = serde_yaml::from_str("0").unwrap();
        assert!(z.is_zero());
        let e = serde_yaml::from_str::<ConfigDuration>("30")
            .unwrap_err()
            .to_string();
        assert!(e.contains("30s"), "{e}");
    }
}
