//! Value types shared by the model: money and timestamps, with their units in their names.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// An amount of money in a currency's minor unit (cents for EUR, yen for JPY): never a float.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// The amount in the currency's minor unit, by its ISO 4217 exponent.
    pub amount_minor: i64,
    /// The ISO 4217 alphabetic code, e.g. `EUR`.
    pub currency: String,
}

impl Money {
    pub fn new(amount_minor: i64, currency: impl Into<String>) -> Self {
        Self {
            amount_minor,
            currency: currency.into(),
        }
    }
}

/// A UTC instant as microseconds since the Unix epoch: Avro's `timestamp-micros`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct TimestampMicros(i64);

impl TimestampMicros {
    pub const fn from_unix_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub const fn from_unix_millis(millis: i64) -> Self {
        Self(millis.saturating_mul(1_000))
    }

    pub const fn as_unix_micros(self) -> i64 {
        self.0
    }

    /// Milliseconds since the epoch, rounded down: Kafka record timestamps use milliseconds.
    pub const fn as_unix_millis(self) -> i64 {
        self.0.div_euclid(1_000)
    }

    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Saturates at the ends of the `i64` range instead of wrapping.
    pub fn from_system_time(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Self(i64::try_from(after.as_micros()).unwrap_or(i64::MAX)),
            Err(before) => Self(
                i64::try_from(before.duration().as_micros())
                    .map(|micros| -micros)
                    .unwrap_or(i64::MIN),
            ),
        }
    }

    /// `self - earlier`, or `None` when `earlier` is later than `self`.
    pub fn duration_since(self, earlier: Self) -> Option<Duration> {
        let micros = self.0.checked_sub(earlier.0)?;
        u64::try_from(micros).ok().map(Duration::from_micros)
    }

    pub fn saturating_add(self, duration: Duration) -> Self {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(micros))
    }

    pub fn saturating_sub(self, duration: Duration) -> Self {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(micros))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_down_also_before_the_epoch() {
        assert_eq!(TimestampMicros::from_unix_micros(1_999).as_unix_millis(), 1);
        assert_eq!(TimestampMicros::from_unix_micros(-1).as_unix_millis(), -1);
    }

    #[test]
    fn duration_since_is_none_when_earlier_is_later() {
        let at = TimestampMicros::from_unix_millis(10);
        let later = at.saturating_add(Duration::from_millis(5));
        assert_eq!(later.duration_since(at), Some(Duration::from_millis(5)));
        assert_eq!(at.duration_since(later), None);
    }

    #[test]
    fn system_time_round_trips() {
        let time = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(
            TimestampMicros::from_system_time(time).as_unix_micros(),
            1_700_000_000_123_456
        );
    }
}
