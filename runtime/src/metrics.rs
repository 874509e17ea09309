//! The process's Prometheus registry. Every metric carries a constant `stage` label, so one
//! query covers every instance of a stage; other labels stay low-cardinality (`topic`,
//! `partition`, `error_kind`), never an id or a raw error message.

use std::collections::HashMap;

use crate::error_kind::ErrorKind;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    errors: Errors,
}

/// `boomerang_errors_total{error_kind}`: failures that are not a record's fault, each attempt
/// that failed counted once. Registered with the process's registry, before any stage work, so
/// that start-up waits count too.
#[derive(Clone)]
pub struct Errors(IntCounterVec);

impl Errors {
    fn new() -> prometheus::Result<Self> {
        IntCounterVec::new(
            Opts::new(
                "boomerang_errors_total",
                "Failures that are not a record's fault (broker, registry, ClickHouse, commit).",
            ),
            &["error_kind"],
        )
        .map(Self)
    }

    pub fn count(&self, kind: ErrorKind) {
        self.0.with_label_values(&[kind.as_str()]).inc();
    }

    /// How many failures of `kind` were counted (tests, and what a stage reports of itself).
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0.with_label_values(&[kind.as_str()]).get()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up metrics")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// A registry whose metrics all carry `stage`, with `boomerang_build_info` and the
    /// standard `process_*` metrics (CPU, resident memory, open file descriptors).
    pub fn for_stage(stage: &str) -> Result<Self, MetricsError> {
        let labels = HashMap::from([("stage".to_string(), stage.to_string())]);
        let registry = Registry::new_custom(None, Some(labels))?;
        let build_info = IntGauge::with_opts(
            Opts::new(
                "boomerang_build_info",
                "Always 1; the labels say which build is running.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build_info.set(1);
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let errors = Errors::new()?;
        registry.register(Box::new(errors.0.clone()))?;
        Ok(Self { registry, errors })
    }

    /// A registry for unit tests and benchmarks: the stage label `test`, nothing exported.
    pub fn for_tests() -> Self {
        // Only fails on a metric registered twice, which a new registry cannot hold.
        Self::for_stage("test").expect("a new registry accepts every metric once")
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn errors(&self) -> &Errors {
        &self.errors
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        // The text encoder writes UTF-8 only.
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

/// The counters every stage keeps, named so that conservation is one query:
/// `received = sent + deduplicated + dead_lettered`, per stage.
#[derive(Clone)]
pub struct StageMetrics {
    /// Records consumed, by source topic.
    pub received_events: IntCounterVec,
    /// Events delivered downstream (acknowledged), by destination topic.
    pub sent_events: IntCounterVec,
    /// Events intentionally dropped as duplicates of one already passed.
    pub deduplicated_events: IntCounter,
    /// Records sent to the dead-letter topic, by `error_kind`.
    pub dead_lettered_events: IntCounterVec,
    /// Failures that are not a record's fault (broker, registry), by `error_kind`: the
    /// process's one counter ([`Metrics::errors`]).
    pub errors: Errors,
    pub batch_duration: Histogram,
    /// Consumer lag per partition (librdkafka's view, refreshed with its statistics).
    pub consumer_lag: IntGaugeVec,
    /// Event time of the last event processed, UTC seconds since the epoch.
    pub last_event_timestamp: Gauge,
    /// Partitions this instance owns now. Summed over a stage's instances it must equal the
    /// input topics' partition count: less means a partition nobody consumes.
    pub owned_partitions: IntGauge,
    /// Partitions given to (`assigned`) or taken from (`revoked`) this instance by rebalances.
    pub partition_changes: IntCounterVec,
    /// Partitions found reading below the oldest retained record, by topic.
    pub retention_gaps: IntCounterVec,
    /// Records retention deleted before this stage's group read them, by topic.
    pub records_lost_to_retention: IntCounterVec,
}

impl StageMetrics {
    pub fn register(metrics: &Metrics) -> Result<Self, MetricsError> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let stage_metrics = Self {
            received_events: counter(
                "boomerang_received_events_total",
                "Records consumed.",
                &["topic"],
            )?,
            sent_events: counter(
                "boomerang_sent_events_total",
                "Events delivered downstream and acknowledged.",
                &["topic"],
            )?,
            deduplicated_events: IntCounter::new(
                "boomerang_deduplicated_events_total",
                "Events dropped on purpose as duplicates of one already passed.",
            )?,
            dead_lettered_events: counter(
                "boomerang_dead_lettered_events_total",
                "Records sent to the dead-letter topic.",
                &["error_kind"],
            )?,
            errors: metrics.errors().clone(),
            batch_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "boomerang_batch_duration_seconds",
                    "Time to process a batch and have its outputs acknowledged.",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "boomerang_consumer_lag",
                    "Records behind the high watermark.",
                ),
                &["topic", "partition"],
            )?,
            last_event_timestamp: Gauge::new(
                "boomerang_last_event_timestamp_seconds",
                "Event time of the last event processed, UTC seconds since the epoch.",
            )?,
            owned_partitions: IntGauge::new(
                "boomerang_owned_partitions",
                "Input partitions this instance owns now.",
            )?,
            partition_changes: counter(
                "boomerang_partition_changes_total",
                "Partitions assigned to or revoked from this instance by rebalances.",
                &["change"],
            )?,
            retention_gaps: counter(
                "boomerang_retention_gaps_total",
                "Times a partition's next offset was older than the oldest retained record.",
                &["topic"],
            )?,
            records_lost_to_retention: counter(
                "boomerang_records_lost_to_retention_total",
                "Records deleted by retention before this stage's group read them.",
                &["topic"],
            )?,
        };
        let registry = metrics.registry();
        registry.register(Box::new(stage_metrics.received_events.clone()))?;
        registry.register(Box::new(stage_metrics.sent_events.clone()))?;
        registry.register(Box::new(stage_metrics.deduplicated_events.clone()))?;
        registry.register(Box::new(stage_metrics.dead_lettered_events.clone()))?;
        registry.register(Box::new(stage_metrics.batch_duration.clone()))?;
        registry.register(Box::new(stage_metrics.consumer_lag.clone()))?;
        registry.register(Box::new(stage_metrics.last_event_timestamp.clone()))?;
        registry.register(Box::new(stage_metrics.owned_partitions.clone()))?;
        registry.register(Box::new(stage_metrics.partition_changes.clone()))?;
        registry.register(Box::new(stage_metrics.retention_gaps.clone()))?;
        registry.register(Box::new(stage_metrics.records_lost_to_retention.clone()))?;
        Ok(stage_metrics)
    }
}

/// The sum of `metric` over its series in a Prometheus text exposition, counting only the
/// series whose labels contain every `label_filters` entry (`name="value"`): what the CLI's
/// report and the tests read from a stage's `/metrics`.
pub fn exposition_sum(exposition: &str, metric: &str, label_filters: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            if name != metric || !label_filters.iter().all(|filter| series.contains(filter)) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_carries_the_stage_label() {
        let metrics = Metrics::for_stage("ingest").expect("metrics");
        let text = metrics.render().expect("render");
        let build_info = text
            .lines()
            .find(|line| line.starts_with("boomerang_build_info{"))
            .unwrap_or_else(|| panic!("no build info in {text}"));
        assert!(build_info.contains(r#"stage="ingest""#), "{build_info}");
        assert!(build_info.contains("version="), "{build_info}");
        assert!(
            text.lines()
                .filter(|line| line.starts_with("process_"))
                .all(|line| line.contains(r#"stage="ingest""#)),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
