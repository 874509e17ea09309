//! The sink's step of the stage loop: decode each record (`boomerang_runtime::decode`; an
//! enriched event of the current schema is read in place, `boomerang_schemas::borrowed`), skip
//! it if ClickHouse already has its row (`stored.rs`) or, for an event, its idempotency key
//! (`recent_keys.rs`), turn it into its table's row (`rows.rs`) and keep it for the batch's
//! insert (`write.rs`), which the loop keeps in flight and commits behind. An event's row goes
//! straight into the batch's Native block (`native.rs`), borrowed from its record: no owned row
//! per event.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use boomerang_clickhouse::analytics_refresh::InsertLoad;
use boomerang_runtime::dead_letter::Rejection;
use boomerang_runtime::decode::{DecodeFailure, RecordDecoder, WriterSchemaSource};
use boomerang_runtime::error_kind::DeadLetterKind;
use boomerang_runtime::pseudonym::{PseudonymCache, Pseudonymiser};
use boomerang_runtime::stage_loop::{
    Fence, FlushFuture, FlushResult, HISTORY_HEADER, InputRecord, Outcome, Partition, Pool,
    Processor, RetryableError, Reusable, WriteIndex, Writes,
};
use boomerang_schemas::{
    Customer, EnrichedEventRef, EnrichedPostPurchaseEvent, Order, TimestampMicros,
};

use crate::metrics::SinkMetrics;
use crate::recent_keys::RecentKeys;
use crate::refund_sla::RefundSla;
use crate::rows::{CustomerRow, EventRow, EventRowRef, OrderRow, Source};
use crate::stored::StoredOffsets;
use crate::write::{EventEntry, InsertFormat, Keyed, NativeEvents, NotWritten, Writer};

pub const EVENTS_TABLE: &str = "post_purchase_events";
pub const ORDERS_TABLE: &str = "orders";
pub const CUSTOMERS_TABLE: &str = "customers";

const MICROS_PER_HOUR: i64 = 3_600_000_000;

#[derive(Debug, Clone)]
pub struct SinkTopics {
    pub enriched_events: String,
    pub orders: String,
    pub customers: String,
}

impl SinkTopics {
    pub fn table_of(&self, topic: &str) -> Option<&'static str> {
        if topic == self.enriched_events {
            Some(EVENTS_TABLE)
        } else if topic == self.orders {
            Some(ORDERS_TABLE)
        } else if topic == self.customers {
            Some(CUSTOMERS_TABLE)
        } else {
            None
        }
    }
}

pub struct SinkProcessor<Source> {
    topics: SinkTopics,
    events: RecordDecoder<EnrichedPostPurchaseEvent, Source>,
    orders: RecordDecoder<Order, Source>,
    customers: RecordDecoder<Customer, Source>,
    pseudonymiser: Pseudonymiser,
    /// Every event's customer is pseudonymised: a customer's many events make it once.
    pseudonyms: PseudonymCache,
    writer: Writer,
    /// What ClickHouse already holds of a newly assigned partition.
    stored_offsets: StoredOffsets,
    /// Offsets already in ClickHouse, per partition, to skip.
    skip: HashMap<Partition, HashSet<i64>>,
    /// The idempotency keys each enriched partition wrote lately: a second event with one of
    /// them is an upstream re-emission.
    recent_keys: RecentKeys,
    /// The write indexes of this batch's rows, over all three tables.
    writes: Writes,
    /// This batch's events, appended to a Native block as they come (the default format);
    /// as rows when the sink inserts RowBinary (`event_rows`). One of the two stays empty.
    native_events: NativeEvents,
    event_rows: Vec<Keyed<EventRow>>,
    order_rows: Vec<Keyed<OrderRow>>,
    customer_rows: Vec<Keyed<CustomerRow>>,
    spare_native_events: Pool<NativeEvents>,
    spare_event_rows: Pool<Vec<Keyed<EventRow>>>,
    spare_order_rows: Pool<Vec<Keyed<OrderRow>>>,
    spare_customer_rows: Pool<Vec<Keyed<CustomerRow>>>,
    /// Open return cases per enriched partition, for the refund SLA's gauges.
    refund_sla: Arc<Mutex<RefundSla>>,
    /// The wall clock as the refund SLA reads it: once per batch, not per event (it is only
    /// compared with a horizon of days, and a clock read per event was 3% of the sink's CPU).
    batch_now_micros: Option<i64>,
    /// Told of every batch of at least `full_batch_rows` rows: the sink is catching up, and
    /// the analytics refresh waits.
    insert_load: InsertLoad,
    full_batch_rows: usize,
    metrics: SinkMetrics,
}

impl<S: WriterSchemaSource + Clone> SinkProcessor<S> {
    pub fn new(
        source: S,
        topics: SinkTopics,
        pseudonymiser: Pseudonymiser,
        writer: Writer,
        stored_offsets: StoredOffsets,
        dedup_window_events: usize,
        metrics: SinkMetrics,
    ) -> Self {
        Self {
            topics,
            events: RecordDecoder::new(source.clone()),
            orders: RecordDecoder::new(source.clone()),
            customers: RecordDecoder::new(source),
            pseudonyms: PseudonymCache::new(pseudonymiser.clone()),
            pseudonymiser,
            writer,
            stored_offsets,
            skip: HashMap::new(),
            recent_keys: RecentKeys::new(dedup_window_events),
            writes: Writes::default(),
            native_events: NativeEvents::default(),
            event_rows: Vec::new(),
            order_rows: Vec::new(),
            customer_rows: Vec::new(),
            spare_native_events: Pool::default(),
            spare_event_rows: Pool::default(),
            spare_order_rows: Pool::default(),
            spare_customer_rows: Pool::default(),
            refund_sla: Arc::new(Mutex::new(RefundSla::new(
                72 * MICROS_PER_HOUR,
                90 * 24 * MICROS_PER_HOUR,
            ))),
            batch_now_micros: None,
            insert_load: InsertLoad::default(),
            full_batch_rows: usize::MAX,
            metrics,
        }
    }

    /// Tells `load` of every batch of at least `full_batch_rows` rows.
    pub fn with_insert_load(mut self, load: InsertLoad, full_batch_rows: usize) -> Self {
        self.insert_load = load;
        self.full_batch_rows = full_batch_rows.max(1);
        self
    }

    /// Follows the refund SLA's open cases in `refund_sla` (shared with what shows them).
    pub fn with_refund_sla(mut self, refund_sla: Arc<Mutex<RefundSla>>) -> Self {
        self.refund_sla = refund_sla;
        self
    }
}

impl<S> SinkProcessor<S> {
    /// Whether ClickHouse already holds `record`'s row (and forgets it: each is skipped once).
    fn already_stored(&mut self, record: &InputRecord) -> bool {
        let partition = record.partition();
        let Some(stored) = self.skip.get_mut(&partition) else {
            return false;
        };
        if !stored.remove(&record.offset) {
            return false;
        }
        if stored.is_empty() {
            self.skip.remove(&partition);
        }
        if let Some(table) = self.topics.table_of(&record.topic) {
            self.metrics
                .rows_already_stored
                .with_label_values(&[table])
                .inc();
        }
        true
    }
}

/// The refund SLA's cases, shared with the task that sets its gauges. A poisoned lock (a
/// panic while it was held) still holds whole counts: each change is one map operation.
pub fn lock(refund_sla: &Mutex<RefundSla>) -> std::sync::MutexGuard<'_, RefundSla> {
    refund_sla
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn rejected_or_retry(failure: DecodeFailure) -> Result<Outcome, RetryableError> {
    match failure {
        DecodeFailure::Rejected(rejection) => Ok(Outcome::DeadLetter(rejection)),
        DecodeFailure::Retry(error) => Err(error),
    }
}

fn keyed<R>(row: R, record: &InputRecord, write: WriteIndex) -> Keyed<R> {
    Keyed {
        row,
        partition: record.partition(),
        offset: record.offset,
        write,
    }
}

fn key_text(record: &InputRecord) -> Option<String> {
    record
        .key()
        .and_then(|key| std::str::from_utf8(key).ok())
        .map(str::to_string)
}

impl<S: WriterSchemaSource + Clone> Processor for SinkProcessor<S> {
    const WRITES_TO: &'static str = "clickhouse";

    async fn assign(&mut self, partitions: &[Partition]) -> anyhow::Result<()> {
        let stored_offsets = &self.stored_offsets;
        let topics = self.topics.clone();
        let committed = stored_offsets.committed(partitions).await?;
        let stored = stored_offsets
            .stored(&committed, |topic| topics.table_of(topic))
            .await?;
        self.skip.extend(
            stored
                .into_iter()
                .filter(|(_, offsets)| !offsets.is_empty()),
        );
        let window = self.recent_keys.window() as i64;
        for ((topic, partition), from) in &committed {
            if **topic != *self.topics.enriched_events {
                continue;
            }
            let keys = stored_offsets
                .event_keys(EVENTS_TABLE, topic, *partition, from.saturating_sub(window))
                .await?;
            tracing::info!(topic = %topic, partition, keys = keys.len(), "idempotency keys written lately restored");
            self.recent_keys
                .restore(*partition, keys.iter().map(String::as_str));
        }
        let enriched: Vec<i32> = partitions
            .iter()
            .filter(|(topic, _)| **topic == *self.topics.enriched_events)
            .map(|(_, partition)| *partition)
            .collect();
        if !enriched.is_empty() {
            let since =
                TimestampMicros::now().as_unix_micros() - lock(&self.refund_sla).horizon_micros();
            let open = stored_offsets
                .open_refund_cases(EVENTS_TABLE, &self.topics.enriched_events, &enriched, since)
                .await?;
            tracing::info!(
                open = open.len(),
                "open return cases restored for the refund SLA"
            );
            let mut refund_sla = lock(&self.refund_sla);
            for (partition, case, received) in open {
                refund_sla.restore(partition, [(case, received)]);
            }
        }
        Ok(())
    }

    fn revoke(&mut self, partitions: &[Partition]) {
        for partition in partitions {
            self.skip.remove(partition);
            if *partition.0 == *self.topics.enriched_events {
                self.recent_keys.forget(partition.1);
                lock(&self.refund_sla).forget(partition.1);
            }
        }
    }

    async fn process(&mut self, record: &InputRecord) -> Result<Outcome, RetryableError> {
        // Only after a restart or rebalance is anything to skip: no key built per record
        // otherwise.
        if !self.skip.is_empty() && self.already_stored(record) {
            return Ok(Outcome::Deduplicated);
        }
        let source = Source {
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
        };
        if *record.topic == *self.topics.enriched_events {
            // The common case, an event of the current schema, is read in place; anything
            // else is decoded, which also says why a record is refused.
            let decoded;
            let enriched = match self
                .events
                .current_datum(record.value())
                .and_then(|(_schema_id, datum)| EnrichedEventRef::read(datum).ok())
            {
                Some(in_place) => in_place,
                None => {
                    decoded = match self.events.decode(record.value()).await {
                        Ok(decoded) => decoded.value,
                        Err(failure) => return rejected_or_retry(failure),
                    };
                    EnrichedEventRef::of(&decoded)
                }
            };
            if !self
                .recent_keys
                .first_seen(record.partition, enriched.event.idempotency_key)
            {
                self.metrics.duplicate_keys.inc();
                return Ok(Outcome::Deduplicated);
            }
            // Most events are none of the SLA's: no lock and no clock read for them.
            if RefundSla::follows(enriched.event.event_type) {
                let now_micros = *self
                    .batch_now_micros
                    .get_or_insert_with(|| TimestampMicros::now().as_unix_micros());
                let refunded =
                    lock(&self.refund_sla).observe(record.partition, &enriched.event, now_micros);
                if let Some(refunded) = refunded {
                    self.metrics.count_refund(refunded);
                }
            }
            let backfill_run = record
                .headers
                .get(HISTORY_HEADER)
                .map(|run| String::from_utf8_lossy(run));
            let mut row = EventRowRef::new(&enriched, &source, &mut self.pseudonyms);
            if let Some(run) = &backfill_run {
                // Checked against what ClickHouse holds before the insert (`history.rs`).
                row.backfill_run = run;
            }
            let (outcome, write) = self.writes.write();
            match self.writer.format {
                InsertFormat::Native => {
                    let entry = EventEntry {
                        history_key: (!row.backfill_run.is_empty())
                            .then(|| row.idempotency_key.into()),
                    };
                    self.native_events.push(&row, keyed(entry, record, write));
                }
                InsertFormat::RowBinary => {
                    self.event_rows
                        .push(keyed(row.to_owned_row(), record, write));
                }
            }
            Ok(outcome)
        } else if *record.topic == *self.topics.orders {
            let row = if record.value().is_none() {
                let Some(order_id) = key_text(record) else {
                    return Ok(Outcome::DeadLetter(Rejection::new(
                        DeadLetterKind::TombstoneWithoutKey,
                        "an order tombstone without a (UTF-8) key".to_string(),
                    )));
                };
                OrderRow::deleted(order_id, &source)
            } else {
                match self.orders.decode(record.value()).await {
                    Ok(decoded) => OrderRow::new(decoded.value, &source, &self.pseudonymiser),
                    Err(failure) => return rejected_or_retry(failure),
                }
            };
            let (outcome, write) = self.writes.write();
            self.order_rows.push(keyed(row, record, write));
            Ok(outcome)
        } else if *record.topic == *self.topics.customers {
            let row = if record.value().is_none() {
                let Some(customer_id) = key_text(record) else {
                    return Ok(Outcome::DeadLetter(Rejection::new(
                        DeadLetterKind::TombstoneWithoutKey,
                        "a customer tombstone without a (UTF-8) key".to_string(),
                    )));
                };
                CustomerRow::deleted(&customer_id, &source, &self.pseudonymiser)
            } else {
                match self.customers.decode(record.value()).await {
                    Ok(decoded) => CustomerRow::new(decoded.value, &source, &self.pseudonymiser),
                    Err(failure) => return rejected_or_retry(failure),
                }
            };
            let (outcome, write) = self.writes.write();
            self.customer_rows.push(keyed(row, record, write));
            Ok(outcome)
        } else {
            Ok(Outcome::DeadLetter(Rejection::new(
                DeadLetterKind::UnexpectedTopic,
                format!("the sink does not write topic {}", record.topic),
            )))
        }
    }

    fn flush(&mut self, fence: &Fence) -> FlushFuture {
        self.writes.seal();
        self.batch_now_micros = None;
        let rows = self.native_events.rows.len()
            + self.event_rows.len()
            + self.order_rows.len()
            + self.customer_rows.len();
        if rows >= self.full_batch_rows {
            self.insert_load.full_batch();
        }
        let mut native_events = swap_for_spare(&self.spare_native_events, &mut self.native_events);
        let mut events = swap_for_spare(&self.spare_event_rows, &mut self.event_rows);
        let orders = swap_for_spare(&self.spare_order_rows, &mut self.order_rows);
        let customers = swap_for_spare(&self.spare_customer_rows, &mut self.customer_rows);
        let (spare_native_events, spare_events, spare_orders, spare_customers) = (
            self.spare_native_events.clone(),
            self.spare_event_rows.clone(),
            self.spare_order_rows.clone(),
            self.spare_customer_rows.clone(),
        );
        // The next batch fills a vector or block an earlier insert handed back (`Spares`).
        let writer = self.writer.clone();
        let fence = fence.clone();
        // Spawned, so the insert makes progress while the loop consumes the next batch.
        let task = tokio::spawn(async move {
            let mut rejected = Vec::new();
            let fence = Some(&fence);
            let mut already_stored = 0;
            for dropped in [
                writer
                    .drop_stored_history(EVENTS_TABLE, &mut native_events, fence)
                    .await,
                writer
                    .drop_stored_history(EVENTS_TABLE, &mut events, fence)
                    .await,
            ] {
                match dropped {
                    Ok(dropped) => already_stored += dropped,
                    Err(NotWritten::Shutdown) => return FlushResult::Abandoned,
                    Err(NotWritten::Fenced(fenced)) => return FlushResult::Failed(fenced),
                }
            }
            for written in [
                writer.write_all(EVENTS_TABLE, &native_events, fence).await,
                writer
                    .write_all(EVENTS_TABLE, events.as_slice(), fence)
                    .await,
                writer
                    .write_all(ORDERS_TABLE, orders.as_slice(), fence)
                    .await,
                writer
                    .write_all(CUSTOMERS_TABLE, customers.as_slice(), fence)
                    .await,
            ] {
                if written.abandoned {
                    return FlushResult::Abandoned;
                }
                if let Some(fenced) = written.fenced {
                    return FlushResult::Failed(fenced);
                }
                rejected.extend(written.rejected);
            }
            spare_native_events.give_back(native_events);
            spare_events.give_back(events);
            spare_orders.give_back(orders);
            spare_customers.give_back(customers);
            FlushResult::Written {
                rejected,
                already_stored,
            }
        });
        Box::pin(async move {
            match task.await {
                Ok(result) => result,
                Err(error) => FlushResult::Failed(format!("the insert task failed: {error}")),
            }
        })
    }
}

/// A batch's container that the processor fills, and that its insert hands back to a [`Pool`]
/// for the next batch once the rows are written.
trait Filled: Reusable {
    /// An empty one with room for as many rows as `self` holds.
    fn with_room_of(&self) -> Self;
    /// Whether it holds no rows.
    fn holds_nothing(&self) -> bool;
}

impl<R> Filled for Vec<R> {
    fn with_room_of(&self) -> Self {
        Vec::with_capacity(self.len())
    }

    fn holds_nothing(&self) -> bool {
        self.is_empty()
    }
}

impl Reusable for NativeEvents {
    fn empty(&mut self) -> bool {
        self.clear();
        self.rows.capacity() > 0
    }
}

impl Filled for NativeEvents {
    fn with_room_of(&self) -> Self {
        NativeEvents::with_room_of(self)
    }

    fn holds_nothing(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Takes the filled batch out for its insert, leaving a spare from `spares` in its place (or,
/// if none has come back yet, a new one with room for as many rows).
///
/// A batch with no rows (a flush of only other tables', or of nothing) stays where it is, and
/// an empty one without memory goes to the insert: a spare is for a batch with rows.
fn swap_for_spare<B: Filled>(spares: &Pool<B>, filled: &mut B) -> B {
    if filled.holds_nothing() {
        return B::default();
    }
    let spare = spares.take().unwrap_or_else(|| filled.with_room_of());
    std::mem::replace(filled, spare)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_vector_comes_back_for_the_next_batch() {
        let spares = Pool::default();
        let mut filling: Vec<String> = (0..1_000).map(|n| n.to_string()).collect();
        // No spare yet: a new vector with room for as many rows.
        let first = swap_for_spare(&spares, &mut filling);
        assert_eq!(first.len(), 1_000);
        assert!(filling.is_empty() && filling.capacity() >= 1_000);
        let first_buffer = first.as_ptr();
        spares.give_back(first);
        filling.push("next".to_string());
        // The handed-back vector, emptied, replaces the filled one: its memory is reused.
        let second = swap_for_spare(&spares, &mut filling);
        assert_eq!(second, vec!["next".to_string()]);
        assert!(filling.is_empty());
        assert_eq!(filling.as_ptr(), first_buffer);
        assert!(filling.capacity() >= 1_000);
    }

    #[test]
    fn a_batch_without_rows_takes_no_spare_and_keeps_its_memory() {
        let spares = Pool::default();
        spares.give_back(Vec::<u8>::with_capacity(1_000));
        let mut filling: Vec<u8> = Vec::with_capacity(500);
        let kept = filling.as_ptr();
        let handed = swap_for_spare(&spares, &mut filling);
        assert!(handed.is_empty() && handed.capacity() == 0);
        assert_eq!(filling.as_ptr(), kept, "the empty batch keeps its buffer");
        assert_eq!(spares.len(), 1, "the spare waits for a batch with rows");
        filling.push(1);
        let handed = swap_for_spare(&spares, &mut filling);
        assert_eq!(handed, vec![1]);
        assert!(
            filling.capacity() >= 1_000,
            "the spare replaced the filled batch"
        );
        assert!(spares.is_empty());
    }
}
