//! The topics Boomerang reads and writes, and the schema each one carries.

use boomerang_schemas::SchemaKind;

#[derive(Debug, Clone, clap::Args)]
pub struct TopicsArgs {
    /// Raw events as platforms publish them (Confluent-framed Avro).
    #[arg(
        long = "raw-events-topic",
        env = "BOOMERANG_RAW_EVENTS_TOPIC",
        default_value = "boomerang.post-purchase.raw"
    )]
    pub raw_events: String,

    /// Events ingest validated and de-duplicated.
    #[arg(
        long = "validated-events-topic",
        env = "BOOMERANG_VALIDATED_EVENTS_TOPIC",
        default_value = "boomerang.post-purchase.validated"
    )]
    pub validated_events: String,

    /// Events enrich joined with reference data.
    #[arg(
        long = "enriched-events-topic",
        env = "BOOMERANG_ENRICHED_EVENTS_TOPIC",
        default_value = "boomerang.post-purchase.enriched"
    )]
    pub enriched_events: String,

    /// CRM customers, keyed by customer id (compacted).
    #[arg(
        long = "customers-topic",
        env = "BOOMERANG_CUSTOMERS_TOPIC",
        default_value = "boomerang.crm.customers"
    )]
    pub customers: String,

    /// Orders with their lines, keyed by order id (compacted).
    #[arg(
        long = "orders-topic",
        env = "BOOMERANG_ORDERS_TOPIC",
        default_value = "boomerang.oms.orders"
    )]
    pub orders: String,

    /// Customers' requests to be forgotten, keyed by customer id. Keep them at least as long
    /// as the event topics keep events: enrich drops a replayed event of an erased customer
    /// only while it still reads the request.
    #[arg(
        long = "erasure-requests-topic",
        env = "BOOMERANG_ERASURE_REQUESTS_TOPIC",
        default_value = "boomerang.privacy.erasure-requests"
    )]
    pub erasure_requests: String,

    /// Everything a stage could not process, with its original bytes and the reason.
    #[arg(
        long = "dead-letter-topic",
        env = "BOOMERANG_DEAD_LETTER_TOPIC",
        default_value = "boomerang.dead-letter"
    )]
    pub dead_letter: String,
}

impl TopicsArgs {
    /// Every topic whose values are Avro, with its schema. Keys are plain UTF-8 ids.
    pub fn value_schemas(&self) -> Vec<(&str, SchemaKind)> {
        vec![
            (self.raw_events.as_str(), SchemaKind::PostPurchaseEvent),
            (
                self.validated_events.as_str(),
                SchemaKind::PostPurchaseEvent,
            ),
            (
                self.enriched_events.as_str(),
                SchemaKind::EnrichedPostPurchaseEvent,
            ),
            (self.customers.as_str(), SchemaKind::Customer),
            (self.orders.as_str(), SchemaKind::Order),
            (self.erasure_requests.as_str(), SchemaKind::ErasureRequest),
        ]
    }

    /// Every topic name with a prefix, for tests and side-by-side deployments.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            raw_events: format!("{prefix}.post-purchase.raw"),
            validated_events: format!("{prefix}.post-purchase.validated"),
            enriched_events: format!("{prefix}.post-purchase.enriched"),
            customers: format!("{prefix}.crm.customers"),
            orders: format!("{prefix}.oms.orders"),
            erasure_requests: format!("{prefix}.privacy.erasure-requests"),
            dead_letter: format!("{prefix}.dead-letter"),
        }
    }
}

/// The subject of a topic's value schema under the TopicNameStrategy.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}
