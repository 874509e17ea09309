//! The sink's own metrics, beside the shared stage counters.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use boomerang_runtime::metrics::{Errors, Metrics};

use crate::refund_sla::{Refunded, SlaCounts};
use boomerang_clickhouse::analytics_refresh::RefreshMetrics;

#[derive(Clone)]
pub struct SinkMetrics {
    pub rows_inserted: IntCounterVec,
    pub insert_duration: HistogramVec,
    pub insert_rows: HistogramVec,
    pub insert_retries: IntCounterVec,
    pub rows_rejected: IntCounterVec,
    /// Records skipped because ClickHouse already had their rows (a replay after a restart).
    pub rows_already_stored: IntCounterVec,
    /// Events not written because their partition had written their idempotency key already
    /// (an upstream stage emitted them twice).
    pub duplicate_keys: IntCounter,
    /// Backfilled events not written because ClickHouse held their idempotency key already.
    pub history_already_stored: IntCounter,
    /// Return cases received and not refunded, credited or rejected yet (`refund_sla.rs`).
    pub refund_sla_open: IntGauge,
    /// Of those, the ones received longer ago than the target.
    pub refund_sla_past_target: IntGauge,
    pub refund_sla_target_seconds: IntGauge,
    /// Refunds of followed cases, by whether they met the target.
    pub refunds: IntCounterVec,
    /// The analytics stores' refresh (`analytics_refresh.rs`).
    pub refresh: RefreshMetrics,
    /// ClickHouse's `data_quality` and `risk_flags`, read every --analytics-gauges-secs.
    pub data_quality_cases: IntGaugeVec,
    pub risk_flagged_cases: IntGaugeVec,
    /// 1 while an insert is being retried.
    pub inserts_failing: IntGauge,
    /// Erasure passes applied, by pass (`first`, `settled`).
    pub erasure_passes: IntCounterVec,
    /// Rows an erasure anonymised, by table.
    pub erasure_rows: IntCounterVec,
    /// Erasure requests that could not be read or lacked a field (dead-lettered).
    pub erasure_requests_rejected: IntCounter,
    /// The process's `boomerang_errors_total`, for the insert retries.
    pub errors: Errors,
}

impl SinkMetrics {
    pub fn count_refund(&self, refunded: Refunded) {
        self.refunds.with_label_values(&[refunded.as_str()]).inc();
    }

    pub fn show_refund_sla(&self, counts: SlaCounts) {
        self.refund_sla_open
            .set(i64::try_from(counts.open).unwrap_or(i64::MAX));
        self.refund_sla_past_target
            .set(i64::try_from(counts.past_target).unwrap_or(i64::MAX));
    }

    pub fn register(process: &Metrics) -> prometheus::Result<Self> {
        let registry = process.registry();
        let metrics = Self {
            errors: process.errors().clone(),
            rows_inserted: IntCounterVec::new(
                Opts::new(
                    "boomerang_sink_rows_inserted_total",
                    "Rows ClickHouse acknowledged, by table.",
                ),
                &["table"],
            )?,
            insert_duration: HistogramVec::new(
                HistogramOpts::new(
                    "boomerang_sink_insert_duration_seconds",
                    "Duration of one successful insert, by table.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["table"],
            )?,
            insert_rows: HistogramVec::new(
                HistogramOpts::new(
                    "boomerang_sink_insert_rows",
                    "Rows per successful insert, by table.",
                )
                .buckets(vec![
                    1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 25_000.0, 50_000.0, 100_000.0,
                ]),
                &["table"],
            )?,
            insert_retries: IntCounterVec::new(
                Opts::new(
                    "boomerang_sink_insert_retries_total",
                    "Inserts retried, by table and kind of failure (connection, timeout, too_many_parts, memory_limit, server).",
                ),
                &["table", "kind"],
            )?,
            rows_rejected: IntCounterVec::new(
                Opts::new(
                    "boomerang_sink_rows_rejected_total",
                    "Rows ClickHouse refused for good (dead-lettered), by table.",
                ),
                &["table"],
            )?,
            rows_already_stored: IntCounterVec::new(
                Opts::new(
                    "boomerang_sink_rows_already_stored_total",
                    "Records skipped because ClickHouse already had their rows (replayed after a restart or rebalance), by table.",
                ),
                &["table"],
            )?,
            refund_sla_open: IntGauge::new(
                "boomerang_sink_refund_sla_open_cases",
                "Return cases whose goods were received and that are not refunded, credited or rejected yet, on this instance's enriched partitions (received within --refund-sla-horizon-days).",
            )?,
            refund_sla_past_target: IntGauge::new(
                "boomerang_sink_refund_sla_breached_open_cases",
                "Open return cases received longer ago than the refund SLA's target (--refund-sla-hours): late already, still waiting for their refund.",
            )?,
            refund_sla_target_seconds: IntGauge::new(
                "boomerang_sink_refund_sla_target_seconds",
                "The refund SLA's target: from receipt to refund or store credit.",
            )?,
            refunds: IntCounterVec::new(
                Opts::new(
                    "boomerang_sink_refunds_total",
                    "Refunds and store credits of received return cases, by whether they came within the refund SLA's target from receipt (sla: met, missed).",
                ),
                &["sla"],
            )?,
            refresh: RefreshMetrics::new()?,
            data_quality_cases: IntGaugeVec::new(
                Opts::new(
                    "boomerang_data_quality_cases",
                    "Cases ClickHouse's data_quality object lists, by kind: left out of a figure or in conflict (see the README's analytics rules). Read from ClickHouse every --analytics-gauges-secs; every sink instance shows the same.",
                ),
                &["kind"],
            )?,
            risk_flagged_cases: IntGaugeVec::new(
                Opts::new(
                    "boomerang_risk_flagged_cases",
                    "Return cases ClickHouse's flagged_cases lists for review, by flag, over all days. Read from ClickHouse every --analytics-gauges-secs; every sink instance shows the same.",
                ),
                &["flag"],
            )?,
            duplicate_keys: IntCounter::new(
                "boomerang_sink_duplicate_keys_total",
                "Events not written because ClickHouse already had an event with their idempotency key from the same partition (an upstream stage emitted them twice).",
            )?,
            history_already_stored: IntCounter::new(
                "boomerang_sink_history_already_stored_total",
                "Backfilled events not written because ClickHouse held their idempotency key already (counted as deduplicated).",
            )?,
            inserts_failing: IntGauge::new(
                "boomerang_sink_inserts_failing",
                "1 while an insert is being retried: ClickHouse is down or refusing.",
            )?,
            erasure_passes: IntCounterVec::new(
                Opts::new(
                    "boomerang_sink_erasure_passes_total",
                    "Passes of erasure requests over ClickHouse, by pass (first: when read; settled: after --erasure-settle-secs).",
                ),
                &["pass"],
            )?,
            erasure_rows: IntCounterVec::new(
                Opts::new(
                    "boomerang_sink_erasure_rows_total",
                    "Rows an erasure request anonymised, by table.",
                ),
                &["table"],
            )?,
            erasure_requests_rejected: IntCounter::new(
                "boomerang_sink_erasure_requests_rejected_total",
                "Erasure requests dead-lettered: unreadable, or without a request id, customer id or salt.",
            )?,
        };
        registry.register(Box::new(metrics.rows_inserted.clone()))?;
        registry.register(Box::new(metrics.insert_duration.clone()))?;
        registry.register(Box::new(metrics.insert_rows.clone()))?;
        registry.register(Box::new(metrics.insert_retries.clone()))?;
        registry.register(Box::new(metrics.rows_rejected.clone()))?;
        registry.register(Box::new(metrics.rows_already_stored.clone()))?;
        registry.register(Box::new(metrics.duplicate_keys.clone()))?;
        registry.register(Box::new(metrics.refund_sla_open.clone()))?;
        registry.register(Box::new(metrics.refund_sla_past_target.clone()))?;
        registry.register(Box::new(metrics.refund_sla_target_seconds.clone()))?;
        registry.register(Box::new(metrics.refunds.clone()))?;
        metrics.refresh.register(registry)?;
        registry.register(Box::new(metrics.data_quality_cases.clone()))?;
        registry.register(Box::new(metrics.risk_flagged_cases.clone()))?;
        for refunded in [Refunded::WithinTarget, Refunded::Late] {
            metrics.refunds.with_label_values(&[refunded.as_str()]);
        }
        registry.register(Box::new(metrics.history_already_stored.clone()))?;
        registry.register(Box::new(metrics.inserts_failing.clone()))?;
        registry.register(Box::new(metrics.erasure_passes.clone()))?;
        registry.register(Box::new(metrics.erasure_rows.clone()))?;
        registry.register(Box::new(metrics.erasure_requests_rejected.clone()))?;
        Ok(metrics)
    }

    pub fn count_erasure(&self, pass: crate::erase::Pass, erased: crate::erase::Erased) {
        self.erasure_passes
            .with_label_values(&[pass.as_str()])
            .inc();
        for (table, rows) in [
            ("post_purchase_events", erased.events),
            ("orders", erased.orders),
            ("customers", erased.customers),
        ] {
            self.erasure_rows.with_label_values(&[table]).inc_by(rows);
        }
    }
}
