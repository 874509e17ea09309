//! Events waiting for late reference data.
//!
//! An event whose order or customer is not in the tables yet is held here, bounded by count
//! and bytes, for at most `max_wait`. It leaves as soon as its reference data is there, or at
//! its deadline with whatever is there (the join flags what is missing). Events of one order
//! leave in the order they came: one that could be joined still waits behind an earlier
//! event of its order. The stage loop does not commit past a held event, so a crash replays
//! it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use boomerang_runtime::stage_loop::{InputRecord, Partition};
use boomerang_schemas::PostPurchaseEvent;

use crate::join::{JoinKeys, Lookup};
use crate::tables::{RefKey, RefMap, ReferenceTables};

#[derive(Debug, Clone, Copy)]
pub struct PendingLimits {
    /// The most events held at once; at the limit the stage stops consuming.
    pub max_events: usize,
    /// The most bytes of held records (keys, values and headers); at the limit the stage stops
    /// consuming. A batch already being processed may pass it.
    pub max_bytes: usize,
    /// The longest an event waits for its reference data.
    pub max_wait: Duration,
}

/// An event held back, with the record it came from.
#[derive(Debug)]
pub struct Held {
    pub record: InputRecord,
    pub event: PostPurchaseEvent,
    pub keys: JoinKeys,
    pub since: Instant,
}

struct Entry {
    held: Held,
    bytes: usize,
    deadline: Instant,
}

pub struct PendingBuffer {
    limits: PendingLimits,
    /// By arrival: with one `max_wait` for all, also by deadline.
    entries: BTreeMap<u64, Entry>,
    /// Each order's held events, oldest first.
    by_order: RefMap<VecDeque<u64>>,
    /// Held events by the reference keys they join on.
    waiting_on: RefMap<Vec<u64>>,
    next_seq: u64,
    bytes: usize,
}

impl PendingBuffer {
    pub fn new(limits: PendingLimits) -> Self {
        Self {
            limits,
            entries: BTreeMap::new(),
            by_order: RefMap::default(),
            waiting_on: RefMap::default(),
            next_seq: 0,
            bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many more events may be taken in before the buffer is full.
    pub fn room(&self) -> usize {
        if self.bytes >= self.limits.max_bytes {
            0
        } else {
            self.limits.max_events.saturating_sub(self.entries.len())
        }
    }

    /// Whether an earlier event of this order is held (a later one must wait behind it).
    pub fn holds_order(&self, order: RefKey) -> bool {
        self.by_order.contains_key(&order)
    }

    pub fn hold(&mut self, held: Held) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let bytes = held.record.retained_bytes();
        self.bytes += bytes;
        self.by_order
            .entry(held.keys.order)
            .or_default()
            .push_back(seq);
        self.waiting_on
            .entry(held.keys.order)
            .or_default()
            .push(seq);
        if held.keys.customer != held.keys.order {
            self.waiting_on
                .entry(held.keys.customer)
                .or_default()
                .push(seq);
        }
        let deadline = held.since + self.limits.max_wait;
        self.entries.insert(
            seq,
            Entry {
                held,
                bytes,
                deadline,
            },
        );
    }

    /// The held events that may go now, oldest first: those whose reference data is complete
    /// (checked for the events waiting on an `arrived` key, or for all with `recheck_all`) and
    /// those past their deadline, each only after every earlier held event of its order.
    pub fn release(
        &mut self,
        tables: &ReferenceTables,
        arrived: &[RefKey],
        recheck_all: bool,
        now: Instant,
    ) -> Vec<Held> {
        let mut candidates: BTreeSet<u64> = BTreeSet::new();
        if recheck_all {
            candidates.extend(self.entries.keys().copied());
        } else {
            for key in arrived {
                if let Some(seqs) = self.waiting_on.get(key) {
                    candidates.extend(seqs.iter().copied());
                }
            }
            for (seq, entry) in &self.entries {
                if entry.deadline > now {
                    break;
                }
                candidates.insert(*seq);
            }
        }
        let mut released = Vec::new();
        for seq in candidates {
            self.release_chain(seq, tables, now, &mut released);
        }
        released
    }

    /// Releases `seq` if it is first of its order and ready, then the ones behind it that are.
    fn release_chain(
        &mut self,
        mut seq: u64,
        tables: &ReferenceTables,
        now: Instant,
        released: &mut Vec<Held>,
    ) {
        loop {
            let Some(entry) = self.entries.get(&seq) else {
                return; // gone already, with an earlier chain
            };
            let order = entry.held.keys.order;
            let first_of_order = self
                .by_order
                .get(&order)
                .and_then(VecDeque::front)
                .is_some_and(|first| *first == seq);
            let ready = entry.deadline <= now || Lookup::new(tables, entry.held.keys).complete();
            if !first_of_order || !ready {
                return;
            }
            let Some(entry) = self.entries.remove(&seq) else {
                return;
            };
            self.bytes -= entry.bytes;
            self.stop_waiting(seq, entry.held.keys);
            let next = match self.by_order.get_mut(&order) {
                Some(queue) => {
                    queue.pop_front();
                    queue.front().copied()
                }
                None => None,
            };
            if next.is_none() {
                self.by_order.remove(&order);
            }
            released.push(entry.held);
            match next {
                Some(next) => seq = next,
                None => return,
            }
        }
    }

    fn stop_waiting(&mut self, seq: u64, keys: JoinKeys) {
        for key in [keys.order, keys.customer] {
            if let Some(seqs) = self.waiting_on.get_mut(&key) {
                seqs.retain(|waiting| *waiting != seq);
                if seqs.is_empty() {
                    self.waiting_on.remove(&key);
                }
            }
        }
    }

    /// Forgets the events of partitions given up (their next owner replays them); returns how
    /// many.
    pub fn drop_partitions(&mut self, partitions: &[Partition]) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, entry| {
            !partitions.iter().any(|(topic, partition)| {
                entry.held.record.partition == *partition && entry.held.record.topic == *topic
            })
        });
        if self.entries.len() == before {
            return 0;
        }
        self.by_order.clear();
        self.waiting_on.clear();
        self.bytes = 0;
        let kept: Vec<(u64, JoinKeys, usize)> = self
            .entries
            .iter()
            .map(|(seq, entry)| (*seq, entry.held.keys, entry.bytes))
            .collect();
        for (seq, keys, bytes) in kept {
            self.bytes += bytes;
            self.by_order.entry(keys.order).or_default().push_back(seq);
            self.waiting_on.entry(keys.order).or_default().push(seq);
            if keys.customer != keys.order {
                self.waiting_on.entry(keys.customer).or_default().push(seq);
            }
        }
        before - self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use boomerang_testkit::samples::{customer, event, order};

    use super::*;
    use crate::tables::ref_key;

    fn limits() -> PendingLimits {
        PendingLimits {
            max_events: 3,
            max_bytes: 1_000_000,
            max_wait: Duration::from_secs(10),
        }
    }

    fn held(offset: i64, order_id: &str, since: Instant) -> Held {
        let mut event = event();
        event.order_id = order_id.into();
        event.order_line_id = format!("{order_id}/1");
        let record = InputRecord::new(
            "validated".into(),
            0,
            offset,
            Some(order_id.as_bytes()),
            Some(&[0; 100]),
        );
        Held {
            keys: JoinKeys::of(&event),
            record,
            event,
            since,
        }
    }

    fn offsets(released: &[Held]) -> Vec<i64> {
        released.iter().map(|held| held.record.offset).collect()
    }

    #[test]
    fn released_when_the_reference_data_arrives() {
        let start = Instant::now();
        let mut pending = PendingBuffer::new(limits());
        let mut tables = ReferenceTables::default();
        pending.hold(held(1, "o-1", start));
        pending.hold(held(2, "o-2", start));
        assert_eq!(pending.room(), 1);
        assert!(pending.release(&tables, &[], false, start).is_empty());

        tables.upsert_customer(ref_key(b"cu-1"), &customer("cu-1", "vip", true));
        tables.upsert_order(ref_key(b"o-2"), &order("o-2", "cu-1", None));
        let released = pending.release(&tables, &[ref_key(b"o-2")], false, start);
        assert_eq!(offsets(&released), vec![2]);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending.bytes(), 100 + 3);
    }

    #[test]
    fn released_at_the_deadline_without_the_data() {
        let start = Instant::now();
        let mut pending = PendingBuffer::new(limits());
        let tables = ReferenceTables::default();
        pending.hold(held(1, "o-1", start));
        pending.hold(held(2, "o-2", start + Duration::from_secs(5)));
        let at = start + Duration::from_secs(10);
        assert_eq!(offsets(&pending.release(&tables, &[], false, at)), vec![1]);
        let later = start + Duration::from_secs(15);
        assert_eq!(
            offsets(&pending.release(&tables, &[], false, later)),
            vec![2]
        );
        assert!(pending.is_empty());
        assert_eq!(pending.bytes(), 0);
    }

    #[test]
    fn an_order_s_events_leave_in_order() {
        let start = Instant::now();
        let mut pending = PendingBuffer::new(limits());
        let mut tables = ReferenceTables::default();
        pending.hold(held(1, "o-1", start));
        pending.hold(held(2, "o-1", start));
        assert!(pending.holds_order(ref_key(b"o-1")));
        tables.upsert_customer(ref_key(b"cu-1"), &customer("cu-1", "vip", true));
        tables.upsert_order(ref_key(b"o-1"), &order("o-1", "cu-1", None));
        // Only the second is rechecked, but it may not overtake the first.
        let released = pending.release(&tables, &[], true, start);
        assert_eq!(offsets(&released), vec![1, 2]);
        assert!(!pending.holds_order(ref_key(b"o-1")));
    }

    #[test]
    fn the_byte_limit_leaves_no_room() {
        let mut pending = PendingBuffer::new(PendingLimits {
            max_bytes: 150,
            ..limits()
        });
        pending.hold(held(1, "o-1", Instant::now()));
        assert_eq!(pending.room(), 2);
        pending.hold(held(2, "o-2", Instant::now()));
        assert_eq!(pending.room(), 0);
    }

    #[test]
    fn revoked_partitions_are_forgotten() {
        let start = Instant::now();
        let mut pending = PendingBuffer::new(limits());
        pending.hold(held(1, "o-1", start));
        let mut other = held(2, "o-2", start);
        other.record.partition = 1;
        pending.hold(other);
        assert_eq!(pending.drop_partitions(&[("validated".into(), 0)]), 1);
        assert_eq!(pending.len(), 1);
        assert!(!pending.holds_order(ref_key(b"o-1")));
        assert!(pending.holds_order(ref_key(b"o-2")));
    }
}
