//! [`RateLimit`], the value of `[server] rate_limit` and `[[queue]] rate_limit`: `"off"` or a
//! count per second or per minute (`"500/s"`, `"30000/m"`), parsed once when the config is
//! read.
//!
//! This file owns the syntax only; the limiter that enforces the server's is
//! `crate::api::rate_limit`, a queue's is the broker's (`hopper_workers::broker::rate`).

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use hopper_workers::broker::JobRate;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The period of a [`RateLimit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Per {
    Second,
    Minute,
}

/// `[server] rate_limit`: how many `/v1` requests one token (or, with auth off, one client
/// address) may make.
///
/// ```
/// use hopper::config::RateLimit;
/// assert_eq!("500/s".parse::<RateLimit>().unwrap().per_second_ceil(), Some(500));
/// assert_eq!("off".parse::<RateLimit>().unwrap(), RateLimit::Off);
/// assert!("0/s".parse::<RateLimit>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RateLimit {
    /// No limit.
    #[default]
    Off,
    /// `count` requests per `per`, replenished evenly.
    Every { count: NonZeroU32, per: Per },
}

impl RateLimit {
    /// Whether this is `"off"`.
    pub fn is_off(&self) -> bool {
        matches!(self, Self::Off)
    }

    /// The rate as the broker enforces a queue's (`[[queue]] rate_limit`); `None` when off.
    pub fn job_rate(self) -> Option<JobRate> {
        match self {
            Self::Off => None,
            Self::Every { count, per } => JobRate::new(
                count.get(),
                match per {
                    Per::Second => Duration::from_secs(1),
                    Per::Minute => Duration::from_secs(60),
                },
            ),
        }
    }

    /// Requests a second, rounded up (at least 1): the default burst. `None` when off.
    pub fn per_second_ceil(self) -> Option<u32> {
        match self {
            Self::Off => None,
            Self::Every {
                count,
                per: Per::Second,
            } => Some(count.get()),
            Self::Every {
                count,
                per: Per::Minute,
            } => Some(count.get().div_ceil(60)),
        }
    }
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        let bad = || {
            format!(
                "{text:?} is not a rate; expected COUNT/s or COUNT/m with COUNT at least 1 \
                 (e.g. \"500/s\", \"30000/m\"), or \"off\""
            )
        };
        let (count, per) = t.split_once('/').ok_or_else(bad)?;
        let count = count.trim().parse::<NonZeroU32>().map_err(|_| bad())?;
        let per = match per.trim() {
            "s" => Per::Second,
            "m" => Per::Minute,
            _ => return Err(bad()),
        };
        Ok(Self::Every { count, per })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Every { count, per } => {
                let unit = match per {
                    Per::Second => "s",
                    Per::Minute => "m",
                };
                write!(f, "{count}/{unit}")
            }
        }
    }
}

impl Serialize for RateLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
