//! A seeded world of post-purchase activity: customers, orders with lines, and the lifecycle
//! events of return, exchange and warranty cases, with realistic rates and delays. The same
//! seed and sizes give the same world.

use std::collections::BTreeMap;

use boomerang_schemas::{
    Channel, Customer, Disposition, EventType, Money, Order, OrderLine, Outcome, PostPurchaseEvent,
    ReasonCode, ReturnMethod, TimestampMicros, WarrantyResolution,
};

pub const HOUR: i64 = 3_600_000_000;
pub const DAY: i64 = 24 * HOUR;

/// SplitMix64: small, fast, and the same everywhere.
pub struct Dice(u64);

impl Dice {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// Uniform in `from..to` (micros, say).
    pub fn between(&mut self, from: i64, to: i64) -> i64 {
        from + self.below((to - from).max(1) as u64) as i64
    }

    pub fn pick<'a, T>(&mut self, weighted: &'a [(T, u32)]) -> &'a T {
        let total: u32 = weighted.iter().map(|(_, weight)| weight).sum();
        let mut roll = self.below(u64::from(total)) as u32;
        for (value, weight) in weighted {
            if roll < *weight {
                return value;
            }
            roll -= weight;
        }
        &weighted[weighted.len() - 1].0
    }
}

/// A product category: its share of order lines, its return rate, its warranty claim rate,
/// its price range (minor units) and why its items come back.
pub struct Category {
    pub name: &'static str,
    pub weight: u32,
    pub return_rate: f64,
    pub warranty_rate: f64,
    pub price_minor: (i64, i64),
    pub reasons: &'static [(ReasonCode, u32)],
}

pub const CATEGORIES: &[Category] = &[
    Category {
        name: "apparel",
        weight: 35,
        return_rate: 0.28,
        warranty_rate: 0.0,
        price_minor: (1_500, 12_000),
        reasons: &[
            (ReasonCode::TooSmall, 30),
            (ReasonCode::TooLarge, 30),
            (ReasonCode::NotAsDescribed, 15),
            (ReasonCode::ChangedMind, 20),
            (ReasonCode::Defective, 5),
        ],
    },
    Category {
        name: "shoes",
        weight: 15,
        return_rate: 0.22,
        warranty_rate: 0.0,
        price_minor: (4_000, 20_000),
        reasons: &[
            (ReasonCode::TooSmall, 35),
            (ReasonCode::TooLarge, 30),
            (ReasonCode::ChangedMind, 25),
            (ReasonCode::Defective, 10),
        ],
    },
    Category {
        name: "electronics",
        weight: 20,
        return_rate: 0.08,
        warranty_rate: 0.05,
        price_minor: (2_000, 150_000),
        reasons: &[
            (ReasonCode::Defective, 40),
            (ReasonCode::NotAsDescribed, 20),
            (ReasonCode::DamagedInTransit, 15),
            (ReasonCode::ChangedMind, 25),
        ],
    },
    Category {
        name: "home",
        weight: 20,
        return_rate: 0.10,
        warranty_rate: 0.02,
        price_minor: (1_000, 60_000),
        reasons: &[
            (ReasonCode::DamagedInTransit, 35),
            (ReasonCode::NotAsDescribed, 25),
            (ReasonCode::WrongItem, 15),
            (ReasonCode::ChangedMind, 25),
        ],
    },
    Category {
        name: "beauty",
        weight: 10,
        return_rate: 0.05,
        warranty_rate: 0.0,
        price_minor: (500, 8_000),
        reasons: &[(ReasonCode::ChangedMind, 60), (ReasonCode::WrongItem, 40)],
    },
];

const CHANNELS: &[(Channel, u32)] = &[
    (Channel::Web, 45),
    (Channel::MobileApp, 35),
    (Channel::Store, 15),
    (Channel::Marketplace, 5),
];
const SEGMENTS: &[(&str, u32)] = &[("new", 30), ("regular", 50), ("vip", 20)];
const REGIONS: &[(&str, u32)] = &[("emea", 50), ("amer", 35), ("apac", 15)];
const METHODS: &[(ReturnMethod, u32)] = &[
    (ReturnMethod::Mail, 70),
    (ReturnMethod::InStore, 20),
    (ReturnMethod::DropOff, 10),
];

/// How big, and how often each thing happens.
#[derive(Debug, Clone)]
pub struct WorldShape {
    pub seed: u64,
    pub customers: usize,
    pub orders: usize,
    /// Share of return cases the retailer rejects.
    pub rejection_rate: f64,
    /// Share of (not rejected) return cases that become exchanges.
    pub exchange_rate: f64,
    /// Share of exchanges cancelled.
    pub exchange_cancel_rate: f64,
    /// Share of warranty claims approved.
    pub warranty_approval_rate: f64,
    /// What real data gets wrong or worth a look, each with its own frequency (see
    /// [`Anomalies`]).
    pub anomalies: Anomalies,
}

/// The situations the intelligence objects exist for, each drawn with a known frequency: a
/// risk flag to raise or a data-quality problem to surface, never to hide.
#[derive(Debug, Clone)]
pub struct Anomalies {
    /// Share of customers who return far more than others (three times the category's rate).
    pub serial_returner_rate: f64,
    /// Share of refunds above what the units cost (a shipping fee refunded on top).
    pub refund_above_cost_rate: f64,
    /// Share of return requests made after the 30-day return window.
    pub late_request_rate: f64,
    /// Share of returned lines returned a second time in a case of their own, for all the
    /// units again: more units returned than sold.
    pub second_return_rate: f64,
    /// Share of return cases whose request is published twice under two keys, the second
    /// naming another return method.
    pub duplicate_request_rate: f64,
    /// Share of refunds whose producer's clock put them before the request.
    pub refund_clock_skew_rate: f64,
    /// Share of rejected cases refunded all the same.
    pub refund_after_rejection_rate: f64,
}

impl Default for Anomalies {
    fn default() -> Self {
        Self {
            serial_returner_rate: 0.02,
            refund_above_cost_rate: 0.01,
            late_request_rate: 0.03,
            second_return_rate: 0.01,
            duplicate_request_rate: 0.01,
            refund_clock_skew_rate: 0.005,
            refund_after_rejection_rate: 0.05,
        }
    }
}

pub struct World {
    pub customers: Vec<Customer>,
    pub orders: Vec<Order>,
    /// Every case's events up to `now`, in time order.
    pub events: Vec<PostPurchaseEvent>,
}

fn line_category(line: &OrderLine) -> &'static Category {
    CATEGORIES
        .iter()
        .find(|category| category.name == line.category)
        .unwrap_or(&CATEGORIES[0])
}

/// Builds the world as of `now`: orders placed over the last 70 days, cases following them,
/// events that have not happened yet left out.
pub fn build(shape: &WorldShape, now: TimestampMicros) -> World {
    let mut dice = Dice::new(shape.seed);
    let now_micros = now.as_unix_micros();
    let anomalies = &shape.anomalies;
    let customers: Vec<Customer> = (0..shape.customers)
        .map(|n| Customer {
            customer_id: format!("cus-{n:07}"),
            email: Some(format!("customer{n}@example.com")),
            full_name: Some(format!("Customer {n}")),
            segment: (*dice.pick(SEGMENTS)).to_string(),
            region: (*dice.pick(REGIONS)).to_string(),
            country: "DE".into(),
            analytics_consent: dice.chance(0.9),
            updated_at: TimestampMicros::from_unix_micros(now_micros - 90 * DAY),
        })
        .collect();
    // Serial returners, drawn apart so the customers themselves stay the same.
    let serial: Vec<bool> = (0..customers.len())
        .map(|_| dice.chance(anomalies.serial_returner_rate))
        .collect();
    let category_weights: Vec<(usize, u32)> = CATEGORIES
        .iter()
        .enumerate()
        .map(|(index, category)| (index, category.weight))
        .collect();
    let mut orders = Vec::with_capacity(shape.orders);
    let mut events = Vec::new();
    let mut case_number = 0usize;
    for n in 0..shape.orders {
        let placed = dice.between(now_micros - 70 * DAY, now_micros - 6 * DAY);
        let delivered = placed + dice.between(DAY, 5 * DAY);
        let channel = *dice.pick(CHANNELS);
        let order_id = format!("ord-{n:08}");
        let lines: Vec<OrderLine> = (0..1 + dice.below(3))
            .map(|line| {
                let category = &CATEGORIES[*dice.pick(&category_weights)];
                OrderLine {
                    order_line_id: format!("{order_id}/{}", line + 1),
                    sku: format!("{}-{:03}", category.name.to_uppercase(), dice.below(200)),
                    category: category.name.into(),
                    quantity: 1 + dice.below(2) as i32,
                    unit_price_minor: dice.between(category.price_minor.0, category.price_minor.1),
                }
            })
            .collect();
        let customer = dice.below(customers.len() as u64) as usize;
        let order = Order {
            order_id: order_id.clone(),
            customer_id: customers[customer].customer_id.clone(),
            channel,
            currency: "EUR".into(),
            placed_at: TimestampMicros::from_unix_micros(placed),
            delivered_at: Some(TimestampMicros::from_unix_micros(delivered)),
            lines,
            updated_at: TimestampMicros::from_unix_micros(delivered),
        };
        for line in &order.lines {
            let category = line_category(line);
            let return_rate = if serial[customer] {
                (category.return_rate * 3.0).min(0.9)
            } else {
                category.return_rate
            };
            if dice.chance(return_rate) {
                // Now and then the line comes back in a second case of its own.
                let mut returns = 1;
                loop {
                    case_number += 1;
                    return_case(
                        shape,
                        &mut dice,
                        &order,
                        line,
                        delivered,
                        case_number,
                        &mut events,
                    );
                    if returns == 2 || !dice.chance(anomalies.second_return_rate) {
                        break;
                    }
                    returns += 1;
                }
            }
            if category.warranty_rate > 0.0 && dice.chance(category.warranty_rate) {
                case_number += 1;
                warranty_case(
                    shape,
                    &mut dice,
                    &order,
                    line,
                    delivered,
                    case_number,
                    &mut events,
                );
            }
        }
        orders.push(order);
    }
    // Only what has happened by now (minus a minute, inside ingest's clock-skew allowance).
    events.retain(|event| event.occurred_at.as_unix_micros() <= now_micros - 60_000_000);
    events.sort_by_key(|event| (event.occurred_at, event.event_id.clone()));
    World {
        customers,
        orders,
        events,
    }
}

struct CaseWriter<'a> {
    order: &'a Order,
    line: &'a OrderLine,
    case_id: String,
    events: &'a mut Vec<PostPurchaseEvent>,
}

impl CaseWriter<'_> {
    fn emit(&mut self, event_type: EventType, at: i64, outcome: Outcome) -> &mut PostPurchaseEvent {
        let symbol = event_type.symbol().to_ascii_lowercase();
        let source_system = match event_type.case_kind() {
            boomerang_schemas::CaseKind::Warranty => "support-tool",
            _ if matches!(
                event_type,
                EventType::ReturnReceived | EventType::ReturnInspected
            ) =>
            {
                "warehouse"
            }
            boomerang_schemas::CaseKind::Refund => "payments",
            _ => "returns-portal",
        };
        self.events.push(PostPurchaseEvent {
            event_id: format!("{}-{symbol}", self.case_id),
            idempotency_key: format!("{source_system}:{}:{symbol}", self.case_id),
            event_type,
            case_id: self.case_id.clone(),
            order_id: self.order.order_id.clone(),
            order_line_id: self.line.order_line_id.clone(),
            customer_id: self.order.customer_id.clone(),
            sku: self.line.sku.clone(),
            quantity: self.line.quantity,
            reason: None,
            reason_text: None,
            amount: None,
            method: None,
            channel: self.order.channel,
            outcome,
            occurred_at: TimestampMicros::from_unix_micros(at),
            source_system: source_system.into(),
            replacement_sku: None,
            warranty_resolution: None,
            disposition: None,
            attributes: BTreeMap::new(),
        });
        let Some(last) = self.events.last_mut() else {
            unreachable!("pushed just above");
        };
        last
    }
}

fn return_case(
    shape: &WorldShape,
    dice: &mut Dice,
    order: &Order,
    line: &OrderLine,
    delivered: i64,
    case_number: usize,
    events: &mut Vec<PostPurchaseEvent>,
) {
    let category = line_category(line);
    let mut case = CaseWriter {
        order,
        line,
        case_id: format!("rma-{case_number:08}"),
        events,
    };
    let anomalies = &shape.anomalies;
    let requested = if dice.chance(anomalies.late_request_rate) {
        delivered + dice.between(31 * DAY, 45 * DAY)
    } else {
        delivered + dice.between(DAY, 20 * DAY)
    };
    let method = *dice.pick(METHODS);
    let reason = *dice.pick(category.reasons);
    let request = case.emit(EventType::ReturnRequested, requested, Outcome::Pending);
    request.reason = Some(reason);
    request.reason_text = Some("Free text from the customer, which may name people.".into());
    request.method = Some(method);
    if dice.chance(anomalies.duplicate_request_rate) {
        // The portal publishes the request again under a key of its own, with another method.
        let again = case.emit(
            EventType::ReturnRequested,
            requested + dice.between(HOUR, 6 * HOUR),
            Outcome::Pending,
        );
        again.event_id.push_str("-again");
        again.idempotency_key.push_str(":again");
        again.reason = Some(reason);
        again.method = Some(if method == ReturnMethod::Mail {
            ReturnMethod::DropOff
        } else {
            ReturnMethod::Mail
        });
    }
    let amount = Money::new(
        line.unit_price_minor * i64::from(line.quantity),
        order.currency.clone(),
    );
    if dice.chance(shape.rejection_rate) {
        let rejected = requested + dice.between(6 * HOUR, 2 * DAY);
        case.emit(EventType::ReturnRejected, rejected, Outcome::Denied);
        if dice.chance(anomalies.refund_after_rejection_rate) {
            case.emit(
                EventType::RefundIssued,
                rejected + dice.between(HOUR, DAY),
                Outcome::Completed,
            )
            .amount = Some(amount);
        }
        return;
    }
    let approved = requested + dice.between(HOUR, 12 * HOUR);
    if dice.chance(shape.exchange_rate) {
        let exchange_requested = approved + dice.between(HOUR, 6 * HOUR);
        let replacement = format!("{}-{:03}", category.name.to_uppercase(), dice.below(200));
        case.emit(
            EventType::ExchangeRequested,
            exchange_requested,
            Outcome::Pending,
        )
        .replacement_sku = Some(replacement.clone());
        if dice.chance(shape.exchange_cancel_rate) {
            case.emit(
                EventType::ExchangeCancelled,
                exchange_requested + dice.between(HOUR, DAY),
                Outcome::Denied,
            );
            return;
        }
        let exchange_approved = exchange_requested + dice.between(HOUR, 8 * HOUR);
        case.emit(
            EventType::ExchangeApproved,
            exchange_approved,
            Outcome::Completed,
        )
        .replacement_sku = Some(replacement.clone());
        let shipped = exchange_approved + dice.between(DAY, 3 * DAY);
        case.emit(EventType::ExchangeShipped, shipped, Outcome::Completed)
            .replacement_sku = Some(replacement.clone());
        case.emit(
            EventType::ExchangeCompleted,
            shipped + dice.between(DAY, 4 * DAY),
            Outcome::Completed,
        )
        .replacement_sku = Some(replacement);
        return;
    }
    case.emit(EventType::ReturnApproved, approved, Outcome::Completed);
    case.emit(
        EventType::ReturnLabelCreated,
        approved + dice.between(10 * 60_000_000, 3 * HOUR),
        Outcome::Completed,
    )
    .method = Some(method);
    let in_transit = approved + dice.between(6 * HOUR, 3 * DAY);
    case.emit(EventType::ReturnInTransit, in_transit, Outcome::Pending);
    let received = in_transit + dice.between(DAY, 5 * DAY);
    case.emit(EventType::ReturnReceived, received, Outcome::Completed);
    let inspected = received + dice.between(2 * HOUR, 2 * DAY);
    let disposition = if reason == ReasonCode::Defective {
        *dice.pick(&[(Disposition::Refurbish, 70), (Disposition::Recycle, 30)])
    } else {
        *dice.pick(&[
            (Disposition::Restock, 80),
            (Disposition::Resell, 15),
            (Disposition::Dispose, 5),
        ])
    };
    case.emit(EventType::ReturnInspected, inspected, Outcome::Completed)
        .disposition = Some(disposition);
    let refunded_at = if dice.chance(anomalies.refund_clock_skew_rate) {
        requested - dice.between(HOUR, 3 * HOUR)
    } else {
        inspected + dice.between(2 * HOUR, 3 * DAY)
    };
    let mut amount = amount;
    if dice.chance(anomalies.refund_above_cost_rate) {
        amount.amount_minor += 495; // shipping refunded on top
    }
    let refund_type = if dice.chance(0.8) {
        EventType::RefundIssued
    } else {
        EventType::StoreCreditIssued
    };
    case.emit(refund_type, refunded_at, Outcome::Completed)
        .amount = Some(amount);
}

fn warranty_case(
    shape: &WorldShape,
    dice: &mut Dice,
    order: &Order,
    line: &OrderLine,
    delivered: i64,
    case_number: usize,
    events: &mut Vec<PostPurchaseEvent>,
) {
    let mut case = CaseWriter {
        order,
        line,
        case_id: format!("wty-{case_number:08}"),
        events,
    };
    let filed = delivered + dice.between(14 * DAY, 60 * DAY);
    case.emit(EventType::WarrantyFiled, filed, Outcome::Pending)
        .reason = Some(ReasonCode::Defective);
    let decided = filed + dice.between(DAY, 5 * DAY);
    if !dice.chance(shape.warranty_approval_rate) {
        case.emit(EventType::WarrantyDenied, decided, Outcome::Denied);
        return;
    }
    case.emit(EventType::WarrantyApproved, decided, Outcome::Completed);
    let fixed = decided + dice.between(3 * DAY, 20 * DAY);
    let (event_type, resolution) = if dice.chance(0.6) {
        (EventType::WarrantyRepaired, WarrantyResolution::Repair)
    } else {
        (EventType::WarrantyReplaced, WarrantyResolution::Replace)
    };
    case.emit(event_type, fixed, Outcome::Completed)
        .warranty_resolution = Some(resolution);
    case.emit(
        EventType::WarrantyResolved,
        fixed + dice.between(HOUR, DAY),
        Outcome::Completed,
    )
    .warranty_resolution = Some(resolution);
}
