//! Publishing an enriched event: Confluent-framed with the enriched subject's schema id, keyed
//! by order id (a case's events stay in order), with the validated record's headers (the
//! idempotency key and the event time among them) carried over, and timestamped when it is
//! produced, so that retention counts from then.

use std::sync::Arc;

use boomerang_runtime::stage_loop::{InputRecord, OutputRecord};
use boomerang_runtime::wire;
use boomerang_schemas::{CodecError, EnrichedPostPurchaseEvent, codec};

pub fn enriched_record(
    enriched: &EnrichedPostPurchaseEvent,
    schema_id: u32,
    topic: &Arc<str>,
    from: &InputRecord,
) -> Result<OutputRecord, CodecError> {
    let mut value = Vec::with_capacity(320);
    wire::start_frame(schema_id, &mut value);
    codec::encode_into(enriched, &mut value)?;
    Ok(OutputRecord {
        topic: topic.clone(),
        partition: None,
        key: Some(enriched.event.order_id.as_bytes().to_vec()),
        value: Some(value),
        // Produced now, so that retention counts from then; the event time travels in the
        // validated record's headers, carried over.
        timestamp_ms: None,
        event_time_ms: Some(enriched.event.occurred_at.as_unix_millis()),
        headers: from.headers.clone(),
    })
}
