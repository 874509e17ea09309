//! How large a record is as the producer counts it, and the limit every stage checks before it
//! hands a record over: one record's contents must never stop a stage.
//!
//! librdkafka refuses a record whose wire size is over `message.max.bytes` (`MSG_SIZE_TOO_LARGE`
//! in `rd_kafka_msg_new0`). A stage that met that refusal while sending could only stop, and its
//! restart would read the same record again. So the stage loop measures every output with
//! [`wire_size`], an upper bound of librdkafka's own count, before it is produced: an output over
//! the limit turns its input into a `record_too_large` dead letter, and a dead letter over the
//! limit sheds the original value, then the original headers, then the key
//! ([`crate::dead_letter`] says how each omission is marked) until it fits.

use crate::stage_loop::OutputRecord;

/// The default `message.max.bytes` of the stages' producers: librdkafka's own default, and below
/// a Kafka topic's default `max.message.bytes` (1,048,588).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

/// The smallest limit a stage accepts: room for a dead letter's own headers, with every original
/// part omitted.
pub const MIN_MAX_RECORD_BYTES: usize = 4_096;

/// librdkafka's largest per-record overhead in a v2 record batch
/// (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`): length, attributes, timestamp and offset deltas, key
/// and value lengths and the header count, every varint at its widest.
const RECORD_OVERHEAD: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;

/// A header's name and value lengths, as varints at their widest.
const HEADER_OVERHEAD: usize = 5 + 5;

/// The bytes one header takes on the wire, at most.
pub fn header_size(name: &str, value: Option<&[u8]>) -> usize {
    HEADER_OVERHEAD + name.len() + value.map_or(0, <[u8]>::len)
}

/// The bytes a record takes on the wire, at most: never below what librdkafka counts against
/// `message.max.bytes`, so a record within the limit is never refused for its size.
pub fn wire_size<'a>(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> usize {
    RECORD_OVERHEAD
        + key.map_or(0, <[u8]>::len)
        + value.map_or(0, <[u8]>::len)
        + headers
            .into_iter()
            .map(|(name, value)| header_size(name, value))
            .sum::<usize>()
}

impl OutputRecord {
    /// [`wire_size`] of this record.
    pub fn wire_size(&self) -> usize {
        wire_size(
            self.key.as_deref(),
            self.value.as_deref(),
            self.headers.iter(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: usize, value: usize, headers: &[(&str, usize)]) -> OutputRecord {
        OutputRecord {
            topic: "t".into(),
            partition: None,
            key: Some(vec![b'k'; key]),
            value: Some(vec![b'v'; value]),
            timestamp_ms: None,
            event_time_ms: None,
            headers: headers
                .iter()
                .map(|(name, len)| (*name, Some(&b"hhhhhhhhhhhhhhhh"[..*len])))
                .collect(),
        }
    }

    #[test]
    fn counts_every_part_and_the_widest_overhead() {
        assert_eq!(record(0, 0, &[]).wire_size(), RECORD_OVERHEAD);
        assert_eq!(
            record(3, 100, &[("ab", 7), ("c", 0)]).wire_size(),
            RECORD_OVERHEAD + 3 + 100 + (10 + 2 + 7) + (10 + 1)
        );
    }

    #[test]
    fn a_null_value_or_header_value_counts_nothing() {
        let mut empty = record(0, 0, &[]);
        empty.value = None;
        empty.key = None;
        empty.headers.push("h", None);
        assert_eq!(empty.wire_size(), RECORD_OVERHEAD + HEADER_OVERHEAD + 1);
    }
}
