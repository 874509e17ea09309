//! Fencing a zombie writer. An instance paused past its session timeout (a stopped process, a
//! long GC-like stall, a partitioned host) has lost its partitions to another member, but it
//! does not know until it next talks to the group — and a write it had in hand would land
//! after the new owner restored what was written, as a second row.
//!
//! The brokers have no transactions to fence it with, so a processor asks the group itself,
//! just before each write: [`Fence::confirm`] commits this instance's stored offsets
//! synchronously (offsets of completed batches only, so committing them early is always safe),
//! and the group coordinator refuses a commit from a member of an old generation
//! (`ILLEGAL_GENERATION`, `UNKNOWN_MEMBER_ID`, `FENCED_INSTANCE_ID`). A refused confirmation
//! means: do not write; the stage stops, and its restart rejoins as a current member and
//! replays from the last commit. What remains is a pause that falls inside one write, between
//! the confirmation and the write's last byte.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::in_flight::InFlight;
use super::lock;
use super::rebalance::LoopContext;

/// Asks the group, before a write, whether this instance still owns what it writes.
#[derive(Clone)]
pub struct Fence {
    consumer: Arc<StreamConsumer<LoopContext>>,
    in_flight: Arc<Mutex<InFlight>>,
    /// A confirmation is waiting for the coordinator: another one would only wait behind it.
    asking: Arc<AtomicBool>,
}

/// How long a confirmation waits for the coordinator before it says "cannot tell". A commit
/// can wait for a rebalance this instance's own loop is holding up (while it completes the
/// batches in flight, one of which may be this write): the write must not wait for it.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);

/// This instance is no longer a member of its group's current generation.
#[derive(Debug, thiserror::Error)]
#[error("fenced: the group has moved on without this instance ({0})")]
pub struct Fenced(pub String);

impl Fence {
    pub(super) fn new(
        consumer: Arc<StreamConsumer<LoopContext>>,
        in_flight: Arc<Mutex<InFlight>>,
    ) -> Self {
        Self {
            consumer,
            in_flight,
            asking: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `Ok` while this instance is a current member (or the group cannot tell yet); `Err` once
    /// the group has fenced it.
    pub async fn confirm(&self) -> Result<(), Fenced> {
        if self.consumer.assignment_lost() {
            return Err(Fenced("the consumer lost its assignment".into()));
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in lock(&self.in_flight).ledger.stored_positions() {
            if offsets
                .add_partition_offset(&topic, partition, rdkafka::Offset::Offset(next))
                .is_err()
            {
                return Ok(()); // cannot happen for a valid offset; nothing to ask with
            }
        }
        if offsets.count() == 0 {
            // Nothing completed yet: nothing this instance could write twice from before.
            return Ok(());
        }
        if self.asking.swap(true, Ordering::AcqRel) {
            return Ok(()); // one question at a time; the one in flight will tell
        }
        let consumer = self.consumer.clone();
        let asking = self.asking.clone();
        let ask = tokio::task::spawn_blocking(move || {
            let answer = consumer.commit(&offsets, CommitMode::Sync);
            asking.store(false, Ordering::Release);
            answer
        });
        match tokio::time::timeout(CONFIRM_TIMEOUT, ask).await {
            Ok(Ok(Err(KafkaError::ConsumerCommit(
                code @ (RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::FencedInstanceId),
            )))) => Err(Fenced(code.to_string())),
            Err(_elapsed) => {
                tracing::debug!("the group did not answer a fence confirmation in time; writing");
                Ok(())
            }
            // Anything else (a rebalance in progress, a broker that does not answer) cannot
            // tell; the write goes on, as it did before the fence existed.
            Ok(_) => Ok(()),
        }
    }
}
