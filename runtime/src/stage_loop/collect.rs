//! Collecting a batch from the consumer: wait for a first record, then fill until full, until
//! the consumer has caught up (after the batch's minimum wait), or until its maximum wait.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;

use super::in_flight::InFlight;
use super::rebalance::{LoopContext, Ownership};
use super::reuse::Pool;
use super::{BatchWait, InputRecord, lock};
use crate::error_kind::ErrorKind;
use crate::metrics::StageMetrics;

/// The input topics' names, shared by every record consumed from them.
pub(super) struct TopicNames(Vec<Arc<str>>);

impl TopicNames {
    pub(super) fn new(topics: &[String]) -> Self {
        Self(
            topics
                .iter()
                .map(|topic| Arc::from(topic.as_str()))
                .collect(),
        )
    }

    fn of(&self, topic: &str) -> Arc<str> {
        self.0
            .iter()
            .find(|name| ***name == *topic)
            .cloned()
            .unwrap_or_else(|| Arc::from(topic))
    }
}

pub(super) fn owned_record(message: &BorrowedMessage<'_>, topics: &TopicNames) -> InputRecord {
    InputRecord::of(message, topics.of(message.topic()))
}

/// Emptied record vectors of batches that are done with, for the next batches to fill. A
/// fresh one of tens of thousands of records each time was page-faulted and zeroed by the
/// kernel as it filled (`perf`: 4% of the sink's main thread in a drain).
pub(super) type BatchPool = Pool<Vec<InputRecord>>;

/// How often an idle loop looks up from the consumer to act on partition changes.
pub(super) const IDLE_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// How often an idle loop with batches in flight returns to complete them.
pub(super) const IN_FLIGHT_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// How much one batch may collect, and whether an idle wait returns empty.
#[derive(Clone, Copy)]
pub(super) struct CollectLimits {
    pub(super) max_records: usize,
    /// How many records the batch is likely to get (as many as the last one): room is made
    /// for them up front. Growing a vector of tens of thousands of records by doubling copied
    /// them into freshly faulted pages (`perf`: 7% of the sink's CPU).
    pub(super) expected_records: usize,
    /// The processor holds records (or consumption is paused): come back often to release.
    pub(super) return_when_idle: bool,
    pub(super) wait: BatchWait,
}

/// How often an idle loop returns while the processor holds records.
pub(super) const HOLDING_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Waits for a first record, then fills the batch until it is full, or until the consumer has
/// nothing more fetched once `batch_wait.min` has passed, or until `batch_wait.max` has passed. Returns early, possibly empty, when partitions were assigned or revoked, so that
/// even an idle stage restores and releases partitions at once.
pub(super) async fn collect_batch(
    consumer: &StreamConsumer<LoopContext>,
    ownership: &Mutex<Ownership>,
    in_flight: &Mutex<InFlight>,
    topics: &TopicNames,
    limits: CollectLimits,
    metrics: &StageMetrics,
    pool: &BatchPool,
) -> Vec<InputRecord> {
    let mut batch = pool.take().unwrap_or_default();
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
                // Room only once a record is in: an idle loop returns empty every few ms. (A
                // batch from the pool has it already.)
                batch.reserve(limits.expected_records.min(limits.max_records));
                batch.push(owned_record(&message, topics));
                break;
            }
            Ok(Some(Err(error))) => {
                tracing::warn!(error = %error, "consumer error");
                metrics.errors.count(ErrorKind::ConsumeFailed);
                if matches!(error, KafkaError::MessageConsumptionFatal(_)) {
                    return batch; // the loop stops: this consumer never consumes again
                }
                tokio::time::sleep(IDLE_CHECK_INTERVAL).await;
            }
            Ok(None) => return batch, // never: a Kafka message stream does not end
            Err(_idle) if waiting_for_acks || limits.return_when_idle => return batch,
            // A commit failed: the loop makes it again, since no later batch may come.
            Err(_idle)
                if consumer
                    .context()
                    .commit_failed
                    .load(std::sync::atomic::Ordering::Acquire) =>
            {
                return batch;
            }
            Err(_idle) => {}
        }
    }
    let first_in = tokio::time::Instant::now();
    while batch.len() < limits.max_records {
        // Take what librdkafka has already fetched without arming a timer per record.
        if let Some(Some(received)) = messages.next().now_or_never() {
            match received {
                Ok(message) => batch.push(owned_record(&message, topics)),
                Err(error) => {
                    tracing::warn!(error = %error, "consumer error");
                    metrics.errors.count(ErrorKind::ConsumeFailed);
                }
            }
            continue;
        }
        // Nothing more fetched: the consumer has caught up (`BatchWait::caught_up_flush_at`).
        let flush_at = limits
            .wait
            .caught_up_flush_at(first_in, batch.len(), limits.max_records);
        if tokio::time::Instant::now() >= flush_at {
            break;
        }
        match tokio::time::timeout_at(flush_at, messages.next()).await {
            Ok(Some(Ok(message))) => batch.push(owned_record(&message, topics)),
            Ok(None) => break, // never: a Kafka message stream does not end
            Ok(Some(Err(error))) => {
                tracing::warn!(error = %error, "consumer error");
                metrics.errors.count(ErrorKind::ConsumeFailed);
            }
            Err(_elapsed) => break,
        }
    }
    batch
}
