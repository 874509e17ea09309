//! consume → process → produce → commit: the loop every stage runs, so that a stage's own code
//! is only its [`Processor`].
//!
//! The loop's guarantees, which the stages build on:
//! - **At-least-once.** A record's offset is stored, and committed, only after every output of
//!   every record up to it (events and dead letters) has been acknowledged by the brokers. A
//!   crash at any point replays from the last commit; stages make the replay harmless.
//! - **Pipelined.** Up to [`MAX_BATCHES_IN_FLIGHT`] batches' outputs travel to the brokers
//!   while the next batch is consumed and processed; batches complete (counted, offsets stored
//!   and committed) in order. Before partitions are given up in a rebalance, every batch in
//!   flight is acknowledged and committed first, so the next owner never restores state that
//!   our late outputs could still change.
//! - **Nothing is dropped silently.** Every consumed record ends as sent, deduplicated or
//!   dead-lettered, each counted ([`StageMetrics`]).
//! - **Partition ownership is explicit.** A processor hears about assigned partitions before it
//!   sees their records (to restore state) and about revoked ones after their last commit.
//! - **Bad input never stops the loop**: only the processor decides a record is bad, and a
//!   rejection becomes a dead letter. Failures that are not a record's fault (a registry that
//!   does not answer) are retried with backoff while `/readyz` says why.
//! - **Held records are never committed past.** A processor may hold a record back
//!   ([`Outcome::Hold`], enrich waiting for reference data) and decide it later
//!   ([`Processor::release`]); a partition's committed offset stays below its oldest held
//!   record, so a crash replays it. A processor with no room ([`Processor::room`]) pauses
//!   consumption instead of dropping anything.
//! - **Writes to other systems are acknowledged like produced records.** A processor may keep a
//!   batch's records for its own write ([`Outcome::Write`], sink's ClickHouse insert) and hand
//!   the loop that write as a future ([`Processor::flush`]); the batch completes, and its
//!   offsets are committed, only when that future has finished. Records the write rejects for
//!   good are dead-lettered like any other.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

use crate::dead_letter::{self, Rejection};
use crate::delivery::{
    BatchDeliveries, BatchProducer, CountingContext, Delivered, Handed, base_record, hand_over,
};
use crate::kafka::{self, KafkaArgs};
use crate::metrics::StageMetrics;
use crate::record_size::RECORD_TOO_LARGE;
use crate::service::StageContext;

/// A topic and partition.
pub type Partition = (String, i32);

/// A consumed record, owned.
#[derive(Debug, Clone)]
pub struct InputRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// The record's timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// A record to produce.
#[derive(Debug, Clone)]
pub struct OutputRecord {
    pub topic: String,
    /// `None`: the producer's partitioner picks by key.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Milliseconds since the epoch; for events, their event time.
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// What becomes of one input record.
#[derive(Debug)]
pub enum Outcome {
    /// Produce these (possibly none), then count the record as sent.
    Emit(Vec<OutputRecord>),
    /// A duplicate of a record already passed: dropped on purpose.
    Deduplicated,
    /// Cannot be processed: to the dead-letter topic with its original bytes.
    DeadLetter(Rejection),
    /// Not decided yet: the processor keeps the record and returns it, decided, from
    /// [`Processor::release`]. Until then the partition is not committed past it.
    Hold,
    /// Kept for this batch's write by [`Processor::flush`]; counted as sent (to
    /// [`Processor::WRITES_TO`]) once that write has finished.
    Write,
}

/// A record held earlier, now decided (anything but [`Outcome::Hold`]).
#[derive(Debug)]
pub struct Released {
    pub record: InputRecord,
    pub outcome: Outcome,
}

/// How a processor's batch write ended.
#[derive(Debug)]
pub enum FlushResult {
    /// Written, but for these records (topic, partition, offset), rejected for good: they are
    /// dead-lettered instead.
    Written {
        rejected: Vec<(Partition, i64, Rejection)>,
    },
    /// Given up at shutdown: neither this batch nor any later one is committed.
    Abandoned,
    /// The write failed in a way it cannot recover from: the stage stops, and its next start
    /// replays from the last commit.
    Failed(String),
}

/// A processor's write of one batch's [`Outcome::Write`] records.
pub type FlushFuture = Pin<Box<dyn Future<Output = FlushResult> + Send>>;

/// A failure that is not the record's fault, retried by the loop.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct RetryableError {
    /// Stable and low-cardinality, e.g. `schema_registry_unavailable`.
    pub kind: &'static str,
    #[source]
    pub source: anyhow::Error,
}

/// A stage's own logic.
pub trait Processor: Send {
    /// Partitions just assigned to this instance, before any of their records is processed:
    /// restore per-partition state here. An error stops the stage (it restarts and retries).
    fn assign(
        &mut self,
        partitions: &[Partition],
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Partitions just revoked, after their processed offsets were committed.
    fn revoke(&mut self, partitions: &[Partition]);

    /// Decides one record's outcome.
    fn process(
        &mut self,
        record: &InputRecord,
    ) -> impl Future<Output = Result<Outcome, RetryableError>> + Send;

    /// Held records decided since the last call, in the order they should be emitted.
    fn release(&mut self) -> Vec<Released> {
        Vec::new()
    }

    /// How many records are held now. While any are, an idle loop calls
    /// [`release`](Self::release) every few milliseconds.
    fn holding(&self) -> usize {
        0
    }

    /// How many more records the processor can take now; 0 pauses consumption.
    fn room(&self) -> usize {
        usize::MAX
    }

    /// Where [`Outcome::Write`] records go, for the `sent` counter's `topic` label.
    const WRITES_TO: &'static str = "external";

    /// Called once per batch, after every record's outcome is decided, if any was
    /// [`Outcome::Write`]: the write of those records. The loop keeps it in flight like the
    /// batch's produced records.
    fn flush(&mut self) -> Option<FlushFuture> {
        None
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoopArgs {
    /// Consumer group id; every instance of a stage shares one.
    #[arg(long = "group-id", env = "BOOMERANG_GROUP_ID")]
    pub group_id: Option<String>,

    /// Most records in one batch.
    #[arg(
        long = "batch-max-records",
        env = "BOOMERANG_BATCH_MAX_RECORDS",
        default_value_t = 10_000
    )]
    pub batch_max_records: usize,

    /// Longest a batch waits to fill once its first record is in, in milliseconds.
    #[arg(
        long = "batch-max-wait-ms",
        env = "BOOMERANG_BATCH_MAX_WAIT_MS",
        default_value_t = 100
    )]
    pub batch_max_wait_ms: u64,
}

/// What the loop needs besides the processor.
pub struct LoopSettings {
    pub stage: &'static str,
    pub group_id: String,
    pub input_topics: Vec<String>,
    /// The topics the processor produces to (besides the dead-letter topic), for the start-up
    /// check that they take the stage's largest record.
    pub output_topics: Vec<String>,
    pub dead_letter_topic: String,
    pub batch_max_records: usize,
    pub batch_max_wait: Duration,
}

impl LoopSettings {
    /// The topics the processor produces to.
    pub fn producing_to(mut self, output_topics: Vec<String>) -> Self {
        self.output_topics = output_topics;
        self
    }

    pub fn new(
        stage: &'static str,
        args: &LoopArgs,
        input_topics: Vec<String>,
        dead_letter_topic: String,
    ) -> Self {
        Self {
            stage,
            group_id: args
                .group_id
                .clone()
                .unwrap_or_else(|| format!("boomerang-{stage}")),
            input_topics,
            output_topics: Vec::new(),
            dead_letter_topic,
            batch_max_records: args.batch_max_records.max(1),
            batch_max_wait: Duration::from_millis(args.batch_max_wait_ms),
        }
    }
}

/// Test hook: abort the process (as `kill -9` would) after this many batches have had their
/// outputs acknowledged but before their offsets are committed.
pub const CRASH_AFTER_PRODUCE_ENV: &str = "BOOMERANG_TEST_CRASH_AFTER_PRODUCED_BATCHES";

#[derive(Default)]
struct Ownership {
    owned: HashSet<Partition>,
    newly_assigned: Vec<Partition>,
    newly_revoked: Vec<Partition>,
}

/// Batches whose outputs are on their way to the brokers most at once.
pub const MAX_BATCHES_IN_FLIGHT: usize = 4;

/// What a completed batch adds to the counters.
#[derive(Default)]
struct BatchCounts {
    received: BTreeMap<String, u64>,
    sent: BTreeMap<String, u64>,
    dead_lettered: BTreeMap<&'static str, u64>,
    deduplicated: u64,
    latest_event_ms: Option<i64>,
    /// The `sent` label of records a processor writes itself ([`Processor::WRITES_TO`]).
    writes_to: &'static str,
}

/// What a batch's completion future reports.
struct BatchResult {
    /// The first output the brokers did not take, if any. Only that is kept: collecting every
    /// acknowledgement (a `Result` holding a whole message each) allocated megabytes per batch.
    delivery_failure: Option<String>,
    /// The dead-letter kinds of records a flush rejected (already counted as sent).
    rejected_writes: Vec<&'static str>,
    abandoned: bool,
    /// Something else failed: as for a failed delivery.
    failure: Option<String>,
}

/// A batch whose outputs are on their way to the brokers (and to a processor's own sink).
struct InFlightBatch {
    completion: Pin<Box<dyn Future<Output = BatchResult> + Send>>,
    counts: BatchCounts,
    /// The highest offset per partition processed in this batch.
    processed: Vec<(String, i32, i64)>,
    /// Offsets of earlier held records this batch decided.
    released: Vec<(String, i32, i64)>,
    started: Instant,
}

/// The batches in flight, oldest first; shared with the consumer context, which completes
/// them all before it gives partitions up.
#[derive(Default)]
struct InFlight {
    batches: VecDeque<InFlightBatch>,
    completed: u64,
    /// Set when a delivery failed: no later batch may be committed, and the loop stops.
    failure: Option<String>,
    /// Set when a write was given up at shutdown: no later batch may be committed either.
    abandoned: bool,
    /// Offsets the processor holds, per partition: nothing at or after the first is committed.
    held: HashMap<Partition, BTreeSet<i64>>,
    /// The highest offset per partition of completed batches.
    done_upto: HashMap<Partition, i64>,
    /// The offset last stored per partition, so stores only move forward.
    stored: HashMap<Partition, i64>,
}

impl InFlight {
    /// Forgets a partition given up: its next owner replays from the last commit.
    fn forget(&mut self, partition: &Partition) {
        self.held.remove(partition);
        self.done_upto.remove(partition);
        self.stored.remove(partition);
    }

    /// The offset it is safe to commit up to (inclusive) for `partition`, if it moved.
    fn advance(&mut self, partition: &Partition) -> Option<i64> {
        let mut safe = *self.done_upto.get(partition)?;
        if let Some(first_held) = self.held.get(partition).and_then(BTreeSet::first) {
            safe = safe.min(first_held - 1);
        }
        let stored = self.stored.entry(partition.clone()).or_insert(-1);
        if safe > *stored {
            *stored = safe;
            Some(safe)
        } else {
            None
        }
    }
}

/// Consumer callbacks: partition ownership, commits before a revoke, lag and commit errors.
struct LoopContext {
    ownership: Arc<Mutex<Ownership>>,
    in_flight: Arc<Mutex<InFlight>>,
    metrics: StageMetrics,
    crash_after_batches: Option<u64>,
}

impl LoopContext {
    fn ownership(&self) -> std::sync::MutexGuard<'_, Ownership> {
        self.ownership
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn partitions_of(list: &rdkafka::TopicPartitionList) -> Vec<Partition> {
    list.elements()
        .iter()
        .map(|element| (element.topic().to_string(), element.partition()))
        .collect()
}

fn ignore_nothing_to_commit(result: KafkaResult<()>) -> KafkaResult<()> {
    match result {
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        other => other,
    }
}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, topic_statistics) in &statistics.topics {
            for (partition, partition_statistics) in &topic_statistics.partitions {
                if *partition >= 0 && partition_statistics.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(partition_statistics.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            // Wait for every batch in flight, so the next owner's restore sees all our outputs.
            // The producer's own thread resolves the deliveries: blocking here cannot deadlock.
            let mut in_flight = lock(&self.in_flight);
            while let Some(mut batch) = in_flight.batches.pop_front() {
                let result = futures::executor::block_on(&mut batch.completion);
                complete_batch(
                    consumer,
                    &mut in_flight,
                    batch,
                    result,
                    &self.metrics,
                    self.crash_after_batches,
                );
            }
            drop(in_flight);
            // Everything stored was produced and acknowledged: commit it while we still own it.
            if let Err(error) =
                ignore_nothing_to_commit(consumer.commit_consumer_state(CommitMode::Sync))
            {
                tracing::warn!(error = %error, "cannot commit before giving up partitions");
                self.metrics
                    .errors
                    .with_label_values(&["commit_failed"])
                    .inc();
            }
            let revoked = partitions_of(list);
            {
                let mut in_flight = lock(&self.in_flight);
                for partition in &revoked {
                    in_flight.forget(partition);
                }
            }
            for (topic, partition) in &revoked {
                let _ = self
                    .metrics
                    .consumer_lag
                    .remove_label_values(&[topic.as_str(), &partition.to_string()]);
            }
            let mut ownership = self.ownership();
            for partition in &revoked {
                ownership.owned.remove(partition);
            }
            tracing::info!(partitions = ?revoked, "partitions revoked");
            ownership.newly_revoked.extend(revoked);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let assigned = partitions_of(list);
            tracing::info!(partitions = ?assigned, "partitions assigned");
            let mut ownership = self.ownership();
            ownership.owned.extend(assigned.iter().cloned());
            ownership.newly_assigned.extend(assigned);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &rdkafka::TopicPartitionList) {
        if let Err(error) = ignore_nothing_to_commit(result) {
            tracing::warn!(error = %error, "offset commit failed; the next commit covers it");
            self.metrics
                .errors
                .with_label_values(&["commit_failed"])
                .inc();
        }
    }
}

fn owned_record(message: &BorrowedMessage<'_>) -> InputRecord {
    let headers = kafka::owned_headers(message);
    InputRecord {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        timestamp_ms: message.timestamp().to_millis(),
        headers,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// How each produced record is counted once acknowledged.
enum Counted {
    Sent,
    DeadLettered(&'static str),
}

fn is_owned(ownership: &Mutex<Ownership>, record: &InputRecord) -> bool {
    lock(ownership)
        .owned
        .iter()
        .any(|(topic, partition)| *partition == record.partition && *topic == record.topic)
}

/// Pauses or resumes the whole assignment so that consumption stops while the processor has
/// no room. (librdkafka drops what it prefetched for paused partitions and resumes from the
/// last record it handed out.)
fn set_paused(consumer: &StreamConsumer<LoopContext>, paused: &mut bool, pause: bool) {
    if *paused == pause {
        return;
    }
    let assignment = match consumer.assignment() {
        Ok(assignment) => assignment,
        Err(error) => {
            tracing::warn!(error = %error, "cannot read the assignment to pause or resume it");
            return;
        }
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => {
            *paused = pause;
            tracing::info!(
                paused = pause,
                "consumption {}",
                if pause { "paused: no room" } else { "resumed" }
            );
        }
        Err(error) => tracing::warn!(error = %error, "cannot pause or resume consumption"),
    }
}

/// Runs the loop until shutdown; returns after a final commit.
pub async fn run<P: Processor>(
    settings: LoopSettings,
    kafka: &KafkaArgs,
    mut processor: P,
    metrics: StageMetrics,
    context: &StageContext,
) -> anyhow::Result<()> {
    let ownership = Arc::new(Mutex::new(Ownership::default()));
    let in_flight = Arc::new(Mutex::new(InFlight::default()));
    let crash_after_batches: Option<u64> = std::env::var(CRASH_AFTER_PRODUCE_ENV)
        .ok()
        .and_then(|value| value.parse().ok());
    let mut consumer_config = kafka.group_member_config(&settings.group_id);
    if consumer_config.get("statistics.interval.ms").is_none() {
        consumer_config.set("statistics.interval.ms", "5000");
    }
    let consumer: StreamConsumer<LoopContext> =
        consumer_config.create_with_context(LoopContext {
            ownership: ownership.clone(),
            in_flight: in_flight.clone(),
            metrics: metrics.clone(),
            crash_after_batches,
        })?;
    let topics: Vec<&str> = settings.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let max_record_bytes = kafka.effective_max_record_bytes()?;
    let produced_to: Vec<&str> = std::iter::once(&settings.dead_letter_topic)
        .chain(&settings.output_topics)
        .map(String::as_str)
        .collect();
    kafka::check_record_limit(kafka, &produced_to).await?;
    let producer: BatchProducer = kafka
        .producer_config()
        .create_with_context(CountingContext)?;
    let mut paused = false;
    let mut last_batch_len = 0;
    context.readiness.set_ready();
    tracing::info!(stage = settings.stage, group = %settings.group_id, topics = ?settings.input_topics, "consuming");

    let result = loop {
        if let Err(error) =
            complete_acknowledged(&consumer, &in_flight, &metrics, crash_after_batches, false).await
        {
            break Err(error);
        }
        let room = processor.room();
        set_paused(&consumer, &mut paused, room == 0);
        let limits = CollectLimits {
            max_records: settings.batch_max_records.min(room.max(1)),
            expected_records: last_batch_len,
            return_when_idle: processor.holding() > 0 || paused,
        };
        let collected = tokio::select! {
            collected = collect_batch(&consumer, &ownership, &in_flight, &settings, limits, &metrics) => collected,
            () = context.shutdown.cancelled() => break Ok(()),
        };
        if !collected.is_empty() {
            last_batch_len = collected.len();
        }
        let (assigned, revoked) = {
            let mut guard = lock(&ownership);
            (
                std::mem::take(&mut guard.newly_assigned),
                std::mem::take(&mut guard.newly_revoked),
            )
        };
        if !revoked.is_empty() {
            processor.revoke(&revoked);
        }
        if !assigned.is_empty() {
            if paused {
                // Newly assigned partitions start unpaused: pause them too.
                paused = false;
                set_paused(&consumer, &mut paused, true);
            }
            if let Err(error) = processor.assign(&assigned).await {
                break Err(error);
            }
        }
        // Records fetched before a revoke belong to the new owner now. (Only a revoke in this
        // batch's collection can leave such records: librdkafka fetches nothing for partitions
        // it no longer owns.)
        let mut batch: Vec<InputRecord> = if revoked.is_empty() {
            collected
        } else {
            collected
                .into_iter()
                .filter(|record| is_owned(&ownership, record))
                .collect()
        };
        let released: Vec<Released> = processor
            .release()
            .into_iter()
            .filter(|released| is_owned(&ownership, &released.record))
            .collect();
        if batch.is_empty() && released.is_empty() {
            continue;
        }
        let started = Instant::now();
        let Some(processed) = process_batch(
            &settings,
            max_record_bytes,
            &mut processor,
            &batch,
            released,
            &in_flight,
            &metrics,
            context,
        )
        .await
        else {
            break Ok(()); // shutdown while retrying: nothing of this batch is committed
        };
        let delivered = match send_all(
            &producer,
            &processed.outputs,
            &consumer,
            &in_flight,
            &metrics,
            crash_after_batches,
        )
        .await
        {
            Ok(delivered) => delivered,
            Err(error) => break Err(error),
        };
        let counts = batch_counts::<P>(&batch, &processed);
        let processed_offsets = last_offsets(&batch);
        let flush = if processed.written > 0 {
            processor.flush()
        } else {
            None
        };
        let completion = completion(
            delivered,
            flush,
            std::mem::take(&mut batch),
            producer.clone(),
            settings.stage,
            settings.dead_letter_topic.clone(),
            max_record_bytes,
        );
        lock(&in_flight).batches.push_back(InFlightBatch {
            completion,
            counts,
            processed: processed_offsets,
            released: processed.released,
            started,
        });
        // Bound what is in flight: wait for the oldest batch when there are too many.
        if let Err(error) =
            complete_acknowledged(&consumer, &in_flight, &metrics, crash_after_batches, true).await
        {
            break Err(error);
        }
        context.readiness.set_ready();
    };
    // Whatever is in flight is acknowledged and committed before the stage stops.
    let drained = complete_all(&consumer, &in_flight, &metrics, crash_after_batches).await;
    if let Err(error) = ignore_nothing_to_commit(consumer.commit_consumer_state(CommitMode::Sync)) {
        tracing::warn!(error = %error, "final commit failed; the next owner replays from the last commit");
    }
    consumer.unsubscribe();
    result.and(drained)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Completes the oldest batches whose outputs are all acknowledged. With `bounded`, also waits
/// for the oldest ones while more than [`MAX_BATCHES_IN_FLIGHT`] are in flight.
async fn complete_acknowledged(
    consumer: &StreamConsumer<LoopContext>,
    in_flight: &Mutex<InFlight>,
    metrics: &StageMetrics,
    crash_after_batches: Option<u64>,
    bounded: bool,
) -> anyhow::Result<()> {
    loop {
        let mut front = {
            let mut guard = lock(in_flight);
            if let Some(failure) = &guard.failure {
                anyhow::bail!("{failure}");
            }
            let must_wait = bounded && guard.batches.len() > MAX_BATCHES_IN_FLIGHT;
            let Some(front) = guard.batches.front_mut() else {
                return Ok(());
            };
            match (&mut front.completion).now_or_never() {
                Some(result) => {
                    let batch = guard.batches.pop_front();
                    (batch, Some(result))
                }
                None if must_wait => (guard.batches.pop_front(), None),
                None => return Ok(()),
            }
        };
        let Some(mut batch) = front.0.take() else {
            return Ok(());
        };
        let result = match front.1.take() {
            Some(result) => result,
            None => (&mut batch.completion).await,
        };
        let mut guard = lock(in_flight);
        complete_batch(
            consumer,
            &mut guard,
            batch,
            result,
            metrics,
            crash_after_batches,
        );
        if guard.failure.is_none() {
            ignore_nothing_to_commit(consumer.commit_consumer_state(CommitMode::Async))?;
        }
    }
}

/// Waits for and completes every batch in flight.
async fn complete_all(
    consumer: &StreamConsumer<LoopContext>,
    in_flight: &Mutex<InFlight>,
    metrics: &StageMetrics,
    crash_after_batches: Option<u64>,
) -> anyhow::Result<()> {
    loop {
        let Some(mut batch) = lock(in_flight).batches.pop_front() else {
            break;
        };
        let result = (&mut batch.completion).await;
        complete_batch(
            consumer,
            &mut lock(in_flight),
            batch,
            result,
            metrics,
            crash_after_batches,
        );
    }
    match &lock(in_flight).failure {
        Some(failure) => anyhow::bail!("{failure}"),
        None => Ok(()),
    }
}

/// A batch's outputs are all answered: count it and store its offsets, or record the failure.
/// Once one batch failed, no later batch is stored either.
fn complete_batch<C: Consumer<LoopContext>>(
    consumer: &C,
    in_flight: &mut InFlight,
    mut batch: InFlightBatch,
    result: BatchResult,
    metrics: &StageMetrics,
    crash_after_batches: Option<u64>,
) {
    if in_flight.failure.is_some() || in_flight.abandoned {
        return;
    }
    if result.abandoned {
        // Shutdown came while a write was still retrying: store nothing from here on, and
        // let the next start replay it.
        in_flight.abandoned = true;
        return;
    }
    if let Some(failure) = result.failure {
        metrics.errors.with_label_values(&["produce_failed"]).inc();
        tracing::error!(error = %failure, "nothing from this batch on is committed");
        in_flight.failure = Some(failure);
        return;
    }
    if let Some(error) = result.delivery_failure {
        metrics.errors.with_label_values(&["produce_failed"]).inc();
        tracing::error!(error = %error, "producing failed; nothing from this batch on is committed");
        in_flight.failure = Some(format!("producing failed: {error}"));
        return;
    }
    in_flight.completed += 1;
    if crash_after_batches.is_some_and(|limit| in_flight.completed >= limit) {
        tracing::warn!("test hook: aborting after produce, before commit");
        std::process::abort();
    }
    let mut touched: BTreeSet<Partition> = BTreeSet::new();
    for (topic, partition, offset) in &batch.released {
        let key = (topic.clone(), *partition);
        if let Some(held) = in_flight.held.get_mut(&key) {
            held.remove(offset);
        }
        touched.insert(key);
    }
    for (topic, partition, last_processed) in &batch.processed {
        let key = (topic.clone(), *partition);
        let done = in_flight.done_upto.entry(key.clone()).or_insert(-1);
        *done = (*done).max(*last_processed);
        touched.insert(key);
    }
    for key in touched {
        let Some(safe) = in_flight.advance(&key) else {
            continue;
        };
        // librdkafka stores `offset + 1`, the next offset to read: pass the last processed.
        if let Err(error) = consumer.store_offset(&key.0, key.1, safe) {
            // Only for a partition no longer assigned: its next owner replays those records.
            tracing::warn!(topic = %key.0, partition = key.1, error = %error, "cannot store offset");
        }
    }
    for error_kind in result.rejected_writes {
        // Counted as written when the batch was built; dead-lettered after all.
        if let Some(count) = batch.counts.sent.get_mut(batch.counts.writes_to) {
            *count = count.saturating_sub(1);
        }
        *batch.counts.dead_lettered.entry(error_kind).or_default() += 1;
    }
    let counts = &batch.counts;
    for (topic, count) in &counts.received {
        metrics
            .received_events
            .with_label_values(&[topic.as_str()])
            .inc_by(*count);
    }
    for (topic, count) in &counts.sent {
        metrics
            .sent_events
            .with_label_values(&[topic.as_str()])
            .inc_by(*count);
    }
    for (error_kind, count) in &counts.dead_lettered {
        metrics
            .dead_lettered_events
            .with_label_values(&[error_kind])
            .inc_by(*count);
    }
    metrics.deduplicated_events.inc_by(counts.deduplicated);
    if let Some(latest_event_ms) = counts.latest_event_ms {
        metrics
            .last_event_timestamp
            .set(latest_event_ms as f64 / 1_000.0);
    }
    metrics
        .batch_duration
        .observe(batch.started.elapsed().as_secs_f64());
}

/// Hands every output to the producer without waiting for acknowledgements. When the
/// producer's queue is full, waits for the oldest batch in flight (or briefly) and retries.
async fn send_all(
    producer: &BatchProducer,
    outputs: &[(Counted, OutputRecord)],
    consumer: &StreamConsumer<LoopContext>,
    in_flight: &Mutex<InFlight>,
    metrics: &StageMetrics,
    crash_after_batches: Option<u64>,
) -> anyhow::Result<Delivered> {
    let deliveries = BatchDeliveries::new();
    for (_, output) in outputs {
        let mut record = base_record(output, &deliveries);
        loop {
            match hand_over(producer, record) {
                Handed::Queued => break,
                Handed::QueueFull(back) => {
                    record = back;
                    let waited = lock(in_flight).batches.pop_front();
                    match waited {
                        Some(mut batch) => {
                            let result = (&mut batch.completion).await;
                            complete_batch(
                                consumer,
                                &mut lock(in_flight),
                                batch,
                                result,
                                metrics,
                                crash_after_batches,
                            );
                        }
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Handed::Refused(error) => {
                    anyhow::bail!("cannot hand a record to the producer: {error}")
                }
            }
        }
    }
    Ok(deliveries.seal())
}

/// Adds one to `topic`'s count, allocating the key only for a topic's first record.
fn increment(counts: &mut BTreeMap<String, u64>, topic: &str) {
    match counts.get_mut(topic) {
        Some(count) => *count += 1,
        None => {
            counts.insert(topic.to_string(), 1);
        }
    }
}

fn batch_counts<P: Processor>(batch: &[InputRecord], processed: &ProcessedBatch) -> BatchCounts {
    let mut counts = BatchCounts {
        deduplicated: processed.deduplicated,
        writes_to: P::WRITES_TO,
        ..BatchCounts::default()
    };
    if processed.written > 0 {
        counts
            .sent
            .insert(P::WRITES_TO.to_string(), processed.written);
    }
    for record in batch {
        increment(&mut counts.received, &record.topic);
    }
    for (counted, output) in &processed.outputs {
        match counted {
            Counted::Sent => {
                increment(&mut counts.sent, &output.topic);
                counts.latest_event_ms = counts.latest_event_ms.max(output.timestamp_ms);
            }
            Counted::DeadLettered(error_kind) => {
                *counts.dead_lettered.entry(error_kind).or_default() += 1;
            }
        }
    }
    counts
}

/// How often an idle loop looks up from the consumer to act on partition changes.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// How often an idle loop with batches in flight returns to complete them.
const IN_FLIGHT_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// How much one batch may collect, and whether an idle wait returns empty.
#[derive(Clone, Copy)]
struct CollectLimits {
    max_records: usize,
    /// How many records the batch is likely to get (as many as the last one): room is made
    /// for them up front. Growing a vector of tens of thousands of records by doubling copied
    /// them into freshly faulted pages (`perf`: 7% of the sink's CPU).
    expected_records: usize,
    /// The processor holds records (or consumption is paused): come back often to release.
    return_when_idle: bool,
}

/// How often an idle loop returns while the processor holds records.
const HOLDING_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Waits for a first record, then fills the batch until it is full or `batch_max_wait` has
/// passed. Returns early, possibly empty, when partitions were assigned or revoked, so that
/// even an idle stage restores and releases partitions at once.
async fn collect_batch(
    consumer: &StreamConsumer<LoopContext>,
    ownership: &Mutex<Ownership>,
    in_flight: &Mutex<InFlight>,
    settings: &LoopSettings,
    limits: CollectLimits,
    metrics: &StageMetrics,
) -> Vec<InputRecord> {
    let mut batch = Vec::new();
    // One stream for the whole batch: `recv` builds a stream per record, and registering and
    // unregistering its waker takes a lock twice for every record.
    let mut messages = consumer.stream();
    let ownership_changed = || {
        let guard = ownership
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        !guard.newly_assigned.is_empty() || !guard.newly_revoked.is_empty()
    };
    loop {
        if ownership_changed() {
            return batch;
        }
        // Batches in flight complete between batches: while some are, look up often.
        let waiting_for_acks = !lock(in_flight).batches.is_empty();
        let wait = if waiting_for_acks {
            IN_FLIGHT_CHECK_INTERVAL
        } else if limits.return_when_idle {
            HOLDING_CHECK_INTERVAL
        } else {
            IDLE_CHECK_INTERVAL
        };
        match tokio::time::timeout(wait, messages.next()).await {
            Ok(Some(Ok(message))) => {
                // Room only once a record is in: an idle loop returns empty every few ms.
                batch.reserve(limits.expected_records.min(limits.max_records));
                batch.push(owned_record(&message));
                break;
            }
            Ok(Some(Err(error))) => {
                tracing::warn!(error = %error, "consumer error");
                metrics.errors.with_label_values(&["consume_failed"]).inc();
                tokio::time::sleep(IDLE_CHECK_INTERVAL).await;
            }
            Ok(None) => return batch, // never: a Kafka message stream does not end
            Err(_idle) if waiting_for_acks || limits.return_when_idle => return batch,
            Err(_idle) => {}
        }
    }
    let deadline = tokio::time::Instant::now() + settings.batch_max_wait;
    while batch.len() < limits.max_records {
        // Take what librdkafka has already fetched without arming a timer per record.
        if let Some(Some(received)) = messages.next().now_or_never() {
            match received {
                Ok(message) => batch.push(owned_record(&message)),
                Err(error) => {
                    tracing::warn!(error = %error, "consumer error");
                    metrics.errors.with_label_values(&["consume_failed"]).inc();
                }
            }
            continue;
        }
        match tokio::time::timeout_at(deadline, messages.next()).await {
            Ok(Some(Ok(message))) => batch.push(owned_record(&message)),
            Ok(None) => break, // never: a Kafka message stream does not end
            Ok(Some(Err(error))) => {
                tracing::warn!(error = %error, "consumer error");
                metrics.errors.with_label_values(&["consume_failed"]).inc();
            }
            Err(_elapsed) => break,
        }
    }
    batch
}

struct ProcessedBatch {
    /// The producer's `message.max.bytes`: no output or dead letter is larger.
    max_record_bytes: usize,
    outputs: Vec<(Counted, OutputRecord)>,
    deduplicated: u64,
    /// Records kept for the processor's flush.
    written: u64,
    /// Offsets of earlier held records decided in this batch.
    released: Vec<(String, i32, i64)>,
}

impl ProcessedBatch {
    fn add(&mut self, settings: &LoopSettings, record: &InputRecord, outcome: Outcome) {
        match outcome {
            Outcome::Emit(outputs) => {
                // An output the producer would refuse for its size would stop the stage, and
                // its restart would meet the same record: its input is dead-lettered instead.
                if let Some(output) = outputs
                    .iter()
                    .find(|output| output.wire_size() > self.max_record_bytes)
                {
                    let rejection = Rejection::new(
                        RECORD_TOO_LARGE,
                        format!(
                            "its record for {} would take {} bytes, over the {}-byte limit \
                             (--max-record-bytes, the producer's message.max.bytes)",
                            output.topic,
                            output.wire_size(),
                            self.max_record_bytes
                        ),
                    );
                    return self.add(settings, record, Outcome::DeadLetter(rejection));
                }
                self.outputs
                    .extend(outputs.into_iter().map(|output| (Counted::Sent, output)));
            }
            Outcome::Deduplicated => self.deduplicated += 1,
            Outcome::DeadLetter(rejection) => {
                tracing::debug!(topic = %record.topic, partition = record.partition, offset = record.offset, error_kind = rejection.error_kind, "dead-lettering record");
                let dead_letter = dead_letter::record(
                    settings.stage,
                    &settings.dead_letter_topic,
                    record,
                    &rejection,
                    now_ms(),
                    self.max_record_bytes,
                );
                self.outputs
                    .push((Counted::DeadLettered(rejection.error_kind), dead_letter));
            }
            Outcome::Write => self.written += 1,
            Outcome::Hold => {}
        }
    }
}

/// Decides every record's outcome, after the held records released now; `None` if shutdown
/// came while a retry was pending.
#[allow(clippy::too_many_arguments)]
async fn process_batch<P: Processor>(
    settings: &LoopSettings,
    max_record_bytes: usize,
    processor: &mut P,
    batch: &[InputRecord],
    released: Vec<Released>,
    in_flight: &Mutex<InFlight>,
    metrics: &StageMetrics,
    context: &StageContext,
) -> Option<ProcessedBatch> {
    let mut processed = ProcessedBatch {
        max_record_bytes,
        outputs: Vec::with_capacity(batch.len() + released.len()),
        deduplicated: 0,
        written: 0,
        released: Vec::with_capacity(released.len()),
    };
    for Released { record, outcome } in released {
        if matches!(outcome, Outcome::Hold) {
            continue; // still held: nothing to do yet
        }
        processed
            .released
            .push((record.topic.clone(), record.partition, record.offset));
        processed.add(settings, &record, outcome);
    }
    for record in batch {
        let outcome = process_with_retry(processor, record, metrics, context).await?;
        if matches!(outcome, Outcome::Hold) {
            // Registered now, before any earlier batch completes, so no commit passes it.
            lock(in_flight)
                .held
                .entry((record.topic.clone(), record.partition))
                .or_default()
                .insert(record.offset);
        }
        processed.add(settings, record, outcome);
    }
    Some(processed)
}

/// The future that completes a batch: its produced records acknowledged, then the processor's
/// write finished and whatever that write rejected dead-lettered and acknowledged too.
fn completion(
    delivered: Delivered,
    flush: Option<FlushFuture>,
    batch: Vec<InputRecord>,
    producer: BatchProducer,
    stage: &'static str,
    dead_letter_topic: String,
    max_record_bytes: usize,
) -> Pin<Box<dyn Future<Output = BatchResult> + Send>> {
    let Some(flush) = flush else {
        return Box::pin(delivered.map(|delivery_failure| BatchResult {
            delivery_failure,
            rejected_writes: Vec::new(),
            abandoned: false,
            failure: None,
        }));
    };
    Box::pin(async move {
        let delivery_failure = delivered.await;
        let rejected = match flush.await {
            FlushResult::Written { rejected } => rejected,
            FlushResult::Abandoned => {
                return BatchResult {
                    delivery_failure,
                    rejected_writes: Vec::new(),
                    abandoned: true,
                    failure: None,
                };
            }
            FlushResult::Failed(failure) => {
                return BatchResult {
                    delivery_failure,
                    rejected_writes: Vec::new(),
                    abandoned: false,
                    failure: Some(failure),
                };
            }
        };
        let mut rejected_writes = Vec::with_capacity(rejected.len());
        let mut failure = None;
        let dead_letter_deliveries = BatchDeliveries::new();
        for ((topic, partition), offset, rejection) in rejected {
            let Some(record) = batch.iter().find(|record| {
                record.offset == offset && record.partition == partition && record.topic == topic
            }) else {
                tracing::error!(topic = %topic, partition, offset, "a write rejected a record that is not in its batch");
                continue;
            };
            let dead_letter = dead_letter::record(
                stage,
                &dead_letter_topic,
                record,
                &rejection,
                now_ms(),
                max_record_bytes,
            );
            let mut record = base_record(&dead_letter, &dead_letter_deliveries);
            loop {
                match hand_over(&producer, record) {
                    Handed::Queued => break,
                    Handed::QueueFull(back) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Handed::Refused(error) => {
                        failure = Some(format!(
                            "cannot hand a dead letter to the producer: {error}"
                        ));
                        break;
                    }
                }
            }
            rejected_writes.push(rejection.error_kind);
        }
        let delivery_failure = delivery_failure.or(dead_letter_deliveries.seal().await);
        BatchResult {
            delivery_failure,
            rejected_writes,
            abandoned: false,
            failure,
        }
    })
}

async fn process_with_retry<P: Processor>(
    processor: &mut P,
    record: &InputRecord,
    metrics: &StageMetrics,
    context: &StageContext,
) -> Option<Outcome> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match processor.process(record).await {
            Ok(outcome) => return Some(outcome),
            Err(error) => {
                metrics.errors.with_label_values(&[error.kind]).inc();
                tracing::warn!(error_kind = error.kind, error = %crate::config::error_chain(error.source.as_ref()), retry_in_ms = backoff.as_millis() as u64, "cannot process record yet; retrying");
                context
                    .readiness
                    .set_not_ready(format!("{}: retrying", error.kind));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = context.shutdown.cancelled() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The highest offset per partition in the batch.
fn last_offsets(batch: &[InputRecord]) -> Vec<(String, i32, i64)> {
    let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for record in batch {
        let entry = last
            .entry((record.topic.as_str(), record.partition))
            .or_insert(record.offset);
        *entry = (*entry).max(record.offset);
    }
    last.into_iter()
        .map(|((topic, partition), offset)| (topic.to_string(), partition, offset))
        .collect()
}
