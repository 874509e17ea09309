-- Erasure requests (a customer's right to be forgotten), as the sink applies them.
--
-- The sink anonymises an erased customer's rows: each identifier (idempotency key, event, case,
-- order and line ids, customer key) is replaced by a token keyed by the request's random salt,
-- so that the rows still join up with each other (return rates, refund times and exchange
-- figures stay what they were) but nothing in them leads back to the person. See the README's
-- data map and erasure runbook.

-- One row per pass of the sink over one request: `first` when it reads the request, `settled`
-- once events already on their way when the request came have landed and been anonymised too.
-- Never the customer's id, pseudonym or salt.
CREATE TABLE IF NOT EXISTS erasure_audit
(
    request_id String,
    requested_at DateTime64(6, 'UTC'),
    requested_by String,
    pass LowCardinality(String),
    applied_at DateTime64(6, 'UTC'),
    events_rows UInt64,
    orders_rows UInt64,
    customers_rows UInt64
)
ENGINE = MergeTree
ORDER BY (request_id, applied_at);

-- Each request, in one row: when it came and was done, and how many rows it anonymised.
CREATE VIEW IF NOT EXISTS erasure_requests AS
SELECT
    request_id,
    min(requested_at) AS requested_at,
    any(requested_by) AS requested_by,
    minIf(applied_at, pass = 'first') AS first_applied_at,
    maxIf(applied_at, pass = 'settled') AS settled_at,
    countIf(pass = 'settled') > 0 AS complete,
    sum(events_rows) AS events_rows,
    sum(orders_rows) AS orders_rows,
    sum(customers_rows) AS customers_rows
FROM erasure_audit
GROUP BY request_id;

-- Finding one customer's rows without reading every row: the customer key is not in the
-- sorting key of these tables.
ALTER TABLE post_purchase_events ADD INDEX IF NOT EXISTS customer_key_bloom customer_key TYPE bloom_filter GRANULARITY 1;

ALTER TABLE orders ADD INDEX IF NOT EXISTS customer_key_bloom customer_key TYPE bloom_filter GRANULARITY 1;

ALTER TABLE post_purchase_events MATERIALIZE INDEX customer_key_bloom;

ALTER TABLE orders MATERIALIZE INDEX customer_key_bloom;
