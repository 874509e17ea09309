//! enrich's step of the stage loop, one validated record at a time:
//! decode (the shared decoder) → look the order and customer up in the reference tables
//! (`tables.rs`, filled by `reference.rs`) → join (`join.rs`) and publish (`publish.rs`), or,
//! when reference data is missing, hold the event (`pending.rs`) until it arrives or the
//! deadline passes.
//!
//! The common case — an event of the current schema whose order and customer are both there —
//! is read in place and its enriched record written from its bytes (`boomerang_schemas::splice`),
//! not decoded into an owned event and encoded again. Anything else takes the decoder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use boomerang_runtime::dead_letter::Rejection;
use boomerang_runtime::decode::{DecodeFailure, RecordDecoder, WriterSchemaSource};
use boomerang_runtime::error_kind::DeadLetterKind;
use boomerang_runtime::pseudonym::Pseudonymiser;
use boomerang_runtime::stage_loop::{
    InputRecord, Outcome, Partition, Processor, Released, RetryableError, WARM_AHEAD,
};
use boomerang_schemas::{Enrichment, EventView, JoinIds, PostPurchaseEvent, TimestampMicros};

use crate::join::{
    EventFacts, JoinKeys, JoinSettings, Lookup, RiskFacts, enriched_event, join, risk_flag,
};
use crate::metrics::EnrichMetrics;
use crate::pending::{Held, PendingBuffer, PendingLimits};
use crate::publish::{EnrichedHeaders, enriched_record, spliced_record};
use crate::reference::Arrivals;
use crate::tables::{ReferenceTables, SharedTables, ref_key};

/// How often held events are all checked again, besides the arrivals they wait for (which
/// a reference record landing between an event's lookup and its hold can miss).
const RECHECK_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct EnrichSettings {
    pub enriched_topic: Arc<str>,
    /// The registry id of the schema enriched events are written with.
    pub enriched_schema_id: u32,
    pub join: JoinSettings,
    pub pending: PendingLimits,
    /// Which of the validated record's headers an enriched record carries.
    pub headers: EnrichedHeaders,
}

pub struct EnrichProcessor<Source> {
    decoder: RecordDecoder<PostPurchaseEvent, Source>,
    tables: SharedTables,
    arrivals: Arrivals,
    pending: PendingBuffer,
    settings: EnrichSettings,
    pseudonymiser: Pseudonymiser,
    metrics: EnrichMetrics,
    last_recheck: Instant,
    /// Whether the reference tables caught up at start-up, and the stage's shutdown.
    catch_up: Option<(
        tokio::sync::watch::Receiver<bool>,
        tokio_util::sync::CancellationToken,
    )>,
}

impl<Source: WriterSchemaSource> EnrichProcessor<Source> {
    pub fn new(
        source: Source,
        tables: SharedTables,
        arrivals: Arrivals,
        settings: EnrichSettings,
        pseudonymiser: Pseudonymiser,
        metrics: EnrichMetrics,
    ) -> Self {
        Self {
            decoder: RecordDecoder::new(source),
            tables,
            arrivals,
            pending: PendingBuffer::new(settings.pending),
            settings,
            pseudonymiser,
            metrics,
            last_recheck: Instant::now(),
            catch_up: None,
        }
    }

    /// Joins no event before `caught_up` says the reference tables caught up.
    pub fn after_catch_up(
        mut self,
        caught_up: tokio::sync::watch::Receiver<bool>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        self.catch_up = Some((caught_up, shutdown));
        self
    }

    /// Whether the event's customer asked to be forgotten after it happened: then it is not
    /// emitted (and counted), so that no row of it can reach ClickHouse again.
    fn erased(
        &self,
        tables: &ReferenceTables,
        occurred_at: TimestampMicros,
        keys: JoinKeys,
    ) -> bool {
        let erased = tables
            .erased_at(keys.customer)
            .is_some_and(|requested_at| occurred_at <= requested_at);
        if erased {
            self.metrics.events_erased.inc();
        }
        erased
    }

    /// Joins with what the tables hold now and builds the record to publish.
    fn emit(
        &self,
        event: PostPurchaseEvent,
        keys: JoinKeys,
        waited: bool,
        record: &InputRecord,
    ) -> Outcome {
        let tables = self.tables.read();
        if self.erased(&tables, event.occurred_at, keys) {
            return Outcome::Emit(Default::default());
        }
        self.emit_with(event, &Lookup::new(&tables, keys), waited, record)
    }

    /// The common case, in place: an event written with the current schema (the decoder has
    /// met its schema id before), not behind a held event of its order, whose order and
    /// customer are both in the tables. `None` leaves the record to [`Self::process`]'s
    /// decoder: to be held, resolved from an earlier version, or refused with its reason.
    fn process_in_place(&self, record: &InputRecord) -> Option<Outcome> {
        let (_schema_id, datum) = self.decoder.current_datum(record.value())?;
        let event = EventView::read(datum).ok()?;
        let keys = JoinKeys::of_ids(event.order_id, event.customer_id);
        if self.pending.holds_order(keys.order) {
            return None;
        }
        let tables = self.tables.read();
        if self.erased(&tables, event.occurred_at, keys) {
            return Some(Outcome::Emit(Default::default()));
        }
        let lookup = Lookup::new(&tables, keys);
        if !lookup.complete() {
            return None;
        }
        let facts = EventFacts {
            order_line_id: event.order_line_id,
            occurred_at: event.occurred_at,
        };
        let risk = RiskFacts {
            event_type: event.event_type,
            quantity: event.quantity,
            amount: event.amount,
        };
        let enrichment = self.join_counted(facts, risk, &lookup, false);
        let pseudonym;
        let customer_id = if enrichment.customer_pseudonymised {
            pseudonym = self.pseudonymiser.pseudonym(event.customer_id);
            &pseudonym
        } else {
            event.customer_id
        };
        Some(Outcome::emit(spliced_record(
            &event,
            customer_id,
            &enrichment,
            self.settings.enriched_schema_id,
            &self.settings.enriched_topic,
            record,
            self.settings.headers,
        )))
    }

    /// Joins, and counts how the join ended and the risk it shows: both paths' one join.
    fn join_counted<'tables>(
        &self,
        event: EventFacts<'_>,
        risk: RiskFacts<'_>,
        lookup: &Lookup<'tables>,
        waited: bool,
    ) -> Enrichment<'tables> {
        let (enrichment, outcome) = join(
            event,
            lookup,
            waited,
            &self.settings.join,
            TimestampMicros::now(),
        );
        self.metrics.count_join(outcome);
        if let Some(flag) = risk_flag(risk, &enrichment) {
            self.metrics.count_risk(flag);
        }
        enrichment
    }

    fn emit_with(
        &self,
        event: PostPurchaseEvent,
        lookup: &Lookup<'_>,
        waited: bool,
        record: &InputRecord,
    ) -> Outcome {
        let enrichment = self.join_counted(
            EventFacts::of(&event),
            RiskFacts::of(&event),
            lookup,
            waited,
        );
        let enriched = enriched_event(event, &enrichment, &self.pseudonymiser);
        match enriched_record(
            &enriched,
            self.settings.enriched_schema_id,
            &self.settings.enriched_topic,
            record,
            self.settings.headers,
        ) {
            Ok(output) => Outcome::emit(output),
            Err(error) => Outcome::DeadLetter(Rejection::new(
                DeadLetterKind::EncodeFailed,
                boomerang_runtime::config::error_chain(&error),
            )),
        }
    }

    fn report_pending(&self) {
        self.metrics
            .pending_events
            .set(i64::try_from(self.pending.len()).unwrap_or(i64::MAX));
        self.metrics
            .pending_bytes
            .set(i64::try_from(self.pending.bytes()).unwrap_or(i64::MAX));
    }
}

impl<Source: WriterSchemaSource> Processor for EnrichProcessor<Source> {
    /// The reference tables are whole on every instance: nothing per partition. But until they
    /// caught up at start-up, no event may be joined: wait for that (the stage processes
    /// nothing more if it is asked to stop meanwhile).
    async fn assign(&mut self, _partitions: &[Partition]) -> anyhow::Result<()> {
        let Some((caught_up, shutdown)) = &mut self.catch_up else {
            return Ok(());
        };
        tokio::select! {
            waited = caught_up.wait_for(|done| *done) => {
                if waited.is_err() && !shutdown.is_cancelled() {
                    anyhow::bail!("the reference tables stopped loading before they caught up");
                }
            }
            () = shutdown.cancelled() => {}
        }
        Ok(())
    }

    fn revoke(&mut self, partitions: &[Partition]) {
        let dropped = self.pending.drop_partitions(partitions);
        if dropped > 0 {
            tracing::info!(
                dropped,
                "held events of revoked partitions left to their next owner"
            );
        }
        self.arrivals.watch(!self.pending.is_empty());
        self.report_pending();
    }

    /// Looks the next events' orders and customers up, all at once. In a table of a million
    /// orders nearly every lookup misses the CPU's caches, twice (the bucket, then the order's
    /// lines), and one event's misses used to wait for the last one's: a fifth of the samples
    /// of enrich's main thread (`perf`, `pipeline_e2e`). Looked up together, the misses
    /// overlap, and the joins right after find what they read cached (criterion
    /// `enrich_join`: a quarter less time per event). Events not of the current schema are
    /// left alone.
    fn warm(&self, upcoming: &[InputRecord]) {
        let mut keys = [None; WARM_AHEAD];
        for (slot, record) in keys.iter_mut().zip(upcoming) {
            *slot = self
                .decoder
                .current_datum(record.value())
                .and_then(|(_, datum)| JoinIds::read(datum))
                .map(|ids| JoinKeys {
                    order: ref_key(ids.order_id),
                    customer: ref_key(ids.customer_id),
                });
        }
        let tables = self.tables.read();
        let mut touched = 0i64;
        for keys in keys.iter().flatten() {
            if let Some(order) = tables.order(keys.order) {
                touched ^= order.lines.first().map_or(0, |line| line.unit_price_minor);
            }
            if let Some(customer) = tables.customer(keys.customer) {
                touched ^= i64::from(customer.analytics_consent);
            }
        }
        std::hint::black_box(touched);
    }

    async fn process(&mut self, record: &InputRecord) -> Result<Outcome, RetryableError> {
        if let Some(outcome) = self.process_in_place(record) {
            return Ok(outcome);
        }
        let decoded = match self.decoder.decode(record.value()).await {
            Ok(decoded) => decoded,
            Err(DecodeFailure::Rejected(rejection)) => return Ok(Outcome::DeadLetter(rejection)),
            Err(DecodeFailure::Retry(error)) => return Err(error),
        };
        let event = decoded.value;
        let keys = JoinKeys::of(&event);
        if !self.pending.holds_order(keys.order) {
            let tables = self.tables.read();
            if self.erased(&tables, event.occurred_at, keys) {
                return Ok(Outcome::Emit(Default::default()));
            }
            let lookup = Lookup::new(&tables, keys);
            if lookup.complete() {
                return Ok(self.emit_with(event, &lookup, false, record));
            }
        }
        self.arrivals.watch(true);
        self.pending.hold(Held {
            record: record.clone(),
            event,
            keys,
            since: Instant::now(),
        });
        self.report_pending();
        Ok(Outcome::Hold)
    }

    fn release(&mut self) -> Vec<Released> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let arrived = self.arrivals.take();
        let recheck_all = self.last_recheck.elapsed() >= RECHECK_INTERVAL;
        if recheck_all {
            self.last_recheck = now;
        }
        let held = {
            let tables = self.tables.read();
            self.pending.release(&tables, &arrived, recheck_all, now)
        };
        if held.is_empty() {
            return Vec::new();
        }
        let released = held
            .into_iter()
            .map(|held| {
                self.metrics
                    .pending_wait
                    .observe(now.duration_since(held.since).as_secs_f64());
                let outcome = self.emit(held.event, held.keys, true, &held.record);
                Released {
                    record: held.record,
                    outcome,
                }
            })
            .collect();
        self.arrivals.watch(!self.pending.is_empty());
        self.report_pending();
        released
    }

    fn holding(&self) -> usize {
        self.pending.len()
    }

    fn room(&self) -> usize {
        self.pending.room()
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::Schema;
    use boomerang_runtime::metrics::Metrics;
    use boomerang_runtime::registry::LookupError;
    use boomerang_runtime::stage_loop::Headers;
    use boomerang_runtime::wire;
    use boomerang_schemas::{EnrichedPostPurchaseEvent, EventType, Money, SchemaKind, codec};
    use boomerang_testkit::samples::{customer, event, order};

    use super::*;
    use crate::tables::ref_key;

    /// Schema id 2 is the current event schema; nothing else is registered.
    struct CurrentOnly;

    impl WriterSchemaSource for CurrentOnly {
        async fn writer_schema(&mut self, id: u32) -> Result<&'static Schema, LookupError> {
            match id {
                2 => Ok(SchemaKind::PostPurchaseEvent.schema()),
                _ => Err(LookupError::UnknownId(id)),
            }
        }
    }

    fn processor() -> EnrichProcessor<CurrentOnly> {
        let tables = SharedTables::default();
        {
            let mut tables = tables.write();
            tables.upsert_customer(ref_key(b"cu-1"), &customer("cu-1", "vip", true));
            tables.upsert_customer(ref_key(b"cu-2"), &customer("cu-2", "new", false));
            tables.upsert_order(ref_key(b"o-1"), &order("o-1", "cu-1", Some(0)));
            tables.upsert_order(ref_key(b"o-2"), &order("o-2", "cu-2", None));
        }
        let settings = EnrichSettings {
            enriched_topic: Arc::from("enriched"),
            enriched_schema_id: 7,
            join: JoinSettings {
                return_window_days: 30,
            },
            pending: PendingLimits {
                max_events: 10,
                max_bytes: 1 << 20,
                max_wait: Duration::from_secs(60),
            },
            headers: EnrichedHeaders::default(),
        };
        EnrichProcessor::new(
            CurrentOnly,
            tables,
            Arrivals::default(),
            settings,
            Pseudonymiser::new(b"0123456789abcdef-test").expect("key"),
            EnrichMetrics::register(&Metrics::for_tests()).expect("metrics"),
        )
    }

    /// The enriched event of an `Emit` outcome, with its record's key and headers.
    fn emitted(outcome: Outcome) -> (EnrichedPostPurchaseEvent, Option<Vec<u8>>, Headers) {
        let Outcome::Emit(outputs) = outcome else {
            panic!("not emitted: {outcome:?}");
        };
        let [output] = outputs.as_slice() else {
            panic!("{} outputs", outputs.len());
        };
        let value = output.value.as_deref().expect("a value");
        let (schema_id, datum) = wire::parse(value).expect("framed");
        assert_eq!(schema_id, 7);
        let enriched = codec::decode::<EnrichedPostPurchaseEvent>(datum).expect("decodes");
        (enriched, output.key.clone(), output.headers.clone())
    }

    /// The first record of a schema id goes through the decoder, which learns that the id is
    /// the current schema; the same record again is read in place. Both must come out alike
    /// (but for `enriched_at`), for a consenting and a pseudonymised customer, a line that is
    /// there and one that is not, with PII and a refund above the line's price.
    #[tokio::test]
    async fn an_event_read_in_place_is_enriched_as_a_decoded_one() {
        for (customer_id, order_id, line) in [("cu-1", "o-1", "o-1/2"), ("cu-2", "o-2", "o-2/9")] {
            let mut processor = processor();
            let mut event = event();
            event.customer_id = customer_id.into();
            event.order_id = order_id.into();
            event.order_line_id = line.into();
            event.event_type = EventType::RefundIssued;
            event.reason_text = Some("my neighbour Ada said".into());
            event.amount = Some(Money::new(1_000_000, "EUR"));
            let value = wire::frame(2, &codec::encode(&event).expect("encode"));
            let mut headers = Headers::new();
            headers.push("boomerang.idempotency_key", Some(b"k-1"));
            headers.push("boomerang.source", Some(b"0/5"));
            headers.push("boomerang.event_time_ms", Some(b"1763000000000"));
            headers.push("boomerang.history", Some(b"run-1"));
            let record = InputRecord::new(Arc::from("validated"), 0, 5, None, Some(&value))
                .with_headers(headers);

            assert!(
                processor.process_in_place(&record).is_none(),
                "id not known yet"
            );
            let decoded = processor.process(&record).await.expect("processed");
            assert!(
                processor.process_in_place(&record).is_some(),
                "id known now"
            );
            let in_place = processor.process(&record).await.expect("processed");

            let (decoded, decoded_key, decoded_headers) = emitted(decoded);
            let (mut in_place, in_place_key, in_place_headers) = emitted(in_place);
            assert!(in_place.enriched_at >= decoded.enriched_at);
            in_place.enriched_at = decoded.enriched_at;
            assert_eq!(in_place, decoded);
            assert_eq!(in_place_key, decoded_key);
            assert_eq!(in_place_key.as_deref(), Some(order_id.as_bytes()));
            assert_eq!(in_place_headers, decoded_headers);
            // Only what a later stage reads is carried on (`--enriched-headers lean`).
            assert_eq!(
                in_place_headers.iter().collect::<Vec<_>>(),
                [("boomerang.history", Some(&b"run-1"[..]))]
            );
            assert_eq!(in_place.event.reason_text, None);
            assert_eq!(in_place.customer_pseudonymised, customer_id == "cu-2");
            assert_eq!(
                in_place.event.customer_id == customer_id,
                customer_id == "cu-1"
            );
            assert_eq!(in_place.order_line_missing, customer_id == "cu-2");
        }
    }

    /// What the in-place path cannot read is left to the decoder, which says why.
    #[tokio::test]
    async fn a_malformed_event_is_refused_by_the_decoder() {
        let mut processor = processor();
        let good = wire::frame(2, &codec::encode(&event()).expect("encode"));
        let record = InputRecord::new(Arc::from("validated"), 0, 5, None, Some(&good));
        processor.process(&record).await.expect("processed");
        let bad = wire::frame(2, &[0x80; 12]);
        let record = InputRecord::new(Arc::from("validated"), 0, 6, None, Some(&bad));
        assert!(processor.process_in_place(&record).is_none());
        let outcome = processor.process(&record).await.expect("processed");
        assert!(
            matches!(&outcome, Outcome::DeadLetter(rejection) if rejection.error_kind == DeadLetterKind::Undecodable),
            "{outcome:?}"
        );
    }
}
