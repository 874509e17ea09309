//! Fencing a zombie writer. An instance paused past its session timeout (a stopped process, a
//! long GC-like stall, a partitioned host) has lost its partitions to another member, but it
//! does not know until it next talks to the group — and a write it had in hand would land
//! after the new owner restored what was written, as a second row.
//!
//! The brokers have no transactions to fence it with, so a processor asks the group itself,
//! just before each write: [`Fence::confirm`] commits this instance's stored offsets
//! synchronously (offsets of completed batches only, so committing them early is always safe),
//! and the group coordinator refuses a commit from a member it no longer knows
//! (`UNKNOWN_MEMBER_ID`, `FENCED_INSTANCE_ID`; an old generation, `ILLEGAL_GENERATION`, is asked
//! again until the member has rejoined). A refused confirmation means: do not write; the stage stops, and its restart rejoins as a current member and
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

/// How long a confirmation asks again while the group is between generations.
const CONFIRM_PATIENCE: Duration = Duration::from_secs(15);

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
        // Never block on the loop's lock: a rebalance callback holds it while it waits for the
        // batches in flight, this write among them. While it does, this instance still owns
        // its partitions (they are being handed over only after these batches), so the write
        // may go on.
        let Some(positions) = self.stored_positions().await else {
            return Ok(());
        };
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in positions {
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
        let answer = self.ask(offsets).await;
        self.asking.store(false, Ordering::Release);
        answer
    }

    /// The stored positions, if the loop's lock can be had within 100 ms.
    async fn stored_positions(&self) -> Option<Vec<(super::Partition, i64)>> {
        for _ in 0..20 {
            let positions = match self.in_flight.try_lock() {
                Ok(in_flight) => Some(in_flight.ledger.stored_positions()),
                Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                    Some(poisoned.into_inner().ledger.stored_positions())
                }
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if positions.is_some() {
                return positions;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// Asks until the group answers for this member: a commit refused for an old generation
    /// while a rebalance is under way (ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS) says
    /// nothing about this member yet — a live member gets it too, until it has rejoined — so
    /// it is asked again, for up to [`CONFIRM_PATIENCE`]. Only a member the group no longer
    /// knows, or one another instance with its id replaced, is fenced.
    async fn ask(&self, offsets: TopicPartitionList) -> Result<(), Fenced> {
        let deadline = tokio::time::Instant::now() + CONFIRM_PATIENCE;
        loop {
            if self.consumer.assignment_lost() {
                return Err(Fenced("the consumer lost its assignment".into()));
            }
            let consumer = self.consumer.clone();
            let offsets = offsets.clone();
            let ask =
                tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync));
            let code = match tokio::time::timeout(CONFIRM_TIMEOUT, ask).await {
                Ok(Ok(Err(KafkaError::ConsumerCommit(code)))) => code,
                Err(_elapsed) => {
                    tracing::debug!("the group did not answer a fence confirmation in time");
                    return Ok(());
                }
                // Committed, or a failure that cannot tell (a broker that does not answer):
                // the write goes on, as it did before the fence existed.
                Ok(_) => return Ok(()),
            };
            match code {
                RDKafkaErrorCode::UnknownMemberId | RDKafkaErrorCode::FencedInstanceId => {
                    return Err(Fenced(code.to_string()));
                }
                RDKafkaErrorCode::IllegalGeneration | RDKafkaErrorCode::RebalanceInProgress
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                _ => return Ok(()),
            }
        }
    }
}
