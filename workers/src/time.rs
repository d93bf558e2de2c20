//! [`Timestamp`]: a point in time as Hopper stores and shows it. Milliseconds since the Unix
//! epoch inside (what SQLite and Redis store cheaply, and what orders as an integer), RFC 3339
//! on the wire (`2030-01-01T09:00:00.000Z`), with saturating duration arithmetic so no caller
//! converts `Duration` to milliseconds by hand.
//!
//! Reading the current time is [`crate::clock`]'s business, not this module's.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds since the Unix epoch, as brokers store them.
pub type Millis = i64;

/// A point in time, to the millisecond.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(Millis);

/// Why a text is not a [`Timestamp`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("{0:?} is not an RFC 3339 time with a zone, e.g. 2030-01-01T09:00:00Z")]
    Format(String),
    #[error("{0:?} is before 1970-01-01T00:00:00Z")]
    BeforeEpoch(String),
}

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Self = Self(0);

    /// From milliseconds since the epoch.
    pub const fn from_millis(ms: Millis) -> Self {
        Self(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> Millis {
        self.0
    }

    /// Parses an RFC 3339 time with a zone (`Z` or `±HH:MM`). A time without a zone is
    /// refused: guessing one would run jobs hours early or late.
    pub fn parse(text: &str) -> Result<Self, TimestampError> {
        let s = text.trim();
        let bad = || TimestampError::Format(text.to_owned());
        // chrono also takes a space between date and time; RFC 3339's grammar says `T`.
        if !s
            .get(10..11)
            .is_some_and(|sep| sep.eq_ignore_ascii_case("t"))
        {
            return Err(bad());
        }
        let t = DateTime::parse_from_rfc3339(s).map_err(|_| bad())?;
        let ms = t.timestamp_millis();
        if ms < 0 {
            return Err(TimestampError::BeforeEpoch(text.to_owned()));
        }
        Ok(Self(ms))
    }

    /// RFC 3339 in UTC with milliseconds, e.g. `2030-01-01T09:00:00.000Z`. Never panics: a
    /// time chrono cannot show (hundreds of thousands of years out) shows as the millisecond
    /// count.
    pub fn to_rfc3339(self) -> String {
        match DateTime::<Utc>::from_timestamp_millis(self.0) {
            Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
            None => self.0.to_string(),
        }
    }

    /// `self + d`, saturating.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_ms(d)))
    }

    /// `self - d`, saturating.
    #[must_use]
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(duration_ms(d)))
    }

    /// How long after `earlier` this is; zero when it is not after.
    pub fn since(self, earlier: Self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

/// A duration in whole milliseconds, saturating at `i64::MAX`.
pub fn duration_ms(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// `t + d` is [`Timestamp::saturating_add`]: a time far enough out to overflow is "never"
/// either way.
impl Add<Duration> for Timestamp {
    type Output = Self;

    fn add(self, d: Duration) -> Self {
        self.saturating_add(d)
    }
}

/// `t - d` is [`Timestamp::saturating_sub`].
impl Sub<Duration> for Timestamp {
    type Output = Self;

    fn sub(self, d: Duration) -> Self {
        self.saturating_sub(d)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

/// Reads RFC 3339 (what [`Serialize`] writes) or a plain integer of milliseconds: jobs and
/// events were written with integer times before they carried a `Timestamp`, and a job built
/// from JSON by hand (tests, fixtures) is simplest with `"run_at": 0`.
impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TimestampVisitor)
    }
}

struct TimestampVisitor;

impl serde::de::Visitor<'_> for TimestampVisitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 time with a zone, or milliseconds since the Unix epoch")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
        Timestamp::parse(v).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Timestamp, E> {
        Ok(Timestamp::from_millis(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Timestamp, E> {
        i64::try_from(v)
            .map(Timestamp::from_millis)
            .map_err(|_| E::custom(format!("{v} ms is out of range")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Option<Millis> {
        Timestamp::parse(s).ok().map(Timestamp::as_millis)
    }

    #[test]
    fn rfc3339_round_trips() {
        assert_eq!(Timestamp::EPOCH.to_rfc3339(), "1970-01-01T00:00:00.000Z");
        let t = Timestamp::from_millis(1_900_000_000_123);
        assert_eq!(Timestamp::parse(&t.to_rfc3339()), Ok(t));
        let json = serde_json::to_string(&t).expect("serialize");
        assert_eq!(json, "\"2030-03-17T17:46:40.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).ok(), Some(t));
        assert_eq!(
            serde_json::from_str::<Timestamp>("1900000000123").ok(),
            Some(t)
        );
        assert!(serde_json::from_str::<Timestamp>("\"tomorrow\"").is_err());
        assert!(serde_json::from_str::<Timestamp>("1.5").is_err());
    }

    #[test]
    fn offsets_are_applied() {
        let z = at("2030-01-01T12:00:00Z");
        assert!(z.is_some());
        assert_eq!(at("2030-01-01T14:00:00+02:00"), z);
        assert_eq!(at("2030-01-01T07:30:00-04:30"), z);
        assert_eq!(
            at("2030-01-01T12:00:00.250Z").map(|m| m - z.unwrap_or(0)),
            Some(250)
        );
    }

    #[test]
    fn zoneless_and_garbage_are_refused() {
        for bad in [
            "2030-01-01T12:00:00",
            "2030-01-01 12:00:00Z",
            "tomorrow",
            "",
            "2030-13-01T00:00:00Z",
            "2030-01-01T00:00:00+2:00",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
        assert_eq!(
            Timestamp::parse("1969-12-31T23:59:59Z"),
            Err(TimestampError::BeforeEpoch("1969-12-31T23:59:59Z".into()))
        );
    }

    #[test]
    fn far_futures_format_without_panicking() {
        let far = Timestamp::EPOCH.saturating_add(Duration::from_secs(10_000 * 366 * 86_400));
        assert!(far.to_rfc3339().starts_with("+1"), "{far}");
        assert!(!Timestamp::from_millis(i64::MAX).to_rfc3339().is_empty());
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_millis(1_000);
        assert_eq!(t.saturating_add(Duration::from_secs(2)).as_millis(), 3_000);
        assert_eq!(t.saturating_sub(Duration::from_secs(2)).as_millis(), -1_000);
        assert_eq!(
            t.since(Timestamp::from_millis(400)),
            Duration::from_millis(600)
        );
        assert_eq!(Timestamp::from_millis(400).since(t), Duration::ZERO);
        assert_eq!(t + Duration::from_millis(5), Timestamp::from_millis(1_005));
        assert_eq!(t - Duration::from_millis(5), Timestamp::from_millis(995));
        assert_eq!(
            Timestamp::from_millis(i64::MAX)
                .saturating_add(Duration::MAX)
                .as_millis(),
            i64::MAX
        );
    }
}
