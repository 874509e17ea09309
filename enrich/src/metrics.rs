//! enrich's own metrics, beside the shared stage counters.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use boomerang_runtime::metrics::{Errors, Metrics};

use crate::join::{JoinOutcome, RiskFlag};

#[derive(Clone)]
pub struct EnrichMetrics {
    /// Records per reference table.
    pub reference_records: IntGaugeVec,
    /// Reference changes applied, by table and change (upsert, tombstone, rejected).
    pub reference_changes: IntCounterVec,
    /// 1 once the tables caught up with the reference topics' ends at start-up.
    pub reference_caught_up: IntGauge,
    /// Reference records still to read before the start-up catch-up is done.
    pub reference_catch_up_remaining: IntGauge,
    pub pending_events: IntGauge,
    pub pending_bytes: IntGauge,
    /// How long released events waited for their reference data.
    pub pending_wait: Histogram,
    pub join_outcomes: IntCounterVec,
    /// `join_outcomes`' counter of each outcome, in [`JoinOutcome::ALL`]'s order: resolved once,
    /// not by label per event.
    join_outcome_counters: Vec<IntCounter>,
    /// Reference table loads at start-up, by table and where they started (snapshot, topic).
    pub reference_restores: IntCounterVec,
    /// Events showing a one-event risk, by flag ([`RiskFlag`]).
    pub risk_flags: IntCounterVec,
    /// Events not emitted because their customer asked, after the event, to be forgotten.
    pub events_erased: IntCounter,
    /// The process's `boomerang_errors_total`, for the loaders' retries.
    pub errors: Errors,
}

impl EnrichMetrics {
    /// Counts one event whose join ended with `outcome`.
    pub fn count_join(&self, outcome: JoinOutcome) {
        let resolved = JoinOutcome::ALL
            .iter()
            .position(|known| *known == outcome)
            .and_then(|index| self.join_outcome_counters.get(index));
        match resolved {
            Some(counter) => counter.inc(),
            // Only for a metrics value built without `register`: counted by label instead.
            None => self
                .join_outcomes
                .with_label_values(&[outcome.as_str()])
                .inc(),
        }
    }

    /// Counts one event that shows `flag`.
    pub fn count_risk(&self, flag: RiskFlag) {
        self.risk_flags.with_label_values(&[flag.as_str()]).inc();
    }

    pub fn register(process: &Metrics) -> prometheus::Result<Self> {
        let registry = process.registry();
        let mut metrics = Self {
            reference_records: IntGaugeVec::new(
                Opts::new(
                    "boomerang_enrich_reference_records",
                    "Records held per reference table.",
                ),
                &["table"],
            )?,
            reference_changes: IntCounterVec::new(
                Opts::new(
                    "boomerang_enrich_reference_changes_total",
                    "Reference records applied, by table and change: upsert, tombstone, or rejected (undecodable; logged with its offset).",
                ),
                &["table", "change"],
            )?,
            reference_caught_up: IntGauge::new(
                "boomerang_enrich_reference_caught_up",
                "1 once the reference tables reached the reference topics' ends at start-up; events are consumed only then.",
            )?,
            reference_catch_up_remaining: IntGauge::new(
                "boomerang_enrich_reference_catch_up_remaining",
                "Reference records still to read before the start-up catch-up is done.",
            )?,
            pending_events: IntGauge::new(
                "boomerang_enrich_pending_events",
                "Events waiting for late reference data.",
            )?,
            pending_bytes: IntGauge::new(
                "boomerang_enrich_pending_bytes",
                "Bytes of the records of events waiting for late reference data.",
            )?,
            pending_wait: Histogram::with_opts(
                HistogramOpts::new(
                    "boomerang_enrich_pending_wait_seconds",
                    "How long events waited for late reference data before they were emitted.",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                ]),
            )?,
            join_outcomes: IntCounterVec::new(
                Opts::new(
                    "boomerang_enrich_join_outcomes_total",
                    "Events emitted, by how their join ended.",
                ),
                &["outcome"],
            )?,
            join_outcome_counters: Vec::new(),
            reference_restores: IntCounterVec::new(
                Opts::new(
                    "boomerang_enrich_reference_restores_total",
                    "Reference table loads at start-up, by table and where they started: a local snapshot (then only the topic's tail is read) or the topic alone.",
                ),
                &["table", "source"],
            )?,
            risk_flags: IntCounterVec::new(
                Opts::new(
                    "boomerang_enrich_risk_flags_total",
                    "Events showing a risk one event is enough to see, by flag: refund_above_line_cost (a refund or store credit above the units' price on the order line), requested_after_window (a return requested after the return window). ClickHouse's flagged_cases lists the cases.",
                ),
                &["flag"],
            )?,
            events_erased: IntCounter::new(
                "boomerang_enrich_events_erased_total",
                "Events not emitted (counted as sent, with no output) because their customer asked to be forgotten after the event happened: in flight or replayed when the erasure request came.",
            )?,
            errors: process.errors().clone(),
        };
        registry.register(Box::new(metrics.events_erased.clone()))?;
        registry.register(Box::new(metrics.reference_restores.clone()))?;
        registry.register(Box::new(metrics.reference_records.clone()))?;
        registry.register(Box::new(metrics.reference_changes.clone()))?;
        registry.register(Box::new(metrics.reference_caught_up.clone()))?;
        registry.register(Box::new(metrics.reference_catch_up_remaining.clone()))?;
        registry.register(Box::new(metrics.pending_events.clone()))?;
        registry.register(Box::new(metrics.pending_bytes.clone()))?;
        registry.register(Box::new(metrics.pending_wait.clone()))?;
        registry.register(Box::new(metrics.join_outcomes.clone()))?;
        registry.register(Box::new(metrics.risk_flags.clone()))?;
        for flag in RiskFlag::ALL {
            metrics.risk_flags.with_label_values(&[flag.as_str()]);
        }
        // Every outcome is exported from the start, so rates work before the first of a kind.
        metrics.join_outcome_counters = JoinOutcome::ALL
            .iter()
            .map(|outcome| metrics.join_outcomes.with_label_values(&[outcome.as_str()]))
            .collect();
        Ok(metrics)
    }
}
