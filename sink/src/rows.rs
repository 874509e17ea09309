//! The rows the sink writes, one type per table (`deploy/clickhouse/migrations/`), built from
//! the decoded Kafka records. Customers are keyed by their keyed pseudonym everywhere, so no raw
//! customer id reaches ClickHouse; CRM PII is never written.

use std::sync::Arc;

use boomerang_runtime::pseudonym::{PseudonymCache, Pseudonymiser};
use boomerang_schemas::{Customer, EnrichedEventRef, Order, TimestampMicros};

use crate::native::NativeBlock;
use compact_str::CompactString;
use serde::Serialize;

/// Where a row came from: the table itself says how far the sink got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source<'a> {
    /// Shared with the record it came from: no copy of the name per row.
    pub topic: &'a Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// The customer's key in ClickHouse: enrich already pseudonymised the id of a customer who
/// withheld consent; everyone else's is pseudonymised here, with the same key. An id that
/// claims to be pseudonymised but does not have a pseudonym's shape (a producer writing to
/// the enriched topic, a bug upstream) is pseudonymised too: a raw id never reaches ClickHouse.
pub fn customer_key(
    customer_id: &str,
    already_pseudonymised: bool,
    pseudonymiser: &Pseudonymiser,
) -> String {
    let mut pseudonyms = PseudonymCache::new(pseudonymiser.clone());
    borrowed_customer_key(customer_id, already_pseudonymised, &mut pseudonyms).to_string()
}

/// [`customer_key`], borrowing an id that is already a pseudonym, and a pseudonym made before
/// from `pseudonyms`.
fn borrowed_customer_key<'a>(
    customer_id: &'a str,
    already_pseudonymised: bool,
    pseudonyms: &'a mut PseudonymCache,
) -> &'a str {
    if already_pseudonymised && Pseudonymiser::looks_like_pseudonym(customer_id) {
        customer_id
    } else {
        pseudonyms.pseudonym(customer_id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct EventRow {
    pub idempotency_key: CompactString,
    pub event_id: CompactString,
    pub event_type: &'static str,
    pub case_id: CompactString,
    pub order_id: CompactString,
    pub order_line_id: CompactString,
    pub customer_key: CompactString,
    pub sku: CompactString,
    pub quantity: i32,
    pub reason: Option<&'static str>,
    pub amount_minor: Option<i64>,
    pub amount_currency: Option<CompactString>,
    pub method: Option<&'static str>,
    pub channel: &'static str,
    pub outcome: &'static str,
    /// DateTime64(6): microseconds since the epoch, UTC.
    pub occurred_at: i64,
    pub source_system: CompactString,
    pub replacement_sku: Option<CompactString>,
    pub warranty_resolution: Option<&'static str>,
    pub disposition: Option<&'static str>,
    pub customer_missing: bool,
    pub order_missing: bool,
    pub order_line_missing: bool,
    pub customer_pseudonymised: bool,
    pub customer_segment: Option<CompactString>,
    pub customer_region: Option<CompactString>,
    pub order_channel: Option<&'static str>,
    pub order_placed_at: Option<i64>,
    pub order_delivered_at: Option<i64>,
    pub line_category: Option<CompactString>,
    pub line_unit_price_minor: Option<i64>,
    pub line_currency: Option<CompactString>,
    pub days_since_delivery: Option<i32>,
    pub within_return_window: Option<bool>,
    pub enriched_at: i64,
    pub source_topic: Arc<str>,
    pub source_partition: i32,
    pub source_offset: i64,
    /// The backfill run that brought a historical event (`boomerang.history`); empty for live
    /// traffic.
    pub backfill_run: CompactString,
}

fn micros(time: TimestampMicros) -> i64 {
    time.as_unix_micros()
}

/// An events-table row borrowed from its enriched event and record: what the sink appends to
/// the batch's Native block as it processes each event, with no owned row in between (building
/// one per event, and moving tens of thousands of them, was a third of the sink's main thread
/// in `perf`). [`EventRow`] is its owned form, for RowBinary inserts.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRowRef<'a> {
    pub idempotency_key: &'a str,
    pub event_id: &'a str,
    pub event_type: &'static str,
    pub case_id: &'a str,
    pub order_id: &'a str,
    pub order_line_id: &'a str,
    /// Pseudonymised here, or already by enrich (borrowed then).
    pub customer_key: &'a str,
    pub sku: &'a str,
    pub quantity: i32,
    pub reason: Option<&'static str>,
    pub amount_minor: Option<i64>,
    pub amount_currency: Option<&'a str>,
    pub method: Option<&'static str>,
    pub channel: &'static str,
    pub outcome: &'static str,
    pub occurred_at: i64,
    pub source_system: &'a str,
    pub replacement_sku: Option<&'a str>,
    pub warranty_resolution: Option<&'static str>,
    pub disposition: Option<&'static str>,
    pub customer_missing: bool,
    pub order_missing: bool,
    pub order_line_missing: bool,
    pub customer_pseudonymised: bool,
    pub customer_segment: Option<&'a str>,
    pub customer_region: Option<&'a str>,
    pub order_channel: Option<&'static str>,
    pub order_placed_at: Option<i64>,
    pub order_delivered_at: Option<i64>,
    pub line_category: Option<&'a str>,
    pub line_unit_price_minor: Option<i64>,
    pub line_currency: Option<&'a str>,
    pub days_since_delivery: Option<i32>,
    pub within_return_window: Option<bool>,
    pub enriched_at: i64,
    /// The record's own name of it, shared by the owned row rather than copied.
    pub source_topic: &'a Arc<str>,
    pub source_partition: i32,
    pub source_offset: i64,
    pub backfill_run: &'a str,
}

impl<'a> EventRowRef<'a> {
    /// The row of an enriched event: read in place from its record (`EnrichedEventRef::read`)
    /// or borrowed from a decoded one (`EnrichedEventRef::of`).
    pub fn new(
        enriched: &EnrichedEventRef<'a>,
        source: &Source<'a>,
        pseudonyms: &'a mut PseudonymCache,
    ) -> Self {
        let event = &enriched.event;
        let enrichment = &enriched.enrichment;
        Self {
            customer_key: borrowed_customer_key(
                event.customer_id,
                enrichment.customer_pseudonymised,
                pseudonyms,
            ),
            idempotency_key: event.idempotency_key,
            event_id: event.event_id,
            event_type: event.event_type.symbol(),
            case_id: event.case_id,
            order_id: event.order_id,
            order_line_id: event.order_line_id,
            sku: event.sku,
            quantity: event.quantity,
            reason: event.reason.map(|reason| reason.symbol()),
            amount_minor: event.amount.map(|money| money.amount_minor),
            amount_currency: event.amount.map(|money| money.currency),
            method: event.method.map(|method| method.symbol()),
            channel: event.channel.symbol(),
            outcome: event.outcome.symbol(),
            occurred_at: micros(event.occurred_at),
            source_system: event.source_system,
            replacement_sku: event.replacement_sku,
            warranty_resolution: event
                .warranty_resolution
                .map(|resolution| resolution.symbol()),
            disposition: event.disposition.map(|disposition| disposition.symbol()),
            customer_missing: enrichment.customer_missing,
            order_missing: enrichment.order_missing,
            order_line_missing: enrichment.order_line_missing,
            customer_pseudonymised: enrichment.customer_pseudonymised,
            customer_segment: enrichment.customer_segment,
            customer_region: enrichment.customer_region,
            order_channel: enrichment.order_channel.map(|channel| channel.symbol()),
            order_placed_at: enrichment.order_placed_at.map(micros),
            order_delivered_at: enrichment.order_delivered_at.map(micros),
            line_category: enrichment.line_category,
            line_unit_price_minor: enrichment.line_unit_price.map(|money| money.amount_minor),
            line_currency: enrichment.line_unit_price.map(|money| money.currency),
            days_since_delivery: enrichment.days_since_delivery,
            within_return_window: enrichment.within_return_window,
            enriched_at: micros(enrichment.enriched_at),
            source_topic: source.topic,
            source_partition: source.partition,
            source_offset: source.offset,
            backfill_run: "",
        }
    }

    /// The owned row, each string copied once.
    pub fn to_owned_row(&self) -> EventRow {
        let owned = |text: Option<&str>| text.map(CompactString::from);
        EventRow {
            idempotency_key: self.idempotency_key.into(),
            event_id: self.event_id.into(),
            event_type: self.event_type,
            case_id: self.case_id.into(),
            order_id: self.order_id.into(),
            order_line_id: self.order_line_id.into(),
            customer_key: self.customer_key.into(),
            sku: self.sku.into(),
            quantity: self.quantity,
            reason: self.reason,
            amount_minor: self.amount_minor,
            amount_currency: owned(self.amount_currency),
            method: self.method,
            channel: self.channel,
            outcome: self.outcome,
            occurred_at: self.occurred_at,
            source_system: self.source_system.into(),
            replacement_sku: owned(self.replacement_sku),
            warranty_resolution: self.warranty_resolution,
            disposition: self.disposition,
            customer_missing: self.customer_missing,
            order_missing: self.order_missing,
            order_line_missing: self.order_line_missing,
            customer_pseudonymised: self.customer_pseudonymised,
            customer_segment: owned(self.customer_segment),
            customer_region: owned(self.customer_region),
            order_channel: self.order_channel,
            order_placed_at: self.order_placed_at,
            order_delivered_at: self.order_delivered_at,
            line_category: owned(self.line_category),
            line_unit_price_minor: self.line_unit_price_minor,
            line_currency: owned(self.line_currency),
            days_since_delivery: self.days_since_delivery,
            within_return_window: self.within_return_window,
            enriched_at: self.enriched_at,
            source_topic: self.source_topic.clone(),
            source_partition: self.source_partition,
            source_offset: self.source_offset,
            backfill_run: self.backfill_run.into(),
        }
    }

    /// Appends this row to a Native block (`native.rs`): every column of the row, in its
    /// declared order, each typed as the events table declares it.
    pub fn append_to(&self, block: &mut NativeBlock) {
        block.string("idempotency_key", self.idempotency_key);
        block.string("event_id", self.event_id);
        block.string("event_type", self.event_type);
        block.string("case_id", self.case_id);
        block.string("order_id", self.order_id);
        block.string("order_line_id", self.order_line_id);
        block.string("customer_key", self.customer_key);
        block.string("sku", self.sku);
        block.int32("quantity", self.quantity);
        block.optional_string("reason", self.reason);
        block.optional_int64("amount_minor", self.amount_minor);
        block.optional_string("amount_currency", self.amount_currency);
        block.optional_string("method", self.method);
        block.string("channel", self.channel);
        block.string("outcome", self.outcome);
        block.micros("occurred_at", self.occurred_at);
        block.string("source_system", self.source_system);
        block.optional_string("replacement_sku", self.replacement_sku);
        block.optional_string("warranty_resolution", self.warranty_resolution);
        block.optional_string("disposition", self.disposition);
        block.boolean("customer_missing", self.customer_missing);
        block.boolean("order_missing", self.order_missing);
        block.boolean("order_line_missing", self.order_line_missing);
        block.boolean("customer_pseudonymised", self.customer_pseudonymised);
        block.optional_string("customer_segment", self.customer_segment);
        block.optional_string("customer_region", self.customer_region);
        block.optional_string("order_channel", self.order_channel);
        block.optional_micros("order_placed_at", self.order_placed_at);
        block.optional_micros("order_delivered_at", self.order_delivered_at);
        block.optional_string("line_category", self.line_category);
        block.optional_int64("line_unit_price_minor", self.line_unit_price_minor);
        block.optional_string("line_currency", self.line_currency);
        block.optional_int32("days_since_delivery", self.days_since_delivery);
        block.optional_boolean("within_return_window", self.within_return_window);
        block.micros("enriched_at", self.enriched_at);
        block.string("source_topic", self.source_topic);
        block.int32("source_partition", self.source_partition);
        block.int64("source_offset", self.source_offset);
        block.string("backfill_run", self.backfill_run);
        block.end_row();
    }
}

impl EventRow {
    /// The owned row of an enriched event (see [`EventRowRef::new`]).
    pub fn new(
        enriched: &EnrichedEventRef<'_>,
        source: &Source<'_>,
        pseudonyms: &mut PseudonymCache,
    ) -> Self {
        EventRowRef::new(enriched, source, pseudonyms).to_owned_row()
    }

    /// This row, borrowed.
    pub fn as_ref(&self) -> EventRowRef<'_> {
        fn text(text: &Option<CompactString>) -> Option<&str> {
            text.as_deref()
        }
        EventRowRef {
            idempotency_key: &self.idempotency_key,
            event_id: &self.event_id,
            event_type: self.event_type,
            case_id: &self.case_id,
            order_id: &self.order_id,
            order_line_id: &self.order_line_id,
            customer_key: &self.customer_key,
            sku: &self.sku,
            quantity: self.quantity,
            reason: self.reason,
            amount_minor: self.amount_minor,
            amount_currency: text(&self.amount_currency),
            method: self.method,
            channel: self.channel,
            outcome: self.outcome,
            occurred_at: self.occurred_at,
            source_system: &self.source_system,
            replacement_sku: text(&self.replacement_sku),
            warranty_resolution: self.warranty_resolution,
            disposition: self.disposition,
            customer_missing: self.customer_missing,
            order_missing: self.order_missing,
            order_line_missing: self.order_line_missing,
            customer_pseudonymised: self.customer_pseudonymised,
            customer_segment: text(&self.customer_segment),
            customer_region: text(&self.customer_region),
            order_channel: self.order_channel,
            order_placed_at: self.order_placed_at,
            order_delivered_at: self.order_delivered_at,
            line_category: text(&self.line_category),
            line_unit_price_minor: self.line_unit_price_minor,
            line_currency: text(&self.line_currency),
            days_since_delivery: self.days_since_delivery,
            within_return_window: self.within_return_window,
            enriched_at: self.enriched_at,
            source_topic: &self.source_topic,
            source_partition: self.source_partition,
            source_offset: self.source_offset,
            backfill_run: &self.backfill_run,
        }
    }

    /// Appends this row to a Native block (see [`EventRowRef::append_to`]).
    pub fn append_to(&self, block: &mut NativeBlock) {
        self.as_ref().append_to(block);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct OrderRow {
    pub order_id: String,
    pub customer_key: String,
    pub channel: &'static str,
    pub currency: String,
    pub placed_at: i64,
    pub delivered_at: Option<i64>,
    pub updated_at: i64,
    pub line_ids: Vec<String>,
    pub line_skus: Vec<String>,
    pub line_categories: Vec<String>,
    pub line_quantities: Vec<i32>,
    pub line_unit_prices_minor: Vec<i64>,
    pub is_deleted: u8,
    pub source_topic: Arc<str>,
    pub source_partition: i32,
    pub source_offset: i64,
}

impl OrderRow {
    pub fn new(order: Order, source: &Source<'_>, pseudonymiser: &Pseudonymiser) -> Self {
        let mut row = Self {
            customer_key: pseudonymiser.pseudonym(&order.customer_id),
            order_id: order.order_id,
            channel: order.channel.symbol(),
            currency: order.currency,
            placed_at: micros(order.placed_at),
            delivered_at: order.delivered_at.map(micros),
            updated_at: micros(order.updated_at),
            line_ids: Vec::with_capacity(order.lines.len()),
            line_skus: Vec::with_capacity(order.lines.len()),
            line_categories: Vec::with_capacity(order.lines.len()),
            line_quantities: Vec::with_capacity(order.lines.len()),
            line_unit_prices_minor: Vec::with_capacity(order.lines.len()),
            is_deleted: 0,
            source_topic: source.topic.clone(),
            source_partition: source.partition,
            source_offset: source.offset,
        };
        for line in order.lines {
            row.line_ids.push(line.order_line_id);
            row.line_skus.push(line.sku);
            row.line_categories.push(line.category);
            row.line_quantities.push(line.quantity);
            row.line_unit_prices_minor.push(line.unit_price_minor);
        }
        row
    }

    /// A tombstone: the order is gone.
    pub fn deleted(order_id: String, source: &Source<'_>) -> Self {
        Self {
            order_id,
            customer_key: String::new(),
            channel: "",
            currency: String::new(),
            placed_at: 0,
            delivered_at: None,
            updated_at: 0,
            line_ids: Vec::new(),
            line_skus: Vec::new(),
            line_categories: Vec::new(),
            line_quantities: Vec::new(),
            line_unit_prices_minor: Vec::new(),
            is_deleted: 1,
            source_topic: source.topic.clone(),
            source_partition: source.partition,
            source_offset: source.offset,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct CustomerRow {
    pub customer_key: String,
    pub segment: String,
    pub region: String,
    pub country: String,
    pub analytics_consent: bool,
    pub updated_at: i64,
    pub is_deleted: u8,
    pub source_topic: Arc<str>,
    pub source_partition: i32,
    pub source_offset: i64,
}

impl CustomerRow {
    /// Without the CRM's PII: `email` and `full_name` are dropped here.
    pub fn new(customer: Customer, source: &Source<'_>, pseudonymiser: &Pseudonymiser) -> Self {
        Self {
            customer_key: pseudonymiser.pseudonym(&customer.customer_id),
            segment: customer.segment,
            region: customer.region,
            country: customer.country,
            analytics_consent: customer.analytics_consent,
            updated_at: micros(customer.updated_at),
            is_deleted: 0,
            source_topic: source.topic.clone(),
            source_partition: source.partition,
            source_offset: source.offset,
        }
    }

    pub fn deleted(customer_id: &str, source: &Source<'_>, pseudonymiser: &Pseudonymiser) -> Self {
        Self {
            customer_key: pseudonymiser.pseudonym(customer_id),
            segment: String::new(),
            region: String::new(),
            country: String::new(),
            analytics_consent: false,
            updated_at: 0,
            is_deleted: 1,
            source_topic: source.topic.clone(),
            source_partition: source.partition,
            source_offset: source.offset,
        }
    }
}

#[cfg(test)]
impl EventRowRef<'static> {
    /// A row with a value in every column, for tests to vary.
    pub(crate) fn example() -> Self {
        Self {
            idempotency_key: "key",
            event_id: "event",
            event_type: "RETURN_REQUESTED",
            case_id: "case",
            order_id: "order",
            order_line_id: "line",
            customer_key: "p_customer",
            sku: "sku",
            quantity: 1,
            reason: Some("DAMAGED"),
            amount_minor: Some(2_999),
            amount_currency: Some("EUR"),
            method: None,
            channel: "WEB",
            outcome: "APPROVED",
            occurred_at: 1_780_000_000_000_000,
            source_system: "portal",
            replacement_sku: None,
            warranty_resolution: None,
            disposition: Some("RESTOCK"),
            customer_missing: false,
            order_missing: false,
            order_line_missing: true,
            customer_pseudonymised: false,
            customer_segment: Some("vip"),
            customer_region: None,
            order_channel: Some("WEB"),
            order_placed_at: Some(1_779_000_000_000_000),
            order_delivered_at: None,
            line_category: None,
            line_unit_price_minor: None,
            line_currency: None,
            days_since_delivery: Some(3),
            within_return_window: Some(true),
            enriched_at: 1_780_000_000_000_005,
            source_topic: {
                static TOPIC: std::sync::LazyLock<Arc<str>> =
                    std::sync::LazyLock::new(|| Arc::from("enriched"));
                &TOPIC
            },
            source_partition: 0,
            source_offset: 0,
            backfill_run: "",
        }
    }
}

#[cfg(test)]
mod tests {
    use boomerang_schemas::{EnrichedEventRef, EnrichedPostPurchaseEvent, Money};
    use boomerang_testkit::samples::{customer, event, order};

    use super::*;

    /// Found by the sink_rows fuzz target: an enriched event claiming a pseudonymised
    /// customer with an id that is not a pseudonym (there, an empty one) was stored as is.
    #[test]
    fn a_claimed_pseudonym_that_is_not_one_is_pseudonymised() {
        let pseudonymiser = Pseudonymiser::new(b"a-long-enough-key-for-tests").expect("key");
        let real = pseudonymiser.pseudonym("cus-1");
        assert_eq!(customer_key(&real, true, &pseudonymiser), real);
        for claimed in ["", "cus-1", "p_not-hex"] {
            let key = customer_key(claimed, true, &pseudonymiser);
            assert_eq!(key, pseudonymiser.pseudonym(claimed));
            assert_ne!(key, claimed);
        }
    }

    fn pseudonymiser() -> Pseudonymiser {
        Pseudonymiser::new(b"0123456789abcdef-rows").expect("key")
    }

    fn source() -> Source<'static> {
        static TOPIC: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("t"));
        Source {
            topic: &TOPIC,
            partition: 2,
            offset: 40,
        }
    }

    #[test]
    fn every_customer_is_keyed_by_the_same_pseudonym() {
        let pseudonymiser = pseudonymiser();
        let order = OrderRow::new(order("o-1", "cu-1", None), &source(), &pseudonymiser);
        let customer = CustomerRow::new(customer("cu-1", "vip", true), &source(), &pseudonymiser);
        assert_eq!(order.customer_key, customer.customer_key);
        assert_ne!(order.customer_key, "cu-1");
        let deleted = CustomerRow::deleted("cu-1", &source(), &pseudonymiser);
        assert_eq!(deleted.customer_key, customer.customer_key);
        assert_eq!(deleted.is_deleted, 1);
        // An event as enrich publishes it: for a consenting customer, the raw id…
        let mut enriched = enriched(event());
        let mut pseudonyms = PseudonymCache::new(pseudonymiser.clone());
        let row = EventRow::new(&EnrichedEventRef::of(&enriched), &source(), &mut pseudonyms);
        assert_eq!(row.customer_key, customer.customer_key);
        // …and for one who withheld consent, the pseudonym enrich already applied.
        enriched.event.customer_id = pseudonymiser.pseudonym("cu-1");
        enriched.customer_pseudonymised = true;
        let row = EventRow::new(&EnrichedEventRef::of(&enriched), &source(), &mut pseudonyms);
        assert_eq!(row.customer_key, customer.customer_key);
    }

    #[test]
    fn money_is_split_into_minor_units_and_currency() {
        let mut event = event();
        event.amount = Some(Money::new(12_345, "JPY"));
        let mut enriched = enriched(event);
        enriched.line_unit_price = Some(Money::new(2_999, "EUR"));
        let row = EventRow::new(
            &EnrichedEventRef::of(&enriched),
            &source(),
            &mut PseudonymCache::new(pseudonymiser()),
        );
        assert_eq!(
            (row.amount_minor, row.amount_currency.as_deref()),
            (Some(12_345), Some("JPY"))
        );
        assert_eq!(
            (row.line_unit_price_minor, row.line_currency.as_deref()),
            (Some(2_999), Some("EUR"))
        );
        assert_eq!((row.source_partition, row.source_offset), (2, 40));
        assert_eq!(row.event_type, "RETURN_REQUESTED");
    }

    #[test]
    fn a_native_block_has_every_column_of_the_row_in_its_order() {
        let row = EventRow::new(
            &EnrichedEventRef::of(&enriched(event())),
            &source(),
            &mut PseudonymCache::new(pseudonymiser()),
        );
        let mut block = NativeBlock::new();
        row.append_to(&mut block);
        row.append_to(&mut block);
        assert_eq!(block.rows(), 2);
        assert_eq!(
            block.column_names().collect::<Vec<_>>(),
            <EventRow as clickhouse::Row>::COLUMN_NAMES
        );
        assert!(block.finish().is_ok());
    }

    #[test]
    fn order_lines_become_parallel_arrays() {
        let row = OrderRow::new(order("o-1", "cu-1", Some(5)), &source(), &pseudonymiser());
        assert_eq!(row.line_ids, vec!["o-1/1", "o-1/2"]);
        assert_eq!(row.line_categories, vec!["apparel", "electronics"]);
        assert_eq!(row.line_quantities, vec![2, 1]);
        assert_eq!(row.line_unit_prices_minor, vec![2_999, 19_900]);
        assert_eq!(row.delivered_at, Some(5));
    }

    fn enriched(event: boomerang_schemas::PostPurchaseEvent) -> EnrichedPostPurchaseEvent {
        EnrichedPostPurchaseEvent {
            customer_segment: Some("vip".into()),
            line_category: Some("apparel".into()),
            enriched_at: TimestampMicros::from_unix_micros(9),
            ..boomerang_testkit::samples::enriched(event)
        }
    }
}
