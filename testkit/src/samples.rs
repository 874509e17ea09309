//! Small, valid sample records for unit tests: an event, a customer (with PII, so tests can
//! check it never leaks) and an order with two lines.

use std::collections::BTreeMap;

use boomerang_schemas::{
    Channel, Customer, EnrichedPostPurchaseEvent, EventType, Money, Order, OrderLine, Outcome,
    PostPurchaseEvent, ReasonCode, ReturnMethod, TimestampMicros,
};

/// A RETURN_REQUESTED event for line `o-1/1` of order `o-1`, customer `cu-1`, happening now.
pub fn event() -> PostPurchaseEvent {
    PostPurchaseEvent {
        event_id: "e-1".into(),
        idempotency_key: "k-1".into(),
        event_type: EventType::ReturnRequested,
        case_id: "c-1".into(),
        order_id: "o-1".into(),
        order_line_id: "o-1/1".into(),
        customer_id: "cu-1".into(),
        sku: "sku-1".into(),
        quantity: 1,
        reason: None,
        reason_text: None,
        amount: None,
        method: None,
        channel: Channel::Web,
        outcome: Outcome::Pending,
        occurred_at: TimestampMicros::now(),
        source_system: "portal".into(),
        replacement_sku: None,
        warranty_resolution: None,
        disposition: None,
        attributes: BTreeMap::new(),
    }
}

/// The `n`th of many distinct REFUND_ISSUED events (line 2 of order `n`, 50,000 customers,
/// 2,000 SKUs), as the benchmarks publish them.
pub fn refund_event(n: usize, now: TimestampMicros) -> PostPurchaseEvent {
    PostPurchaseEvent {
        event_id: format!("0b9d3c1e-5f7a-4a55-9b8e-{n:012}"),
        idempotency_key: format!("returns-portal:rma-{n:09}:refund-issued"),
        event_type: EventType::RefundIssued,
        case_id: format!("rma-{n:09}"),
        order_id: format!("ord-{n:010}"),
        order_line_id: format!("ord-{n:010}/2"),
        customer_id: format!("cus-{:08}", n % 50_000),
        sku: format!("SKU-{:05}", n % 2_000),
        reason: Some(ReasonCode::TooLarge),
        amount: Some(Money::new(4_999, "EUR")),
        method: Some(ReturnMethod::Mail),
        outcome: Outcome::Completed,
        occurred_at: now,
        source_system: "returns-portal".into(),
        ..event()
    }
}

/// A customer with an e-mail address and a full name (PII).
pub fn customer(id: &str, segment: &str, consent: bool) -> Customer {
    Customer {
        customer_id: id.into(),
        email: Some(format!("{id}@example.com")),
        full_name: Some("Ada Lovelace".into()),
        segment: segment.into(),
        region: "emea".into(),
        country: "GB".into(),
        analytics_consent: consent,
        updated_at: TimestampMicros::from_unix_micros(1),
    }
}

/// An order from the mobile app in EUR: line `{id}/1` two apparel units at 29.99, line
/// `{id}/2` one electronics unit at 199.00.
pub fn order(id: &str, customer_id: &str, delivered_at_micros: Option<i64>) -> Order {
    Order {
        order_id: id.into(),
        customer_id: customer_id.into(),
        channel: Channel::MobileApp,
        currency: "EUR".into(),
        placed_at: TimestampMicros::from_unix_micros(1_000),
        delivered_at: delivered_at_micros.map(TimestampMicros::from_unix_micros),
        lines: vec![
            OrderLine {
                order_line_id: format!("{id}/1"),
                sku: "sku-1".into(),
                category: "apparel".into(),
                quantity: 2,
                unit_price_minor: 2_999,
            },
            OrderLine {
                order_line_id: format!("{id}/2"),
                sku: "sku-2".into(),
                category: "electronics".into(),
                quantity: 1,
                unit_price_minor: 19_900,
            },
        ],
        updated_at: TimestampMicros::from_unix_micros(1),
    }
}

/// `event` as enrich emits it when the customer is known (segment `regular`, region `emea`)
/// and nothing of the order is: nothing missing, nothing pseudonymised, enriched now.
pub fn enriched(event: PostPurchaseEvent) -> EnrichedPostPurchaseEvent {
    EnrichedPostPurchaseEvent {
        event,
        customer_missing: false,
        order_missing: false,
        order_line_missing: false,
        customer_pseudonymised: false,
        customer_segment: Some("regular".into()),
        customer_region: Some("emea".into()),
        order_channel: None,
        order_placed_at: None,
        order_delivered_at: None,
        line_category: None,
        line_unit_price: None,
        days_since_delivery: None,
        within_return_window: None,
        enriched_at: TimestampMicros::now(),
    }
}
