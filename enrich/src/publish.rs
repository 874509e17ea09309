//! Publishing an enriched event: Confluent-framed with the enriched subject's schema id, keyed
//! by order id (a case's events stay in order), and timestamped when it is produced, so that
//! retention counts from then. Of the validated record's headers, those a later stage reads
//! are carried over (`boomerang.history`, on a backfilled event); the three an ingest
//! `--validated-headers full` writes (idempotency key, source, event time) stay behind unless
//! the operator asks for them ([`EnrichedHeaders`]): the key and the event time are in the
//! enriched datum, and each header cost an allocation made on enrich's thread, freed on the
//! producer's, and parsed again, allocation by allocation, by the sink, which never read them.
//!
//! The common case writes the enriched datum from the validated record's bytes
//! ([`spliced_record`], `boomerang_schemas::splice`); an event held for late reference data
//! was decoded whole, and is encoded ([`enriched_record`]).

use std::sync::Arc;

use boomerang_runtime::stage_loop::{Headers, InputRecord, OutputRecord, VALIDATED_HEADERS};
use boomerang_runtime::wire;
use boomerang_schemas::{CodecError, EnrichedPostPurchaseEvent, Enrichment, EventView, codec};

/// Bytes an enrichment adds to an event, about: room made up front.
const ENRICHMENT_BYTES: usize = 128;

/// Which of the validated record's headers an enriched record carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EnrichedHeaders {
    /// All but the three an ingest `--validated-headers full` writes
    /// (`boomerang.idempotency_key`, `boomerang.source`, `boomerang.event_time_ms`): in
    /// practice none, or `boomerang.history` on a backfilled event.
    #[default]
    Lean,
    /// Every one, as every enrich without this option did: for a consumer of the enriched
    /// topic that reads the idempotency key or the event time from headers instead of from
    /// the datum.
    Full,
}

impl EnrichedHeaders {
    /// The headers of `from` that its enriched record carries.
    pub fn carried(self, from: &Headers) -> Headers {
        match self {
            Self::Full => from.clone(),
            // Nothing to carry (the common case) collects into an empty, unallocated `Headers`.
            Self::Lean => from
                .iter()
                .filter(|(name, _)| !VALIDATED_HEADERS.contains(name))
                .collect(),
        }
    }
}

pub fn enriched_record(
    enriched: &EnrichedPostPurchaseEvent,
    schema_id: u32,
    topic: &Arc<str>,
    from: &InputRecord,
    headers: EnrichedHeaders,
) -> Result<OutputRecord, CodecError> {
    let mut value = Vec::with_capacity(320);
    wire::start_frame(schema_id, &mut value);
    codec::encode_into(enriched, &mut value)?;
    Ok(output(
        value,
        &enriched.event.order_id,
        enriched.event.occurred_at.as_unix_millis(),
        topic,
        headers.carried(&from.headers),
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
    headers: EnrichedHeaders,
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
        headers.carried(&from.headers),
    )
}

fn output(
    value: Vec<u8>,
    order_id: &str,
    event_time_ms: i64,
    topic: &Arc<str>,
    headers: Headers,
) -> OutputRecord {
    OutputRecord {
        topic: topic.clone(),
        partition: None,
        key: Some(order_id.as_bytes().to_vec()),
        value: Some(value),
        // Produced now, so that retention counts from then; the event time is in the datum.
        timestamp_ms: None,
        event_time_ms: Some(event_time_ms),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validated_headers(history: Option<&[u8]>) -> Headers {
        let mut headers = Headers::new();
        headers.push("boomerang.idempotency_key", Some(b"k-1"));
        headers.push("boomerang.source", Some(b"3/17"));
        headers.push("boomerang.event_time_ms", Some(b"1763000000000"));
        if let Some(run) = history {
            headers.push("boomerang.history", Some(run));
        }
        headers.push("traceparent", None);
        headers
    }

    #[test]
    fn lean_leaves_the_headers_ingest_writes_behind_and_carries_the_rest_in_order() {
        let carried = EnrichedHeaders::Lean.carried(&validated_headers(Some(b"run-1")));
        assert_eq!(
            carried.iter().collect::<Vec<_>>(),
            [
                ("boomerang.history", Some(&b"run-1"[..])),
                ("traceparent", None)
            ]
        );
        let live = EnrichedHeaders::Lean.carried(&validated_headers(None));
        assert_eq!(live.iter().collect::<Vec<_>>(), [("traceparent", None)]);
        assert!(EnrichedHeaders::Lean.carried(&Headers::new()).is_empty());
    }

    #[test]
    fn full_carries_every_header() {
        let headers = validated_headers(Some(b"run-1"));
        assert_eq!(EnrichedHeaders::Full.carried(&headers), headers);
    }
}
