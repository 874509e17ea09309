//! De-duplication state of one input partition: the idempotency keys of the events already
//! passed, each with its event time, for the de-duplication window.
//!
//! Keys are kept as 128-bit xxh3 hashes (a collision is astronomically unlikely at any
//! realistic key count), so the state costs the same whatever the producers' key lengths: a
//! hash-map entry (16-byte hash + 8-byte event time) plus a queue entry (the same again), with
//! the map's and queue's growth headroom about 100 bytes per key (measured: 101 bytes at 1M and
//! 4M keys, `cargo bench -p boomerang-benches --bench dedup_memory`).
//!
//! The state is not the source of truth: the validated topic is. A partition's state is
//! rebuilt from the validated partition of the same number whenever the partition is assigned
//! (see `restore.rs`), so a crash or a rebalance loses nothing.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use boomerang_runtime::idempotency::PrehashedKeys;
use boomerang_schemas::TimestampMicros;

pub use boomerang_runtime::idempotency::key_hash;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen within the window: pass it, and it is now remembered.
    FirstSeen,
    /// Seen already: drop it.
    Duplicate,
}

pub struct DedupState {
    window: Duration,
    max_keys: usize,
    seen: HashMap<u128, i64, PrehashedKeys>,
    /// Keys in the order they were remembered, to forget the oldest first.
    order: VecDeque<(i64, u128)>,
    evicted_for_capacity: u64,
    /// Keys ever remembered and ever forgotten: a [`Self::remembered_so_far`] count names the
    /// keys remembered before it even after older ones were forgotten.
    pushed: u64,
    popped: u64,
}

impl DedupState {
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys: max_keys.max(1),
            seen: HashMap::default(),
            order: VecDeque::new(),
            evicted_for_capacity: 0,
            pushed: 0,
            popped: 0,
        }
    }

    /// Checks `idempotency_key` and remembers it if it is new.
    pub fn check(&mut self, idempotency_key: &str, occurred_at: TimestampMicros) -> Verdict {
        self.check_hash(key_hash(idempotency_key), occurred_at)
    }

    pub fn check_hash(&mut self, hash: u128, occurred_at: TimestampMicros) -> Verdict {
        if self.seen.contains_key(&hash) {
            return Verdict::Duplicate;
        }
        self.remember(hash, occurred_at);
        Verdict::FirstSeen
    }

    /// Remembers a key known to have passed (while restoring).
    pub fn remember(&mut self, hash: u128, occurred_at: TimestampMicros) {
        let micros = occurred_at.as_unix_micros();
        if let Entry::Vacant(slot) = self.seen.entry(hash) {
            slot.insert(micros);
            self.order.push_back((micros, hash));
            self.pushed += 1;
        }
        debug_assert_eq!(self.seen.len(), self.order.len());
        while self.seen.len() > self.max_keys {
            if !self.forget_oldest() {
                break;
            }
            self.evicted_for_capacity += 1;
        }
    }

    /// Forgets keys whose event time is older than the window before `now`.
    pub fn expire(&mut self, now: TimestampMicros) {
        let horizon = now.saturating_sub(self.window).as_unix_micros();
        while let Some(&(micros, _)) = self.order.front() {
            if micros >= horizon {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) -> bool {
        let Some((_, hash)) = self.order.pop_front() else {
            return false;
        };
        self.seen.remove(&hash);
        self.popped += 1;
        true
    }

    /// How many keys were remembered so far: pass it to [`Self::remembered_before`] later.
    pub fn remembered_so_far(&self) -> u64 {
        self.pushed
    }

    /// The keys still remembered, of those remembered before `so_far` was read, oldest first,
    /// each with its event time in microseconds.
    pub fn remembered_before(&self, so_far: u64) -> Vec<(i64, u128)> {
        let count = usize::try_from(so_far.saturating_sub(self.popped)).unwrap_or(usize::MAX);
        self.order.iter().take(count).copied().collect()
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Keys forgotten early because the state was full: their duplicates would pass.
    pub fn evicted_for_capacity(&self) -> u64 {
        self.evicted_for_capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(days: u64) -> TimestampMicros {
        TimestampMicros::from_unix_micros(1_700_000_000_000_000).saturating_add(DAY * days as u32)
    }

    #[test]
    fn exactly_one_per_key_passes() {
        let mut state = DedupState::new(7 * DAY, 100);
        assert_eq!(state.check("a", at(0)), Verdict::FirstSeen);
        assert_eq!(state.check("a", at(0)), Verdict::Duplicate);
        assert_eq!(state.check("b", at(0)), Verdict::FirstSeen);
        assert_eq!(state.check("a", at(1)), Verdict::Duplicate);
        assert_eq!(state.len(), 2);
    }

    #[test]
    fn keys_older_than_the_window_are_forgotten() {
        let mut state = DedupState::new(7 * DAY, 100);
        state.check("old", at(0));
        state.check("new", at(5));
        state.expire(at(8));
        assert_eq!(state.len(), 1);
        assert_eq!(state.check("new", at(8)), Verdict::Duplicate);
        assert_eq!(state.check("old", at(8)), Verdict::FirstSeen);
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_oldest() {
        let mut state = DedupState::new(7 * DAY, 3);
        for key in ["a", "b", "c", "d"] {
            state.check(key, at(0));
        }
        assert_eq!(state.len(), 3);
        assert_eq!(state.evicted_for_capacity(), 1);
        assert_eq!(state.check("d", at(0)), Verdict::Duplicate);
        assert_eq!(state.check("a", at(0)), Verdict::FirstSeen, "a was evicted");
    }

    #[test]
    fn the_keys_remembered_before_a_count_survive_forgetting() {
        let mut state = DedupState::new(7 * DAY, 3);
        state.check("a", at(0));
        let mark = state.remembered_so_far();
        state.check("b", at(1));
        assert_eq!(
            state.remembered_before(mark),
            vec![(at(0).as_unix_micros(), key_hash("a"))]
        );
        let mark = state.remembered_so_far();
        state.check("c", at(2));
        state.check("d", at(3)); // "a" is evicted
        let before: Vec<u128> = state
            .remembered_before(mark)
            .into_iter()
            .map(|(_, hash)| hash)
            .collect();
        assert_eq!(before, vec![key_hash("b")]);
    }

    #[test]
    fn remembering_twice_keeps_one_entry() {
        let mut state = DedupState::new(7 * DAY, 10);
        state.remember(key_hash("a"), at(0));
        state.remember(key_hash("a"), at(0));
        assert_eq!(state.len(), 1);
        state.expire(at(9));
        assert!(state.is_empty());
    }
}
