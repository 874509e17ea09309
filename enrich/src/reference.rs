//! Loading the reference tables from their compacted topics: every partition from the
//! beginning, into [`ReferenceTables`], then following updates for as long as the stage runs.
//!
//! At start-up a loader reads up to the end offsets it saw when it started (its *catch-up*);
//! enrich consumes no event before both tables have caught up. A record with a null value (a
//! tombstone) deletes its key. A reference record that cannot be decoded is counted
//! (`boomerang_enrich_reference_changes_total{change="rejected"}`) and logged with its topic,
//! partition and offset, and skipped: it stays in its own topic, and every instance reads
//! every reference partition, so dead-lettering it would copy it once per instance and start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use boomerang_runtime::decode::{DecodeFailure, RecordDecoder, WriterSchemaSource};
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::snapshot::SnapshotError;
use boomerang_schemas::{AvroRecord, Customer, ErasureRequest, Order};
use futures::FutureExt;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, error::KafkaResult};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use boomerang_runtime::error_kind::ErrorKind;
use boomerang_runtime::retry::Retry;

use crate::metrics::EnrichMetrics;
use crate::snapshot::{self, Snapshots};
use crate::tables::{RefKey, ReferenceTables, SharedTables, Table, ref_key};

/// Test hook: every loader waits this many milliseconds before it reads, as a long catch-up
/// would take.
pub const CATCH_UP_DELAY_ENV: &str = "BOOMERANG_TEST_CATCH_UP_DELAY_MS";

/// Records applied under one write lock at most.
const APPLY_BATCH: usize = 5_000;

/// The sizes a reference record may have; a larger one is skipped like an unreadable one.
#[derive(Debug, Clone, Copy)]
pub struct ReferenceLimits {
    /// The most lines one order may have (`--max-order-lines`): every line is held in memory
    /// by every enrich instance.
    pub max_order_lines: usize,
}

/// The default of [`ReferenceLimits::max_order_lines`].
pub const DEFAULT_MAX_ORDER_LINES: usize = 10_000;

impl Default for ReferenceLimits {
    fn default() -> Self {
        Self {
            max_order_lines: DEFAULT_MAX_ORDER_LINES,
        }
    }
}

/// A reference record type and how it lands in the tables.
pub trait ReferenceRecord: AvroRecord + Send + 'static {
    const TABLE: Table;
    fn id(&self) -> &str;
    fn upsert(&self, key: RefKey, tables: &mut ReferenceTables);

    /// Why the record is over `limits`, with its `error_kind`, if it is.
    fn over_limits(&self, _limits: &ReferenceLimits) -> Option<(&'static str, String)> {
        None
    }
}

impl ReferenceRecord for Customer {
    const TABLE: Table = Table::Customers;
    fn id(&self) -> &str {
        &self.customer_id
    }
    fn upsert(&self, key: RefKey, tables: &mut ReferenceTables) {
        tables.upsert_customer(key, self);
    }
}

impl ReferenceRecord for Order {
    const TABLE: Table = Table::Orders;
    fn id(&self) -> &str {
        &self.order_id
    }
    fn upsert(&self, key: RefKey, tables: &mut ReferenceTables) {
        tables.upsert_order(key, self);
    }

    fn over_limits(&self, limits: &ReferenceLimits) -> Option<(&'static str, String)> {
        (self.lines.len() > limits.max_order_lines).then(|| {
            (
                TOO_MANY_ORDER_LINES,
                format!(
                    "the order has {} lines, more than the {} allowed (--max-order-lines)",
                    self.lines.len(),
                    limits.max_order_lines
                ),
            )
        })
    }
}

/// An erasure request is reference data too: every instance reads the whole topic and keeps
/// the customer's key and the time of the request (not the id), for as long as the topic
/// keeps the request. Keyed by the customer id in the request, whatever the record's key.
impl ReferenceRecord for ErasureRequest {
    const TABLE: Table = Table::Erasures;
    fn id(&self) -> &str {
        &self.customer_id
    }
    fn upsert(&self, _key: RefKey, tables: &mut ReferenceTables) {
        tables.erase(ref_key(self.customer_id.as_bytes()), self.requested_at);
    }
}

/// The kind of an order skipped for its number of lines.
pub const TOO_MANY_ORDER_LINES: &str = "too_many_order_lines";

/// Keys of reference records that arrived, kept only while events wait for some.
#[derive(Clone, Default)]
pub struct Arrivals {
    watching: Arc<AtomicBool>,
    keys: Arc<Mutex<Vec<RefKey>>>,
}

impl Arrivals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RefKey>> {
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn watch(&self, watching: bool) {
        if self.watching.swap(watching, Ordering::Relaxed) && !watching {
            self.lock().clear();
        }
    }

    fn record(&self, keys: &[RefKey]) {
        if self.watching.load(Ordering::Relaxed) && !keys.is_empty() {
            self.lock().extend_from_slice(keys);
        }
    }

    pub fn take(&self) -> Vec<RefKey> {
        std::mem::take(&mut *self.lock())
    }
}

/// Where a loader is in its start-up catch-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    pub table: Table,
    /// Records between the loader's position and the end offsets it saw at start-up.
    pub remaining: u64,
    pub done: bool,
}

/// The loader's client callbacks: reaching a partition's end is how the loader knows it caught
/// up, not an error (librdkafka's default context logs it at ERROR level).
pub struct LoaderContext;

impl ClientContext for LoaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::trace!(reason, "reference partition end reached");
        } else {
            tracing::warn!(error = %error, reason, "reference consumer error");
        }
    }
}

impl ConsumerContext for LoaderContext {
    fn commit_callback(&self, _result: KafkaResult<()>, _offsets: &rdkafka::TopicPartitionList) {}
}

/// One reference topic's loader.
pub struct Loader<T: ReferenceRecord, Source> {
    consumer: StreamConsumer<LoaderContext>,
    state: LoaderState<T, Source>,
}

struct LoaderState<T: ReferenceRecord, Source> {
    topic: String,
    decoder: RecordDecoder<T, Source>,
    limits: ReferenceLimits,
    tables: SharedTables,
    arrivals: Arrivals,
    metrics: EnrichMetrics,
    /// The end offset per partition at start-up.
    targets: HashMap<i32, i64>,
    /// The next offset per partition.
    positions: HashMap<i32, i64>,
    progress: watch::Sender<CatchUp>,
    /// With `--state-dir`: where the table is snapshotted, when it last was, whether it has
    /// changed since, and the write under way.
    snapshots: Option<Snapshots>,
    last_snapshot: Option<std::time::Instant>,
    changed_since_snapshot: bool,
    writing: Option<tokio::task::JoinHandle<()>>,
}

impl<T: ReferenceRecord, Source: WriterSchemaSource> Loader<T, Source> {
    /// Assigns every partition of `topic` from the beginning and notes where it ends now.
    pub fn start(
        kafka: &KafkaArgs,
        topic: &str,
        source: Source,
        tables: SharedTables,
        arrivals: Arrivals,
        metrics: EnrichMetrics,
    ) -> anyhow::Result<(Self, watch::Receiver<CatchUp>)> {
        Self::start_with_snapshots(kafka, topic, source, tables, arrivals, metrics, None)
    }

    /// Like [`Self::start`], but first loads the table's snapshot from `snapshots` if there
    /// is a usable one, and reads on from where it says; and snapshots the table as it goes.
    pub fn start_with_snapshots(
        kafka: &KafkaArgs,
        topic: &str,
        source: Source,
        tables: SharedTables,
        arrivals: Arrivals,
        metrics: EnrichMetrics,
        snapshots: Option<Snapshots>,
    ) -> anyhow::Result<(Self, watch::Receiver<CatchUp>)> {
        let mut config = kafka.consumer_config(&format!("boomerang-enrich-{}", T::TABLE.name()));
        // EOF events tell a partition that ends in records it never hands out (transaction
        // markers) from one still being read.
        config.set("enable.partition.eof", "true");
        let consumer: StreamConsumer<LoaderContext> = config.create_with_context(LoaderContext)?;
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("cannot read the metadata of {topic}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .first()
            .map(|topic| topic.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            anyhow::bail!("topic {topic} does not exist; create it with `boomerang topics create`");
        }
        let mut watermarks = HashMap::new();
        for partition in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .with_context(|| format!("cannot read the end offsets of {topic}"))?;
            watermarks.insert(partition, (low, high));
        }
        let from_snapshot = snapshots.as_ref().and_then(|snapshots| {
            let loaded = snapshot::load(
                &snapshots.dir,
                topic,
                T::TABLE,
                &watermarks,
                &mut tables.write(),
            );
            match loaded {
                Ok(positions) => Some(positions),
                Err(SnapshotError::Io(error)) if error.kind() == std::io::ErrorKind::NotFound => {
                    None
                }
                Err(error) => {
                    tracing::warn!(topic, error = %error, "reference snapshot not used; reading the topic whole");
                    None
                }
            }
        });
        let started_from = if from_snapshot.is_some() {
            "snapshot"
        } else {
            "topic"
        };
        metrics
            .reference_restores
            .with_label_values(&[T::TABLE.name(), started_from])
            .inc();
        let mut assignment = TopicPartitionList::new();
        let mut targets = HashMap::new();
        let mut positions = HashMap::new();
        for (partition, (low, high)) in &watermarks {
            let start = from_snapshot
                .as_ref()
                .and_then(|positions| positions.get(partition).copied());
            let offset = start.map_or(Offset::Beginning, Offset::Offset);
            assignment.add_partition_offset(topic, *partition, offset)?;
            targets.insert(*partition, *high);
            positions.insert(*partition, start.unwrap_or(*low));
        }
        if from_snapshot.is_some() {
            tracing::info!(
                table = T::TABLE.name(),
                rows = tables.read().len(T::TABLE),
                "reference table loaded from its snapshot; reading on from there"
            );
        }
        consumer.assign(&assignment)?;
        let (progress, receiver) = watch::channel(CatchUp {
            table: T::TABLE,
            remaining: 0,
            done: false,
        });
        let mut state = LoaderState {
            topic: topic.to_string(),
            decoder: RecordDecoder::new(source),
            limits: ReferenceLimits::default(),
            tables,
            arrivals,
            metrics,
            targets,
            positions,
            progress,
            changed_since_snapshot: from_snapshot.is_none(),
            snapshots,
            last_snapshot: None,
            writing: None,
        };
        state.report_progress();
        Ok((Self { consumer, state }, receiver))
    }

    /// Skips records over `limits` (the defaults otherwise).
    pub fn with_limits(mut self, limits: ReferenceLimits) -> Self {
        self.state.limits = limits;
        self
    }

    /// Reads and applies until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            consumer,
            mut state,
        } = self;
        if let Some(delay_ms) = std::env::var(CATCH_UP_DELAY_ENV)
            .ok()
            .and_then(|value| value.parse().ok())
        {
            tracing::warn!(delay_ms, "test hook: a slow catch-up");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                () = shutdown.cancelled() => return,
            }
        }
        let check_every = state
            .snapshots
            .as_ref()
            .map_or(Duration::from_secs(3600), |snapshots| snapshots.interval);
        loop {
            let first = tokio::select! {
                received = consumer.recv() => received,
                () = tokio::time::sleep(check_every) => {
                    state.snapshot_if_due(false);
                    continue;
                }
                () = shutdown.cancelled() => {
                    state.snapshot_at_stop().await;
                    return;
                }
            };
            let mut batch = vec![first];
            while batch.len() < APPLY_BATCH {
                match consumer.recv().now_or_never() {
                    Some(received) => batch.push(received),
                    None => break,
                }
            }
            let mut decoded: Vec<Change<T>> = Vec::with_capacity(batch.len());
            for received in batch {
                match received {
                    Ok(message) => {
                        let Some(change) = state.decode(&message, &shutdown).await else {
                            return; // shutdown while the registry did not answer
                        };
                        state
                            .positions
                            .insert(message.partition(), message.offset() + 1);
                        decoded.push(change);
                    }
                    Err(KafkaError::PartitionEOF(partition)) => {
                        if let Some(target) = state.targets.get(&partition).copied() {
                            state.positions.insert(partition, target);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(topic = %state.topic, error = %error, "reference consumer error");
                        state.metrics.errors.count(ErrorKind::ConsumeFailed);
                        // librdkafka retries by itself; this only keeps a failing fetch from
                        // spinning.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            if !decoded.is_empty() {
                state.changed_since_snapshot = true;
            }
            state.apply(decoded);
            state.report_progress();
            state.snapshot_if_due(false);
        }
    }
}

impl<T: ReferenceRecord, Source: WriterSchemaSource> LoaderState<T, Source> {
    /// Writes a snapshot on a blocking thread if the table changed since the last one, has
    /// caught up, and the last one is older than the interval (or `now`), unless one is
    /// still being written. The rows are copied out under the read lock, which joins share.
    fn snapshot_if_due(&mut self, now: bool) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        let due = now
            || self
                .last_snapshot
                .is_none_or(|last| last.elapsed() >= snapshots.interval);
        let caught_up = self.progress.borrow().done;
        let busy = self
            .writing
            .as_ref()
            .is_some_and(|writing| !writing.is_finished());
        if !due || !caught_up || !self.changed_since_snapshot || busy {
            return;
        }
        let writer = snapshot::encode(&self.topic, T::TABLE, &self.positions, &self.tables.read());
        let path = snapshot::path(&snapshots.dir, &self.topic);
        let table = T::TABLE.name();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            match writer.write_to(&path) {
                Ok(()) => tracing::debug!(table, "reference snapshot written"),
                Err(error) => {
                    tracing::warn!(table, path = %path.display(), error = %error, "cannot write a reference snapshot");
                }
            }
        }));
        self.last_snapshot = Some(std::time::Instant::now());
        self.changed_since_snapshot = false;
    }

    /// A stop: the table as it is now is snapshotted, so that the restart reads little.
    async fn snapshot_at_stop(&mut self) {
        if let Some(writing) = self.writing.take() {
            let _ = writing.await;
        }
        self.snapshot_if_due(true);
        if let Some(writing) = self.writing.take() {
            let _ = writing.await;
        }
    }

    fn remaining(&self) -> u64 {
        self.targets
            .iter()
            .map(|(partition, target)| {
                let position = self.positions.get(partition).copied().unwrap_or(0);
                u64::try_from(target - position).unwrap_or(0)
            })
            .sum()
    }

    fn report_progress(&mut self) {
        let already_done = self.progress.borrow().done;
        if already_done {
            return;
        }
        let remaining = self.remaining();
        let done = remaining == 0;
        if done {
            self.targets.clear();
            tracing::info!(table = T::TABLE.name(), "reference table caught up");
        }
        self.progress.send_replace(CatchUp {
            table: T::TABLE,
            remaining,
            done,
        });
    }

    async fn decode(
        &mut self,
        message: &BorrowedMessage<'_>,
        shutdown: &CancellationToken,
    ) -> Option<Change<T>> {
        let key = message.key().map(ref_key);
        let Some(value) = message.payload() else {
            return Some(match key {
                Some(key) => Change::Delete(key),
                None => self.rejected(
                    message,
                    "tombstone_without_key",
                    "a null value without a key",
                ),
            });
        };
        let mut retry = Retry::new(
            "decoding a reference record",
            &self.metrics.errors,
            shutdown,
        );
        loop {
            match self.decoder.decode(Some(value)).await {
                Ok(decoded) => {
                    if let Some((error_kind, reason)) = decoded.value.over_limits(&self.limits) {
                        return Some(self.rejected(message, error_kind, &reason));
                    }
                    let key = key.unwrap_or_else(|| ref_key(decoded.value.id().as_bytes()));
                    return Some(Change::Upsert(key, decoded.value));
                }
                Err(DecodeFailure::Rejected(rejection)) => {
                    return Some(self.rejected(
                        message,
                        rejection.error_kind.as_str(),
                        &rejection.message,
                    ));
                }
                Err(DecodeFailure::Retry(error)) => {
                    let chain = boomerang_runtime::config::error_chain(error.source.as_ref());
                    if !retry.failed(error.kind, &chain).await {
                        return None;
                    }
                }
            }
        }
    }

    fn rejected(&self, message: &BorrowedMessage<'_>, error_kind: &str, reason: &str) -> Change<T> {
        tracing::warn!(
            topic = %self.topic,
            partition = message.partition(),
            offset = message.offset(),
            error_kind,
            error = reason,
            "skipping a reference record that cannot be read"
        );
        Change::Rejected
    }

    fn apply(&self, changes: Vec<Change<T>>) {
        let table = T::TABLE;
        let (mut upserts, mut deletes, mut rejected) = (0u64, 0u64, 0u64);
        let mut arrived = Vec::new();
        let sizes = {
            let mut tables = self.tables.write();
            for change in changes {
                match change {
                    Change::Upsert(key, record) => {
                        record.upsert(key, &mut tables);
                        arrived.push(key);
                        upserts += 1;
                    }
                    Change::Delete(key) => {
                        tables.delete(table, key);
                        deletes += 1;
                    }
                    Change::Rejected => rejected += 1,
                }
            }
            tables.drop_erased_orders();
            // An erasure changes the other tables too.
            [Table::Customers, Table::Orders, Table::Erasures]
                .map(|table| (table, tables.len(table)))
        };
        self.arrivals.record(&arrived);
        let changes = &self.metrics.reference_changes;
        changes
            .with_label_values(&[table.name(), "upsert"])
            .inc_by(upserts);
        changes
            .with_label_values(&[table.name(), "tombstone"])
            .inc_by(deletes);
        changes
            .with_label_values(&[table.name(), "rejected"])
            .inc_by(rejected);
        for (table, size) in sizes {
            self.metrics
                .reference_records
                .with_label_values(&[table.name()])
                .set(i64::try_from(size).unwrap_or(i64::MAX));
        }
    }
}

enum Change<T> {
    Upsert(RefKey, T),
    Delete(RefKey),
    Rejected,
}
