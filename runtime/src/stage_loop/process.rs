//! Deciding a batch: every record's outcome from the processor (retried while the failure is
//! not the record's), dead letters built, and what the batch will add to the counters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::in_flight::{BatchCounts, InFlight};
use super::ledger::PartitionOffset;
use super::{
    InputRecord, LoopSettings, Outcome, OutputRecord, Processor, Released, WARM_AHEAD, lock,
};
use crate::dead_letter::{self, Rejection};
use crate::error_kind::DeadLetterKind;
use crate::metrics::StageMetrics;
use crate::service::StageContext;

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// How each produced record is counted once acknowledged.
pub(super) enum Counted {
    Sent,
    DeadLettered(DeadLetterKind),
}

pub(super) fn batch_counts<P: Processor>(
    batch: &[InputRecord],
    processed: &ProcessedBatch,
) -> BatchCounts {
    let mut counts = BatchCounts {
        deduplicated: processed.deduplicated,
        writes_to: P::WRITES_TO,
        ..BatchCounts::default()
    };
    counts.received = per_topic(batch.iter().map(|record| &*record.topic));
    counts.sent = per_topic(
        processed
            .outputs
            .iter()
            .filter(|(counted, _)| matches!(counted, Counted::Sent))
            .map(|(_, output)| &*output.topic),
    );
    if !processed.writes.is_empty() {
        *counts.sent.entry(P::WRITES_TO.to_string()).or_default() += processed.writes.len() as u64;
    }
    for (counted, output) in &processed.outputs {
        match counted {
            Counted::Sent => {
                counts.latest_event_ms = counts.latest_event_ms.max(output.event_time_ms);
            }
            Counted::DeadLettered(error_kind) => {
                *counts.dead_lettered.entry(*error_kind).or_default() += 1;
            }
        }
    }
    counts
}

/// How many records (consumed or produced) each topic has. Records come in runs of one topic:
/// counted per run, not looked up per record.
fn per_topic<'a>(topics: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut run: Option<(&str, u64)> = None;
    for topic in topics {
        match &mut run {
            Some((current, count)) if *current == topic => *count += 1,
            _ => {
                if let Some((done, count)) = run.replace((topic, 1)) {
                    *counts.entry(done.to_string()).or_default() += count;
                }
            }
        }
    }
    if let Some((done, count)) = run {
        *counts.entry(done.to_string()).or_default() += count;
    }
    counts
}

/// Where a record kept for the processor's write is.
pub(super) enum WriteSource {
    /// At this position in the batch.
    Batch(usize),
    /// A held record, released in this batch.
    Released(Box<InputRecord>),
}

impl WriteSource {
    pub(super) fn record<'a>(&'a self, batch: &'a [InputRecord]) -> Option<&'a InputRecord> {
        match self {
            WriteSource::Batch(position) => batch.get(*position),
            WriteSource::Released(record) => Some(record),
        }
    }
}

pub(super) struct ProcessedBatch {
    /// The producer's `message.max.bytes`: no output or dead letter is larger.
    pub(super) max_record_bytes: usize,
    pub(super) outputs: Vec<(Counted, OutputRecord)>,
    pub(super) deduplicated: u64,
    /// The records kept for the processor's flush, by [`WriteIndex`].
    pub(super) writes: Vec<WriteSource>,
    /// Offsets of earlier held records decided in this batch.
    pub(super) released: Vec<PartitionOffset>,
}

impl ProcessedBatch {
    /// `position`: the record's place in the batch; `released`: the record, if it was
    /// released rather than in the batch.
    fn add(
        &mut self,
        settings: &LoopSettings,
        record: &InputRecord,
        outcome: Outcome,
        position: usize,
        released: Option<&InputRecord>,
    ) {
        match outcome {
            Outcome::Emit(outputs) => {
                // An output the producer would refuse for its size would stop the stage, and
                // its restart would meet the same record: its input is dead-lettered instead.
                if let Some(output) = outputs
                    .iter()
                    .find(|output| output.wire_size() > self.max_record_bytes)
                {
                    let rejection = Rejection::new(
                        DeadLetterKind::RecordTooLarge,
                        format!(
                            "its record for {} would take {} bytes, over the {}-byte limit \
                             (--max-record-bytes, the producer's message.max.bytes)",
                            output.topic,
                            output.wire_size(),
                            self.max_record_bytes
                        ),
                    );
                    return self.add(
                        settings,
                        record,
                        Outcome::DeadLetter(rejection),
                        position,
                        released,
                    );
                }
                self.outputs
                    .extend(outputs.into_iter().map(|output| (Counted::Sent, output)));
            }
            Outcome::Deduplicated => self.deduplicated += 1,
            Outcome::DeadLetter(rejection) => {
                tracing::debug!(topic = %record.topic, partition = record.partition, offset = record.offset, error_kind = rejection.error_kind.as_str(), "dead-lettering record");
                let dead_letter = dead_letter::record(
                    settings.stage,
                    &settings.dead_letter_topic,
                    record,
                    &rejection,
                    now_ms(),
                    self.max_record_bytes,
                );
                self.outputs
                    .push((Counted::DeadLettered(rejection.error_kind), dead_letter));
            }
            Outcome::Write(index) => {
                let source = match released {
                    None => WriteSource::Batch(position),
                    Some(record) => WriteSource::Released(Box::new(record.clone())),
                };
                // The processor's `Writes` and this list count the same records in the same
                // order; a processor that kept two `Writes` would break that.
                debug_assert_eq!(index.get(), self.writes.len(), "write indexes out of step");
                self.writes.push(source);
            }
            Outcome::Hold => {}
        }
    }
}

/// Decides every record's outcome, after the held records released now; `None` if shutdown
/// came while a retry was pending.
#[allow(clippy::too_many_arguments)]
pub(super) async fn process_batch<P: Processor>(
    settings: &LoopSettings,
    max_record_bytes: usize,
    processor: &mut P,
    batch: &[InputRecord],
    released: Vec<Released>,
    in_flight: &Mutex<InFlight>,
    metrics: &StageMetrics,
    context: &StageContext,
) -> Option<ProcessedBatch> {
    let mut processed = ProcessedBatch {
        max_record_bytes,
        outputs: Vec::with_capacity(batch.len() + released.len()),
        deduplicated: 0,
        writes: Vec::new(),
        released: Vec::with_capacity(released.len()),
    };
    for Released { record, outcome } in released {
        if matches!(outcome, Outcome::Hold) {
            continue; // still held: nothing to do yet
        }
        processed
            .released
            .push((record.topic.clone(), record.partition, record.offset));
        processed.add(settings, &record, outcome, 0, Some(&record));
    }
    for (position, record) in batch.iter().enumerate() {
        if position % WARM_AHEAD == 0 {
            processor.warm(&batch[position..batch.len().min(position + WARM_AHEAD)]);
        }
        let outcome = process_with_retry(processor, record, metrics, context).await?;
        if matches!(outcome, Outcome::Hold) {
            // Registered now, before any earlier batch completes, so no commit passes it.
            lock(in_flight)
                .ledger
                .hold((record.topic.clone(), record.partition), record.offset);
        }
        processed.add(settings, record, outcome, position, None);
    }
    Some(processed)
}

pub(super) async fn process_with_retry<P: Processor>(
    processor: &mut P,
    record: &InputRecord,
    metrics: &StageMetrics,
    context: &StageContext,
) -> Option<Outcome> {
    let mut retry =
        crate::retry::Retry::new("processing a record", &metrics.errors, &context.shutdown);
    loop {
        match processor.process(record).await {
            Ok(outcome) => return Some(outcome),
            Err(error) => {
                context
                    .readiness
                    .set_not_ready(format!("{}: retrying", error.kind));
                let chain = crate::config::error_chain(error.source.as_ref());
                if !retry.failed(error.kind, &chain).await {
                    return None;
                }
            }
        }
    }
}

/// The highest offset per partition in the batch.
pub(super) fn last_offsets(batch: &[InputRecord]) -> Vec<PartitionOffset> {
    let mut last: BTreeMap<(&str, i32), (&Arc<str>, i64)> = BTreeMap::new();
    for record in batch {
        let entry = last
            .entry((&*record.topic, record.partition))
            .or_insert((&record.topic, record.offset));
        entry.1 = entry.1.max(record.offset);
    }
    last.into_iter()
        .map(|((_, partition), (topic, offset))| (topic.clone(), partition, offset))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: &[(&str, i32, i64)]) -> Vec<InputRecord> {
        records
            .iter()
            .map(|(topic, partition, offset)| {
                InputRecord::new(Arc::from(*topic), *partition, *offset, None, Some(b"v"))
            })
            .collect()
    }

    #[test]
    fn records_are_counted_per_topic_across_interleaved_runs() {
        let batch = batch(&[
            ("a", 0, 1),
            ("a", 1, 1),
            ("b", 0, 7),
            ("a", 0, 2),
            ("c", 3, 9),
            ("c", 3, 10),
            ("b", 0, 8),
        ]);
        let received = per_topic(batch.iter().map(|record| &*record.topic));
        assert_eq!(
            received.into_iter().collect::<Vec<_>>(),
            [
                ("a".to_string(), 3),
                ("b".to_string(), 2),
                ("c".to_string(), 2)
            ]
        );
        assert!(per_topic(std::iter::empty()).is_empty());
    }

    #[test]
    fn the_last_offset_of_each_partition_of_each_topic() {
        let batch = batch(&[
            ("a", 0, 5),
            ("b", 0, 3),
            ("a", 1, 9),
            ("a", 0, 6),
            ("b", 0, 4),
            ("a", 0, 2),
        ]);
        let last: Vec<(String, i32, i64)> = last_offsets(&batch)
            .into_iter()
            .map(|(topic, partition, offset)| (topic.to_string(), partition, offset))
            .collect();
        assert_eq!(
            last,
            [
                ("a".to_string(), 0, 6),
                ("a".to_string(), 1, 9),
                ("b".to_string(), 0, 4)
            ]
        );
    }
}
