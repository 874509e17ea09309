//! enrich's step of the stage loop, one validated record at a time:
//! decode (the shared decoder) → look the order and customer up in the reference tables
//! (`tables.rs`, filled by `reference.rs`) → join (`join.rs`) and publish (`publish.rs`), or,
//! when reference data is missing, hold the event (`pending.rs`) until it arrives or the
//! deadline passes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use boomerang_runtime::dead_letter::Rejection;
use boomerang_runtime::decode::{DecodeFailure, RecordDecoder, WriterSchemaSource};
use boomerang_runtime::error_kind::DeadLetterKind;
use boomerang_runtime::pseudonym::Pseudonymiser;
use boomerang_runtime::stage_loop::{
    InputRecord, Outcome, Partition, Processor, Released, RetryableError,
};
use boomerang_schemas::{PostPurchaseEvent, TimestampMicros};

use crate::join::{JoinKeys, JoinSettings, Lookup, enrich, risk_flag};
use crate::metrics::EnrichMetrics;
use crate::pending::{Held, PendingBuffer, PendingLimits};
use crate::publish::enriched_record;
use crate::reference::Arrivals;
use crate::tables::{ReferenceTables, SharedTables};

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
    fn erased(&self, tables: &ReferenceTables, event: &PostPurchaseEvent, keys: JoinKeys) -> bool {
        let erased = tables
            .erased_at(keys.customer)
            .is_some_and(|requested_at| event.occurred_at <= requested_at);
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
        if self.erased(&tables, &event, keys) {
            return Outcome::Emit(Default::default());
        }
        self.emit_with(event, &Lookup::new(&tables, keys), waited, record)
    }

    fn emit_with(
        &self,
        event: PostPurchaseEvent,
        lookup: &Lookup<'_>,
        waited: bool,
        record: &InputRecord,
    ) -> Outcome {
        let (enriched, outcome) = enrich(
            event,
            lookup,
            waited,
            &self.settings.join,
            &self.pseudonymiser,
            TimestampMicros::now(),
        );
        self.metrics.count_join(outcome);
        if let Some(flag) = risk_flag(&enriched) {
            self.metrics.count_risk(flag);
        }
        match enriched_record(
            &enriched,
            self.settings.enriched_schema_id,
            &self.settings.enriched_topic,
            record,
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

    async fn process(&mut self, record: &InputRecord) -> Result<Outcome, RetryableError> {
        let decoded = match self.decoder.decode(record.value()).await {
            Ok(decoded) => decoded,
            Err(DecodeFailure::Rejected(rejection)) => return Ok(Outcome::DeadLetter(rejection)),
            Err(DecodeFailure::Retry(error)) => return Err(error),
        };
        let event = decoded.value;
        let keys = JoinKeys::of(&event);
        if !self.pending.holds_order(keys.order) {
            let tables = self.tables.read();
            if self.erased(&tables, &event, keys) {
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
