-- The sink's tables. Every row keeps the Kafka record it came from (source_topic,
-- source_partition, source_offset): the table itself says how far the sink got, which is how a
-- restarted sink skips what is already here. Times are UTC, microseconds; money is an integer
-- amount in the currency's minor unit and an ISO 4217 code.

-- One row per idempotency key, eventually: ReplacingMergeTree keeps the latest enrichment of an
-- event that reached ClickHouse twice (an upstream replay); queries use FINAL.
CREATE TABLE IF NOT EXISTS post_purchase_events
(
    idempotency_key String,
    event_id String,
    event_type LowCardinality(String),
    case_id String,
    order_id String,
    order_line_id String,
    -- Keyed pseudonym of the customer (never the raw id): joins with customers and orders.
    customer_key String,
    sku String,
    quantity Int32,
    reason LowCardinality(Nullable(String)),
    amount_minor Nullable(Int64),
    amount_currency LowCardinality(Nullable(String)),
    method LowCardinality(Nullable(String)),
    channel LowCardinality(String),
    outcome LowCardinality(String),
    occurred_at DateTime64(6, 'UTC'),
    source_system LowCardinality(String),
    replacement_sku Nullable(String),
    warranty_resolution LowCardinality(Nullable(String)),
    disposition LowCardinality(Nullable(String)),
    customer_missing Bool,
    order_missing Bool,
    order_line_missing Bool,
    customer_pseudonymised Bool,
    customer_segment LowCardinality(Nullable(String)),
    customer_region LowCardinality(Nullable(String)),
    order_channel LowCardinality(Nullable(String)),
    order_placed_at Nullable(DateTime64(6, 'UTC')),
    order_delivered_at Nullable(DateTime64(6, 'UTC')),
    line_category LowCardinality(Nullable(String)),
    line_unit_price_minor Nullable(Int64),
    line_currency LowCardinality(Nullable(String)),
    days_since_delivery Nullable(Int32),
    within_return_window Nullable(Bool),
    enriched_at DateTime64(6, 'UTC'),
    source_topic LowCardinality(String),
    source_partition Int32,
    source_offset Int64,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX source_offset_minmax source_offset TYPE minmax GRANULARITY 1,
    CONSTRAINT quantity_positive CHECK quantity > 0
)
ENGINE = ReplacingMergeTree(enriched_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY idempotency_key
-- Retention: `boomerang migrate --retention-days N` changes it.
TTL toDateTime(occurred_at) + INTERVAL 1095 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Orders as the orders topic says, one row per order version, lines as parallel arrays (a
-- tombstone or an update replaces the whole order, lines included). The latest version per
-- order wins (source_offset grows per key: one key, one partition); is_deleted marks tombstones.
CREATE TABLE IF NOT EXISTS orders
(
    order_id String,
    customer_key String,
    channel LowCardinality(String),
    currency LowCardinality(String),
    placed_at DateTime64(6, 'UTC'),
    delivered_at Nullable(DateTime64(6, 'UTC')),
    updated_at DateTime64(6, 'UTC'),
    line_ids Array(String),
    line_skus Array(String),
    line_categories Array(LowCardinality(String)),
    line_quantities Array(Int32),
    line_unit_prices_minor Array(Int64),
    is_deleted UInt8,
    source_topic LowCardinality(String),
    source_partition Int32,
    source_offset Int64,
    version UInt64 MATERIALIZED toUInt64(source_offset),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX source_offset_minmax source_offset TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY order_id
SETTINGS non_replicated_deduplication_window = 1000;

-- Customers without their PII (no e-mail, no name): what return rates by segment need.
CREATE TABLE IF NOT EXISTS customers
(
    customer_key String,
    segment LowCardinality(String),
    region LowCardinality(String),
    country LowCardinality(String),
    analytics_consent Bool,
    updated_at DateTime64(6, 'UTC'),
    is_deleted UInt8,
    source_topic LowCardinality(String),
    source_partition Int32,
    source_offset Int64,
    version UInt64 MATERIALIZED toUInt64(source_offset),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX source_offset_minmax source_offset TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY customer_key
SETTINGS non_replicated_deduplication_window = 1000;
