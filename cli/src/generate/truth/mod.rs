//! The ground truth of a generated world: what every stage should count and what every
//! analytics object should answer, computed here from what was published, by the same
//! definitions the ClickHouse views use (`deploy/clickhouse/migrations/0002_analytics.sql`,
//! and `0006_intelligence.sql`, whose rules for data that disagrees with itself apply to both).

pub mod cases;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use boomerang_schemas::{EventType, Order, PostPurchaseEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCounts {
    pub received: u64,
    pub sent: u64,
    pub deduplicated: u64,
    pub dead_lettered: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Units {
    pub sold: i64,
    pub returned: i64,
}

impl Units {
    pub fn rate(&self) -> f64 {
        if self.sold == 0 {
            0.0
        } else {
            self.returned as f64 / self.sold as f64
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub cases: u64,
    pub p50_seconds: f64,
    pub p90_seconds: f64,
    pub p99_seconds: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    pub seed: u64,
    /// The moment the world was built as of (microseconds since the epoch): `gen
    /// --as-of-micros` builds the same world again.
    #[serde(default)]
    pub as_of_micros: i64,
    /// Topic names and the ClickHouse database the run used.
    pub topics_prefix: String,
    pub ingest: StageCounts,
    pub enrich: StageCounts,
    /// Events enrich emits with `order_missing` (their order was never published).
    pub enrich_order_missing: u64,
    pub sink: StageCounts,
    pub return_rate_by_category: BTreeMap<String, Units>,
    pub return_rate_by_channel: BTreeMap<String, Units>,
    pub refund_time: Quantiles,
    /// Return or exchange cases, and those that became exchanges.
    pub exchange_cases: u64,
    pub exchanged_cases: u64,
    /// Warranty claims decided, and approved.
    pub warranty_decided: u64,
    pub warranty_approved: u64,
    /// Repeat purchase, money, operations, dispositions, risk flags, the refund SLA and data
    /// quality (`cases.rs`).
    #[serde(default)]
    pub intelligence: cases::Intelligence,
}

/// quantileExact: the value at position floor(level * n) of the sorted values.
pub fn quantile_exact(sorted: &[i64], level: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((level * sorted.len() as f64).floor() as usize).min(sorted.len() - 1);
    sorted[index] as f64 / 1e6
}

/// The analytics part of the truth, from the unique valid events that were published and the
/// orders that were published.
pub fn analytics(truth: &mut Truth, events: &[&PostPurchaseEvent], orders: &[&Order]) {
    let mut cases: BTreeMap<&str, Vec<&PostPurchaseEvent>> = BTreeMap::new();
    for event in events {
        cases.entry(event.case_id.as_str()).or_default().push(event);
    }
    let has = |events: &[&PostPurchaseEvent], types: &[EventType]| {
        events.iter().any(|event| types.contains(&event.event_type))
    };
    let first_at = |events: &[&PostPurchaseEvent], types: &[EventType]| {
        events
            .iter()
            .filter(|event| types.contains(&event.event_type))
            .map(|event| event.occurred_at.as_unix_micros())
            .min()
    };

    // Units sold, by the order's channel and the line's category.
    let mut lines: HashMap<(&str, &str), (&str, &str)> = HashMap::new();
    for order in orders {
        for line in &order.lines {
            let channel = order.channel.symbol();
            truth
                .return_rate_by_category
                .entry(line.category.clone())
                .or_default()
                .sold += i64::from(line.quantity);
            truth
                .return_rate_by_channel
                .entry(channel.to_string())
                .or_default()
                .sold += i64::from(line.quantity);
            lines.insert(
                (order.order_id.as_str(), line.order_line_id.as_str()),
                (line.category.as_str(), channel),
            );
        }
    }
    let mut refund_micros = Vec::new();
    for case in cases.values() {
        // Units returned: requested, not rejected, on a line that was sold (published).
        if has(case, &[EventType::ReturnRequested]) && !has(case, &[EventType::ReturnRejected]) {
            let requested = case
                .iter()
                .find(|event| event.event_type == EventType::ReturnRequested);
            if let Some(requested) = requested
                && let Some((category, channel)) = lines.get(&(
                    requested.order_id.as_str(),
                    requested.order_line_id.as_str(),
                ))
            {
                let quantity = i64::from(requested.quantity);
                if let Some(units) = truth.return_rate_by_category.get_mut(*category) {
                    units.returned += quantity;
                }
                if let Some(units) = truth.return_rate_by_channel.get_mut(*channel) {
                    units.returned += quantity;
                }
            }
        }
        // Refund time: not for a rejected case, nor when the refund came out before the
        // request (both in data quality instead).
        if let (Some(requested), Some(refunded)) = (
            first_at(case, &[EventType::ReturnRequested]),
            first_at(
                case,
                &[EventType::RefundIssued, EventType::StoreCreditIssued],
            ),
        ) && !has(case, &[EventType::ReturnRejected])
            && refunded >= requested
        {
            refund_micros.push(refunded - requested);
        }
        if has(
            case,
            &[EventType::ReturnRequested, EventType::ExchangeRequested],
        ) {
            truth.exchange_cases += 1;
            if has(case, &[EventType::ExchangeRequested])
                && !has(case, &[EventType::ExchangeCancelled])
            {
                truth.exchanged_cases += 1;
            }
        }
        if has(case, &[EventType::WarrantyFiled]) {
            let approved = has(case, &[EventType::WarrantyApproved]);
            if approved || has(case, &[EventType::WarrantyDenied]) {
                truth.warranty_decided += 1;
                truth.warranty_approved += u64::from(approved);
            }
        }
    }
    refund_micros.sort_unstable();
    truth.refund_time = Quantiles {
        cases: refund_micros.len() as u64,
        p50_seconds: quantile_exact(&refund_micros, 0.5),
        p90_seconds: quantile_exact(&refund_micros, 0.9),
        p99_seconds: quantile_exact(&refund_micros, 0.99),
    };
}

/// Distinct idempotency keys, to check the world itself has none twice.
pub fn distinct_keys(events: &[&PostPurchaseEvent]) -> usize {
    events
        .iter()
        .map(|event| event.idempotency_key.as_str())
        .collect::<BTreeSet<_>>()
        .len()
}
