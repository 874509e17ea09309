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

mod close;
mod collect;
mod fence;
mod in_flight;
mod ledger;
mod process;
mod processor;
mod rebalance;
mod record;
mod retention;
mod reuse;
mod send;
mod settings;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};

use self::collect::{BatchPool, CollectLimits, TopicNames, collect_batch};
use self::in_flight::{InFlight, InFlightBatch, complete_acknowledged, complete_all};
use self::process::{batch_counts, last_offsets, process_batch};
use self::rebalance::{LoopContext, Ownership, ignore_nothing_to_commit, is_owned, set_paused};
use self::send::{completion, send_all};
use crate::delivery::{BatchProducer, CountingContext};
use crate::error_kind::ErrorKind;
use crate::kafka::{self, KafkaArgs};
use crate::metrics::StageMetrics;
use crate::service::StageContext;

pub use self::fence::{Fence, Fenced};
pub use self::in_flight::MAX_BATCHES_IN_FLIGHT;
pub use self::processor::{
    EVENT_TIME_HEADER, FlushFuture, FlushResult, HISTORY_HEADER, IDEMPOTENCY_KEY_HEADER, Outcome,
    Outputs, Processor, Released, RetryableError, SOURCE_HEADER, VALIDATED_HEADERS, WARM_AHEAD,
    WriteIndex, Writes,
};
pub use self::record::{Headers, InputRecord, OutputRecord, Partition};
pub use self::reuse::{Pool, Reusable};
pub use self::settings::{
    BatchWait, CRASH_AFTER_PRODUCE_ENV, DROP_COMMITS_ENV, GroupArgs, LoopArgs, LoopSettings,
    OnRetentionGap,
};

/// How often the processor hears which offsets are acknowledged.
const ACKNOWLEDGED_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the loop until shutdown; returns after a final commit. [`join`] and [`Member::run`] in
/// one step, for a stage with nothing to prepare between them.
pub async fn run<P: Processor>(
    settings: LoopSettings,
    kafka: &KafkaArgs,
    processor: P,
    metrics: StageMetrics,
    context: &StageContext,
) -> anyhow::Result<()> {
    join(settings, kafka, metrics)?
        .run(kafka, processor, context)
        .await
}

/// How long the start-up check of the output topics' record limit may take. It runs beside the
/// stage's preparation; a broker that does not answer in time is trusted, with a warning.
const RECORD_LIMIT_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A stage's membership of its consumer group, taken before the stage prepares its state
/// (registry schemas, snapshots, reference tables), so that a restarted static member
/// (`--instance-id`) is back under its id within its session timeout however long that
/// preparation takes, and its partner gives nothing up. librdkafka joins the group from its
/// own thread; the assignment waits, unserved, for the loop's first poll.
pub struct Member {
    settings: LoopSettings,
    metrics: StageMetrics,
    consumer: Arc<StreamConsumer<LoopContext>>,
    ownership: Arc<Mutex<Ownership>>,
    in_flight: Arc<Mutex<InFlight>>,
    crash_after_batches: Option<u64>,
    static_member: bool,
    max_record_bytes: usize,
    /// Started by [`join`] and [`join_once_brokers_answer`], awaited before the first poll.
    record_limit_checked: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Splits what a stage prepared into its processor and what runs beside the loop (tasks the
/// stage awaits after it), for [`Member::run_prepared`].
pub fn split_prepared<P, B>(
    prepared: anyhow::Result<Option<(P, B)>>,
) -> (anyhow::Result<Option<P>>, Option<B>) {
    match prepared.map(Option::unzip) {
        Ok((processor, beside)) => (Ok(processor), beside),
        Err(error) => (Err(error), None),
    }
}

/// Joins the stage's consumer group (subscribes its input topics) and starts checking that its
/// output topics take its largest record. Nothing is consumed before [`Member::run`].
pub fn join(
    settings: LoopSettings,
    kafka: &KafkaArgs,
    metrics: StageMetrics,
) -> anyhow::Result<Member> {
    let mut member = subscribe(settings, kafka, metrics)?;
    member.start_record_limit_check(kafka);
    Ok(member)
}

/// [`join`] for a stage starting up: subscribes first, then waits for the brokers to answer
/// (`/readyz` says why it waits), then starts the record limit check. `None` when the stage
/// was asked to stop meanwhile; the membership is given up then.
///
/// Subscribing first matters to a restarted static member: librdkafka joins the group from its
/// own thread as soon as the coordinator answers, within the member's session timeout, however
/// many of the stage's own metadata requests a loaded broker times out meanwhile.
pub async fn join_once_brokers_answer(
    settings: LoopSettings,
    kafka: &KafkaArgs,
    metrics: StageMetrics,
    context: &StageContext,
) -> anyhow::Result<Option<Member>> {
    let mut member = subscribe(settings, kafka, metrics)?;
    if !crate::service::wait_for_brokers(kafka, context).await {
        member.leave().await;
        return Ok(None);
    }
    member.start_record_limit_check(kafka);
    Ok(Some(member))
}

fn subscribe(
    settings: LoopSettings,
    kafka: &KafkaArgs,
    metrics: StageMetrics,
) -> anyhow::Result<Member> {
    let max_record_bytes = kafka.effective_max_record_bytes()?;
    let ownership = Arc::new(Mutex::new(Ownership::default()));
    let in_flight = Arc::new(Mutex::new(InFlight::default()));
    let crash_after_batches: Option<u64> = std::env::var(CRASH_AFTER_PRODUCE_ENV)
        .ok()
        .and_then(|value| value.parse().ok());
    let mut consumer_config = kafka.group_member_config(&settings.group_id);
    if consumer_config.get("statistics.interval.ms").is_none() {
        consumer_config.set("statistics.interval.ms", "5000");
    }
    let static_member = consumer_config.get("group.instance.id").is_some();
    let consumer: Arc<StreamConsumer<LoopContext>> =
        Arc::new(consumer_config.create_with_context(LoopContext {
            ownership: ownership.clone(),
            in_flight: in_flight.clone(),
            metrics: metrics.clone(),
            crash_after_batches,
            commit_failed: std::sync::atomic::AtomicBool::new(false),
            retention_gaps: Mutex::new(Vec::new()),
        })?);
    let topics: Vec<&str> = settings.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(stage = settings.stage, group = %settings.group_id, static_member, "joining the group");
    Ok(Member {
        settings,
        metrics,
        consumer,
        ownership,
        in_flight,
        crash_after_batches,
        static_member,
        max_record_bytes,
        record_limit_checked: None,
    })
}

impl Member {
    fn start_record_limit_check(&mut self, kafka: &KafkaArgs) {
        let kafka = kafka.clone();
        let produced_to: Vec<String> = std::iter::once(&self.settings.dead_letter_topic)
            .chain(&self.settings.output_topics)
            .cloned()
            .collect();
        self.record_limit_checked = Some(tokio::spawn(async move {
            let topics: Vec<&str> = produced_to.iter().map(String::as_str).collect();
            kafka::check_record_limit(&kafka, &topics, RECORD_LIMIT_CHECK_TIMEOUT).await
        }));
    }

    /// Gives the membership up without consuming (the stage stopped while it prepared): a
    /// dynamic member leaves, a static one stays for its session timeout.
    pub async fn leave(self) {
        if let Some(check) = self.record_limit_checked {
            check.abort();
        }
        close::close(self.consumer, self.static_member).await;
    }

    /// Runs the loop with the processor the stage prepared after joining. When preparing
    /// failed, or stopped for a shutdown (`Ok(None)`), gives the membership up instead.
    pub async fn run_prepared<P: Processor>(
        self,
        kafka: &KafkaArgs,
        prepared: anyhow::Result<Option<P>>,
        context: &StageContext,
    ) -> anyhow::Result<()> {
        match prepared {
            Ok(Some(processor)) => self.run(kafka, processor, context).await,
            Ok(None) => {
                self.leave().await;
                Ok(())
            }
            Err(error) => {
                self.leave().await;
                Err(error)
            }
        }
    }

    /// Runs the loop until shutdown; returns after a final commit.
    pub async fn run<P: Processor>(
        self,
        kafka: &KafkaArgs,
        mut processor: P,
        context: &StageContext,
    ) -> anyhow::Result<()> {
        let Member {
            settings,
            metrics,
            consumer,
            ownership,
            in_flight,
            crash_after_batches,
            static_member,
            max_record_bytes,
            record_limit_checked,
        } = self;
        let checked = match record_limit_checked {
            Some(check) => match check.await {
                Ok(checked) => checked,
                Err(error) => Err(anyhow::anyhow!("the record limit check failed: {error}")),
            },
            None => Ok(()), // never: both ways to join start it
        };
        if let Err(error) = checked {
            close::close(consumer, static_member).await;
            return Err(error);
        }
        let fence = Fence::new(consumer.clone(), in_flight.clone());
        let topic_names = TopicNames::new(&settings.input_topics);
        let batch_pool = BatchPool::default();
        let producer: BatchProducer = kafka
            .producer_config()
            .create_with_context(CountingContext)?;
        let mut paused = false;
        let mut last_batch_len = 0;
        context.readiness.set_ready();
        tracing::info!(stage = settings.stage, group = %settings.group_id, topics = ?settings.input_topics, "consuming");

        let mut last_acknowledged = Instant::now();
        let result = loop {
            if let Err(error) =
                complete_acknowledged(&consumer, &in_flight, &metrics, crash_after_batches, false)
                    .await
            {
                break Err(error);
            }
            if last_acknowledged.elapsed() >= ACKNOWLEDGED_INTERVAL {
                last_acknowledged = Instant::now();
                processor.acknowledged(&lock(&in_flight).ledger.stored_positions());
            }
            let room = processor.room();
            set_paused(&consumer, &mut paused, room == 0);
            let limits = CollectLimits {
                max_records: settings.batch_max_records.min(room.max(1)),
                expected_records: last_batch_len,
                return_when_idle: processor.holding() > 0 || paused,
                wait: settings.batch_wait,
            };
            let collected = tokio::select! {
                collected = collect_batch(&consumer, &ownership, &in_flight, &topic_names, limits, &metrics, &batch_pool) => collected,
                () = context.shutdown.cancelled() => break Ok(()),
            };
            if !collected.is_empty() {
                last_batch_len = collected.len();
            }
            // A fatal consumer error (another instance took this one's static membership id, say)
            // leaves a consumer that never consumes again: stop, so that a supervisor restarts the
            // stage as a fresh member. Nothing collected since is processed.
            if let Some((code, reason)) = consumer.client().fatal_error() {
                metrics.errors.count(ErrorKind::ConsumerFatal);
                break Err(anyhow::anyhow!(
                    "the consumer failed for good ({code:?}): {reason}; restart the stage"
                ));
            }
            // Before anything read past a gap is processed: a `stop` stage processes none of it.
            let gaps = std::mem::take(&mut *lock(&consumer.context().retention_gaps));
            if !gaps.is_empty()
                && let Err(error) =
                    retention::account(&consumer, gaps, settings.on_retention_gap, &metrics).await
            {
                break Err(error);
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
                // Asked to stop while the processor restored (or waited): nothing more is
                // processed, nothing of this batch committed.
                if context.shutdown.is_cancelled() {
                    break Ok(());
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
                // Idle: a commit that failed (a rebalance under way, a broker restarting) is made
                // again, or the last batches' offsets would stay uncommitted until new records come.
                if consumer
                    .context()
                    .commit_failed
                    .swap(false, std::sync::atomic::Ordering::AcqRel)
                    && let Err(error) =
                        ignore_nothing_to_commit(consumer.commit_consumer_state(CommitMode::Async))
                {
                    tracing::warn!(error = %error, "cannot commit again after a failed commit");
                }
                continue;
            }
            let started = Instant::now();
            let Some(mut processed) = process_batch(
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
            let flush = (!processed.writes.is_empty()).then(|| processor.flush(&fence));
            let completion = completion(
                delivered,
                flush,
                std::mem::take(&mut batch),
                batch_pool.clone(),
                std::mem::take(&mut processed.writes),
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
                complete_acknowledged(&consumer, &in_flight, &metrics, crash_after_batches, true)
                    .await
            {
                break Err(error);
            }
            context.readiness.set_ready();
        };
        // Whatever is in flight is acknowledged and committed before the stage stops.
        let drained = complete_all(&consumer, &in_flight, &metrics, crash_after_batches).await;
        if drained.is_ok() {
            processor.acknowledged(&lock(&in_flight).ledger.stored_positions());
            if result.is_ok() {
                processor.drained();
            }
        }
        if let Err(error) =
            ignore_nothing_to_commit(consumer.commit_consumer_state(CommitMode::Sync))
        {
            tracing::warn!(error = %error, "final commit failed; the next owner replays from the last commit");
        }
        // The processor's flush futures hold the fence, and the fence holds the consumer.
        drop(fence);
        drop(processor);
        close::close(consumer, static_member).await;
        result.and(drained)
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::split_prepared;

    #[test]
    fn a_preparation_splits_into_its_processor_and_what_runs_beside_it() {
        let (processor, beside) = split_prepared(Ok(Some((1, "eraser"))));
        assert_eq!((processor.ok(), beside), (Some(Some(1)), Some("eraser")));
        let (processor, beside) = split_prepared::<i32, &str>(Ok(None));
        assert_eq!((processor.ok(), beside), (Some(None), None));
        let (processor, beside) = split_prepared::<i32, &str>(Err(anyhow::anyhow!("no registry")));
        assert_eq!(
            (processor.map_err(|error| error.to_string()), beside),
            (Err("no registry".to_string()), None)
        );
    }
}
