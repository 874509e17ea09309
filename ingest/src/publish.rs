//! Publishing a validated event: Confluent-framed with the validated subject's schema id,
//! keyed by order id (a case's events stay in order), to the validated partition with the same
//! number as the raw partition it came from, with the idempotency key and the event time in
//! headers: the validated topic is the de-duplication log (`restore.rs`). Its Kafka timestamp
//! is when it was validated, so that retention counts from then: a backfilled event months old
//! is not deleted before enrich reads it.
//!
//! An event its producer wrote with the current schema keeps its producer's datum: it decodes
//! to the event that passed validation (the decoder refuses trailing bytes), so encoding that
//! event again would only cost CPU. An event of an earlier version is encoded in the current one.

use std::sync::Arc;

use boomerang_runtime::stage_loop::{EVENT_TIME_HEADER, HISTORY_HEADER, Headers, OutputRecord};
use boomerang_runtime::wire;
use boomerang_schemas::{CodecError, EventRef, PostPurchaseEvent, codec};

/// The header that carries a validated event's idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "boomerang.idempotency_key";
/// The raw record a validated event came from, `partition/offset`, for lineage.
pub const SOURCE_HEADER: &str = "boomerang.source";

/// What a validated record's value holds after its frame.
#[derive(Debug, Clone, Copy)]
pub enum ValidatedBody<'a> {
    /// The event's own datum: it was written with the current schema.
    Datum(&'a [u8]),
    /// An event of an earlier schema version, decoded: encoded in the current one.
    Encode(&'a PostPurchaseEvent),
}

/// `event`: the fields of the event `body` holds.
pub fn validated_record(
    event: &EventRef<'_>,
    body: ValidatedBody<'_>,
    schema_id: u32,
    topic: &Arc<str>,
    partition: i32,
    source_offset: i64,
    history: Option<&[u8]>,
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
    let event_time_ms = event.occurred_at.as_unix_millis();
    let mut headers = Headers::with_capacity(
        3 + usize::from(history.is_some()),
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
        bytes.extend_from_slice(number.format(partition).as_bytes());
        bytes.push(b'/');
        bytes.extend_from_slice(number.format(source_offset).as_bytes());
    });
    headers.push_with(EVENT_TIME_HEADER, |bytes| {
        bytes.extend_from_slice(number.format(event_time_ms).as_bytes());
    });
    // Carried on to enrich and the sink, which de-duplicates old history against ClickHouse.
    if let Some(run) = history {
        headers.push(HISTORY_HEADER, Some(run));
    }
    Ok(OutputRecord {
        topic: topic.clone(),
        partition: Some(partition),
        key: Some(event.order_id.as_bytes().to_vec()),
        value: Some(value),
        // Produced now: retention counts from when it was validated, not from its event time.
        timestamp_ms: None,
        event_time_ms: Some(event_time_ms),
        headers,
    })
}

#[cfg(test)]
mod tests {
    use boomerang_schemas::{PostPurchaseEvent, TimestampMicros};

    use super::*;

    #[test]
    fn the_headers_say_key_source_and_event_time_in_decimal() {
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
                partition,
                offset,
                history,
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
}
