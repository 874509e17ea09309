//! The dead-letter contract, the same for every stage: a record a stage cannot process goes to
//! the dead-letter topic with its original key, value and headers unchanged, plus headers that
//! say where it came from, which stage gave up on it, when and why.
//!
//! | header | value |
//! | --- | --- |
//! | `boomerang.dlq.stage` | `ingest`, `enrich` or `sink` |
//! | `boomerang.dlq.error_kind` | a stable, low-cardinality kind, e.g. `unknown_schema_id` |
//! | `boomerang.dlq.error_message` | for people; never record contents or PII |
//! | `boomerang.dlq.source_topic` | the topic the record was consumed from |
//! | `boomerang.dlq.source_partition` | its partition, decimal |
//! | `boomerang.dlq.source_offset` | its offset, decimal |
//! | `boomerang.dlq.schema_id` | the writer schema id, when the frame was readable |
//! | `boomerang.dlq.failed_at_ms` | when the stage gave up, UTC milliseconds since the epoch |
//! | `boomerang.dlq.value_omitted_bytes` | only when the original value did not fit: its size; the value itself stays at the source offset until retention removes it |
//! | `boomerang.dlq.headers_omitted` | only when the original headers did not fit either: how many were left out |
//! | `boomerang.dlq.key_omitted_bytes` | only when the original key did not fit either: its size |
//!
//! A dead letter is never larger than the producer takes ([`crate::record_size`]): the original
//! key, value and headers are kept, in that order, while they fit, and what is left out is
//! marked, so a hostile record is still accounted for.

pub const STAGE: &str = "boomerang.dlq.stage";
pub const ERROR_KIND: &str = "boomerang.dlq.error_kind";
pub const ERROR_MESSAGE: &str = "boomerang.dlq.error_message";
pub const SOURCE_TOPIC: &str = "boomerang.dlq.source_topic";
pub const SOURCE_PARTITION: &str = "boomerang.dlq.source_partition";
pub const SOURCE_OFFSET: &str = "boomerang.dlq.source_offset";
pub const SCHEMA_ID: &str = "boomerang.dlq.schema_id";
pub const FAILED_AT_MS: &str = "boomerang.dlq.failed_at_ms";
pub const VALUE_OMITTED_BYTES: &str = "boomerang.dlq.value_omitted_bytes";
pub const HEADERS_OMITTED: &str = "boomerang.dlq.headers_omitted";
pub const KEY_OMITTED_BYTES: &str = "boomerang.dlq.key_omitted_bytes";

use std::sync::Arc;

use crate::error_kind::DeadLetterKind;
use crate::record_size;
use crate::stage_loop::{Headers, InputRecord, OutputRecord};

/// Why a stage gives up on a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable and low-cardinality: a metric label and a header.
    pub error_kind: DeadLetterKind,
    /// For people: what is wrong, without record contents or PII.
    pub message: String,
    pub schema_id: Option<u32>,
}

impl Rejection {
    pub fn new(error_kind: DeadLetterKind, message: impl Into<String>) -> Self {
        Self {
            error_kind,
            message: message.into(),
            schema_id: None,
        }
    }

    pub fn with_schema_id(mut self, schema_id: u32) -> Self {
        self.schema_id = Some(schema_id);
        self
    }
}

/// The dead-letter headers for a rejected record, to append after its original headers.
pub fn headers(
    stage: &str,
    rejection: &Rejection,
    source_topic: &str,
    source_partition: i32,
    source_offset: i64,
    failed_at_ms: i64,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (STAGE, stage.to_string()),
        (ERROR_KIND, rejection.error_kind.to_string()),
        (ERROR_MESSAGE, rejection.message.clone()),
        (SOURCE_TOPIC, source_topic.to_string()),
        (SOURCE_PARTITION, source_partition.to_string()),
        (SOURCE_OFFSET, source_offset.to_string()),
        (FAILED_AT_MS, failed_at_ms.to_string()),
    ];
    if let Some(schema_id) = rejection.schema_id {
        headers.push((SCHEMA_ID, schema_id.to_string()));
    }
    headers
}

/// The dead letter for `record`: its own key, value and headers, then the contract's headers,
/// within `max_bytes` ([`crate::record_size::wire_size`]): the key, the value and the headers
/// are kept in that order while they fit, and each one left out is marked.
pub fn record(
    stage: &str,
    dead_letter_topic: &str,
    record: &InputRecord,
    rejection: &Rejection,
    failed_at_ms: i64,
    max_bytes: usize,
) -> OutputRecord {
    let contract = headers(
        stage,
        rejection,
        &record.topic,
        record.partition,
        record.offset,
        failed_at_ms,
    );
    let contract = contract
        .iter()
        .map(|(name, value)| (*name, Some(value.as_bytes())));
    let mut dead_letter = OutputRecord {
        topic: Arc::from(dead_letter_topic),
        partition: None,
        key: None,
        value: None,
        timestamp_ms: Some(failed_at_ms),
        event_time_ms: None,
        headers: Headers::new(),
    };
    // The marks that may be added are counted up front, so adding them never breaks the limit.
    let marks = [VALUE_OMITTED_BYTES, HEADERS_OMITTED, KEY_OMITTED_BYTES]
        .iter()
        .map(|name| record_size::header_size(name, Some(&[0; 20])))
        .sum::<usize>();
    let mut size = record_size::wire_size(None, None, contract.clone()) + marks;
    let mut omitted = Headers::new();
    let mut omit = |name: &str, count: usize| {
        omitted.push(name, Some(count.to_string().as_bytes()));
    };
    // Kept in this order while they fit: the key, the value, the headers.
    if let Some(key) = record.key() {
        if size + key.len() <= max_bytes {
            size += key.len();
            dead_letter.key = Some(key.to_vec());
        } else {
            omit(KEY_OMITTED_BYTES, key.len());
        }
    }
    if let Some(value) = record.value() {
        if size + value.len() <= max_bytes {
            size += value.len();
            dead_letter.value = Some(value.to_vec());
        } else {
            omit(VALUE_OMITTED_BYTES, value.len());
        }
    }
    let original_headers: usize = record
        .headers
        .iter()
        .map(|(name, value)| record_size::header_size(name, value))
        .sum();
    if size + original_headers <= max_bytes {
        dead_letter.headers = record.headers.clone();
    } else {
        omit(HEADERS_OMITTED, record.headers.len());
    }
    for (name, value) in contract {
        dead_letter.headers.push(name, value);
    }
    dead_letter.headers.extend(&omitted);
    dead_letter
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(key: usize, value: usize, headers: usize) -> InputRecord {
        let mut names = Headers::new();
        for n in 0..headers {
            names.push(&format!("h{n}"), Some(&[b'x'; 100]));
        }
        InputRecord::new(
            Arc::from("raw"),
            2,
            41,
            Some(&vec![b'k'; key]),
            Some(&vec![b'v'; value]),
        )
        .with_timestamp_ms(Some(1))
        .with_headers(names)
    }

    fn header<'a>(record: &'a OutputRecord, name: &str) -> Option<&'a str> {
        record
            .headers
            .get(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    fn dead_letter(input: &InputRecord, max_bytes: usize) -> OutputRecord {
        let rejection =
            Rejection::new(DeadLetterKind::RecordTooLarge, "too large").with_schema_id(7);
        record("ingest", "dlq", input, &rejection, 1_000, max_bytes)
    }

    #[test]
    fn a_record_that_fits_keeps_its_bytes_and_headers_first() {
        let input = input(10, 1_000, 2);
        let letter = dead_letter(&input, 100_000);
        assert_eq!(letter.value.as_deref(), input.value());
        assert_eq!(letter.key.as_deref(), input.key());
        assert!(letter.headers.iter().take(2).eq(input.headers.iter()));
        assert_eq!(header(&letter, ERROR_KIND), Some("record_too_large"));
        assert_eq!(header(&letter, SOURCE_OFFSET), Some("41"));
        assert_eq!(header(&letter, VALUE_OMITTED_BYTES), None);
    }

    #[test]
    fn a_value_too_large_is_omitted_and_marked_and_the_rest_kept() {
        let input = input(10, 20_000, 2);
        let letter = dead_letter(&input, 10_000);
        assert_eq!(letter.value, None);
        assert_eq!(header(&letter, VALUE_OMITTED_BYTES), Some("20000"));
        assert_eq!(letter.key.as_deref(), input.key());
        assert!(letter.headers.iter().take(2).eq(input.headers.iter()));
        assert!(letter.wire_size() <= 10_000);
    }

    #[test]
    fn headers_too_large_go_and_the_value_stays() {
        let input = input(10, 5_000, 200);
        let letter = dead_letter(&input, 10_000);
        assert_eq!(header(&letter, HEADERS_OMITTED), Some("200"));
        assert_eq!(header(&letter, VALUE_OMITTED_BYTES), None, "the value fits");
        assert_eq!(letter.value.as_deref(), input.value());
        assert_eq!(letter.key.as_deref(), input.key());
        assert!(letter.wire_size() <= 10_000);
    }

    #[test]
    fn a_key_too_large_goes_and_the_value_stays() {
        let input = input(50_000, 10, 0);
        let letter = dead_letter(&input, 10_000);
        assert_eq!(header(&letter, KEY_OMITTED_BYTES), Some("50000"));
        assert_eq!(letter.key, None);
        assert_eq!(letter.value.as_deref(), input.value());
        assert!(letter.wire_size() <= 10_000, "{}", letter.wire_size());
    }

    #[test]
    fn never_over_the_limit_whatever_the_sizes() {
        for key in [0, 100, 5_000] {
            for value in [0, 100, 3_000, 5_000] {
                for headers in [0, 10, 50] {
                    let input = input(key, value, headers);
                    for max_bytes in [crate::record_size::MIN_MAX_RECORD_BYTES, 6_000, 20_000] {
                        let letter = dead_letter(&input, max_bytes);
                        assert!(
                            letter.wire_size() <= max_bytes,
                            "{key}/{value}/{headers} in {max_bytes}: {}",
                            letter.wire_size()
                        );
                    }
                }
            }
        }
    }
}
