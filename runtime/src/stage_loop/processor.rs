//! The processor contract: what a stage's own logic is handed and what it answers.

use std::future::Future;
use std::pin::Pin;

use smallvec::SmallVec;

use super::Fence;
use super::record::{InputRecord, OutputRecord, Partition};
use crate::dead_letter::Rejection;
use crate::error_kind::ErrorKind;

/// The header that carries a validated event's idempotency key: ingest's de-duplication log.
pub const IDEMPOTENCY_KEY_HEADER: &str = "boomerang.idempotency_key";

/// The header that carries an event's time on the validated topic, milliseconds since the
/// epoch in decimal.
pub const EVENT_TIME_HEADER: &str = "boomerang.event_time_ms";

/// The raw record a validated event came from, `partition/offset`, for lineage.
pub const SOURCE_HEADER: &str = "boomerang.source";

/// The headers ingest writes on every validated record. Their values are also in the event's
/// datum (the idempotency key, the event time) or only name where it came from (the source),
/// so enrich does not carry them on to the enriched topic unless asked to
/// (`--enriched-headers full`): each header is an allocation made and freed on every hop.
pub const VALIDATED_HEADERS: [&str; 3] = [IDEMPOTENCY_KEY_HEADER, SOURCE_HEADER, EVENT_TIME_HEADER];

/// The header that marks a backfilled (historical) event, on the raw, validated and enriched
/// topics: its value names the backfill run (`boomerang backfill`). Ingest waives the event-age
/// limit for such an event and de-duplicates it in memory only inside the live window; the
/// sink checks the rest against what ClickHouse holds.
pub const HISTORY_HEADER: &str = "boomerang.history";

/// How many records [`Processor::warm`] is shown at a time: enough lookups for their cache
/// misses to overlap, few enough that what they bring in is still cached when the records
/// are processed.
pub const WARM_AHEAD: usize = 16;

/// A record's outputs: most records have one, kept inline (no allocation per record).
pub type Outputs = SmallVec<[OutputRecord; 1]>;

/// What becomes of one input record.
#[derive(Debug)]
pub enum Outcome {
    /// Produce these (possibly none), then count the record as sent.
    Emit(Outputs),
    /// A duplicate of a record already passed: dropped on purpose.
    Deduplicated,
    /// Cannot be processed: to the dead-letter topic with its original bytes.
    DeadLetter(Rejection),
    /// Not decided yet: the processor keeps the record and returns it, decided, from
    /// [`Processor::release`]. Until then the partition is not committed past it.
    Hold,
    /// Kept for this batch's write by [`Processor::flush`]; counted as sent (to
    /// [`Processor::WRITES_TO`]) once that write has finished. The index comes from the
    /// processor's [`Writes`]; a write that refuses the record names it by that index.
    Write(WriteIndex),
}

impl Outcome {
    /// Produce `output`, then count the record as sent.
    pub fn emit(output: OutputRecord) -> Self {
        Outcome::Emit(smallvec::smallvec![output])
    }
}

/// A record's place among the records of one batch that answered [`Outcome::Write`]: the
/// first is 0. Only [`Writes`] makes one, so a processor that answers `Write` keeps a
/// `Writes`, and a write names a record it refuses exactly as the loop knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteIndex(usize);

impl WriteIndex {
    pub fn get(self) -> usize {
        self.0
    }
}

/// Hands out the [`WriteIndex`]es of one batch's writes, in the order the records come.
#[derive(Debug, Default)]
pub struct Writes {
    next: usize,
}

impl Writes {
    /// The answer for the next record kept for the write, and its index.
    pub fn write(&mut self) -> (Outcome, WriteIndex) {
        let index = WriteIndex(self.next);
        self.next += 1;
        (Outcome::Write(index), index)
    }

    /// How many records the batch kept; the next batch starts again at 0. Call it in
    /// [`Processor::flush`].
    pub fn seal(&mut self) -> usize {
        std::mem::take(&mut self.next)
    }
}

/// A record held earlier, now decided (anything but [`Outcome::Hold`]).
#[derive(Debug)]
pub struct Released {
    pub record: InputRecord,
    pub outcome: Outcome,
}

/// How a processor's batch write ended.
#[derive(Debug)]
pub enum FlushResult {
    /// Written, but for the `rejected` records, rejected for good: they are dead-lettered
    /// instead; and for `already_stored` of them, found already written (a backfilled event
    /// whose key the destination holds): counted as de-duplicated, not sent.
    Written {
        rejected: Vec<(WriteIndex, Rejection)>,
        already_stored: u64,
    },
    /// Given up at shutdown: neither this batch nor any later one is committed.
    Abandoned,
    /// The write failed in a way it cannot recover from: the stage stops, and its next start
    /// replays from the last commit.
    Failed(String),
}

/// A processor's write of one batch's [`Outcome::Write`] records.
pub type FlushFuture = Pin<Box<dyn Future<Output = FlushResult> + Send>>;

/// A failure that is not the record's fault, retried by the loop.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct RetryableError {
    /// Stable and low-cardinality, e.g. `schema_registry_unavailable`.
    pub kind: ErrorKind,
    #[source]
    pub source: anyhow::Error,
}

/// A stage's own logic.
pub trait Processor: Send {
    /// Partitions just assigned to this instance, before any of their records is processed:
    /// restore per-partition state here. An error stops the stage (it restarts and retries).
    fn assign(
        &mut self,
        partitions: &[Partition],
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Partitions just revoked, after their processed offsets were committed.
    fn revoke(&mut self, partitions: &[Partition]);

    /// Every output of every record before these offsets (the next offset to read, per
    /// partition) is acknowledged: what the processor decided for them is durable. Called
    /// about once a second while records flow, and once more when the loop stops. A processor
    /// that snapshots its state includes in a snapshot only what is durable.
    fn acknowledged(&mut self, _positions: &[(Partition, i64)]) {}

    /// The loop stops, and everything processed is acknowledged and committed: a last
    /// chance to snapshot state. Not called when the loop stops on a failure.
    fn drained(&mut self) {}

    /// Decides one record's outcome.
    fn process(
        &mut self,
        record: &InputRecord,
    ) -> impl Future<Output = Result<Outcome, RetryableError>> + Send;

    /// The next records to be processed, up to [`WARM_AHEAD`] of them, before the first is: a
    /// processor whose lookups miss the CPU's caches (enrich's table of a million orders) can
    /// make those lookups here, one after another with nothing between them, so that their
    /// misses overlap instead of each stalling its record in turn. A hint: it decides nothing,
    /// changes nothing and may do nothing.
    fn warm(&self, _upcoming: &[InputRecord]) {}

    /// Held records decided since the last call, in the order they should be emitted.
    fn release(&mut self) -> Vec<Released> {
        Vec::new()
    }

    /// How many records are held now. While any are, an idle loop calls
    /// [`release`](Self::release) every few milliseconds.
    fn holding(&self) -> usize {
        0
    }

    /// How many more records the processor can take now; 0 pauses consumption.
    fn room(&self) -> usize {
        usize::MAX
    }

    /// Where [`Outcome::Write`] records go, for the `sent` counter's `topic` label.
    const WRITES_TO: &'static str = "external";

    /// Called once per batch, after every record's outcome is decided, if any was
    /// [`Outcome::Write`]: the write of those records. The loop keeps it in flight like the
    /// batch's produced records, and counts them as sent only once it has finished. A write
    /// confirms with `fence` just before it writes that this instance still owns its
    /// partitions, and fails instead if it does not.
    ///
    /// A processor that answers `Write` must write: the default fails the batch, so the stage
    /// stops instead of committing records nothing wrote.
    fn flush(&mut self, _fence: &Fence) -> FlushFuture {
        Box::pin(std::future::ready(FlushResult::Failed(
            "the processor answered Outcome::Write but does not write (no flush)".to_string(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_indexes_count_from_zero_in_every_batch() {
        let mut writes = Writes::default();
        assert_eq!(writes.write().1.get(), 0);
        assert_eq!(writes.write().1.get(), 1);
        assert_eq!(writes.seal(), 2);
        assert_eq!(writes.write().1.get(), 0);
    }
}
