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
//! again until the member has rejoined). A refused confirmation means: do not write; the
//! stage stops, and its restart rejoins as a current member and replays from the last commit.
//! Whatever the answer, the consumer is asked last whether it has itself found its assignment
//! lost (a session timer that fired while the question was on its way). What remains is a
//! pause that falls inside one write, between the confirmation and the write's last byte.

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// One question at a time, and the last answer. A write that comes while another's
    /// question is on its way waits for that answer and takes it: it used to go on unasked
    /// ("the one in flight will tell"), and a zombie sink resuming with two batches in hand
    /// wrote one of them while the other's question came back fenced.
    asking: Arc<tokio::sync::Mutex<Result<(), Fenced>>>,
    /// How many questions have been answered.
    answers: Arc<AtomicU64>,
}

/// How long a confirmation waits for the coordinator before it says "cannot tell". A commit
/// can wait for a rebalance this instance's own loop is holding up (while it completes the
/// batches in flight, one of which may be this write): the write must not wait for it.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a confirmation asks again while the group is between generations.
const CONFIRM_PATIENCE: Duration = Duration::from_secs(15);

/// An answer that took longer than this is not believed: it was asked for, or given, before a
/// pause of this process (SIGSTOP, a stall) that the group may have fenced it for meanwhile.
/// An unanswered question ends at [`CONFIRM_TIMEOUT`]; a second more is scheduling slack.
const STALE_ANSWER: Duration = Duration::from_secs(4);

/// How many stale answers in a row are asked again before the write goes on regardless, as
/// it does when the group cannot tell.
const STALE_ANSWERS_ASKED_AGAIN: u32 = 3;

/// This instance is no longer a member of its group's current generation.
#[derive(Debug, Clone, thiserror::Error)]
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
            asking: Arc::new(tokio::sync::Mutex::new(Ok(()))),
            answers: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `Ok` while this instance is a current member (or the group cannot tell yet); `Err` once
    /// the group has fenced it.
    pub async fn confirm(&self) -> Result<(), Fenced> {
        self.ask_group().await?;
        // The consumer may have found out while the group was being asked. A paused instance
        // that resumes checks its session timer on librdkafka's own thread: when the timer
        // fires, the assignment is marked lost and the revocation holds the loop's lock, so
        // the question above may have gone unasked ("cannot tell") or been answered for a
        // member id the consumer has just given up.
        if self.consumer.assignment_lost() {
            return Err(Fenced(
                "the consumer lost its assignment while the group was asked".into(),
            ));
        }
        Ok(())
    }

    /// The question itself: `Ok` also where it cannot be asked or answered in time.
    async fn ask_group(&self) -> Result<(), Fenced> {
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
        let answered_before = self.answers.load(Ordering::Acquire);
        let mut last = self.asking.lock().await;
        if self.answers.load(Ordering::Acquire) != answered_before {
            // A question on its way when this one came has been answered since.
            return last.clone();
        }
        *last = self.ask(offsets).await;
        self.answers.fetch_add(1, Ordering::AcqRel);
        last.clone()
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
    ///
    /// An answer that took longer than [`STALE_ANSWER`] is asked for again (found in CI: a
    /// zombie sink, stopped while its question was on its way, resumed to the answer given
    /// before it stopped — or to the question's timeout, "cannot tell" — and wrote its rows
    /// a second time, after the group had handed its partitions over).
    async fn ask(&self, offsets: TopicPartitionList) -> Result<(), Fenced> {
        let deadline = tokio::time::Instant::now() + CONFIRM_PATIENCE;
        let mut stale_answers = 0;
        loop {
            if self.consumer.assignment_lost() {
                return Err(Fenced("the consumer lost its assignment".into()));
            }
            let consumer = self.consumer.clone();
            let offsets = offsets.clone();
            let ask =
                tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync));
            let asked = tokio::time::Instant::now();
            let code = match tokio::time::timeout(CONFIRM_TIMEOUT, ask).await {
                Ok(Ok(Err(KafkaError::ConsumerCommit(code)))) => Some(code),
                Err(_elapsed) => {
                    tracing::debug!("the group did not answer a fence confirmation in time");
                    None
                }
                // Committed, or a failure that cannot tell (a broker that does not answer):
                // the write goes on, as it did before the fence existed.
                Ok(_) => None,
            };
            if let Some(code) = code
                && answer_to(code) == Answer::Fenced
            {
                // Believed however late it came: a fenced member stays fenced.
                return Err(Fenced(code.to_string()));
            }
            let took = asked.elapsed();
            if is_stale(took) && stale_answers < STALE_ANSWERS_ASKED_AGAIN {
                stale_answers += 1;
                tracing::warn!(
                    took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                    "a fence confirmation took too long to be believed (this process may have been paused); asking again"
                );
                continue;
            }
            match code.map(answer_to) {
                Some(Answer::AskAgain) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                _ => return Ok(()),
            }
        }
    }
}

/// Whether an answer that took `took` may predate a pause of this process.
fn is_stale(took: Duration) -> bool {
    took > STALE_ANSWER
}

/// What a refused confirmation says about this member.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The group no longer knows this member, or another instance took its id.
    Fenced,
    /// The group is between generations: a live member hears this too until it has rejoined.
    AskAgain,
    /// Says nothing about membership: the write goes on.
    GoOn,
}

fn answer_to(code: RDKafkaErrorCode) -> Answer {
    match code {
        // The last: librdkafka's own word that its session timed out (a paused process).
        RDKafkaErrorCode::UnknownMemberId
        | RDKafkaErrorCode::FencedInstanceId
        | RDKafkaErrorCode::AssignmentLost => Answer::Fenced,
        RDKafkaErrorCode::IllegalGeneration | RDKafkaErrorCode::RebalanceInProgress => {
            Answer::AskAgain
        }
        _ => Answer::GoOn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, StageMetrics};
    use crate::stage_loop::rebalance::Ownership;
    use std::sync::atomic::AtomicBool;

    /// Found by the chaos soak: a healthy sink, refused with ILLEGAL_GENERATION while the
    /// group moved to a new generation it had not joined yet, took itself for a zombie and
    /// stopped.
    #[test]
    fn an_old_generation_is_asked_again_and_only_an_unknown_member_is_fenced() {
        for (code, expected) in [
            (RDKafkaErrorCode::IllegalGeneration, Answer::AskAgain),
            (RDKafkaErrorCode::RebalanceInProgress, Answer::AskAgain),
            (RDKafkaErrorCode::UnknownMemberId, Answer::Fenced),
            (RDKafkaErrorCode::FencedInstanceId, Answer::Fenced),
            (RDKafkaErrorCode::AssignmentLost, Answer::Fenced),
            (RDKafkaErrorCode::CoordinatorNotAvailable, Answer::GoOn),
        ] {
            assert_eq!(answer_to(code), expected, "{code:?}");
        }
    }

    fn fence_without_brokers(in_flight: Arc<Mutex<InFlight>>) -> Fence {
        let metrics = Metrics::for_stage("fence-test").expect("metrics");
        let consumer: StreamConsumer<LoopContext> = rdkafka::ClientConfig::new()
            // Nothing listens here: nothing is ever answered.
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("group.id", "fence-test")
            .create_with_context(LoopContext {
                ownership: Arc::new(Mutex::new(Ownership::default())),
                in_flight: in_flight.clone(),
                metrics: StageMetrics::register(&metrics).expect("stage metrics"),
                crash_after_batches: None,
                commit_failed: AtomicBool::new(false),
                retention_gaps: Mutex::new(Vec::new()),
            })
            .expect("consumer");
        Fence::new(Arc::new(consumer), in_flight)
    }

    /// A loop whose one partition has completed up to offset 41: a confirmation has a
    /// position to commit, so it asks the group.
    fn one_completed_partition() -> Arc<Mutex<InFlight>> {
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        in_flight
            .lock()
            .expect("lock")
            .ledger
            .complete(&[("fence-test".into(), 0, 41)], &[]);
        in_flight
    }

    #[test]
    fn only_an_answer_slower_than_an_unanswered_question_is_stale() {
        assert!(!is_stale(Duration::from_millis(5)));
        assert!(
            !is_stale(CONFIRM_TIMEOUT),
            "a question the group did not answer in time is not stale: the write goes on"
        );
        assert!(
            is_stale(Duration::from_secs(7)),
            "a paused process's answer"
        );
        const { assert!(STALE_ANSWER.as_millis() > CONFIRM_TIMEOUT.as_millis()) };
    }

    /// Found by the chaos soak: a confirmation (a synchronous commit) waited for a coordinator
    /// that did not answer, for good, with the write and so the stage's shutdown behind it.
    #[test]
    fn a_confirmation_the_group_does_not_answer_lets_the_write_go_in_bounded_time() {
        let in_flight = one_completed_partition();
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let answer = runtime.block_on(async {
            let fence = fence_without_brokers(in_flight);
            tokio::time::timeout(CONFIRM_TIMEOUT + Duration::from_secs(5), fence.confirm()).await
        });
        // The unanswered commit still waits on a blocking thread: do not wait for it.
        runtime.shutdown_background();
        assert!(
            matches!(answer, Ok(Ok(()))),
            "no answer is not a fence, and it does not take longer than {CONFIRM_TIMEOUT:?}"
        );
    }

    /// Found in CI: a zombie sink resumed with two batches in hand. One batch's confirmation
    /// asked the group and came back fenced; the other's, coming while that question was on
    /// its way, went on unasked and wrote its rows a second time. A confirmation that comes
    /// during another's question now waits for its answer and takes it.
    #[test]
    fn a_confirmation_during_another_ones_question_waits_for_it() {
        let in_flight = one_completed_partition();
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let (answers_when_second_returned, first_ok, second_ok) = runtime.block_on(async {
            let fence = fence_without_brokers(in_flight);
            let first = tokio::spawn({
                let fence = fence.clone();
                async move { fence.confirm().await.is_ok() }
            });
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while fence.asking.try_lock().is_ok() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the first question never started"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let second = fence.confirm().await;
            // Read at once: how many questions had been answered when the second returned.
            // (Two tasks' clocks read after the lock is released race each other — CI saw the
            // second's read first — so the test counts answers instead of comparing times.)
            let answers = fence.answers.load(Ordering::Acquire);
            let first_ok = first.await.expect("first confirmation");
            (answers, first_ok, second.is_ok())
        });
        // The unanswered commits still wait on blocking threads: do not wait for them.
        runtime.shutdown_background();
        assert!(first_ok && second_ok, "no answer is not a fence");
        assert!(
            answers_when_second_returned >= 1,
            "the second confirmation returned before the first question was answered"
        );
    }

    /// Found by the chaos soak: a confirmation took the loop's lock, which a rebalance callback
    /// held while it waited for the batches in flight, this write among them; the sink froze
    /// and ignored SIGTERM.
    #[tokio::test]
    async fn a_confirmation_never_waits_for_the_loops_lock() {
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        let fence = fence_without_brokers(in_flight.clone());
        // A "rebalance callback" holds the lock for 3 s on another thread.
        let (locked, is_locked) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let _held = in_flight.lock().expect("lock");
            let _ = locked.send(());
            std::thread::sleep(Duration::from_secs(3));
        });
        is_locked.recv().expect("locked");
        let started = std::time::Instant::now();
        let answer = fence.confirm().await;
        let waited = started.elapsed();
        holder.join().expect("holder");
        assert!(
            answer.is_ok(),
            "the write goes on while a rebalance holds the lock"
        );
        assert!(
            waited < Duration::from_secs(1),
            "the confirmation waited {waited:?} for the lock"
        );
    }
}
