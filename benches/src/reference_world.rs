//! Reference data and events shaped like a retailer's, for the enrich benchmarks: customers
//! with PII and a segment, orders of one to three lines across a few categories, and events
//! that name an existing order line.

use boomerang_schemas::{
    Channel, Customer, EnrichedPostPurchaseEvent, Money, Order, OrderLine, PostPurchaseEvent,
    TimestampMicros,
};

const SEGMENTS: [&str; 4] = ["new", "regular", "vip", "lapsed"];
const REGIONS: [&str; 3] = ["emea", "amer", "apac"];
const CATEGORIES: [&str; 6] = ["apparel", "shoes", "electronics", "home", "beauty", "toys"];
const CHANNELS: [Channel; 3] = [Channel::Web, Channel::MobileApp, Channel::Store];
const DAY_MICROS: i64 = 86_400_000_000;

pub fn customer_id(n: usize) -> String {
    format!("cus-{n:08}")
}

pub fn order_id(n: usize) -> String {
    format!("ord-{n:010}")
}

pub fn customer(n: usize) -> Customer {
    Customer {
        customer_id: customer_id(n),
        email: Some(format!("customer{n}@example.com")),
        full_name: Some(format!("Customer Number {n}")),
        segment: SEGMENTS[n % SEGMENTS.len()].into(),
        region: REGIONS[n % REGIONS.len()].into(),
        country: "DE".into(),
        analytics_consent: !n.is_multiple_of(10),
        updated_at: TimestampMicros::from_unix_micros(1_760_000_000_000_000),
    }
}

/// Order `n` of customer `n % customers`, with `1 + n % 3` lines.
pub fn order(n: usize, customers: usize, now: TimestampMicros) -> Order {
    let placed = now.as_unix_micros() - 20 * DAY_MICROS;
    Order {
        order_id: order_id(n),
        customer_id: customer_id(n % customers.max(1)),
        channel: CHANNELS[n % CHANNELS.len()],
        currency: "EUR".into(),
        placed_at: TimestampMicros::from_unix_micros(placed),
        delivered_at: Some(TimestampMicros::from_unix_micros(placed + 3 * DAY_MICROS)),
        lines: (0..1 + n % 3)
            .map(|line| OrderLine {
                order_line_id: format!("{}/{}", order_id(n), line + 1),
                sku: format!("SKU-{:05}", (n * 7 + line) % 20_000),
                category: CATEGORIES[(n + line) % CATEGORIES.len()].into(),
                quantity: 1 + (line as i32),
                unit_price_minor: 1_999 + (n % 50) as i64 * 100,
            })
            .collect(),
        updated_at: TimestampMicros::from_unix_micros(placed),
    }
}

/// A refund event for line 1 of order `n`.
pub fn event(n: usize, customers: usize, now: TimestampMicros) -> PostPurchaseEvent {
    PostPurchaseEvent {
        order_id: order_id(n),
        order_line_id: format!("{}/1", order_id(n)),
        customer_id: customer_id(n % customers.max(1)),
        sku: format!("SKU-{:05}", (n * 7) % 20_000),
        reason_text: Some("free text that may hold personal data".into()),
        ..boomerang_testkit::samples::refund_event(n, now)
    }
}

/// Event `n` as enrich publishes it: reason text dropped, order, line and customer found.
pub fn enriched(n: usize, now: TimestampMicros) -> EnrichedPostPurchaseEvent {
    let mut event = event(n, 50_000, now);
    event.reason_text = None;
    EnrichedPostPurchaseEvent {
        customer_segment: Some(["new", "regular", "vip"][n % 3].into()),
        order_channel: Some(Channel::Web),
        order_placed_at: Some(now),
        order_delivered_at: Some(now),
        line_category: Some(["apparel", "shoes", "electronics"][n % 3].into()),
        line_unit_price: Some(Money::new(4_999, "EUR")),
        days_since_delivery: Some(5),
        within_return_window: Some(true),
        enriched_at: now,
        ..boomerang_testkit::samples::enriched(event)
    }
}
