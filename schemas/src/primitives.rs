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

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-30T10:45:00.123456Z`.
impl std::fmt::Display for TimestampMicros {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let days = seconds.div_euclid(86_400);
        let of_day = seconds.rem_euclid(86_400);
        // Days since the epoch to a civil date (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let shifted_month = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
        let month = if shifted_month < 10 {
            shifted_month + 3
        } else {
            shifted_month - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        write!(
            formatter,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            of_day / 3_600,
            of_day % 3_600 / 60,
            of_day % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_rfc3339_utc() {
        assert_eq!(
            TimestampMicros::from_unix_micros(0).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            TimestampMicros::from_unix_micros(1_700_000_000_123_456).to_string(),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            TimestampMicros::from_unix_micros(951_782_400_000_000).to_string(),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            TimestampMicros::from_unix_micros(-1).to_string(),
            "1969-12-31T23:59:59.999999Z"
        );
    }

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
