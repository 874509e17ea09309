//! Publishing a validated event: Confluent-framed with the validated subject's schema id,
//! keyed by order id (a case's events stay in order), to the validated partition with the same
//! number as the raw partition it came from: the validated topic is the de-duplication log
//! (`restore.rs`), which reads each event's idempotency key and time back from the front of
//! its datum. Its Kafka timestamp is when it was validated, so that retention counts from
//! then: a backfilled event months old is not deleted before enrich reads it.
//!
//! A validated record carries no header of its own but `boomerang.history` on a backfilled
//! event ([`ValidatedHeaders::Lean`]): each header is an allocation librdkafka makes, frees
//! on another thread and parses back on every hop, and the three ingest wrote before
//! `--validated-headers` existed (idempotency key, source, event time) cost the pipeline more
//! CPU than a whole null hop. [`ValidatedHeaders::Full`] still writes them, for a rolling
//! upgrade (an older ingest restores only from them) and for consumers that read them.
//!
//! An event its producer wrote with the current schema keeps its producer's datum: it decodes
//! to the event that passed validation (the decoder refuses trailing bytes), so encoding that
//! event again would only cost CPU. An event of an earlier version is encoded in the current one.

use std::sync::Arc;

use boomerang_runtime::stage_loop::{EVENT_TIME_HEADER, HISTORY_HEADER, Headers, OutputRecord};
pub use boomerang_runtime::stage_loop::{IDEMPOTENCY_KEY_HEADER, SOURCE_HEADER};
use boomerang_runtime::wire;
use boomerang_schemas::{CodecError, EventRef, PostPurchaseEvent, codec};

/// Which headers a validated record carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ValidatedHeaders {
    /// Only `boomerang.history`, on a backfilled event: the key and the event time are read
    /// from the datum.
    #[default]
    Lean,
    /// Also `boomerang.idempotency_key`, `boomerang.source` (`partition/offset` of the raw
    /// record) and `boomerang.event_time_ms`, as every ingest without this option wrote, whose
    /// restore reads the key from them alone.
    Full,
}

/// What a validated record's value holds after its frame.
#[derive(Debug, Clone, Copy)]
pub enum ValidatedBody<'a> {
    /// The event's own datum: it was written with the current schema.
    Datum(&'a [u8]),
    /// An event of an earlier schema version, decoded: encoded in the current one.
    Encode(&'a PostPurchaseEvent),
}

/// Where a validated event came from.
#[derive(Debug, Clone, Copy)]
pub struct RawSource<'a> {
    /// The raw record's partition, which is the validated record's too.
    pub partition: i32,
    /// The raw record's offset.
    pub offset: i64,
    /// The backfill run that published it (`boomerang.history`), if one did.
    pub history: Option<&'a [u8]>,
}

/// `event`: the fields of the event `body` holds.
pub fn validated_record(
    event: &EventRef<'_>,
    body: ValidatedBody<'_>,
    schema_id: u32,
    topic: &Arc<str>,
    source: RawSource<'_>,
    carried: ValidatedHeaders,
) -> Result<OutputRecord, CodecError> {
    let mut value = Vec::with_capacity(match body {
        ValidatedBody::Datum(datum) => datum.len() + wire::HEADER_BYTES,
        ValidatedBody::Encode(_) => 256,
    });
    wire::start_frame(schema_id, &mut value);
    match body {
        ValidatedBody::Datum(datum) => value.extend_from_slice(datum),
        ValidatedBody::Encode(decoded) => codec::encode_into(decoded, &mut value)?,
    }
    let mut headers = match carried {
        ValidatedHeaders::Lean => Headers::new(),
        ValidatedHeaders::Full => full_headers(event, source),
    };
    // Carried on to enrich and the sink, which de-duplicates old history against ClickHouse.
    if let Some(run) = source.history {
        headers.push(HISTORY_HEADER, Some(run));
    }
    Ok(OutputRecord {
        topic: topic.clone(),
        partition: Some(source.partition),
        key: Some(event.order_id.as_bytes().to_vec()),
        value: Some(value),
        // Produced now: retention counts from when it was validated, not from its event time.
        timestamp_ms: None,
        event_time_ms: Some(event.occurred_at.as_unix_millis()),
        headers,
    })
}

/// The three headers [`ValidatedHeaders::Full`] adds, with room for `boomerang.history`.
fn full_headers(event: &EventRef<'_>, source: RawSource<'_>) -> Headers {
    let mut headers = Headers::with_capacity(
        3 + usize::from(source.history.is_some()),
        IDEMPOTENCY_KEY_HEADER.len() + SOURCE_HEADER.len() + EVENT_TIME_HEADER.len(),
        event.idempotency_key.len() + 2 * 20,
    );
    headers.push(
        IDEMPOTENCY_KEY_HEADER,
        Some(event.idempotency_key.as_bytes()),
    );
    // Written straight into the headers' buffer, by `itoa`: `write!` through `core::fmt` was
    // 5% of ingest's main thread (perf).
    let mut number = itoa::Buffer::new();
    headers.push_with(SOURCE_HEADER, |bytes| {
        bytes.extend_from_slice(number.format(source.partition).as_bytes());
        bytes.push(b'/');
        bytes.extend_from_slice(number.format(source.offset).as_bytes());
    });
    headers.push_with(EVENT_TIME_HEADER, |bytes| {
        bytes.extend_from_slice(number.format(event.occurred_at.as_unix_millis()).as_bytes());
    });
    headers
}

#[cfg(test)]
mod tests {
    use boomerang_schemas::{PostPurchaseEvent, TimestampMicros};

    use super::*;

    #[test]
    fn full_headers_say_key_source_and_event_time_in_decimal() {
        let event = PostPurchaseEvent {
            occurred_at: TimestampMicros::from_unix_micros(1_763_000_000_123_456),
            ..boomerang_testkit::samples::event()
        };
        let topic: Arc<str> = Arc::from("validated");
        let headers = |partition, offset, history| {
            validated_record(
                &EventRef::of(&event),
                ValidatedBody::Encode(&event),
                7,
                &topic,
                RawSource {
                    partition,
                    offset,
                    history,
                },
                ValidatedHeaders::Full,
            )
            .expect("encodes")
            .headers
        };
        let headers_of = |headers: &Headers| {
            headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.map(<[u8]>::to_vec)))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            headers_of(&headers(3, 9_007_199_254_740_993, None)),
            [
                (
                    IDEMPOTENCY_KEY_HEADER.to_string(),
                    Some(event.idempotency_key.as_bytes().to_vec())
                ),
                (
                    SOURCE_HEADER.to_string(),
                    Some(b"3/9007199254740993".to_vec())
                ),
                (
                    EVENT_TIME_HEADER.to_string(),
                    Some(b"1763000000123".to_vec())
                ),
            ]
        );
        let history = headers(0, 0, Some(b"run-1"));
        assert_eq!(history.get(SOURCE_HEADER), Some(&b"0/0"[..]));
        assert_eq!(history.get(HISTORY_HEADER), Some(&b"run-1"[..]));
    }

    #[test]
    fn lean_records_carry_only_the_history_and_their_datum_says_key_and_time() {
        let event = boomerang_testkit::samples::event();
        let topic: Arc<str> = Arc::from("validated");
        let datum = codec::encode(&event).expect("encodes");
        for (body, history) in [
            (ValidatedBody::Datum(&datum), None),
            (ValidatedBody::Encode(&event), Some(&b"run-1"[..])),
        ] {
            let record = validated_record(
                &EventRef::of(&event),
                body,
                7,
                &topic,
                RawSource {
                    partition: 2,
                    offset: 41,
                    history,
                },
                ValidatedHeaders::Lean,
            )
            .expect("encodes");
            assert_eq!(
                record.headers.iter().collect::<Vec<_>>(),
                history
                    .map(|run| (HISTORY_HEADER, Some(run)))
                    .into_iter()
                    .collect::<Vec<_>>()
            );
            let value = record.value.expect("a value");
            let (schema_id, datum) = wire::parse(&value).expect("framed");
            assert_eq!(schema_id, 7);
            let facts = boomerang_schemas::DedupFacts::read(datum).expect("reads");
            assert_eq!(facts.idempotency_key, event.idempotency_key);
            assert_eq!(facts.occurred_at, event.occurred_at);
        }
    }
}
