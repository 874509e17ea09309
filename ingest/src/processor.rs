//! Ingest's step of the stage loop, one raw record at a time:
//! decode (`decode.rs`) → validate (`validate.rs`) → de-duplicate (`dedup.rs`) → publish
//! (`publish.rs`); anything that fails the first two is dead-lettered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boomerang_runtime::dead_letter::Rejection;
use boomerang_runtime::error_kind::{DeadLetterKind, ErrorKind};
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::metrics::Metrics;
use boomerang_runtime::stage_loop::{
    HISTORY_HEADER, InputRecord, Outcome, Partition, Processor, RetryableError,
};
use boomerang_schemas::{EventDatum, EventRef, TimestampMicros};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::decode::{DecodeFailure, EventDecoder, WriterSchemaSource};
use crate::dedup::{DedupState, Verdict};
use crate::publish::{RawSource, ValidatedBody, ValidatedHeaders, validated_record};
use crate::restore::{History, RestoreStats};
use crate::snapshot::{Job, Marks, ReplayFrom, SnapshotWriterThread, clock_slack_ms};
use crate::validate::{Rules, validate};

const EXPIRY_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub validated_topic: Arc<str>,
    /// The registry id of the schema validated events are written with.
    pub validated_schema_id: u32,
    pub rules: Rules,
    pub dedup_window: Duration,
    /// The most idempotency keys kept, over all partitions this instance owns.
    pub dedup_max_keys: usize,
    /// Which headers a validated record carries.
    pub headers: ValidatedHeaders,
}

/// Ingest-specific metrics, beside the shared stage counters.
#[derive(Clone)]
pub struct IngestMetrics {
    pub dedup_keys: IntGaugeVec,
    pub dedup_evictions: IntCounter,
    /// Partitions whose de-duplication state is being read back from the validated topic.
    pub restoring_partitions: IntGauge,
    /// Restores by where they started: a local `snapshot`, or the `topic` alone.
    pub restores: IntCounterVec,
    /// Validated records read back by restores.
    pub restored_records: IntCounter,
    /// Snapshots `written` and `failed`.
    pub snapshots: IntCounterVec,
    /// Backfilled events passed, by where they are de-duplicated: `ingest` (inside the live
    /// window, against the keys in memory) or `sink` (older, against ClickHouse).
    pub history_events: IntCounterVec,
}

impl IngestMetrics {
    pub fn register(metrics: &Metrics) -> prometheus::Result<Self> {
        let registry = metrics.registry();
        let ingest = Self {
            dedup_keys: IntGaugeVec::new(
                Opts::new(
                    "boomerang_dedup_keys",
                    "Idempotency keys remembered, by input partition.",
                ),
                &["partition"],
            )?,
            dedup_evictions: IntCounter::new(
                "boomerang_dedup_evictions_total",
                "Keys forgotten before their window ended because the state was full; raise --dedup-max-keys if this grows.",
            )?,
            restoring_partitions: IntGauge::new(
                "boomerang_dedup_restoring_partitions",
                "Partitions whose de-duplication state is being read back from the validated topic.",
            )?,
            restores: IntCounterVec::new(
                Opts::new(
                    "boomerang_dedup_restores_total",
                    "Restores of a partition's de-duplication state, by where they started: a local snapshot or the topic alone.",
                ),
                &["source"],
            )?,
            restored_records: IntCounter::new(
                "boomerang_dedup_restored_records_total",
                "Validated records read back while restoring de-duplication state.",
            )?,
            snapshots: IntCounterVec::new(
                Opts::new(
                    "boomerang_dedup_snapshots_total",
                    "De-duplication snapshots written to --state-dir, by outcome (written, failed).",
                ),
                &["outcome"],
            )?,
            history_events: IntCounterVec::new(
                Opts::new(
                    "boomerang_ingest_history_events_total",
                    "Backfilled events passed, by where they are de-duplicated: ingest (inside the live window) or the sink (older, against ClickHouse).",
                ),
                &["deduplicated_by"],
            )?,
        };
        registry.register(Box::new(ingest.history_events.clone()))?;
        registry.register(Box::new(ingest.restores.clone()))?;
        registry.register(Box::new(ingest.restored_records.clone()))?;
        registry.register(Box::new(ingest.snapshots.clone()))?;
        registry.register(Box::new(ingest.restoring_partitions.clone()))?;
        registry.register(Box::new(ingest.dedup_keys.clone()))?;
        registry.register(Box::new(ingest.dedup_evictions.clone()))?;
        Ok(ingest)
    }
}

/// A partition's de-duplication state and the gauge that reports its size.
struct PartitionState {
    dedup: DedupState,
    keys_gauge: IntGauge,
    /// Which of its keys are durable, for snapshots.
    marks: Marks,
    last_snapshot: Instant,
}

impl PartitionState {
    fn report(&self) {
        self.keys_gauge.set(self.dedup.len() as i64);
    }
}

pub struct IngestProcessor<Source> {
    decoder: EventDecoder<Source>,
    settings: IngestSettings,
    /// The rules for backfilled events: the live ones without the event-age limit.
    history_rules: Rules,
    /// Where a newly assigned partition's state is read back from.
    history: Arc<dyn History>,
    /// By partition. A few partitions, looked up twice per record: a B-tree finds one faster
    /// than SipHash hashes its number.
    dedup: BTreeMap<i32, PartitionState>,
    metrics: IngestMetrics,
    /// When expired keys were last dropped, by the clock each record is validated against.
    last_expiry: TimestampMicros,
    /// With `--state-dir`: where snapshots are read from, and their writer.
    snapshots: Option<(std::path::PathBuf, SnapshotWriterThread)>,
    snapshot_interval: Duration,
}

impl<Source: WriterSchemaSource> IngestProcessor<Source> {
    pub fn new(
        source: Source,
        settings: IngestSettings,
        history: impl History,
        metrics: IngestMetrics,
    ) -> Self {
        let history_rules = Rules {
            max_event_age: Duration::MAX,
            ..settings.rules.clone()
        };
        Self {
            decoder: EventDecoder::new(source),
            history_rules,
            settings,
            history: Arc::new(history),
            dedup: BTreeMap::new(),
            metrics,
            last_expiry: TimestampMicros::now(),
            snapshots: None,
            snapshot_interval: Duration::from_secs(30),
        }
    }

    /// Keeps snapshots of the de-duplication state in `dir` and restores from them; `kafka`
    /// says where in the validated topic a snapshot's restore must read on from.
    pub fn with_snapshots(
        mut self,
        kafka: KafkaArgs,
        dir: std::path::PathBuf,
        interval: Duration,
    ) -> std::io::Result<Self> {
        let writer = SnapshotWriterThread::start(
            dir.clone(),
            kafka,
            self.settings.validated_topic.to_string(),
            self.settings.dedup_window,
            self.metrics.snapshots.clone(),
        )?;
        self.snapshots = Some((dir, writer));
        self.snapshot_interval = interval;
        Ok(self)
    }

    /// Snapshots `partition`'s keys remembered before `remembered` (all of them: `None`).
    fn snapshot(&self, partition: i32, remembered: Option<u64>, replay_from: ReplayFrom) {
        let (Some((_, writer)), Some(state)) = (&self.snapshots, self.dedup.get(&partition)) else {
            return;
        };
        let remembered = remembered.unwrap_or_else(|| state.dedup.remembered_so_far());
        writer.submit(Job {
            partition,
            entries: state.dedup.remembered_before(remembered),
            replay_from,
        });
    }

    /// Snapshots the durable keys of the partitions acknowledged since their last snapshot,
    /// if their last one is older than `interval`.
    fn snapshot_durable(&mut self, interval: Duration) {
        let mut due = Vec::new();
        for (partition, state) in &mut self.dedup {
            if state.last_snapshot.elapsed() < interval {
                continue;
            }
            if let Some(mark) = state.marks.take_durable() {
                state.last_snapshot = Instant::now();
                due.push((*partition, mark));
            }
        }
        for (partition, mark) in due {
            let since_ms = mark.at_ms - clock_slack_ms();
            self.snapshot(
                partition,
                Some(mark.remembered),
                ReplayFrom::WrittenSince(since_ms),
            );
        }
    }

    fn max_keys_per_partition(&self, partitions: usize) -> usize {
        (self.settings.dedup_max_keys / partitions.max(1)).max(1)
    }

    /// Drops expired keys every [`EXPIRY_INTERVAL`]; `now` is the record's validation clock,
    /// so no second clock is read per record.
    fn expire_now_and_then(&mut self, now: TimestampMicros) {
        let interval = i64::try_from(EXPIRY_INTERVAL.as_micros()).unwrap_or(i64::MAX);
        let since = now
            .as_unix_micros()
            .saturating_sub(self.last_expiry.as_unix_micros());
        // A clock stepped back (since < 0) also expires, so a step never stops expiry.
        if (0..interval).contains(&since) {
            return;
        }
        self.last_expiry = now;
        for state in self.dedup.values_mut() {
            state.dedup.expire(now);
            state.report();
        }
    }
}

/// A partition's de-duplication state, read back from `history`, with how it was.
async fn restored_state(
    history: Arc<dyn History>,
    window: Duration,
    partition: i32,
    max_keys: usize,
    metrics: IngestMetrics,
    snapshots: Option<std::path::PathBuf>,
) -> anyhow::Result<(DedupState, RestoreStats)> {
    /// Counts a restore in progress for as long as it lives, however it ends.
    struct InProgress(IntGauge);
    impl Drop for InProgress {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    metrics.restoring_partitions.inc();
    let _in_progress = InProgress(metrics.restoring_partitions.clone());
    let (state, stats) = tokio::task::spawn_blocking(move || {
        history.restore(
            partition,
            window,
            max_keys,
            TimestampMicros::now(),
            snapshots.as_deref(),
        )
    })
    .await??;
    tracing::info!(
        partition,
        records_read = stats.records_read,
        keys = stats.keys,
        elapsed_ms = stats.elapsed.as_millis() as u64,
        from_snapshot = stats.from_snapshot,
        "restored de-duplication state"
    );
    let source = if stats.from_snapshot {
        "snapshot"
    } else {
        "topic"
    };
    metrics.restores.with_label_values(&[source]).inc();
    metrics.restored_records.inc_by(stats.records_read);
    Ok((state, stats))
}

impl<Source: WriterSchemaSource> Processor for IngestProcessor<Source> {
    async fn assign(&mut self, partitions: &[Partition]) -> anyhow::Result<()> {
        let max_keys = self.max_keys_per_partition(self.dedup.len() + partitions.len());
        // Concurrently: on a slow broker each restore waits mostly for answers.
        let restores = partitions.iter().map(|(_topic, partition)| {
            restored_state(
                self.history.clone(),
                self.settings.dedup_window,
                *partition,
                max_keys,
                self.metrics.clone(),
                self.snapshots.as_ref().map(|(dir, _)| dir.clone()),
            )
        });
        let restored = futures::future::try_join_all(restores).await?;
        for ((_topic, partition), (state, stats)) in partitions.iter().zip(restored) {
            let keys_gauge = self
                .metrics
                .dedup_keys
                .with_label_values(&[&partition.to_string()]);
            let state = PartitionState {
                dedup: state,
                keys_gauge,
                marks: Marks::default(),
                last_snapshot: Instant::now(),
            };
            state.report();
            self.dedup.insert(*partition, state);
            // The state is exactly what the topic held up to `restored_upto`: a snapshot of
            // it spares the next restore what was just read.
            if !stats.from_snapshot || stats.records_read > 0 {
                self.snapshot(*partition, None, ReplayFrom::Offset(stats.restored_upto));
            }
        }
        Ok(())
    }

    fn revoke(&mut self, partitions: &[Partition]) {
        for (_topic, partition) in partitions {
            self.dedup.remove(partition);
            let _ = self
                .metrics
                .dedup_keys
                .remove_label_values(&[&partition.to_string()]);
        }
    }

    fn acknowledged(&mut self, positions: &[(Partition, i64)]) {
        if self.snapshots.is_none() {
            return;
        }
        for ((_topic, partition), next_offset) in positions {
            if let Some(state) = self.dedup.get_mut(partition) {
                state.marks.acknowledged(*next_offset);
            }
        }
        self.snapshot_durable(self.snapshot_interval);
    }

    /// A stop: whatever is durable now is snapshotted, so that a restart reads little.
    fn drained(&mut self) {
        self.snapshot_durable(Duration::ZERO);
    }

    async fn process(&mut self, record: &InputRecord) -> Result<Outcome, RetryableError> {
        let now = TimestampMicros::now();
        self.expire_now_and_then(now);
        // A backfilled event: history is old by nature, and only what lies inside the live
        // window is de-duplicated here (the rest, against ClickHouse, by the sink).
        let history = record.headers.get(HISTORY_HEADER);
        let rules = match history {
            Some(_) => &self.history_rules,
            None => &self.settings.rules,
        };
        // The common case, in place: an event written with the current schema (the decoder
        // has met its id before) is read without allocating, and its datum is passed on as it
        // came. Anything else goes through the decoder, which resolves an earlier version or
        // refuses with the reason: a first schema id, bytes that do not read, and more
        // attribute entries than allowed (only the decoded map counts a repeated key once).
        let in_place = self
            .decoder
            .current_datum(record.value())
            .and_then(|(schema_id, datum)| {
                let read = EventDatum::read(datum).ok()?;
                (read.attribute_entries <= rules.max_attributes).then_some((schema_id, datum, read))
            });
        let decoded;
        let (schema_id, event, attributes, body) = match in_place {
            Some((schema_id, datum, read)) => (
                schema_id,
                read.event,
                read.attribute_entries,
                ValidatedBody::Datum(datum),
            ),
            None => {
                decoded = match self.decoder.decode(record.value()).await {
                    Ok(decoded) => decoded,
                    Err(DecodeFailure::Rejected(rejection)) => {
                        return Ok(Outcome::DeadLetter(rejection));
                    }
                    Err(DecodeFailure::Retry(error)) => return Err(error),
                };
                // Of the current schema once decoded: its datum is passed on as it is.
                let body = match self.decoder.current_datum(record.value()) {
                    Some((_schema_id, datum)) => ValidatedBody::Datum(datum),
                    None => ValidatedBody::Encode(&decoded.value),
                };
                (
                    decoded.schema_id,
                    EventRef::of(&decoded.value),
                    decoded.value.attributes.len(),
                    body,
                )
            }
        };
        if let Err(rejection) = validate(&event, attributes, now, rules) {
            return Ok(Outcome::DeadLetter(rejection.with_schema_id(schema_id)));
        }
        if !self.dedup.contains_key(&record.partition) {
            // The loop assigns partitions before it processes their records, so this does not
            // happen; if it ever did, restoring here keeps the guarantee instead of failing.
            tracing::warn!(
                partition = record.partition,
                "record of a partition without state; restoring it now"
            );
            let partition = record.partition();
            self.assign(std::slice::from_ref(&partition))
                .await
                .map_err(|source| RetryableError {
                    kind: ErrorKind::RestoreFailed,
                    source,
                })?;
        }
        let Some(state) = self.dedup.get_mut(&record.partition) else {
            unreachable!("assign inserted the partition's state");
        };
        if self.snapshots.is_some() {
            let dedup = &state.dedup;
            state.marks.note(record.offset, now.as_unix_millis(), || {
                dedup.remembered_so_far()
            });
        }
        let in_live_window = event.occurred_at >= now.saturating_sub(self.settings.dedup_window);
        // Live traffic is checked as it always was; only history older than the window is
        // left to the sink, so that it is never remembered here.
        if history.is_none() || in_live_window {
            let evicted_before = state.dedup.evicted_for_capacity();
            let verdict = state.dedup.check(event.idempotency_key, event.occurred_at);
            if verdict == Verdict::Duplicate {
                return Ok(Outcome::Deduplicated);
            }
            state.report();
            self.metrics
                .dedup_evictions
                .inc_by(state.dedup.evicted_for_capacity() - evicted_before);
        }
        if history.is_some() {
            let by = if in_live_window { "ingest" } else { "sink" };
            self.metrics.history_events.with_label_values(&[by]).inc();
        }
        // An event that decoded and passed validation encodes; should one not, it is
        // dead-lettered like any record this stage cannot pass, not retried for ever.
        Ok(
            match validated_record(
                &event,
                body,
                self.settings.validated_schema_id,
                &self.settings.validated_topic,
                RawSource {
                    partition: record.partition,
                    offset: record.offset,
                    history,
                },
                self.settings.headers,
            ) {
                Ok(output) => Outcome::emit(output),
                Err(error) => Outcome::DeadLetter(
                    Rejection::new(
                        DeadLetterKind::EncodeFailed,
                        boomerang_runtime::config::error_chain(&error),
                    )
                    .with_schema_id(schema_id),
                ),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use apache_avro::Schema;
    use boomerang_runtime::metrics::Metrics;
    use boomerang_runtime::registry::LookupError;
    use boomerang_runtime::wire;
    use boomerang_schemas::{PostPurchaseEvent, SchemaKind, codec};
    use boomerang_testkit::samples::event;

    use super::*;
    use crate::restore::NoHistory;

    /// Id 1: the event schema's first version; id 2: the current one.
    struct TwoVersions;

    impl WriterSchemaSource for TwoVersions {
        async fn writer_schema(&mut self, id: u32) -> Result<&'static Schema, LookupError> {
            match id {
                1 => Ok(Box::leak(Box::new(
                    Schema::parse_str(SchemaKind::PostPurchaseEvent.history()[0]).expect("v1"),
                ))),
                2 => Ok(SchemaKind::PostPurchaseEvent.schema()),
                _ => Err(LookupError::UnknownId(id)),
            }
        }
    }

    /// A processor validating by `rules` that owns partition 0 of "raw" and publishes with
    /// the validated subject's id 9.
    async fn assigned(rules: Rules) -> IngestProcessor<TwoVersions> {
        let mut processor = IngestProcessor::new(
            TwoVersions,
            IngestSettings {
                validated_topic: Arc::from("validated"),
                validated_schema_id: 9,
                rules,
                dedup_window: Duration::from_secs(3600),
                dedup_max_keys: 1000,
                headers: ValidatedHeaders::default(),
            },
            NoHistory,
            IngestMetrics::register(&Metrics::for_tests()).expect("metrics"),
        );
        processor
            .assign(&[(Arc::from("raw"), 0)])
            .await
            .expect("assign");
        processor
    }

    /// The validated datum of a raw record of `value`.
    async fn validated(processor: &mut IngestProcessor<TwoVersions>, value: &[u8]) -> Vec<u8> {
        let record = InputRecord::new(Arc::from("raw"), 0, 1, None, Some(value));
        let Outcome::Emit(outputs) = processor.process(&record).await.expect("processed") else {
            panic!("not passed");
        };
        let value = outputs[0].value.clone().expect("a value");
        let (schema_id, datum) = wire::parse(&value).expect("framed");
        assert_eq!(schema_id, 9, "framed with the validated subject's id");
        datum.to_vec()
    }

    /// An event of the current schema keeps its producer's bytes, even where they are not the
    /// ones this codec would write (a map in two blocks); one of an earlier version is encoded
    /// in the current one.
    #[tokio::test]
    async fn a_current_event_keeps_its_bytes_and_an_earlier_one_is_encoded() {
        let mut processor = assigned(Rules::default()).await;

        let mut current = event();
        current.idempotency_key = "k-current".into();
        current.attributes = BTreeMap::new();
        let mut datum = codec::encode(&current).expect("encode");
        assert_eq!(datum.pop(), Some(0), "an empty map is its end marker");
        datum.extend([2, 2, b'a', 2, b'1', 2, 2, b'b', 2, b'2', 0]); // two blocks of one
        current.attributes = BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
        assert_ne!(datum, codec::encode(&current).expect("encode"));
        let passed = validated(&mut processor, &wire::frame(2, &datum)).await;
        assert_eq!(passed, datum);
        assert_eq!(
            codec::decode::<PostPurchaseEvent>(&passed).expect("decodes"),
            current
        );

        let mut earlier = event();
        earlier.idempotency_key = "k-earlier".into();
        earlier.disposition = None;
        earlier.attributes = BTreeMap::new();
        let v1 = TwoVersions.writer_schema(1).await.expect("v1");
        let datum = codec::encode_for_writer_schema(&earlier, v1).expect("v1 datum");
        let passed = validated(&mut processor, &wire::frame(1, &datum)).await;
        assert_eq!(passed, codec::encode(&earlier).expect("encode"));
    }

    /// Read in place, an attributes map counts the entries it was written with; decoded, a
    /// key written twice is kept once. The limit applies to the decoded map, as it always did:
    /// over the limit as written, ingest decodes and counts again before it refuses.
    #[tokio::test]
    async fn the_attribute_limit_counts_distinct_keys_on_both_paths() {
        let mut processor = assigned(Rules {
            max_attributes: 1,
            ..Rules::default()
        })
        .await;
        let framed = |key: &str, entries: &[u8]| {
            let mut current = event();
            current.idempotency_key = key.into();
            current.attributes = BTreeMap::new();
            let mut datum = codec::encode(&current).expect("encode");
            assert_eq!(datum.pop(), Some(0), "an empty map is its end marker");
            datum.extend_from_slice(entries);
            (datum.clone(), wire::frame(2, &datum))
        };
        // The first record of schema id 2 is decoded; the ones after it are read in place.
        let (datum, value) = framed("k-first", &[0]);
        assert_eq!(validated(&mut processor, &value).await, datum);
        assert!(processor.decoder.current_datum(Some(&value)).is_some());

        // Key "a" twice in one block of two: two entries as written, one decoded.
        let (datum, value) = framed("k-repeated", &[4, 2, b'a', 2, b'1', 2, b'a', 2, b'2', 0]);
        assert_eq!(validated(&mut processor, &value).await, datum);

        // Keys "a" and "b": two distinct keys, one more than allowed.
        let (_, value) = framed("k-two", &[4, 2, b'a', 2, b'1', 2, b'b', 2, b'2', 0]);
        let record = InputRecord::new(Arc::from("raw"), 0, 3, None, Some(&value));
        let Outcome::DeadLetter(rejection) = processor.process(&record).await.expect("processed")
        else {
            panic!("two distinct attributes passed a limit of one");
        };
        assert_eq!(rejection.error_kind, DeadLetterKind::TooManyAttributes);
        assert!(
            rejection.message.starts_with("attributes has 2 entries"),
            "{}",
            rejection.message
        );
    }
}
