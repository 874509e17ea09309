//! Ingest's step of the stage loop, one raw record at a time:
//! decode (`decode.rs`) → validate (`validate.rs`) → de-duplicate (`dedup.rs`) → publish
//! (`publish.rs`); anything that fails the first two is dead-lettered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::stage_loop::{InputRecord, Outcome, Partition, Processor, RetryableError};
use boomerang_schemas::TimestampMicros;
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts};

use crate::decode::{DecodeFailure, EventDecoder, WriterSchemaSource};
use crate::dedup::{DedupState, Verdict};
use crate::publish::validated_record;
use crate::restore::restore_partition;
use crate::validate::{Rules, validate};

pub const ENCODE_FAILED: &str = "encode_failed";
const EXPIRY_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub validated_topic: String,
    /// The registry id of the schema validated events are written with.
    pub validated_schema_id: u32,
    pub rules: Rules,
    pub dedup_window: Duration,
    /// The most idempotency keys kept, over all partitions this instance owns.
    pub dedup_max_keys: usize,
}

/// Ingest-specific metrics, beside the shared stage counters.
#[derive(Clone)]
pub struct IngestMetrics {
    pub dedup_keys: IntGaugeVec,
    pub dedup_evictions: IntCounter,
    /// Partitions whose de-duplication state is being read back from the validated topic.
    pub restoring_partitions: IntGauge,
}

impl IngestMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let metrics = Self {
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
        };
        registry.register(Box::new(metrics.restoring_partitions.clone()))?;
        registry.register(Box::new(metrics.dedup_keys.clone()))?;
        registry.register(Box::new(metrics.dedup_evictions.clone()))?;
        Ok(metrics)
    }
}

/// A partition's de-duplication state and the gauge that reports its size.
struct PartitionState {
    dedup: DedupState,
    keys_gauge: Option<IntGauge>,
}

impl PartitionState {
    fn report(&self) {
        if let Some(gauge) = &self.keys_gauge {
            gauge.set(self.dedup.len() as i64);
        }
    }
}

pub struct IngestProcessor<Source> {
    decoder: EventDecoder<Source>,
    settings: IngestSettings,
    /// `None` in unit tests and benchmarks: partitions start empty instead of restored.
    restore_from: Option<KafkaArgs>,
    dedup: HashMap<i32, PartitionState>,
    metrics: Option<IngestMetrics>,
    last_expiry: Instant,
}

impl<Source: WriterSchemaSource> IngestProcessor<Source> {
    pub fn new(
        source: Source,
        settings: IngestSettings,
        restore_from: Option<KafkaArgs>,
        metrics: Option<IngestMetrics>,
    ) -> Self {
        Self {
            decoder: EventDecoder::new(source),
            settings,
            restore_from,
            dedup: HashMap::new(),
            metrics,
            last_expiry: Instant::now(),
        }
    }

    fn max_keys_per_partition(&self, partitions: usize) -> usize {
        (self.settings.dedup_max_keys / partitions.max(1)).max(1)
    }

    fn expire_now_and_then(&mut self) {
        if self.last_expiry.elapsed() < EXPIRY_INTERVAL {
            return;
        }
        self.last_expiry = Instant::now();
        let now = TimestampMicros::now();
        for state in self.dedup.values_mut() {
            state.dedup.expire(now);
            state.report();
        }
    }
}

/// A partition's de-duplication state: restored from the validated topic, or empty when there
/// is no Kafka to restore from (unit tests, benchmarks).
async fn restored_state(
    restore_from: Option<KafkaArgs>,
    validated_topic: String,
    window: Duration,
    partition: i32,
    max_keys: usize,
    restoring: Option<IntGauge>,
) -> anyhow::Result<DedupState> {
    let Some(kafka) = restore_from else {
        return Ok(DedupState::new(window, max_keys));
    };
    /// Counts a restore in progress for as long as it lives, however it ends.
    struct InProgress(Option<IntGauge>);
    impl Drop for InProgress {
        fn drop(&mut self) {
            if let Some(gauge) = &self.0 {
                gauge.dec();
            }
        }
    }
    if let Some(gauge) = &restoring {
        gauge.inc();
    }
    let _in_progress = InProgress(restoring);
    let (state, stats) = tokio::task::spawn_blocking(move || {
        restore_partition(
            &kafka,
            &validated_topic,
            partition,
            window,
            max_keys,
            TimestampMicros::now(),
        )
    })
    .await??;
    tracing::info!(
        partition,
        records_read = stats.records_read,
        keys = stats.keys,
        elapsed_ms = stats.elapsed.as_millis() as u64,
        "restored de-duplication state"
    );
    Ok(state)
}

impl<Source: WriterSchemaSource> Processor for IngestProcessor<Source> {
    async fn assign(&mut self, partitions: &[Partition]) -> anyhow::Result<()> {
        let max_keys = self.max_keys_per_partition(self.dedup.len() + partitions.len());
        for (_topic, partition) in partitions {
            let state = restored_state(
                self.restore_from.clone(),
                self.settings.validated_topic.clone(),
                self.settings.dedup_window,
                *partition,
                max_keys,
                self.metrics
                    .as_ref()
                    .map(|metrics| metrics.restoring_partitions.clone()),
            )
            .await?;
            let keys_gauge = self.metrics.as_ref().map(|metrics| {
                metrics
                    .dedup_keys
                    .with_label_values(&[&partition.to_string()])
            });
            let state = PartitionState {
                dedup: state,
                keys_gauge,
            };
            state.report();
            self.dedup.insert(*partition, state);
        }
        Ok(())
    }

    fn revoke(&mut self, partitions: &[Partition]) {
        for (_topic, partition) in partitions {
            self.dedup.remove(partition);
            if let Some(metrics) = &self.metrics {
                let _ = metrics
                    .dedup_keys
                    .remove_label_values(&[&partition.to_string()]);
            }
        }
    }

    async fn process(&mut self, record: &InputRecord) -> Result<Outcome, RetryableError> {
        self.expire_now_and_then();
        let decoded = match self.decoder.decode(record.value.as_deref()).await {
            Ok(decoded) => decoded,
            Err(DecodeFailure::Rejected(rejection)) => return Ok(Outcome::DeadLetter(rejection)),
            Err(DecodeFailure::Retry(error)) => return Err(error),
        };
        if let Err(rejection) =
            validate(&decoded.value, TimestampMicros::now(), &self.settings.rules)
        {
            return Ok(Outcome::DeadLetter(
                rejection.with_schema_id(decoded.schema_id),
            ));
        }
        if !self.dedup.contains_key(&record.partition) {
            // The loop assigns partitions before it processes their records, so this does not
            // happen; if it ever did, restoring here keeps the guarantee instead of failing.
            tracing::warn!(
                partition = record.partition,
                "record of a partition without state; restoring it now"
            );
            let partition = (record.topic.clone(), record.partition);
            self.assign(std::slice::from_ref(&partition))
                .await
                .map_err(|source| RetryableError {
                    kind: "restore_failed",
                    source,
                })?;
        }
        let Some(state) = self.dedup.get_mut(&record.partition) else {
            unreachable!("assign inserted the partition's state");
        };
        let evicted_before = state.dedup.evicted_for_capacity();
        let verdict = state
            .dedup
            .check(&decoded.value.idempotency_key, decoded.value.occurred_at);
        if verdict == Verdict::Duplicate {
            return Ok(Outcome::Deduplicated);
        }
        state.report();
        if let Some(metrics) = &self.metrics {
            metrics
                .dedup_evictions
                .inc_by(state.dedup.evicted_for_capacity() - evicted_before);
        }
        let output = validated_record(
            &decoded.value,
            self.settings.validated_schema_id,
            &self.settings.validated_topic,
            record.partition,
            record.offset,
        )
        .map_err(|error| RetryableError {
            kind: ENCODE_FAILED,
            source: error.into(),
        })?;
        Ok(Outcome::Emit(vec![output]))
    }
}
