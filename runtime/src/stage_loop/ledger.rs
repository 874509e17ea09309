//! The offset ledger: which offset of each partition may be committed, given the batches that
//! completed and the records the processor holds. Pure bookkeeping, no Kafka: the loop asks it
//! after each completed batch and stores what it answers.
//!
//! The rules, checked by the property tests below and stated as `debug_assert!`s:
//! - nothing at or after a held record is committed, until a completed batch released it;
//! - nothing past the last offset of a completed batch is committed;
//! - a partition's committable offset only moves forward, and a partition forgotten (given
//!   up) starts afresh;
//! - once every batch has completed and nothing is held, everything processed is committable.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::Partition;

/// The last offset of a partition a batch processed, or a held record it decided.
pub(crate) type PartitionOffset = (Arc<str>, i32, i64);

#[derive(Debug, Default)]
pub(crate) struct OffsetLedger {
    /// Offsets the processor holds, per partition: nothing at or after the first is committed.
    held: HashMap<Partition, BTreeSet<i64>>,
    /// The highest offset per partition of completed batches.
    done_upto: HashMap<Partition, i64>,
    /// The offset last answered per partition, so answers only move forward.
    stored: HashMap<Partition, i64>,
}

impl OffsetLedger {
    /// The processor holds `offset`: registered before any earlier batch completes, so no
    /// commit passes it.
    pub(crate) fn hold(&mut self, partition: Partition, offset: i64) {
        self.held.entry(partition).or_default().insert(offset);
    }

    /// A batch completed: the last offset it processed per partition, and the held records it
    /// decided. Answers, per partition that moved, the last offset now safe to commit
    /// (inclusive: librdkafka stores the next one to read).
    pub(crate) fn complete(
        &mut self,
        processed: &[PartitionOffset],
        released: &[PartitionOffset],
    ) -> Vec<(Partition, i64)> {
        let mut touched: BTreeSet<Partition> = BTreeSet::new();
        for (topic, partition, offset) in released {
            let key = (topic.clone(), *partition);
            if let Some(held) = self.held.get_mut(&key) {
                held.remove(offset);
                if held.is_empty() {
                    self.held.remove(&key);
                }
            }
            touched.insert(key);
        }
        for (topic, partition, last_processed) in processed {
            let key = (topic.clone(), *partition);
            let done = self.done_upto.entry(key.clone()).or_insert(-1);
            *done = (*done).max(*last_processed);
            touched.insert(key);
        }
        touched
            .into_iter()
            .filter_map(|partition| {
                let safe = self.advance(&partition)?;
                Some((partition, safe))
            })
            .collect()
    }

    /// The next offset to read of every partition with something committable: what a commit
    /// of everything completed would commit.
    pub(crate) fn stored_positions(&self) -> Vec<(Partition, i64)> {
        self.stored
            .iter()
            .filter(|(_, stored)| **stored >= 0)
            .map(|(partition, stored)| (partition.clone(), stored + 1))
            .collect()
    }

    /// Forgets a partition given up: its next owner replays from the last commit.
    pub(crate) fn forget(&mut self, partition: &Partition) {
        self.held.remove(partition);
        self.done_upto.remove(partition);
        self.stored.remove(partition);
    }

    /// The offset it is safe to commit up to (inclusive) for `partition`, if it moved.
    fn advance(&mut self, partition: &Partition) -> Option<i64> {
        let done = *self.done_upto.get(partition)?;
        let first_held = self.held.get(partition).and_then(BTreeSet::first).copied();
        let safe = first_held.map_or(done, |first_held| done.min(first_held - 1));
        let stored = self.stored.entry(partition.clone()).or_insert(-1);
        if safe <= *stored {
            return None;
        }
        debug_assert!(
            first_held.is_none_or(|held| safe < held),
            "never past a held record"
        );
        debug_assert!(safe <= done, "never past a completed batch");
        *stored = safe;
        Some(safe)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn p(partition: i32) -> Partition {
        (Arc::from("t"), partition)
    }

    fn at(partition: i32, offset: i64) -> PartitionOffset {
        (Arc::from("t"), partition, offset)
    }

    #[test]
    fn a_completed_batch_is_committable_up_to_its_last_offset() {
        let mut ledger = OffsetLedger::default();
        assert_eq!(
            ledger.complete(&[at(0, 9), at(1, 4)], &[]),
            vec![(p(0), 9), (p(1), 4)]
        );
        assert_eq!(ledger.complete(&[at(0, 9)], &[]), vec![], "nothing moved");
    }

    #[test]
    fn a_held_record_stops_the_commit_until_a_batch_releases_it() {
        let mut ledger = OffsetLedger::default();
        ledger.hold(p(0), 3);
        assert_eq!(ledger.complete(&[at(0, 9)], &[]), vec![(p(0), 2)]);
        assert_eq!(ledger.complete(&[at(0, 19)], &[]), vec![], "still held");
        assert_eq!(ledger.complete(&[], &[at(0, 3)]), vec![(p(0), 19)]);
    }

    #[test]
    fn a_forgotten_partition_starts_afresh() {
        let mut ledger = OffsetLedger::default();
        ledger.hold(p(0), 5);
        ledger.complete(&[at(0, 9)], &[]);
        ledger.forget(&p(0));
        assert_eq!(ledger.complete(&[at(0, 2)], &[]), vec![(p(0), 2)]);
    }

    /// One step of a stage's life, as the loop drives the ledger.
    #[derive(Debug, Clone)]
    enum Step {
        /// A batch of `records` records from a partition; each is held if its bit is set.
        Batch {
            partition: i32,
            records: u8,
            held: u16,
        },
        /// The processor decides the oldest records it holds (up to `count`) in the next batch.
        Release { count: u8 },
        /// The oldest batch in flight completes.
        Complete,
        /// The partition is revoked: every batch in flight completes first, then it is forgotten.
        Revoke { partition: i32 },
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                4 => (0..3i32, 1..20u8, any::<u16>())
                    .prop_map(|(partition, records, held)| Step::Batch { partition, records, held }),
                2 => (1..5u8).prop_map(|count| Step::Release { count }),
                3 => Just(Step::Complete),
                1 => (0..3i32).prop_map(|partition| Step::Revoke { partition }),
            ],
            0..80,
        )
    }

    /// What the model knows of a partition: the next offset to consume, and every consumed
    /// offset's state.
    #[derive(Default)]
    struct Model {
        next: BTreeMap<i32, i64>,
        /// Offsets decided in a completed batch.
        decided: BTreeMap<i32, BTreeSet<i64>>,
        /// Offsets held and not yet decided by a completed batch.
        held: BTreeMap<i32, BTreeSet<i64>>,
        /// The highest answer per partition since it was last forgotten.
        committed: BTreeMap<i32, i64>,
    }

    struct Batch {
        processed: Vec<PartitionOffset>,
        released: Vec<PartitionOffset>,
        /// Offsets this batch decides when it completes (processed and not held, or released).
        decides: Vec<(i32, i64)>,
    }

    fn complete(ledger: &mut OffsetLedger, model: &mut Model, batch: Batch) {
        for (partition, offset) in &batch.decides {
            model.decided.entry(*partition).or_default().insert(*offset);
        }
        for (_, partition, offset) in &batch.released {
            if let Some(held) = model.held.get_mut(partition) {
                held.remove(offset);
            }
        }
        for ((_, partition), safe) in ledger.complete(&batch.processed, &batch.released) {
            let decided = model.decided.entry(partition).or_default();
            // Every offset up to the answer was decided by a completed batch.
            let first = model.committed.get(&partition).map_or(0, |last| last + 1);
            for offset in first..=safe {
                assert!(
                    decided.contains(&offset),
                    "{partition}/{offset} committed undecided"
                );
            }
            // Never backwards, across owners too (a new owner may answer the commit it
            // started from once more).
            let last = model.committed.entry(partition).or_insert(-1);
            assert!(safe >= *last, "only forward");
            *last = safe;
        }
    }

    proptest! {
        #[test]
        fn never_commits_past_an_undecided_record_and_commits_all_once_drained(steps in steps()) {
            let mut ledger = OffsetLedger::default();
            let mut model = Model::default();
            let mut in_flight: std::collections::VecDeque<Batch> = Default::default();
            let mut to_release: Vec<(i32, i64)> = Vec::new();
            for step in steps {
                match step {
                    Step::Batch { partition, records, held } => {
                        let next = model.next.entry(partition).or_insert(0);
                        let mut decides = Vec::new();
                        for n in 0..i64::from(records) {
                            let offset = *next + n;
                            if held & (1 << (n % 16)) != 0 {
                                ledger.hold(p(partition), offset);
                                model.held.entry(partition).or_default().insert(offset);
                                to_release.push((partition, offset));
                            } else {
                                decides.push((partition, offset));
                            }
                        }
                        *next += i64::from(records);
                        let released: Vec<PartitionOffset> = Vec::new();
                        in_flight.push_back(Batch {
                            processed: vec![at(partition, *next - 1)],
                            released,
                            decides,
                        });
                    }
                    Step::Release { count } => {
                        let count = usize::from(count).min(to_release.len());
                        let released: Vec<(i32, i64)> = to_release.drain(..count).collect();
                        in_flight.push_back(Batch {
                            processed: Vec::new(),
                            released: released.iter().map(|(partition, offset)| at(*partition, *offset)).collect(),
                            decides: released,
                        });
                    }
                    Step::Complete => {
                        if let Some(batch) = in_flight.pop_front() {
                            complete(&mut ledger, &mut model, batch);
                        }
                    }
                    Step::Revoke { partition } => {
                        while let Some(batch) = in_flight.pop_front() {
                            complete(&mut ledger, &mut model, batch);
                        }
                        // Everything acknowledged is committable: the answer so far is the
                        // last offset before the first record still held, or the last one.
                        let first_held = model.held.get(&partition).and_then(BTreeSet::first).copied();
                        let consumed = model.next.get(&partition).copied().unwrap_or(0);
                        let expected = first_held.map_or(consumed, |held| held) - 1;
                        let committed = model.committed.get(&partition).copied().unwrap_or(-1);
                        prop_assert_eq!(committed, expected, "a revoke commits all acknowledged");
                        ledger.forget(&p(partition));
                        model.committed.remove(&partition);
                        model.decided.remove(&partition);
                        model.held.remove(&partition);
                        to_release.retain(|(held_partition, _)| *held_partition != partition);
                        // The next owner replays from the commit: offsets restart there, and
                        // the ledger's first answer for it must lie past that commit.
                        model.next.insert(partition, committed + 1);
                        if committed >= 0 {
                            model.committed.insert(partition, committed);
                        }
                    }
                }
            }
        }
    }
}
