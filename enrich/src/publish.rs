//! Publishing an enriched event: Confluent-framed with the enriched subject's schema id, keyed
//! by order id (a case's events stay in order), with the validated record's headers (the
//! idempotency key and the event time among them) carried over, and timestamped when it is
//! produced, so that retention counts from then.
//!
//! The common case writes the enriched datum from the validated record's bytes
//! ([`spliced_record`], `boomerang_schemas::splice`); an event held for late reference data
//! was decoded whole, and is encoded ([`enriched_record`]).

use std::sync::Arc;

use boomerang_runtime::stage_loop::{InputRecord, OutputRecord};
use boomerang_runtime::wire;
use boomerang_schemas::{CodecError, EnrichedPostPurchaseEvent, Enrichment, EventView, codec};

/// Bytes an enrichment adds to an event, about: room made up front.
const ENRICHMENT_BYTES: usize = 128;

pub fn enriched_record(
    enriched: &EnrichedPostPurchaseEvent,
    schema_id: u32,
    topic: &Arc<str>,
    from: &InputRecord,
) -> Result<OutputRecord, CodecError> {
    let mut value = Vec::with_capacity(320);
    wire::start_frame(schema_id, &mut value);
    codec::encode_into(enriched, &mut value)?;
    Ok(output(
        value,
        &enriched.event.order_id,
        enriched.event.occurred_at.as_unix_millis(),
        topic,
        from,
    ))
}

/// The enriched record of `event`, read in place from `from`'s value: its bytes, less
/// `reason_text`, with `customer_id` as given, then `enrichment`.
pub fn spliced_record(
    event: &EventView<'_>,
    customer_id: &str,
    enrichment: &Enrichment<'_>,
    schema_id: u32,
    topic: &Arc<str>,
    from: &InputRecord,
) -> OutputRecord {
    let event_bytes = from.value().map_or(0, <[u8]>::len);
    let mut value = Vec::with_capacity(event_bytes + ENRICHMENT_BYTES);
    wire::start_frame(schema_id, &mut value);
    event.write_enriched(customer_id, enrichment, &mut value);
    output(
        value,
        event.order_id,
        event.occurred_at.as_unix_millis(),
        topic,
        from,
    )
}

fn output(
    value: Vec<u8>,
    order_id: &str,
    event_time_ms: i64,
    topic: &Arc<str>,
    from: &InputRecord,
) -> OutputRecord {
    OutputRecord {
        topic: topic.clone(),
        partition: None,
        key: Some(order_id.as_bytes().to_vec()),
        value: Some(value),
        // Produced now, so that retention counts from then; the event time travels in the
        // validated record's headers, carried over.
        timestamp_ms: None,
        event_time_ms: Some(event_time_ms),
        headers: from.headers.clone(),
    }
}
