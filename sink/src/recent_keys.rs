//! The idempotency keys of the events each enriched partition has written lately, so that an
//! event an upstream stage emitted twice (enrich killed after producing and before committing,
//! or a zombie enrich that kept producing after the group moved on) becomes one row, not two.
//!
//! Why here: the sink's replay protection by source offset (`stored.rs`) covers its own
//! crashes, but an upstream re-emission is a new record at a new offset. Ingest has passed
//! each idempotency key once (its de-duplication), so a second enriched record with a key this
//! partition already wrote is always a re-emission: it is counted as de-duplicated
//! (`boomerang_deduplicated_events_total`, and `boomerang_sink_duplicate_keys_total`) and not
//! written. The first copy wins, as in ingest.
//!
//! How far back: the last `window` events of each partition (`--dedup-window-events`). A
//! re-emission follows its original closely: it replays what enrich emitted after its last
//! commit, which trails by at most its batches in flight plus the longest wait for late
//! reference data. When a partition is assigned, its window is restored from ClickHouse (the
//! keys of the rows at the `window` offsets before the group's committed offset, and after),
//! so the guarantee holds across the sink's own restarts and rebalances too.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet, VecDeque};

use boomerang_runtime::idempotency::{PrehashedKeys, key_hash};

/// One partition's window.
#[derive(Default)]
struct Window {
    keys: HashSet<u128, PrehashedKeys>,
    /// In the order they were written, to forget the oldest first.
    order: VecDeque<u128>,
}

pub struct RecentKeys {
    window: usize,
    /// A few partitions, looked up for every event: a B-tree finds one faster than SipHash
    /// hashes its number.
    partitions: BTreeMap<i32, Window>,
}

impl RecentKeys {
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            partitions: BTreeMap::new(),
        }
    }

    /// Whether `idempotency_key` is new to `partition`'s window; a new key is remembered.
    pub fn first_seen(&mut self, partition: i32, idempotency_key: &str) -> bool {
        let limit = self.window;
        let window = self.partitions.entry(partition).or_default();
        let hash = key_hash(idempotency_key);
        if !window.keys.insert(hash) {
            return false;
        }
        window.order.push_back(hash);
        while window.order.len() > limit {
            if let Some(oldest) = window.order.pop_front() {
                window.keys.remove(&oldest);
            }
        }
        debug_assert_eq!(window.keys.len(), window.order.len());
        true
    }

    /// Refills `partition`'s window from what ClickHouse holds, oldest first.
    pub fn restore<'a>(&mut self, partition: i32, keys: impl IntoIterator<Item = &'a str>) {
        self.partitions.remove(&partition);
        for key in keys {
            self.first_seen(partition, key);
        }
    }

    /// Forgets a partition given up: its next owner restores its own window.
    pub fn forget(&mut self, partition: i32) {
        if let Entry::Occupied(window) = self.partitions.entry(partition) {
            window.remove();
        }
    }

    /// How many keys each partition remembers.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Keys remembered over every partition.
    pub fn keys_remembered(&self) -> usize {
        self.partitions
            .values()
            .map(|window| window.keys.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_written_once_is_a_duplicate_in_its_partition_only() {
        let mut recent = RecentKeys::new(10);
        assert!(recent.first_seen(0, "a"));
        assert!(!recent.first_seen(0, "a"));
        assert!(
            recent.first_seen(1, "a"),
            "another partition has its own keys"
        );
        assert_eq!(recent.keys_remembered(), 2);
    }

    #[test]
    fn the_oldest_keys_leave_a_full_window() {
        let mut recent = RecentKeys::new(3);
        for key in ["a", "b", "c", "d"] {
            assert!(recent.first_seen(0, key));
        }
        assert_eq!(recent.keys_remembered(), 3);
        assert!(recent.first_seen(0, "a"), "a left the window");
        assert!(!recent.first_seen(0, "d"));
    }

    #[test]
    fn a_restored_window_holds_what_clickhouse_has_and_forget_drops_it() {
        let mut recent = RecentKeys::new(2);
        recent.first_seen(3, "stale");
        recent.restore(3, ["x", "y", "z"]);
        assert_eq!(recent.keys_remembered(), 2, "only the newest fit");
        assert!(!recent.first_seen(3, "z"));
        assert!(recent.first_seen(3, "stale"), "a restore starts afresh");
        recent.forget(3);
        assert_eq!(recent.keys_remembered(), 0);
    }
}
