//! Partition ownership: the consumer's rebalance callbacks, which complete and commit every
//! batch in flight before partitions are given up, and pausing while the processor is full.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

use super::in_flight::{InFlight, complete_batch};
use super::retention::{RetentionGap, parse_reset};
use super::{InputRecord, Partition, lock};
use crate::error_kind::ErrorKind;
use crate::metrics::StageMetrics;

#[derive(Default)]
pub(super) struct Ownership {
    pub(super) owned: HashSet<Partition>,
    pub(super) newly_assigned: Vec<Partition>,
    pub(super) newly_revoked: Vec<Partition>,
}

/// Consumer callbacks: partition ownership, commits before a revoke, lag and commit errors.
pub(super) struct LoopContext {
    pub(super) ownership: Arc<Mutex<Ownership>>,
    pub(super) in_flight: Arc<Mutex<InFlight>>,
    pub(super) metrics: StageMetrics,
    pub(super) crash_after_batches: Option<u64>,
    /// Set when a commit failed: an idle loop commits again, since no later batch would.
    pub(super) commit_failed: std::sync::atomic::AtomicBool,
    /// Partitions librdkafka found reading below the oldest retained record, for the loop to
    /// account for before it processes anything further.
    pub(super) retention_gaps: Mutex<Vec<RetentionGap>>,
}

impl LoopContext {
    /// A commit was refused (or, under the test hook, not made): counted, and made again by an
    /// idle loop, since no later batch may come to commit these offsets.
    pub(super) fn commit_refused(&self) {
        self.commit_failed
            .store(true, std::sync::atomic::Ordering::Release);
        self.metrics.errors.count(ErrorKind::CommitFailed);
    }

    fn count_changes(&self, change: &str, partitions: usize, owned: usize) {
        self.metrics
            .partition_changes
            .with_label_values(&[change])
            .inc_by(partitions as u64);
        self.metrics.owned_partitions.set(owned as i64);
    }

    fn ownership(&self) -> std::sync::MutexGuard<'_, Ownership> {
        self.ownership
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(super) fn partitions_of(list: &rdkafka::TopicPartitionList) -> Vec<Partition> {
    list.elements()
        .iter()
        .map(|element| (Arc::from(element.topic()), element.partition()))
        .collect()
}

pub(super) fn ignore_nothing_to_commit(result: KafkaResult<()>) -> KafkaResult<()> {
    match result {
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        other => other,
    }
}

impl ClientContext for LoopContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if let Some(gap) = parse_reset(facility, message) {
            lock(&self.retention_gaps).push(gap);
        }
        crate::kafka::log_librdkafka(level, facility, message);
    }

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
                self.metrics.errors.count(ErrorKind::CommitFailed);
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
                    .remove_label_values(&[&**topic, &partition.to_string()]);
            }
            let mut ownership = self.ownership();
            for partition in &revoked {
                ownership.owned.remove(partition);
            }
            self.count_changes("revoked", revoked.len(), ownership.owned.len());
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
            self.count_changes("assigned", assigned.len(), ownership.owned.len());
            ownership.newly_assigned.extend(assigned);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &rdkafka::TopicPartitionList) {
        if let Err(error) = ignore_nothing_to_commit(result) {
            tracing::warn!(error = %error, "offset commit failed; the next commit covers it");
            self.commit_refused();
        }
    }
}

pub(super) fn is_owned(ownership: &Mutex<Ownership>, record: &InputRecord) -> bool {
    lock(ownership)
        .owned
        .iter()
        .any(|(topic, partition)| *partition == record.partition && *topic == record.topic)
}

/// Pauses or resumes the whole assignment so that consumption stops while the processor has
/// no room. (librdkafka drops what it prefetched for paused partitions and resumes from the
/// last record it handed out.)
pub(super) fn set_paused(consumer: &StreamConsumer<LoopContext>, paused: &mut bool, pause: bool) {
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
