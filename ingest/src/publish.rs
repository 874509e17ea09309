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

use std::io::Write as _;
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
    // Written straight into the headers' buffer: writing to a `Vec` cannot fail.
    headers.push_with(SOURCE_HEADER, |bytes| {
        let _ = write!(bytes, "{partition}/{source_offset}");
    });
    headers.push_with(EVENT_TIME_HEADER, |bytes| {
        let _ = write!(bytes, "{event_time_ms}");
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
