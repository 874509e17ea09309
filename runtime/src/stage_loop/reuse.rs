//! Emptied batches kept for the next batches to fill: the loop's record vectors, and any
//! container a processor fills per batch (the sink's rows and Native blocks).
//!
//! A batch is tens of thousands of records or rows, megabytes to tens of megabytes. A fresh
//! container for each batch was page-faulted and zeroed by the kernel as it filled, and one
//! grown by doubling copied every element up to five times (`perf`, 2026-12-04: a fifth of the
//! sink's main thread in page clearing and `memmove`). A reused one's memory is mapped and
//! large enough already.

use std::sync::{Arc, Mutex, MutexGuard};

use super::MAX_BATCHES_IN_FLIGHT;

/// A container that can be emptied and filled again.
pub trait Reusable: Default {
    /// Empties it, keeping its memory; `false` if it has none worth keeping.
    fn empty(&mut self) -> bool;
}

impl<T> Reusable for Vec<T> {
    fn empty(&mut self) -> bool {
        self.clear();
        self.capacity() > 0
    }
}

/// Emptied containers handed back once their batch is done with, shared between the loop (or
/// the processor) that fills them and the completions that give them back.
pub struct Pool<B>(Arc<Mutex<Vec<B>>>);

impl<B> Pool<B> {
    /// Containers kept at most: one for each batch that can be in flight, and the one being
    /// filled, so that every one comes back. With two kept while five could be in flight, the
    /// others were dropped and the next batches filled fresh ones: 33 new blocks in a drain of
    /// 44 batches (2026-12-04).
    pub const MAX_KEPT: usize = MAX_BATCHES_IN_FLIGHT + 1;

    fn kept(&self) -> MutexGuard<'_, Vec<B>> {
        // A panic elsewhere while the lock was held leaves a list of empty containers: valid.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An emptied container that came back, if one has.
    pub fn take(&self) -> Option<B> {
        self.kept().pop()
    }

    /// How many are kept now.
    pub fn len(&self) -> usize {
        self.kept().len()
    }

    /// Whether none is kept now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<B: Reusable> Pool<B> {
    /// Hands back a container whose batch is done with; it is emptied here, and kept if it
    /// has memory and there is room.
    pub fn give_back(&self, mut container: B) {
        if !container.empty() {
            return;
        }
        let mut kept = self.kept();
        if kept.len() < Self::MAX_KEPT {
            kept.push(container);
        }
    }
}

impl<B> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<B> Default for Pool<B> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Vec::new())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_given_back_is_taken_again_emptied_with_its_memory() {
        let pool: Pool<Vec<u64>> = Pool::default();
        assert!(pool.take().is_none(), "nothing came back yet");
        let filled: Vec<u64> = (0..1_000).collect();
        let memory = filled.as_ptr();
        pool.give_back(filled);
        let taken = pool.take().expect("the one given back");
        assert!(taken.is_empty());
        assert!(taken.capacity() >= 1_000);
        assert_eq!(taken.as_ptr(), memory, "the same memory, not a copy");
    }

    #[test]
    fn one_is_kept_for_every_batch_in_flight_and_no_more_nor_any_without_memory() {
        let pool: Pool<Vec<u64>> = Pool::default();
        pool.give_back(Vec::new());
        assert!(
            pool.is_empty(),
            "a container without memory is not worth keeping"
        );
        for _ in 0..Pool::<Vec<u64>>::MAX_KEPT + 2 {
            pool.give_back(Vec::with_capacity(8));
        }
        assert_eq!(pool.len(), MAX_BATCHES_IN_FLIGHT + 1);
    }
}
