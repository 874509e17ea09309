//! Batches in flight: their outputs on the way to the brokers (and a processor's own write),
//! completed in order — counted, and their offsets stored for the next commit.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Instant;

use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};

use super::ledger::{OffsetLedger, PartitionOffset};
use super::rebalance::{LoopContext, ignore_nothing_to_commit};
use super::{Partition, lock};
use crate::error_kind::{DeadLetterKind, ErrorKind};
use crate::metrics::StageMetrics;

/// Batches whose outputs are on their way to the brokers most at once.
pub const MAX_BATCHES_IN_FLIGHT: usize = 4;

/// What a completed batch adds to the counters.
#[derive(Default)]
pub(super) struct BatchCounts {
    pub(super) received: BTreeMap<String, u64>,
    pub(super) sent: BTreeMap<String, u64>,
    pub(super) dead_lettered: BTreeMap<DeadLetterKind, u64>,
    pub(super) deduplicated: u64,
    pub(super) latest_event_ms: Option<i64>,
    /// The `sent` label of records a processor writes itself ([`Processor::WRITES_TO`]).
    pub(super) writes_to: &'static str,
}

/// What a batch's completion future reports.
pub(super) enum BatchResult {
    /// Every output acknowledged and the write (if any) finished; the dead-letter kinds of
    /// the records the write rejected (dead-lettered and acknowledged too).
    Completed {
        rejected_writes: Vec<DeadLetterKind>,
        /// Written records the destination already held: de-duplicated, not sent.
        already_stored: u64,
    },
    /// Shutdown came while the write was still retrying: nothing from here on is committed.
    Abandoned,
    /// An output the brokers did not take (only the first is kept: collecting every
    /// acknowledgement allocated megabytes per batch), or a write that failed: nothing from
    /// here on is committed, and the loop stops.
    Failed(String),
}

/// A batch whose outputs are on their way to the brokers (and to a processor's own sink).
pub(super) struct InFlightBatch {
    pub(super) completion: Pin<Box<dyn Future<Output = BatchResult> + Send>>,
    pub(super) counts: BatchCounts,
    /// The highest offset per partition processed in this batch.
    pub(super) processed: Vec<PartitionOffset>,
    /// Offsets of earlier held records this batch decided.
    pub(super) released: Vec<PartitionOffset>,
    pub(super) started: Instant,
}

/// The batches in flight, oldest first; shared with the consumer context, which completes
/// them all before it gives partitions up.
#[derive(Default)]
pub(super) struct InFlight {
    pub(super) batches: VecDeque<InFlightBatch>,
    pub(super) completed: u64,
    /// Set when a delivery failed: no later batch may be committed, and the loop stops.
    pub(super) failure: Option<String>,
    /// Set when a write was given up at shutdown: no later batch may be committed either.
    pub(super) abandoned: bool,
    /// Which offset of each partition may be committed.
    pub(super) ledger: OffsetLedger,
}

impl InFlight {
    /// Forgets a partition given up: its next owner replays from the last commit.
    pub(super) fn forget(&mut self, partition: &Partition) {
        self.ledger.forget(partition);
    }
}

/// Completes the oldest batches whose outputs are all acknowledged. With `bounded`, also waits
/// for the oldest ones while more than [`MAX_BATCHES_IN_FLIGHT`] are in flight.
pub(super) async fn complete_acknowledged(
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
            if super::settings::drop_this_commit() {
                tracing::warn!("test hook: a commit not made, as if refused");
                consumer.context().commit_refused();
            } else {
                ignore_nothing_to_commit(consumer.commit_consumer_state(CommitMode::Async))?;
            }
        }
    }
}

/// Waits for and completes the oldest batch in flight; `false` if there is none.
pub(super) async fn complete_oldest(
    consumer: &StreamConsumer<LoopContext>,
    in_flight: &Mutex<InFlight>,
    metrics: &StageMetrics,
    crash_after_batches: Option<u64>,
) -> bool {
    let Some(mut batch) = lock(in_flight).batches.pop_front() else {
        return false;
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
    true
}

/// Waits for and completes every batch in flight.
pub(super) async fn complete_all(
    consumer: &StreamConsumer<LoopContext>,
    in_flight: &Mutex<InFlight>,
    metrics: &StageMetrics,
    crash_after_batches: Option<u64>,
) -> anyhow::Result<()> {
    while complete_oldest(consumer, in_flight, metrics, crash_after_batches).await {}
    match &lock(in_flight).failure {
        Some(failure) => anyhow::bail!("{failure}"),
        None => Ok(()),
    }
}

/// A batch's outputs are all answered: count it and store its offsets, or record the failure.
/// Once one batch failed, no later batch is stored either.
pub(super) fn complete_batch<C: Consumer<LoopContext>>(
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
    let (rejected_writes, already_stored) = match result {
        BatchResult::Completed {
            rejected_writes,
            already_stored,
        } => (rejected_writes, already_stored),
        BatchResult::Abandoned => {
            // Store nothing from here on, and let the next start replay it.
            in_flight.abandoned = true;
            return;
        }
        BatchResult::Failed(failure) => {
            metrics.errors.count(ErrorKind::ProduceFailed);
            tracing::error!(error = %failure, "nothing from this batch on is committed");
            in_flight.failure = Some(failure);
            return;
        }
    };
    in_flight.completed += 1;
    if crash_after_batches.is_some_and(|limit| in_flight.completed >= limit) {
        tracing::warn!("test hook: aborting after produce, before commit");
        std::process::abort();
    }
    for ((topic, partition), safe) in in_flight.ledger.complete(&batch.processed, &batch.released) {
        // librdkafka stores `offset + 1`, the next offset to read: pass the last processed.
        if let Err(error) = consumer.store_offset(&topic, partition, safe) {
            // Only for a partition no longer assigned: its next owner replays those records.
            tracing::warn!(topic = %topic, partition, error = %error, "cannot store offset");
        }
    }
    for error_kind in rejected_writes {
        // Counted as written when the batch was built; dead-lettered after all.
        if let Some(count) = batch.counts.sent.get_mut(batch.counts.writes_to) {
            *count = count.saturating_sub(1);
        }
        *batch.counts.dead_lettered.entry(error_kind).or_default() += 1;
    }
    if already_stored > 0 {
        // Counted as written when the batch was built; the destination had them already.
        if let Some(count) = batch.counts.sent.get_mut(batch.counts.writes_to) {
            *count = count.saturating_sub(already_stored);
        }
        batch.counts.deduplicated += already_stored;
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
            .with_label_values(&[error_kind.as_str()])
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
