//! The join itself: an event, the reference tables, and what enrich adds to the event.

use boomerang_runtime::pseudonym::Pseudonymiser;
use boomerang_schemas::{
    EnrichedPostPurchaseEvent, Enrichment, EventType, MoneyRef, PostPurchaseEvent, TimestampMicros,
};

use crate::tables::{CustomerRef, OrderRef, RefKey, ReferenceTables, ref_key};

const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

#[derive(Debug, Clone)]
pub struct JoinSettings {
    /// Days after delivery within which a return is inside the retailer's return window.
    pub return_window_days: i32,
}

/// The keys an event joins on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinKeys {
    pub order: RefKey,
    pub customer: RefKey,
}

impl JoinKeys {
    pub fn of(event: &PostPurchaseEvent) -> Self {
        Self::of_ids(&event.order_id, &event.customer_id)
    }

    pub fn of_ids(order_id: &str, customer_id: &str) -> Self {
        Self {
            order: ref_key(order_id.as_bytes()),
            customer: ref_key(customer_id.as_bytes()),
        }
    }
}

/// What a join reads of an event besides its keys.
#[derive(Debug, Clone, Copy)]
pub struct EventFacts<'event> {
    pub order_line_id: &'event str,
    pub occurred_at: TimestampMicros,
}

impl<'event> EventFacts<'event> {
    pub fn of(event: &'event PostPurchaseEvent) -> Self {
        Self {
            order_line_id: &event.order_line_id,
            occurred_at: event.occurred_at,
        }
    }
}

/// What a risk flag reads of an event.
#[derive(Debug, Clone, Copy)]
pub struct RiskFacts<'event> {
    pub event_type: EventType,
    pub quantity: i32,
    pub amount: Option<MoneyRef<'event>>,
}

impl<'event> RiskFacts<'event> {
    pub fn of(event: &'event PostPurchaseEvent) -> Self {
        Self {
            event_type: event.event_type,
            quantity: event.quantity,
            amount: event.amount.as_ref().map(MoneyRef::from),
        }
    }
}

/// What the tables hold for one event now.
pub struct Lookup<'tables> {
    pub order: Option<&'tables OrderRef>,
    pub customer: Option<&'tables CustomerRef>,
}

impl<'tables> Lookup<'tables> {
    pub fn new(tables: &'tables ReferenceTables, keys: JoinKeys) -> Self {
        Self {
            order: tables.order(keys.order),
            customer: tables.customer(keys.customer),
        }
    }

    /// Both reference records are there: nothing to wait for.
    pub fn complete(&self) -> bool {
        self.order.is_some() && self.customer.is_some()
    }
}

/// How a join ended, for the `boomerang_enrich_join_outcomes_total` counter. Stable and
/// low-cardinality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Everything found on arrival.
    Joined,
    /// Everything found, after waiting for late reference data.
    JoinedAfterWait,
    OrderMissing,
    CustomerMissing,
    OrderAndCustomerMissing,
    /// The order is there, without the event's line.
    OrderLineMissing,
}

impl JoinOutcome {
    pub const ALL: [JoinOutcome; 6] = [
        JoinOutcome::Joined,
        JoinOutcome::JoinedAfterWait,
        JoinOutcome::OrderMissing,
        JoinOutcome::CustomerMissing,
        JoinOutcome::OrderAndCustomerMissing,
        JoinOutcome::OrderLineMissing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JoinOutcome::Joined => "joined",
            JoinOutcome::JoinedAfterWait => "joined_after_wait",
            JoinOutcome::OrderMissing => "order_missing",
            JoinOutcome::CustomerMissing => "customer_missing",
            JoinOutcome::OrderAndCustomerMissing => "order_and_customer_missing",
            JoinOutcome::OrderLineMissing => "order_line_missing",
        }
    }
}

/// A risk one event is enough to see, counted in `boomerang_enrich_risk_flags_total`. The
/// ClickHouse object `flagged_cases` applies the same rules per case, beside those that need
/// history (quantity above sold, return velocity, serial returners).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RiskFlag {
    /// A refund or store credit above the units' price on the order line (same currency).
    RefundAboveLineCost,
    /// A return requested after the return window (`--return-window-days` after delivery).
    RequestedAfterWindow,
}

impl RiskFlag {
    pub const ALL: [RiskFlag; 2] = [
        RiskFlag::RefundAboveLineCost,
        RiskFlag::RequestedAfterWindow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RiskFlag::RefundAboveLineCost => "refund_above_line_cost",
            RiskFlag::RequestedAfterWindow => "requested_after_window",
        }
    }
}

/// The one-event risk of an event and what a join added to it, if they show one.
pub fn risk_flag(event: RiskFacts<'_>, enrichment: &Enrichment<'_>) -> Option<RiskFlag> {
    match event.event_type {
        EventType::RefundIssued | EventType::StoreCreditIssued => {
            let (amount, price) = (event.amount?, enrichment.line_unit_price?);
            let cost = price.amount_minor.checked_mul(i64::from(event.quantity))?;
            (amount.currency == price.currency && amount.amount_minor > cost)
                .then_some(RiskFlag::RefundAboveLineCost)
        }
        EventType::ReturnRequested => (enrichment.within_return_window == Some(false))
            .then_some(RiskFlag::RequestedAfterWindow),
        _ => None,
    }
}

/// `event` with what a join added: its PII (`reason_text`) dropped, and its customer id a
/// keyed pseudonym when [`join`] says so. (Enrich's in-place path writes the same bytes
/// without building the event.)
pub fn enriched_event(
    mut event: PostPurchaseEvent,
    enrichment: &Enrichment<'_>,
    pseudonymiser: &Pseudonymiser,
) -> EnrichedPostPurchaseEvent {
    event.reason_text = None;
    if enrichment.customer_pseudonymised {
        event.customer_id = pseudonymiser.pseudonym(&event.customer_id);
    }
    enrichment.apply(event)
}

/// Joins an event with what `lookup` found: what it adds, borrowed from the tables, and how
/// the join ended. Whatever is missing is flagged, never silently null. The customer is
/// pseudonymised (`customer_pseudonymised`) when they withheld consent, or when no CRM record
/// says they gave it.
pub fn join<'tables>(
    event: EventFacts<'_>,
    lookup: &Lookup<'tables>,
    waited: bool,
    settings: &JoinSettings,
    now: TimestampMicros,
) -> (Enrichment<'tables>, JoinOutcome) {
    let customer = lookup.customer;
    let consented = customer.is_some_and(|customer| customer.analytics_consent);
    let order = lookup.order;
    let line = order.and_then(|order| order.line(event.order_line_id));
    let delivered_at = order.and_then(|order| order.delivered_at);
    let days_since_delivery = delivered_at.map(|delivered_at| {
        let days = (event.occurred_at.as_unix_micros() - delivered_at.as_unix_micros())
            .div_euclid(MICROS_PER_DAY);
        i32::try_from(days).unwrap_or(if days < 0 { i32::MIN } else { i32::MAX })
    });
    let outcome = match (order.is_some(), customer.is_some(), line.is_some()) {
        (false, false, _) => JoinOutcome::OrderAndCustomerMissing,
        (false, true, _) => JoinOutcome::OrderMissing,
        (true, false, _) => JoinOutcome::CustomerMissing,
        (true, true, false) => JoinOutcome::OrderLineMissing,
        (true, true, true) if waited => JoinOutcome::JoinedAfterWait,
        (true, true, true) => JoinOutcome::Joined,
    };
    let enrichment = Enrichment {
        customer_missing: customer.is_none(),
        order_missing: order.is_none(),
        order_line_missing: order.is_some() && line.is_none(),
        customer_pseudonymised: !consented,
        customer_segment: customer.map(|customer| &*customer.segment),
        customer_region: customer.map(|customer| &*customer.region),
        order_channel: order.map(|order| order.channel),
        order_placed_at: order.map(|order| order.placed_at),
        order_delivered_at: delivered_at,
        line_category: line.map(|line| &*line.category),
        line_unit_price: line.zip(order).map(|(line, order)| MoneyRef {
            amount_minor: line.unit_price_minor,
            currency: &order.currency,
        }),
        days_since_delivery,
        within_return_window: days_since_delivery.map(|days| days <= settings.return_window_days),
        enriched_at: now,
    };
    (enrichment, outcome)
}

#[cfg(test)]
mod tests {
    use boomerang_schemas::Money;
    use boomerang_testkit::samples::{customer, event, order};

    use super::*;

    fn pseudonymiser() -> Pseudonymiser {
        Pseudonymiser::new(b"0123456789abcdef-test").expect("key")
    }

    fn settings() -> JoinSettings {
        JoinSettings {
            return_window_days: 30,
        }
    }

    fn tables_with(consent: bool, delivered_at: Option<i64>) -> ReferenceTables {
        let mut tables = ReferenceTables::default();
        tables.upsert_customer(ref_key(b"cu-1"), &customer("cu-1", "vip", consent));
        tables.upsert_order(ref_key(b"o-1"), &order("o-1", "cu-1", delivered_at));
        tables
    }

    fn joined(
        tables: &ReferenceTables,
        event: PostPurchaseEvent,
    ) -> (EnrichedPostPurchaseEvent, JoinOutcome) {
        let lookup = Lookup::new(tables, JoinKeys::of(&event));
        let (enrichment, outcome) = join(
            EventFacts::of(&event),
            &lookup,
            false,
            &settings(),
            TimestampMicros::from_unix_micros(7),
        );
        let enriched = enriched_event(event, &enrichment, &pseudonymiser());
        (enriched, outcome)
    }

    /// The one-event risk of an enriched event.
    fn risk_of(enriched: &EnrichedPostPurchaseEvent) -> Option<RiskFlag> {
        risk_flag(RiskFacts::of(&enriched.event), &Enrichment::of(enriched))
    }

    #[test]
    fn a_full_join_adds_everything_and_drops_pii() {
        let day = MICROS_PER_DAY;
        let tables = tables_with(true, Some(10 * day));
        let mut event = event();
        event.order_line_id = "o-1/2".into();
        event.reason_text = Some("my neighbour Ada said".into());
        event.occurred_at = TimestampMicros::from_unix_micros(45 * day + 5);
        let (enriched, outcome) = joined(&tables, event.clone());
        assert_eq!(outcome, JoinOutcome::Joined);
        assert_eq!(enriched.event.reason_text, None);
        assert_eq!(enriched.event.customer_id, "cu-1");
        assert!(!enriched.customer_pseudonymised);
        assert_eq!(enriched.customer_segment.as_deref(), Some("vip"));
        assert_eq!(enriched.customer_region.as_deref(), Some("emea"));
        assert_eq!(
            enriched.order_channel,
            Some(boomerang_schemas::Channel::MobileApp)
        );
        assert_eq!(enriched.line_category.as_deref(), Some("electronics"));
        assert_eq!(enriched.line_unit_price, Some(Money::new(19_900, "EUR")));
        assert_eq!(enriched.days_since_delivery, Some(35));
        assert_eq!(enriched.within_return_window, Some(false));
        assert!(
            !enriched.order_missing && !enriched.customer_missing && !enriched.order_line_missing
        );
        assert_eq!(enriched.enriched_at, TimestampMicros::from_unix_micros(7));
    }

    #[test]
    fn one_event_risks_follow_their_rules() {
        let day = MICROS_PER_DAY;
        let tables = tables_with(true, Some(10 * day));
        let mut request = event();
        request.order_line_id = "o-1/2".into();
        request.event_type = EventType::ReturnRequested;
        request.occurred_at = TimestampMicros::from_unix_micros(45 * day);
        let (late, _) = joined(&tables, request.clone());
        assert_eq!(risk_of(&late), Some(RiskFlag::RequestedAfterWindow));
        request.occurred_at = TimestampMicros::from_unix_micros(40 * day);
        let (in_time, _) = joined(&tables, request.clone());
        assert_eq!(risk_of(&in_time), None, "day 30 after delivery is inside");

        // The line costs 19,900 a unit.
        let mut refund = request;
        refund.event_type = EventType::RefundIssued;
        refund.quantity = 2;
        let flag_for = |amount: Money| {
            let mut refund = refund.clone();
            refund.amount = Some(amount);
            risk_of(&joined(&tables, refund).0)
        };
        assert_eq!(flag_for(Money::new(39_800, "EUR")), None);
        assert_eq!(
            flag_for(Money::new(39_801, "EUR")),
            Some(RiskFlag::RefundAboveLineCost)
        );
        assert_eq!(
            flag_for(Money::new(39_801, "USD")),
            None,
            "another currency"
        );
        let mut unknown_line = refund.clone();
        unknown_line.order_line_id = "o-1/9".into();
        unknown_line.amount = Some(Money::new(1_000_000, "EUR"));
        assert_eq!(risk_of(&joined(&tables, unknown_line).0), None);
    }

    #[test]
    fn without_consent_the_customer_is_a_keyed_pseudonym() {
        let tables = tables_with(false, None);
        let (enriched, _) = joined(&tables, event());
        assert!(enriched.customer_pseudonymised);
        assert_eq!(
            enriched.event.customer_id,
            pseudonymiser().pseudonym("cu-1")
        );
        assert_eq!(enriched.days_since_delivery, None);
        assert_eq!(enriched.within_return_window, None);
    }

    #[test]
    fn missing_reference_data_is_flagged_never_silent() {
        let empty = ReferenceTables::default();
        let (enriched, outcome) = joined(&empty, event());
        assert_eq!(outcome, JoinOutcome::OrderAndCustomerMissing);
        assert!(enriched.order_missing && enriched.customer_missing);
        assert!(
            enriched.customer_pseudonymised,
            "no CRM record: no consent known"
        );

        let tables = tables_with(true, None);
        let mut other_line = event();
        other_line.order_line_id = "o-1/9".into();
        let (enriched, outcome) = joined(&tables, other_line);
        assert_eq!(outcome, JoinOutcome::OrderLineMissing);
        assert!(enriched.order_line_missing && !enriched.order_missing);
        assert_eq!(enriched.line_category, None);
    }
}
