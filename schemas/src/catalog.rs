//! Every Avro schema Boomerang owns, parsed once, with its earlier versions and PII fields.
//!
//! The `.avsc` files under `schemas/avro/` are the source of truth; they are compiled into the
//! binaries so that a stage and the schemas it was tested with cannot drift apart.

use std::sync::LazyLock;

use apache_avro::Schema;

/// The record types that travel on Boomerang's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaKind {
    /// Raw and validated events.
    PostPurchaseEvent,
    /// The CRM's customers (reference data).
    Customer,
    /// The order system's orders with their lines (reference data).
    Order,
    /// What enrich emits.
    EnrichedPostPurchaseEvent,
    /// A customer's request to be forgotten.
    ErasureRequest,
}

const POST_PURCHASE_EVENT: &str = include_str!("../avro/post_purchase_event.avsc");
const POST_PURCHASE_EVENT_V1: &str = include_str!("../avro/history/post_purchase_event.v1.avsc");
const CUSTOMER: &str = include_str!("../avro/customer.avsc");
const ORDER: &str = include_str!("../avro/order.avsc");
const ENRICHED_POST_PURCHASE_EVENT: &str =
    include_str!("../avro/enriched_post_purchase_event.avsc");
const ERASURE_REQUEST: &str = include_str!("../avro/erasure_request.avsc");

fn parse(kind: SchemaKind) -> Schema {
    // Invariant: the .avsc files are compiled in, and `every_schema_parses` proves they parse.
    Schema::parse_str(kind.avsc())
        .unwrap_or_else(|error| panic!("{} does not parse: {error}", kind.file_name()))
}

static POST_PURCHASE_EVENT_SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| parse(SchemaKind::PostPurchaseEvent));
static CUSTOMER_SCHEMA: LazyLock<Schema> = LazyLock::new(|| parse(SchemaKind::Customer));
static ORDER_SCHEMA: LazyLock<Schema> = LazyLock::new(|| parse(SchemaKind::Order));
static ENRICHED_POST_PURCHASE_EVENT_SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| parse(SchemaKind::EnrichedPostPurchaseEvent));
static ERASURE_REQUEST_SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| parse(SchemaKind::ErasureRequest));

impl SchemaKind {
    pub const ALL: [SchemaKind; 5] = [
        SchemaKind::PostPurchaseEvent,
        SchemaKind::Customer,
        SchemaKind::Order,
        SchemaKind::EnrichedPostPurchaseEvent,
        SchemaKind::ErasureRequest,
    ];

    /// Position in [`SchemaKind::ALL`].
    pub fn index(self) -> usize {
        match self {
            SchemaKind::PostPurchaseEvent => 0,
            SchemaKind::Customer => 1,
            SchemaKind::Order => 2,
            SchemaKind::EnrichedPostPurchaseEvent => 3,
            SchemaKind::ErasureRequest => 4,
        }
    }

    /// The record's full Avro name, e.g. `boomerang.PostPurchaseEvent`.
    pub fn full_name(self) -> &'static str {
        match self {
            SchemaKind::PostPurchaseEvent => "boomerang.PostPurchaseEvent",
            SchemaKind::Customer => "boomerang.crm.Customer",
            SchemaKind::Order => "boomerang.oms.Order",
            SchemaKind::EnrichedPostPurchaseEvent => "boomerang.EnrichedPostPurchaseEvent",
            SchemaKind::ErasureRequest => "boomerang.privacy.ErasureRequest",
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            SchemaKind::PostPurchaseEvent => "post_purchase_event.avsc",
            SchemaKind::Customer => "customer.avsc",
            SchemaKind::Order => "order.avsc",
            SchemaKind::EnrichedPostPurchaseEvent => "enriched_post_purchase_event.avsc",
            SchemaKind::ErasureRequest => "erasure_request.avsc",
        }
    }

    /// The current version's schema text, as registered in a schema registry.
    pub fn avsc(self) -> &'static str {
        match self {
            SchemaKind::PostPurchaseEvent => POST_PURCHASE_EVENT,
            SchemaKind::Customer => CUSTOMER,
            SchemaKind::Order => ORDER,
            SchemaKind::EnrichedPostPurchaseEvent => ENRICHED_POST_PURCHASE_EVENT,
            SchemaKind::ErasureRequest => ERASURE_REQUEST,
        }
    }

    /// Earlier versions, oldest first. Registering them before the current version gives a
    /// registry the real history, so producers still on an old version keep working.
    pub fn history(self) -> &'static [&'static str] {
        match self {
            SchemaKind::PostPurchaseEvent => &[POST_PURCHASE_EVENT_V1],
            SchemaKind::Customer
            | SchemaKind::Order
            | SchemaKind::EnrichedPostPurchaseEvent
            | SchemaKind::ErasureRequest => &[],
        }
    }

    /// The current version, parsed.
    pub fn schema(self) -> &'static Schema {
        match self {
            SchemaKind::PostPurchaseEvent => &POST_PURCHASE_EVENT_SCHEMA,
            SchemaKind::Customer => &CUSTOMER_SCHEMA,
            SchemaKind::Order => &ORDER_SCHEMA,
            SchemaKind::EnrichedPostPurchaseEvent => &ENRICHED_POST_PURCHASE_EVENT_SCHEMA,
            SchemaKind::ErasureRequest => &ERASURE_REQUEST_SCHEMA,
        }
    }

    /// Top-level fields marked `"pii": true`: personal data that must not leave enrich.
    pub fn pii_fields(self) -> Vec<&'static str> {
        let Schema::Record(record) = self.schema() else {
            return Vec::new();
        };
        record
            .fields
            .iter()
            .filter(|field| {
                field.custom_attributes.get("pii") == Some(&serde_json::Value::Bool(true))
            })
            .map(|field| field.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::schema_compatibility::SchemaCompatibility;

    use super::*;

    #[test]
    fn every_schema_parses_and_is_named_as_catalogued() {
        for kind in SchemaKind::ALL {
            let Schema::Record(record) = kind.schema() else {
                panic!("{} is not a record", kind.file_name());
            };
            assert_eq!(record.name.fullname(None), kind.full_name());
        }
    }

    #[test]
    fn index_is_the_position_in_all() {
        for (position, kind) in SchemaKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), position);
        }
    }

    #[test]
    fn pii_fields_are_the_marked_ones() {
        assert_eq!(
            SchemaKind::Customer.pii_fields(),
            vec!["email", "full_name"]
        );
        assert_eq!(
            SchemaKind::PostPurchaseEvent.pii_fields(),
            vec!["reason_text"]
        );
        assert!(SchemaKind::Order.pii_fields().is_empty());
    }

    #[test]
    fn every_earlier_version_is_readable_by_the_current_one() {
        for kind in SchemaKind::ALL {
            for earlier in kind.history() {
                let earlier = Schema::parse_str(earlier).expect("history schema parses");
                SchemaCompatibility::can_read(&earlier, kind.schema()).unwrap_or_else(|error| {
                    panic!(
                        "{} cannot read its earlier version: {error}",
                        kind.file_name()
                    )
                });
            }
        }
    }

    /// The enriched schema embeds the event schema; this catches the two drifting apart.
    #[test]
    fn enriched_event_embeds_the_current_event_schema() {
        let Schema::Record(enriched) = SchemaKind::EnrichedPostPurchaseEvent.schema() else {
            panic!("enriched schema is not a record");
        };
        let event_field = enriched
            .fields
            .iter()
            .find(|field| field.name == "event")
            .expect("enriched schema has an event field");
        assert_eq!(&event_field.schema, SchemaKind::PostPurchaseEvent.schema());
    }
}
