//! How typed settings are spelled in TOML and on the command line: durations as whole seconds or
//! milliseconds, optional values as an empty string when unset.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An `Option` spelled `""` when `None`, in TOML and as a flag value (`--metrics-address=""`
/// disables the listener). An alias, not `Option<T>` itself, so that clap hands the whole value to
/// [`or_empty::parse`] instead of making the flag's presence the option.
pub type OrEmpty<T> = Option<T>;

/// A serde `with` module and a flag parser for a duration spelled as a whole number of units.
macro_rules! whole_units {
    ($name:ident, $from:ident, $nanos_per_unit:expr, $unit:literal, $example:literal) => {
        #[doc = concat!("A duration spelled as whole ", $unit, " (", $example, ").")]
        pub mod $name {
            use super::*;

            pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_u64(u64::try_from(d.as_nanos() / $nanos_per_unit).unwrap_or(u64::MAX))
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
                u64::deserialize(d).map(Duration::$from)
            }

            /// A flag value.
            pub fn parse(s: &str) -> Result<Duration, String> {
                s.parse()
                    .map(Duration::$from)
                    .map_err(|e| format!(concat!("expected whole ", $unit, ": {}"), e))
            }
        }
    };
}

whole_units!(
    secs,
    from_secs,
    1_000_000_000,
    "seconds",
    "`timeout_seconds = 60`"
);
whole_units!(
    millis,
    from_millis,
    1_000_000,
    "milliseconds",
    "`backoff_base_ms = 100`"
);

/// [`OrEmpty`] in TOML and as a flag value.
pub mod or_empty {
    use super::*;

    pub fn serialize<T: Serialize, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => v.serialize(s),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// `""` is `None`, anything else must parse as a `T`.
    pub fn parse<T: FromStr>(s: &str) -> Result<Option<T>, String>
    where
        T::Err: Display,
    {
        if s.is_empty() {
            return Ok(None);
        }
        s.parse()
            .map(Some)
            .map_err(|e| format!("{e} (or \"\" for none)"))
    }
}

/// A list of directories spelled as a TOML array or, as containerd's `config_path` is, one
/// colon-separated string (`"/etc/containerd/certs.d:/etc/docker/certs.d"`); written back as an
/// array. Empty parts are dropped.
pub mod path_list {
    use super::*;
    use std::path::PathBuf;

    pub fn serialize<S: Serializer>(v: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Spelled {
            Joined(String),
            List(Vec<PathBuf>),
        }
        let spelled = Spelled::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a path list: an array or a colon-separated string")
        })?;
        Ok(match spelled {
            Spelled::Joined(s) => split(&s),
            Spelled::List(v) => v,
        })
    }

    /// The directories of a colon-separated string.
    pub fn split(s: &str) -> Vec<PathBuf> {
        s.split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect()
    }
}
