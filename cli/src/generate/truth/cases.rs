//! The truth of the intelligence objects (`deploy/clickhouse/migrations/0006_intelligence.sql`):
//! one fact per case, as `case_facts` defines it, and on those facts repeat purchase, the money
//! of returns, operations times, dispositions, risk flags, the refund SLA and data quality.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use boomerang_schemas::{EventType, Order, OrderLine, PostPurchaseEvent};
use serde::{Deserialize, Serialize};

use super::quantile_exact;

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;

/// The thresholds `analytics_settings` holds by default, and enrich's return window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    pub return_window_days: i64,
    pub refund_sla_hours: i64,
    pub velocity_7d_cases: usize,
    pub velocity_90d_cases: usize,
    pub serial_returner_rate_percent: i64,
    pub serial_returner_min_units: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            return_window_days: 30,
            refund_sla_hours: 72,
            velocity_7d_cases: 3,
            velocity_90d_cases: 6,
            serial_returner_rate_percent: 50,
            serial_returner_min_units: 4,
        }
    }
}

/// Customers of one cohort (an outcome, or `no_case`), and who of them bought again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repeat {
    pub customers: u64,
    /// (eligible, repeated) within 30, 90 and 365 days.
    pub windows: [(u64, u64); 3],
}

pub const REPEAT_DAYS: [i64; 3] = [30, 90, 365];

/// The money of returns in one currency, in its minor unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnValue {
    pub refunded_minor: i64,
    pub store_credit_minor: i64,
    pub exchange_value_minor: i64,
}

/// Steps of the return cases (not rejected) of one method: how many, and the median, of each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Steps {
    pub cases: u64,
    pub received: u64,
    pub receipt_p50_seconds: f64,
    pub inspected: u64,
    pub inspection_p50_seconds: f64,
    pub refunded: u64,
    pub refund_p50_seconds: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sla {
    pub target_hours: i64,
    pub received: u64,
    pub refunded_within: u64,
    pub refunded_late: u64,
    /// When each case received and not refunded was received (microseconds): which of them
    /// are past the target depends on when the report asks.
    pub open_received_at: Vec<i64>,
}

impl Sla {
    /// Open cases past the target at `now_micros`.
    pub fn open_past_target(&self, now_micros: i64) -> u64 {
        let target = self.target_hours * HOUR;
        self.open_received_at
            .iter()
            .filter(|received| now_micros - **received > target)
            .count() as u64
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Intelligence {
    pub thresholds: Thresholds,
    /// By outcome of the customer's first resolved case, and `no_case`.
    pub repeat_purchase: BTreeMap<String, Repeat>,
    /// By currency.
    pub return_value: BTreeMap<String, ReturnValue>,
    /// By return method.
    pub operations: BTreeMap<String, Steps>,
    /// Inspected return cases by disposition.
    pub dispositions: BTreeMap<String, u64>,
    /// Cases by risk flag.
    pub risk_flags: BTreeMap<String, u64>,
    pub refund_sla: Sla,
    /// Cases by data-quality kind.
    pub data_quality: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Return,
    Exchange,
    Warranty,
    Unopened,
}

/// `case_facts`, for one case.
struct Case<'e> {
    kind: Kind,
    opening: &'e PostPurchaseEvent,
    return_requests: usize,
    return_methods: usize,
    rejected: bool,
    received_at: Option<i64>,
    inspected_at: Option<i64>,
    disposition: Option<&'static str>,
    refunded_at: Option<i64>,
    resolution: Option<(i64, &'static str)>,
    refund_above_line_cost: bool,
    exchange_value_unknown: bool,
}

impl Case<'_> {
    fn opened_at(&self) -> i64 {
        self.opening.occurred_at.as_unix_micros()
    }
}

/// The first of `events` by time, then idempotency key, as ClickHouse's `argMin` over
/// `(occurred_at, idempotency_key)` picks it.
fn first<'e>(
    events: &[&'e PostPurchaseEvent],
    types: &[EventType],
) -> Option<&'e PostPurchaseEvent> {
    events
        .iter()
        .copied()
        .filter(|event| types.contains(&event.event_type))
        .min_by(|a, b| {
            (a.occurred_at, &a.idempotency_key).cmp(&(b.occurred_at, &b.idempotency_key))
        })
}

fn at(event: Option<&PostPurchaseEvent>) -> Option<i64> {
    event.map(|event| event.occurred_at.as_unix_micros())
}

const MONEY: [EventType; 2] = [EventType::RefundIssued, EventType::StoreCreditIssued];
const RESOLUTIONS: [EventType; 9] = [
    EventType::RefundIssued,
    EventType::StoreCreditIssued,
    EventType::ExchangeCompleted,
    EventType::ExchangeCancelled,
    EventType::ReturnRejected,
    EventType::WarrantyRepaired,
    EventType::WarrantyReplaced,
    EventType::WarrantyResolved,
    EventType::WarrantyDenied,
];

fn outcome(resolution: EventType) -> &'static str {
    match resolution {
        EventType::RefundIssued => "refund",
        EventType::StoreCreditIssued => "store_credit",
        EventType::ExchangeCompleted => "exchange",
        EventType::ExchangeCancelled => "exchange_cancelled",
        EventType::ReturnRejected => "rejected",
        EventType::WarrantyDenied => "warranty_denied",
        _ => "warranty_fixed",
    }
}

/// What the sink stores of an event's line: what enrich found for it.
type Lines<'w> = HashMap<(&'w str, &'w str), (&'w Order, &'w OrderLine)>;

fn case<'e>(events: &[&'e PostPurchaseEvent], lines: &Lines<'_>) -> Case<'e> {
    let count = |event_type: EventType| {
        events
            .iter()
            .filter(|event| event.event_type == event_type)
            .count()
    };
    let return_requests = count(EventType::ReturnRequested);
    let kind = if return_requests > 0 {
        Kind::Return
    } else if count(EventType::ExchangeRequested) > 0 {
        Kind::Exchange
    } else if count(EventType::WarrantyFiled) > 0 {
        Kind::Warranty
    } else {
        Kind::Unopened
    };
    let opening = first(events, &[EventType::ReturnRequested])
        .or_else(|| {
            first(
                events,
                &[EventType::ExchangeRequested, EventType::WarrantyFiled],
            )
        })
        .or_else(|| first(events, &EventType::ALL))
        .unwrap_or(events[0]);
    let return_methods = events
        .iter()
        .filter(|event| {
            matches!(
                event.event_type,
                EventType::ReturnRequested | EventType::ReturnLabelCreated
            )
        })
        .filter_map(|event| event.method.map(|method| method.symbol()))
        .collect::<BTreeSet<_>>()
        .len();
    let line_of = |event: &PostPurchaseEvent| {
        lines
            .get(&(event.order_id.as_str(), event.order_line_id.as_str()))
            .copied()
    };
    let refund_above_line_cost = events
        .iter()
        .filter(|event| MONEY.contains(&event.event_type))
        .any(|event| match (&event.amount, line_of(event)) {
            (Some(amount), Some((order, line))) => {
                amount.currency == order.currency
                    && amount.amount_minor > line.unit_price_minor * i64::from(event.quantity)
            }
            _ => false,
        });
    let exchange_value_unknown = events
        .iter()
        .any(|event| event.event_type == EventType::ExchangeCompleted && line_of(event).is_none());
    let resolution = first(events, &RESOLUTIONS).map(|event| {
        (
            event.occurred_at.as_unix_micros(),
            outcome(event.event_type),
        )
    });
    Case {
        kind,
        opening,
        return_requests,
        return_methods,
        rejected: count(EventType::ReturnRejected) > 0,
        received_at: at(first(events, &[EventType::ReturnReceived])),
        inspected_at: at(first(events, &[EventType::ReturnInspected])),
        disposition: first(events, &[EventType::ReturnInspected])
            .and_then(|event| event.disposition)
            .map(|disposition| disposition.symbol()),
        refunded_at: at(first(events, &MONEY)),
        resolution,
        refund_above_line_cost,
        exchange_value_unknown,
    }
}

fn lt(a: Option<i64>, b: Option<i64>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a < b)
}

fn p50(mut values: Vec<i64>) -> f64 {
    values.sort_unstable();
    quantile_exact(&values, 0.5)
}

/// The intelligence figures of the unique valid events published and the orders published.
pub fn intelligence(
    events: &[&PostPurchaseEvent],
    orders: &[&Order],
    thresholds: Thresholds,
) -> Intelligence {
    let mut truth = Intelligence {
        thresholds,
        refund_sla: Sla {
            target_hours: thresholds.refund_sla_hours,
            ..Sla::default()
        },
        ..Intelligence::default()
    };
    let lines: Lines<'_> = orders
        .iter()
        .flat_map(|order| {
            order.lines.iter().map(move |line| {
                (
                    (order.order_id.as_str(), line.order_line_id.as_str()),
                    (*order, line),
                )
            })
        })
        .collect();
    let mut by_case: BTreeMap<&str, Vec<&PostPurchaseEvent>> = BTreeMap::new();
    for event in events {
        by_case
            .entry(event.case_id.as_str())
            .or_default()
            .push(event);
    }
    let cases: Vec<Case<'_>> = by_case
        .values()
        .map(|events| case(events, &lines))
        .collect();

    // Data quality.
    let mut quality = |kind: &str| *truth.data_quality.entry(kind.to_string()).or_default() += 1;
    for case in &cases {
        let opened = Some(case.opened_at());
        let is_return = case.kind == Kind::Return;
        let checks = [
            (case.kind == Kind::Unopened, "case_without_request"),
            (case.return_requests > 1, "duplicate_return_request"),
            (case.return_methods > 1, "mixed_return_methods"),
            (
                is_return && case.rejected && case.refunded_at.is_some(),
                "refund_on_rejected_case",
            ),
            (
                is_return && lt(case.refunded_at, opened),
                "refund_before_request",
            ),
            (
                is_return && lt(case.received_at, opened),
                "received_before_request",
            ),
            (
                is_return && lt(case.inspected_at, case.received_at),
                "inspected_before_received",
            ),
            (
                is_return && lt(case.refunded_at, case.received_at),
                "refund_before_received",
            ),
            (
                is_return
                    && !lines.contains_key(&(
                        case.opening.order_id.as_str(),
                        case.opening.order_line_id.as_str(),
                    )),
                "return_on_unknown_order_line",
            ),
            (case.exchange_value_unknown, "exchange_without_line_price"),
        ];
        for (applies, kind) in checks {
            if applies {
                quality(kind);
            }
        }
    }

    // Return cases that count: requested, not rejected.
    let returns: Vec<&Case<'_>> = cases
        .iter()
        .filter(|case| case.kind == Kind::Return && !case.rejected)
        .collect();

    // Operations, by method; dispositions; the refund SLA.
    let mut spans: BTreeMap<&str, [Vec<i64>; 3]> = BTreeMap::new();
    for case in &returns {
        let method = case
            .opening
            .method
            .map_or("UNKNOWN", |method| method.symbol());
        truth
            .operations
            .entry(method.to_string())
            .or_default()
            .cases += 1;
        let entry = spans.entry(method).or_default();
        let span = |from: Option<i64>, to: Option<i64>| match (from, to) {
            (Some(from), Some(to)) if to >= from => Some(to - from),
            _ => None,
        };
        let opened = Some(case.opened_at());
        entry[0].extend(span(opened, case.received_at));
        entry[1].extend(span(case.received_at, case.inspected_at));
        entry[2].extend(span(case.received_at, case.refunded_at));
        if let Some(received) = case.received_at {
            truth.refund_sla.received += 1;
            match case.refunded_at {
                Some(refunded) if refunded - received <= thresholds.refund_sla_hours * HOUR => {
                    truth.refund_sla.refunded_within += 1;
                }
                Some(_) => truth.refund_sla.refunded_late += 1,
                None => truth.refund_sla.open_received_at.push(received),
            }
        }
    }
    for case in cases
        .iter()
        .filter(|case| case.kind == Kind::Return && case.inspected_at.is_some())
    {
        *truth
            .dispositions
            .entry(case.disposition.unwrap_or("UNSPECIFIED").to_string())
            .or_default() += 1;
    }
    truth.refund_sla.open_received_at.sort_unstable();
    for (method, [receipt, inspection, refund]) in spans {
        let steps = truth.operations.entry(method.to_string()).or_default();
        steps.received = receipt.len() as u64;
        steps.inspected = inspection.len() as u64;
        steps.refunded = refund.len() as u64;
        steps.receipt_p50_seconds = p50(receipt);
        steps.inspection_p50_seconds = p50(inspection);
        steps.refund_p50_seconds = p50(refund);
    }

    // The money of returns, by currency.
    for event in events {
        let (currency, value, slot): (&str, i64, fn(&mut ReturnValue) -> &mut i64) =
            match event.event_type {
                EventType::RefundIssued | EventType::StoreCreditIssued => {
                    let Some(amount) = &event.amount else {
                        continue;
                    };
                    let slot: fn(&mut ReturnValue) -> &mut i64 =
                        if event.event_type == EventType::RefundIssued {
                            |value| &mut value.refunded_minor
                        } else {
                            |value| &mut value.store_credit_minor
                        };
                    (amount.currency.as_str(), amount.amount_minor, slot)
                }
                EventType::ExchangeCompleted => {
                    let Some((order, line)) =
                        lines.get(&(event.order_id.as_str(), event.order_line_id.as_str()))
                    else {
                        continue;
                    };
                    (
                        order.currency.as_str(),
                        line.unit_price_minor * i64::from(event.quantity),
                        |value| &mut value.exchange_value_minor,
                    )
                }
                _ => continue,
            };
        *slot(truth.return_value.entry(currency.to_string()).or_default()) += value;
    }

    // Risk flags.
    let mut flag = |flag: &str| *truth.risk_flags.entry(flag.to_string()).or_default() += 1;
    let line_key = |case: &Case<'_>| {
        (
            case.opening.order_id.clone(),
            case.opening.order_line_id.clone(),
        )
    };
    let mut returned_of_line: HashMap<(String, String), i64> = HashMap::new();
    let mut returned_by: HashMap<&str, i64> = HashMap::new();
    let mut opened_by: HashMap<&str, Vec<i64>> = HashMap::new();
    for case in &returns {
        let quantity = i64::from(case.opening.quantity);
        *returned_of_line.entry(line_key(case)).or_default() += quantity;
        *returned_by
            .entry(case.opening.customer_id.as_str())
            .or_default() += quantity;
        opened_by
            .entry(case.opening.customer_id.as_str())
            .or_default()
            .push(case.opened_at());
    }
    let mut bought_by: HashMap<&str, i64> = HashMap::new();
    for order in orders {
        *bought_by.entry(order.customer_id.as_str()).or_default() += order
            .lines
            .iter()
            .map(|line| i64::from(line.quantity))
            .sum::<i64>();
    }
    // In whole seconds, as the view's window frame counts.
    let within = |times: &[i64], at: i64, days: i64| {
        let (at, days) = (at.div_euclid(1_000_000), days * 86_400);
        times
            .iter()
            .map(|time| time.div_euclid(1_000_000))
            .filter(|time| *time >= at - days && *time <= at)
            .count()
    };
    for case in cases.iter().filter(|case| case.kind == Kind::Return) {
        if case.refund_above_line_cost {
            flag("refund_above_line_cost");
        }
        let window_days = lines
            .get(&(
                case.opening.order_id.as_str(),
                case.opening.order_line_id.as_str(),
            ))
            .and_then(|(order, _)| order.delivered_at)
            .map(|delivered| {
                (case.opened_at() - delivered.as_unix_micros()).div_euclid(DAY)
                    > thresholds.return_window_days
            });
        if window_days == Some(true) {
            flag("requested_after_window");
        }
        if case.rejected {
            continue;
        }
        let sold = lines
            .get(&(
                case.opening.order_id.as_str(),
                case.opening.order_line_id.as_str(),
            ))
            .map(|(_, line)| i64::from(line.quantity));
        if sold.is_some_and(|sold| returned_of_line[&line_key(case)] > sold) {
            flag("quantity_above_sold");
        }
        let customer = case.opening.customer_id.as_str();
        let times = &opened_by[customer];
        if within(times, case.opened_at(), 7) >= thresholds.velocity_7d_cases
            || within(times, case.opened_at(), 90) >= thresholds.velocity_90d_cases
        {
            flag("return_velocity");
        }
        if let Some(bought) = bought_by.get(customer) {
            let returned = returned_by[customer];
            if *bought >= thresholds.serial_returner_min_units
                && returned * 100 > bought * thresholds.serial_returner_rate_percent
            {
                flag("serial_returner");
            }
        }
    }

    // Repeat purchase.
    let horizon = orders
        .iter()
        .map(|order| order.placed_at.as_unix_micros())
        .max()
        .unwrap_or(0);
    let mut placed_by: HashMap<&str, Vec<i64>> = HashMap::new();
    for order in orders {
        placed_by
            .entry(order.customer_id.as_str())
            .or_default()
            .push(order.placed_at.as_unix_micros());
    }
    let mut reference: BTreeMap<&str, (i64, &str, &str)> = BTreeMap::new();
    let mut with_case: BTreeSet<&str> = BTreeSet::new();
    for case in cases.iter().filter(|case| case.kind != Kind::Unopened) {
        let customer = case.opening.customer_id.as_str();
        with_case.insert(customer);
        if let Some((resolved_at, outcome)) = case.resolution {
            let entry = reference.entry(customer).or_insert((
                resolved_at,
                outcome,
                case.opening.case_id.as_str(),
            ));
            if (resolved_at, case.opening.case_id.as_str()) < (entry.0, entry.2) {
                *entry = (resolved_at, outcome, case.opening.case_id.as_str());
            }
        }
    }
    let mut cohorts: Vec<(i64, &str, &str)> = reference
        .iter()
        .map(|(customer, (at, outcome, _))| (*at, *outcome, *customer))
        .collect();
    for (customer, placed) in &placed_by {
        if !with_case.contains(customer)
            && let Some(first) = placed.iter().min()
        {
            cohorts.push((*first, "no_case", customer));
        }
    }
    for (reference_at, outcome, customer) in cohorts {
        let repeat = truth
            .repeat_purchase
            .entry(outcome.to_string())
            .or_default();
        repeat.customers += 1;
        let placed = placed_by.get(customer).map_or(&[][..], Vec::as_slice);
        for (window, days) in repeat.windows.iter_mut().zip(REPEAT_DAYS) {
            let end = reference_at + days * DAY;
            if end <= horizon {
                window.0 += 1;
                if placed.iter().any(|t| *t > reference_at && *t <= end) {
                    window.1 += 1;
                }
            }
        }
    }
    truth
}
