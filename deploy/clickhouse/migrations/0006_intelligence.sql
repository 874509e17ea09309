-- Post-purchase intelligence beyond the return rate: one row per case (`case_facts`), and on
-- it repeat purchase, the money of returns, operations times, dispositions, risk flags, the
-- refund SLA, and the data-quality object that lists every case a definition leaves out or
-- finds in conflict. Definitions, in one sentence each, are in the README ("Analytics").
--
-- How they stay fast: computed over the whole history at query time, one case's facts cost
-- ClickHouse a GROUP BY over every event (8 s at 10M events on two cores). So the views read
-- stores instead — `cases_store` (one row per case), `customers_store` (one per customer) and
-- `sales_store` (units sold and returned per day and dimensions) — which the sink keeps fresh
-- (`clickhouse/src/analytics_refresh.rs`): every insert into the events, orders or customers table
-- marks its customers in `analytics_dirty` (materialized views below); the sink recomputes
-- every store row of those customers from the tables as they are then — the cases from their
-- events, de-duplicated by idempotency key as FINAL would, the lines from the orders' latest
-- versions, the days their orders fall on — and inserts it with a newer version. A store row
-- is so always a function of the tables, whatever arrived twice, late or out of order: exact
-- under duplicates and replays, and fresh within the refresh interval. The earlier analytics
-- views (`return_rates`, `refund_times`, …) read the stores too, by the same definitions.
--
-- Rules for data that disagrees with itself (each case concerned is listed in
-- `data_quality_cases` under the kind named here):
--   * A case's request is its FIRST `RETURN_REQUESTED` (by time, then idempotency key): its
--     quantity, reason, method and return-window flag are the case's. A second request under
--     another key does not count twice (`duplicate_return_request`).
--   * A case's return method is its first request's; a case whose request and label name
--     different methods keeps the request's (`mixed_return_methods`).
--   * A rejected case has no refund time and returns no unit, even if a refund follows
--     (`refund_on_rejected_case`); the money moved still counts in `return_value`.
--   * A time span that comes out negative (a producer's clock put the later step first) is
--     left out of every quantile (`refund_before_request`, `received_before_request`,
--     `inspected_before_received`, `refund_before_received`).
--   * A return on an order line ClickHouse does not hold has no sale to be a share of: it is
--     outside `return_rates` (`return_on_unknown_order_line`).
--   * Events of a case with no opening event (request or filing) belong to no case figure
--     (`case_without_request`).
--   * A completed exchange on a line enrich did not find has no known value: it is outside
--     `return_value` (`exchange_without_line_price`).

-- Tunable thresholds, read by the views. The sink writes `refund_sla_hours` from its
-- `--refund-sla-hours` at start, so the stream's gauge and these views use one target; change
-- the others with an INSERT (the newest row per name wins).
CREATE TABLE IF NOT EXISTS analytics_settings
(
    name String,
    value Int64,
    updated_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY name;

INSERT INTO analytics_settings (name, value)
SELECT name, value
FROM
(
    SELECT arrayJoin([
        ('refund_sla_hours', 72),
        ('velocity_7d_cases', 3),
        ('velocity_90d_cases', 6),
        ('serial_returner_rate_percent', 50),
        ('serial_returner_min_units', 4)
    ]) AS setting, setting.1 AS name, setting.2 AS value
)
WHERE name NOT IN (SELECT name FROM analytics_settings);

-- Which customers' store rows are out of date: one row per customer per insert into the
-- events, orders or customers table (and per erasure, written by the sink). The sink's
-- refresher reads it from where it got to.
CREATE TABLE IF NOT EXISTS analytics_dirty
(
    customer_key String,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = MergeTree
ORDER BY inserted_at
TTL toDateTime(inserted_at) + INTERVAL 7 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics_dirty_events_mv TO analytics_dirty AS
SELECT DISTINCT customer_key FROM post_purchase_events;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics_dirty_orders_mv TO analytics_dirty AS
SELECT DISTINCT customer_key FROM orders;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics_dirty_customers_mv TO analytics_dirty AS
SELECT DISTINCT customer_key FROM customers;

-- What the tables held before this migration: every customer, once.
INSERT INTO analytics_dirty (customer_key)
SELECT DISTINCT customer_key
FROM
(
    SELECT customer_key FROM post_purchase_events
    UNION ALL
    SELECT customer_key FROM orders
    UNION ALL
    SELECT customer_key FROM customers
);

-- One refresh: the customers it recomputes and the days whose sales it recomputes.
CREATE TABLE IF NOT EXISTS analytics_refresh_batch
(
    batch UInt64,
    customer_key String
)
ENGINE = MergeTree
ORDER BY (batch, customer_key)
TTL toDateTime(intDiv(batch, 1000000)) + INTERVAL 1 DAY;

CREATE TABLE IF NOT EXISTS analytics_refresh_days
(
    batch UInt64,
    day Date
)
ENGINE = MergeTree
ORDER BY (batch, day)
TTL toDateTime(intDiv(batch, 1000000)) + INTERVAL 1 DAY;

-- How far the refresher got: `refreshed_through` (every dirty mark inserted up to then is
-- refreshed) and `refreshed_at` (when its last refresh read the tables).
CREATE TABLE IF NOT EXISTS analytics_refresh_state
(
    name String,
    value DateTime64(6, 'UTC'),
    updated_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY name;

-- One row per case: its facts, the line it is about as the orders table holds it now, and
-- what the other cases of its customer and line say. Latest `refreshed_at` wins; a case whose
-- events are gone (an erasure) gets an `is_deleted` row.
CREATE TABLE IF NOT EXISTS cases_store
(
    case_id String,
    customer_key String,
    refreshed_at DateTime64(6, 'UTC'),
    is_deleted UInt8,
    kind String,
    order_id String,
    order_line_id String,
    channel String,
    sku String,
    quantity Int32,
    reason Nullable(String),
    method String,
    within_return_window Nullable(Bool),
    category String,
    opened_at DateTime64(6, 'UTC'),
    return_requests UInt64,
    return_methods UInt64,
    rejected Bool,
    received_at Nullable(DateTime64(6, 'UTC')),
    inspected_at Nullable(DateTime64(6, 'UTC')),
    disposition Nullable(String),
    refunded_at Nullable(DateTime64(6, 'UTC')),
    refund_minor Int64,
    store_credit_minor Int64,
    -- Each money event: its day, type, category, channel, currency and value (refunds and
    -- store credit as paid; completed exchanges at the line's unit price times the units).
    money Array(Tuple(day Date, event_type String, category String, channel String, currency String, value_minor Int64)),
    exchange_requested Bool,
    exchange_cancelled Bool,
    exchange_completed_at Nullable(DateTime64(6, 'UTC')),
    -- Exchange conversion's own start: the first return request, exchange request or
    -- cancellation, and its channel.
    conversion_at Nullable(DateTime64(6, 'UTC')),
    conversion_channel String,
    warranty_filed_at Nullable(DateTime64(6, 'UTC')),
    warranty_category String,
    warranty_approved Bool,
    warranty_denied Bool,
    warranty_resolved_at Nullable(DateTime64(6, 'UTC')),
    resolved_at Nullable(DateTime64(6, 'UTC')),
    outcome String,
    refund_above_line_cost Bool,
    exchange_value_unknown Bool,
    -- The line, from the order's latest version (not deleted).
    line_known Bool,
    sale_day Date,
    line_sku String,
    line_category String,
    line_sold Int32,
    order_channel String,
    order_segment String,
    -- Return cases of the same line (not rejected): units asked for.
    line_returned Int64,
    -- The customer's return cases (not rejected) opened within 7 and 90 days up to and with
    -- this one (whole seconds), units bought (latest order versions) and returned.
    cases_7d UInt64,
    cases_90d UInt64,
    customer_bought Int64,
    customer_returned Int64
)
ENGINE = ReplacingMergeTree(refreshed_at, is_deleted)
ORDER BY case_id
-- As the events' retention (`boomerang migrate --retention-days` changes both).
TTL toDateTime(opened_at) + INTERVAL 1095 DAY;

-- One row per customer with orders or cases.
CREATE TABLE IF NOT EXISTS customers_store
(
    customer_key String,
    refreshed_at DateTime64(6, 'UTC'),
    is_deleted UInt8,
    segment String,
    placed Array(DateTime64(6, 'UTC')),
    first_order_at Nullable(DateTime64(6, 'UTC')),
    first_order_channel String,
    has_case Bool,
    first_resolved_at Nullable(DateTime64(6, 'UTC')),
    first_resolved_outcome String,
    first_resolved_channel String,
    -- The days the customer's orders fall on: a later refresh recomputes them too, so an
    -- order that moved or went is taken out of its old day's sales.
    order_days Array(Date)
)
ENGINE = ReplacingMergeTree(refreshed_at, is_deleted)
ORDER BY customer_key;

-- Units sold and returned per sale day and dimensions (`return_rates` at its finest grain),
-- one snapshot per refresh of a day; `sales_days` names each day's current snapshot.
CREATE TABLE IF NOT EXISTS sales_store
(
    day Date,
    snapshot DateTime64(6, 'UTC'),
    sku String,
    category String,
    channel String,
    customer_segment String,
    units_sold Int64,
    units_returned Int64
)
ENGINE = MergeTree
ORDER BY (day, snapshot, sku, category, channel, customer_segment);

CREATE TABLE IF NOT EXISTS sales_days
(
    day Date,
    snapshot DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(snapshot)
ORDER BY day;

-- The store rows of one refresh batch's customers, as the tables hold them now (the
-- refresher runs these as INSERT … SELECT).
CREATE VIEW IF NOT EXISTS refresh_cases AS
SELECT
    f.case_id AS case_id,
    f.customer_key AS customer_key,
    {snapshot:DateTime64(6, 'UTC')} AS refreshed_at,
    toUInt8(0) AS is_deleted,
    f.kind AS kind,
    f.order_id AS order_id,
    f.order_line_id AS order_line_id,
    f.channel AS channel,
    f.sku AS sku,
    f.quantity AS quantity,
    f.reason AS reason,
    f.method AS method,
    f.within_return_window AS within_return_window,
    f.category AS category,
    f.opened_at AS opened_at,
    f.return_requests AS return_requests,
    f.return_methods AS return_methods,
    f.rejected AS rejected,
    f.received_at AS received_at,
    f.inspected_at AS inspected_at,
    f.disposition AS disposition,
    f.refunded_at AS refunded_at,
    f.refund_minor AS refund_minor,
    f.store_credit_minor AS store_credit_minor,
    f.money AS money,
    f.exchange_requested AS exchange_requested,
    f.exchange_cancelled AS exchange_cancelled,
    f.exchange_completed_at AS exchange_completed_at,
    f.conversion_at AS conversion_at,
    f.conversion_channel AS conversion_channel,
    f.warranty_filed_at AS warranty_filed_at,
    f.warranty_category AS warranty_category,
    f.warranty_approved AS warranty_approved,
    f.warranty_denied AS warranty_denied,
    f.warranty_resolved_at AS warranty_resolved_at,
    f.resolved_at AS resolved_at,
    f.outcome AS outcome,
    f.refund_above_line_cost AS refund_above_line_cost,
    f.exchange_value_unknown AS exchange_value_unknown,
    l.order_id != '' AS line_known,
    l.day AS sale_day,
    l.sku AS line_sku,
    l.category AS line_category,
    l.quantity AS line_sold,
    l.channel AS order_channel,
    if(l.segment = '', 'unknown', l.segment) AS order_segment,
    f.line_returned AS line_returned,
    f.cases_7d AS cases_7d,
    f.cases_90d AS cases_90d,
    b.bought AS customer_bought,
    f.customer_returned AS customer_returned
FROM
(
    SELECT
        *,
        -- What the other cases of the batch say; a line's cases and a customer's cases are
        -- all in the batch, since the batch holds whole customers.
        sum(if(counted, quantity, 0)) OVER (PARTITION BY order_id, order_line_id) AS line_returned,
        sum(if(counted, quantity, 0)) OVER (PARTITION BY customer_key) AS customer_returned,
        sum(toUInt64(counted)) OVER (PARTITION BY customer_key ORDER BY opened_seconds
            RANGE BETWEEN 604800 PRECEDING AND CURRENT ROW) AS cases_7d,
        sum(toUInt64(counted)) OVER (PARTITION BY customer_key ORDER BY opened_seconds
            RANGE BETWEEN 7776000 PRECEDING AND CURRENT ROW) AS cases_90d
    FROM
    (
        SELECT
            case_id,
            multiIf(return_requests > 0, 'return', exchange_requests > 0, 'exchange',
                    warranty_filings > 0, 'warranty', 'unopened') AS kind,
            opening.1 AS order_id,
            opening.2 AS order_line_id,
            opening.3 AS customer_key,
            opening.4 AS channel,
            opening.5 AS sku,
            opening.6 AS quantity,
            opening.7 AS reason,
            ifNull(opening.8, 'UNKNOWN') AS method,
            opening.9 AS within_return_window,
            opening.10 AS category,
            opening.11 AS opened_at,
            intDiv(toUnixTimestamp64Micro(opened_at), 1000000) AS opened_seconds,
            kind = 'return' AND NOT rejected AS counted,
            return_requests,
            return_methods,
            rejected,
            received_at,
            inspected_at,
            disposition,
            refunded_at,
            refund_minor,
            store_credit_minor,
            money,
            exchange_requested,
            exchange_cancelled,
            exchange_completed_at,
            conversion_at,
            conversion_channel,
            warranty_filed_at,
            warranty_category,
            warranty_approved,
            warranty_denied,
            warranty_resolved_at,
            resolved_at,
            multiIf(resolution = 'REFUND_ISSUED', 'refund',
                    resolution = 'STORE_CREDIT_ISSUED', 'store_credit',
                    resolution = 'EXCHANGE_COMPLETED', 'exchange',
                    resolution = 'EXCHANGE_CANCELLED', 'exchange_cancelled',
                    resolution = 'RETURN_REJECTED', 'rejected',
                    resolution = 'WARRANTY_DENIED', 'warranty_denied',
                    resolution = '', 'open',
                    'warranty_fixed') AS outcome,
            refund_above_line_cost,
            exchange_value_unknown
        FROM
        (
            SELECT
                case_id,
                countIf(event_type = 'RETURN_REQUESTED') AS return_requests,
                countIf(event_type = 'EXCHANGE_REQUESTED') AS exchange_requests,
                countIf(event_type = 'WARRANTY_FILED') AS warranty_filings,
                -- The opening event: the first return request; else the first exchange
                -- request or warranty filing; else the case's first event.
                argMin(
                    (order_id, order_line_id, customer_key, channel, sku, quantity, reason, method,
                     within_return_window, ifNull(line_category, 'unknown'), occurred_at),
                    (multiIf(event_type = 'RETURN_REQUESTED', 0,
                             event_type IN ('EXCHANGE_REQUESTED', 'WARRANTY_FILED'), 1, 2),
                     occurred_at, idempotency_key)) AS opening,
                length(groupUniqArrayIf(assumeNotNull(method), method IS NOT NULL
                    AND event_type IN ('RETURN_REQUESTED', 'RETURN_LABEL_CREATED'))) AS return_methods,
                countIf(event_type = 'RETURN_REJECTED') > 0 AS rejected,
                if(countIf(event_type = 'RETURN_RECEIVED') > 0,
                   minIf(occurred_at, event_type = 'RETURN_RECEIVED'), NULL) AS received_at,
                if(countIf(event_type = 'RETURN_INSPECTED') > 0,
                   minIf(occurred_at, event_type = 'RETURN_INSPECTED'), NULL) AS inspected_at,
                argMinIf(disposition, (occurred_at, idempotency_key),
                         event_type = 'RETURN_INSPECTED') AS disposition,
                if(countIf(event_type IN ('REFUND_ISSUED', 'STORE_CREDIT_ISSUED')) > 0,
                   minIf(occurred_at, event_type IN ('REFUND_ISSUED', 'STORE_CREDIT_ISSUED')), NULL)
                    AS refunded_at,
                sumIf(ifNull(amount_minor, 0), event_type = 'REFUND_ISSUED') AS refund_minor,
                sumIf(ifNull(amount_minor, 0), event_type = 'STORE_CREDIT_ISSUED') AS store_credit_minor,
                groupArrayIf(
                    (toDate(occurred_at), event_type, ifNull(line_category, 'unknown'), channel,
                     assumeNotNull(if(event_type = 'EXCHANGE_COMPLETED', line_currency, amount_currency)),
                     assumeNotNull(if(event_type = 'EXCHANGE_COMPLETED', line_unit_price_minor * quantity, amount_minor))),
                    event_type IN ('REFUND_ISSUED', 'STORE_CREDIT_ISSUED', 'EXCHANGE_COMPLETED')
                    AND if(event_type = 'EXCHANGE_COMPLETED', line_currency, amount_currency) IS NOT NULL
                    AND if(event_type = 'EXCHANGE_COMPLETED', line_unit_price_minor * quantity, amount_minor) IS NOT NULL)
                    AS money,
                exchange_requests > 0 AS exchange_requested,
                countIf(event_type = 'EXCHANGE_CANCELLED') > 0 AS exchange_cancelled,
                if(countIf(event_type = 'EXCHANGE_COMPLETED') > 0,
                   minIf(occurred_at, event_type = 'EXCHANGE_COMPLETED'), NULL) AS exchange_completed_at,
                if(countIf(event_type IN ('RETURN_REQUESTED', 'EXCHANGE_REQUESTED', 'EXCHANGE_CANCELLED')) > 0,
                   minIf(occurred_at, event_type IN ('RETURN_REQUESTED', 'EXCHANGE_REQUESTED', 'EXCHANGE_CANCELLED')),
                   NULL) AS conversion_at,
                argMinIf(channel, occurred_at,
                         event_type IN ('RETURN_REQUESTED', 'EXCHANGE_REQUESTED', 'EXCHANGE_CANCELLED'))
                    AS conversion_channel,
                if(warranty_filings > 0, minIf(occurred_at, event_type = 'WARRANTY_FILED'), NULL)
                    AS warranty_filed_at,
                ifNull(anyIf(line_category, event_type = 'WARRANTY_FILED'), 'unknown') AS warranty_category,
                countIf(event_type = 'WARRANTY_APPROVED') > 0 AS warranty_approved,
                countIf(event_type = 'WARRANTY_DENIED') > 0 AS warranty_denied,
                if(countIf(event_type IN ('WARRANTY_REPAIRED', 'WARRANTY_REPLACED', 'WARRANTY_RESOLVED', 'WARRANTY_DENIED')) > 0,
                   minIf(occurred_at, event_type IN ('WARRANTY_REPAIRED', 'WARRANTY_REPLACED', 'WARRANTY_RESOLVED', 'WARRANTY_DENIED')),
                   NULL) AS warranty_resolved_at,
                -- Resolution: the first refund, store credit, completed or cancelled exchange,
                -- rejection, or warranty fix or denial.
                argMinIf(event_type, (occurred_at, idempotency_key), event_type IN (
                    'REFUND_ISSUED', 'STORE_CREDIT_ISSUED', 'EXCHANGE_COMPLETED', 'EXCHANGE_CANCELLED',
                    'RETURN_REJECTED', 'WARRANTY_REPAIRED', 'WARRANTY_REPLACED', 'WARRANTY_RESOLVED',
                    'WARRANTY_DENIED')) AS resolution,
                if(resolution = '', NULL, minIf(occurred_at, event_type IN (
                    'REFUND_ISSUED', 'STORE_CREDIT_ISSUED', 'EXCHANGE_COMPLETED', 'EXCHANGE_CANCELLED',
                    'RETURN_REJECTED', 'WARRANTY_REPAIRED', 'WARRANTY_REPLACED', 'WARRANTY_RESOLVED',
                    'WARRANTY_DENIED'))) AS resolved_at,
                -- A refund or store credit above what the units it is for cost (the rule
                -- enrich counts in boomerang_enrich_risk_flags_total{flag="refund_above_line_cost"}).
                countIf(event_type IN ('REFUND_ISSUED', 'STORE_CREDIT_ISSUED')
                    AND ifNull(amount_minor > line_unit_price_minor * quantity
                               AND amount_currency = line_currency, 0)) > 0 AS refund_above_line_cost,
                -- A completed exchange whose line enrich did not find: its value is unknown.
                countIf(event_type = 'EXCHANGE_COMPLETED' AND line_unit_price_minor IS NULL) > 0
                    AS exchange_value_unknown
            FROM
            (
                -- The batch's customers' events, one per idempotency key: the latest
                -- enrichment, as FINAL keeps it.
                SELECT *
                FROM post_purchase_events
                WHERE customer_key IN
                    (SELECT customer_key FROM analytics_refresh_batch WHERE batch = {batch:UInt64})
                ORDER BY idempotency_key, enriched_at DESC
                LIMIT 1 BY idempotency_key
            )
            GROUP BY case_id
        )
    )
) AS f
LEFT JOIN
(
    -- The lines of the cases' orders, from each order's latest version (not deleted), with
    -- the sale day and the ordering customer's current segment.
    SELECT
        o.order_id AS order_id,
        line_id,
        toDate(o.placed_at) AS day,
        sku,
        category,
        quantity,
        o.channel AS channel,
        c.segment AS segment
    FROM
    (
        SELECT *
        FROM orders
        WHERE order_id IN
        (
            SELECT order_id FROM post_purchase_events
            WHERE customer_key IN
                (SELECT customer_key FROM analytics_refresh_batch WHERE batch = {batch:UInt64})
        )
        ORDER BY order_id, version DESC
        LIMIT 1 BY order_id
    ) AS o
    ARRAY JOIN
        o.line_ids AS line_id,
        o.line_skus AS sku,
        o.line_categories AS category,
        o.line_quantities AS quantity
    LEFT JOIN
    (
        SELECT customer_key, argMax(segment, version) AS segment, argMax(is_deleted, version) AS gone
        FROM customers
        WHERE customer_key IN (SELECT customer_key FROM analytics_refresh_batch WHERE batch = {batch:UInt64})
        GROUP BY customer_key
        HAVING gone = 0
    ) AS c ON o.customer_key = c.customer_key
    WHERE o.is_deleted = 0
) AS l ON f.order_id = l.order_id AND f.order_line_id = l.line_id
LEFT JOIN
(
    SELECT customer_key, toInt64(sum(arraySum(line_quantities))) AS bought
    FROM
    (
        SELECT customer_key, line_quantities, is_deleted
        FROM orders
        WHERE customer_key IN
            (SELECT customer_key FROM analytics_refresh_batch WHERE batch = {batch:UInt64})
        ORDER BY order_id, version DESC
        LIMIT 1 BY order_id
    )
    WHERE is_deleted = 0
    GROUP BY customer_key
) AS b ON f.customer_key = b.customer_key
SETTINGS join_use_nulls = 0;

CREATE VIEW IF NOT EXISTS refresh_customers AS
SELECT
    k.customer_key AS customer_key,
    {snapshot:DateTime64(6, 'UTC')} AS refreshed_at,
    toUInt8(o.customer_key = '' AND s.customer_key = '' AND c.customer_key = '') AS is_deleted,
    c.segment AS segment,
    o.placed AS placed,
    if(o.customer_key = '', NULL, o.first_order_at) AS first_order_at,
    o.first_order_channel AS first_order_channel,
    s.has_case AS has_case,
    s.first_resolved_at AS first_resolved_at,
    s.first_resolved_outcome AS first_resolved_outcome,
    s.first_resolved_channel AS first_resolved_channel,
    o.order_days AS order_days
FROM (SELECT customer_key FROM analytics_refresh_batch WHERE batch = {batch:UInt64}) AS k
LEFT JOIN
(
    SELECT
        customer_key,
        groupArray(placed_at) AS placed,
        min(placed_at) AS first_order_at,
        argMin(channel, (placed_at, order_id)) AS first_order_channel,
        groupUniqArray(toDate(placed_at)) AS order_days
    FROM
    (
        SELECT customer_key, order_id, placed_at, channel, is_deleted
        FROM orders
        WHERE customer_key IN
            (SELECT customer_key FROM analytics_refresh_batch WHERE batch = {batch:UInt64})
        ORDER BY order_id, version DESC
        LIMIT 1 BY order_id
    )
    WHERE is_deleted = 0
    GROUP BY customer_key
) AS o ON k.customer_key = o.customer_key
LEFT JOIN
(
    SELECT
        customer_key,
        countIf(kind != 'unopened') > 0 AS has_case,
        minIf(resolved_at, kind != 'unopened') AS first_resolved_at,
        argMinIf((outcome, channel), (resolved_at, case_id), kind != 'unopened' AND resolved_at IS NOT NULL) AS first_resolved,
        first_resolved.1 AS first_resolved_outcome,
        first_resolved.2 AS first_resolved_channel
    FROM cases_store FINAL
    WHERE customer_key IN
        (SELECT customer_key FROM analytics_refresh_batch WHERE batch = {batch:UInt64})
    GROUP BY customer_key
) AS s ON k.customer_key = s.customer_key
LEFT JOIN
(
    SELECT customer_key, argMax(segment, version) AS segment, argMax(is_deleted, version) AS gone
    FROM customers
    WHERE customer_key IN (SELECT customer_key FROM analytics_refresh_batch WHERE batch = {batch:UInt64})
    GROUP BY customer_key
    HAVING gone = 0
) AS c ON k.customer_key = c.customer_key
SETTINGS join_use_nulls = 0;

-- Units sold on the refresh's days — the latest version of every order that has one on those
-- days, if it still falls on one of them — and units returned on those lines (return cases,
-- not rejected, as `cases_store` holds them after this refresh's batches).
CREATE VIEW IF NOT EXISTS refresh_sales AS
SELECT
    toDate(o.placed_at) AS day,
    {snapshot:DateTime64(6, 'UTC')} AS snapshot,
    sku,
    category,
    o.channel AS channel,
    if(c.segment = '', 'unknown', c.segment) AS customer_segment,
    toInt64(sum(quantity)) AS units_sold,
    toInt64(sum(r.returned)) AS units_returned
FROM
(
    SELECT *
    FROM orders
    WHERE order_id IN
    (
        SELECT order_id FROM orders
        WHERE toDate(placed_at) IN
            (SELECT day FROM analytics_refresh_days WHERE batch = {batch:UInt64})
    )
    ORDER BY order_id, version DESC
    LIMIT 1 BY order_id
) AS o
ARRAY JOIN
    o.line_ids AS line_id,
    o.line_skus AS sku,
    o.line_categories AS category,
    o.line_quantities AS quantity
LEFT JOIN
(
    SELECT customer_key, argMax(segment, version) AS segment, argMax(is_deleted, version) AS gone
    FROM customers
    WHERE customer_key IN
    (
        SELECT customer_key FROM orders
        WHERE toDate(placed_at) IN
            (SELECT day FROM analytics_refresh_days WHERE batch = {batch:UInt64})
    )
    GROUP BY customer_key
    HAVING gone = 0
) AS c ON o.customer_key = c.customer_key
LEFT JOIN
(
    SELECT order_id, order_line_id, toInt64(sum(quantity)) AS returned
    FROM cases_store FINAL
    WHERE kind = 'return' AND NOT rejected AND line_known
      AND sale_day IN (SELECT day FROM analytics_refresh_days WHERE batch = {batch:UInt64})
    GROUP BY order_id, order_line_id
) AS r ON o.order_id = r.order_id AND line_id = r.order_line_id
WHERE o.is_deleted = 0
  AND toDate(o.placed_at) IN (SELECT day FROM analytics_refresh_days WHERE batch = {batch:UInt64})
GROUP BY day, sku, category, channel, customer_segment
SETTINGS join_use_nulls = 0;

-- One row per case: the facts every other object reads.
CREATE VIEW IF NOT EXISTS case_facts AS
SELECT
    case_id, kind, order_id, order_line_id, customer_key, channel, sku, quantity, reason, method,
    within_return_window, category, opened_at, return_requests, return_methods, rejected,
    received_at, inspected_at, disposition, refunded_at, refund_minor, store_credit_minor,
    exchange_requested, exchange_cancelled, exchange_completed_at, warranty_approved,
    warranty_denied, warranty_resolved_at, resolved_at, outcome, refund_above_line_cost,
    exchange_value_unknown, line_known
FROM cases_store FINAL;

-- Every case a definition leaves out or finds in conflict, one row per case and kind.
CREATE VIEW IF NOT EXISTS data_quality_cases AS
SELECT case_id, kind, customer_key, order_id, toDate(opened_at) AS day
FROM
(
    SELECT
        case_id,
        customer_key,
        order_id,
        opened_at,
        arrayJoin(arrayFilter(kind -> kind != '', [
            if(kind = 'unopened', 'case_without_request', ''),
            if(return_requests > 1, 'duplicate_return_request', ''),
            if(return_methods > 1, 'mixed_return_methods', ''),
            if(kind = 'return' AND rejected AND refunded_at IS NOT NULL, 'refund_on_rejected_case', ''),
            if(kind = 'return' AND refunded_at < opened_at, 'refund_before_request', ''),
            if(kind = 'return' AND received_at < opened_at, 'received_before_request', ''),
            if(kind = 'return' AND inspected_at < received_at, 'inspected_before_received', ''),
            if(kind = 'return' AND refunded_at < received_at, 'refund_before_received', ''),
            if(kind = 'return' AND NOT line_known, 'return_on_unknown_order_line', ''),
            if(exchange_value_unknown, 'exchange_without_line_price', '')
        ])) AS kind
    FROM cases_store FINAL
);

-- How many cases each data-quality kind holds: what a report says it excluded, and why.
CREATE VIEW IF NOT EXISTS data_quality AS
SELECT kind, count() AS cases, uniqExact(customer_key) AS customers
FROM data_quality_cases
GROUP BY kind;

-- Repeat purchase after a case. For each customer with a resolved case, the time of their
-- first resolution; for each customer with orders and no case, their first order. The share of
-- those who placed another order within 30, 90 and 365 days after that time, counting only
-- customers the data covers for the whole window (until the newest order ClickHouse holds).
CREATE VIEW IF NOT EXISTS repeat_purchase AS
WITH (SELECT max(arrayMax(placed)) FROM customers_store FINAL WHERE notEmpty(placed)) AS horizon
SELECT
    if(segment = '', 'unknown', segment) AS customer_segment,
    channel,
    outcome,
    count() AS customers,
    countIf(reference_at + INTERVAL 30 DAY <= horizon) AS eligible_30d,
    countIf(reference_at + INTERVAL 30 DAY <= horizon
        AND arrayExists(t -> t > reference_at AND t <= reference_at + INTERVAL 30 DAY, placed)) AS repeated_30d,
    if(eligible_30d = 0, 0, repeated_30d / eligible_30d) AS rate_30d,
    countIf(reference_at + INTERVAL 90 DAY <= horizon) AS eligible_90d,
    countIf(reference_at + INTERVAL 90 DAY <= horizon
        AND arrayExists(t -> t > reference_at AND t <= reference_at + INTERVAL 90 DAY, placed)) AS repeated_90d,
    if(eligible_90d = 0, 0, repeated_90d / eligible_90d) AS rate_90d,
    countIf(reference_at + INTERVAL 365 DAY <= horizon) AS eligible_365d,
    countIf(reference_at + INTERVAL 365 DAY <= horizon
        AND arrayExists(t -> t > reference_at AND t <= reference_at + INTERVAL 365 DAY, placed)) AS repeated_365d,
    if(eligible_365d = 0, 0, repeated_365d / eligible_365d) AS rate_365d
FROM
(
    SELECT
        segment,
        placed,
        if(has_case, assumeNotNull(first_resolved_at), assumeNotNull(first_order_at)) AS reference_at,
        if(has_case, first_resolved_channel, first_order_channel) AS channel,
        if(has_case, first_resolved_outcome, 'no_case') AS outcome
    FROM customers_store FINAL
    WHERE if(has_case, first_resolved_at IS NOT NULL, first_order_at IS NOT NULL)
)
GROUP BY customer_segment, channel, outcome;

-- The money of returns, by the day it moved, the line's category, the channel and the
-- currency (never summed across currencies): refunds, store credit, and the value of
-- completed exchanges (the line's unit price times the units exchanged). Retained revenue is
-- what stayed with the retailer as store credit or an exchange.
CREATE VIEW IF NOT EXISTS return_value AS
SELECT
    m.day AS day,
    m.category AS category,
    m.channel AS channel,
    m.currency AS currency,
    toInt64(sumIf(m.value_minor, m.event_type = 'REFUND_ISSUED')) AS refunded_minor,
    toInt64(sumIf(m.value_minor, m.event_type = 'STORE_CREDIT_ISSUED')) AS store_credit_minor,
    toInt64(sumIf(m.value_minor, m.event_type = 'EXCHANGE_COMPLETED')) AS exchange_value_minor,
    refunded_minor + store_credit_minor + exchange_value_minor AS returned_value_minor,
    store_credit_minor + exchange_value_minor AS retained_minor,
    if(returned_value_minor = 0, 0, retained_minor / returned_value_minor) AS retained_share
FROM (SELECT money FROM cases_store FINAL WHERE notEmpty(money))
ARRAY JOIN money AS m
GROUP BY day, category, channel, currency;

-- Each return case's steps (not rejected cases): request to receipt, receipt to inspection,
-- receipt to refund (or store credit), in microseconds; NULL where a step has not happened or
-- the span is negative (see data_quality).
CREATE VIEW IF NOT EXISTS return_steps AS
SELECT
    case_id,
    toDate(opened_at) AS day,
    method,
    channel,
    category,
    if(to_receipt >= 0, to_receipt, NULL) AS receipt_micros,
    if(to_inspection >= 0, to_inspection, NULL) AS inspection_micros,
    if(to_refund >= 0, to_refund, NULL) AS refund_micros
FROM
(
    SELECT
        case_id,
        opened_at,
        method,
        channel,
        category,
        toUnixTimestamp64Micro(received_at) - toUnixTimestamp64Micro(opened_at) AS to_receipt,
        toUnixTimestamp64Micro(inspected_at) - toUnixTimestamp64Micro(received_at) AS to_inspection,
        toUnixTimestamp64Micro(refunded_at) - toUnixTimestamp64Micro(received_at) AS to_refund
    FROM cases_store FINAL
    WHERE kind = 'return' AND NOT rejected
);

-- How long a return takes at each step, by request day and return method (exact quantiles).
CREATE VIEW IF NOT EXISTS return_operations AS
SELECT
    day,
    method,
    count() AS cases,
    count(receipt_micros) AS received_cases,
    quantileExact(0.5)(receipt_micros) / 1e6 AS receipt_p50_seconds,
    quantileExact(0.9)(receipt_micros) / 1e6 AS receipt_p90_seconds,
    count(inspection_micros) AS inspected_cases,
    quantileExact(0.5)(inspection_micros) / 1e6 AS inspection_p50_seconds,
    quantileExact(0.9)(inspection_micros) / 1e6 AS inspection_p90_seconds,
    count(refund_micros) AS refunded_cases,
    quantileExact(0.5)(refund_micros) / 1e6 AS refund_p50_seconds,
    quantileExact(0.9)(refund_micros) / 1e6 AS refund_p90_seconds
FROM return_steps
GROUP BY day, method;

-- What happens to returned goods: inspected return cases by the line's category and the
-- inspection's disposition (`UNSPECIFIED` when the warehouse sent none).
CREATE VIEW IF NOT EXISTS dispositions AS
SELECT
    category,
    ifNull(disposition, 'UNSPECIFIED') AS disposition,
    count() AS cases,
    cases / sum(cases) OVER (PARTITION BY category) AS share
FROM cases_store FINAL
WHERE kind = 'return' AND inspected_at IS NOT NULL
GROUP BY category, disposition;

-- Return cases flagged for review, one row per case and flag (see the README for each rule):
--   refund_above_line_cost   a refund or store credit above the units' price on the order
--   requested_after_window   the first request came after the return window (enrich's flag)
--   quantity_above_sold      the line's return cases (not rejected) ask for more units than it sold
--   return_velocity          the customer opened velocity_7d_cases return cases within 7 days,
--                            or velocity_90d_cases within 90 days, up to and with this one
--   serial_returner          the customer returned over serial_returner_rate_percent of the
--                            units they bought (at least serial_returner_min_units bought)
CREATE VIEW IF NOT EXISTS flagged_cases AS
WITH
    ifNull((SELECT argMax(value, updated_at) FROM analytics_settings WHERE name = 'velocity_7d_cases'), 3) AS velocity_7d,
    ifNull((SELECT argMax(value, updated_at) FROM analytics_settings WHERE name = 'velocity_90d_cases'), 6) AS velocity_90d,
    ifNull((SELECT argMax(value, updated_at) FROM analytics_settings WHERE name = 'serial_returner_rate_percent'), 50) AS serial_percent,
    ifNull((SELECT argMax(value, updated_at) FROM analytics_settings WHERE name = 'serial_returner_min_units'), 4) AS serial_min_units
SELECT case_id, flag, customer_key, order_id, order_line_id, toDate(opened_at) AS day
FROM
(
    SELECT
        case_id,
        customer_key,
        order_id,
        order_line_id,
        opened_at,
        arrayJoin(arrayFilter(flag -> flag != '', [
            if(refund_above_line_cost, 'refund_above_line_cost', ''),
            if(ifNull(within_return_window, 1) = 0, 'requested_after_window', ''),
            if(NOT rejected AND line_known AND line_returned > line_sold, 'quantity_above_sold', ''),
            if(NOT rejected AND (cases_7d >= velocity_7d OR cases_90d >= velocity_90d), 'return_velocity', ''),
            if(NOT rejected AND customer_bought >= serial_min_units
               AND customer_returned * 100 > customer_bought * serial_percent, 'serial_returner', '')
        ])) AS flag
    FROM cases_store FINAL
    WHERE kind = 'return'
);

-- Flagged cases by the day the case was opened and the flag.
CREATE VIEW IF NOT EXISTS risk_flags AS
SELECT day, flag, count() AS cases, uniqExact(customer_key) AS customers
FROM flagged_cases
GROUP BY day, flag;

-- The refund SLA: return cases (not rejected) by the day their goods were received, and how
-- many were refunded (or credited) within `refund_sla_hours` of receipt, later, or not yet:
-- still open past the target as of now, or open and still inside it.
CREATE VIEW IF NOT EXISTS refund_sla AS
WITH
    ifNull((SELECT argMax(value, updated_at) FROM analytics_settings WHERE name = 'refund_sla_hours'), 72) * 3600000000 AS target_micros,
    toUnixTimestamp64Micro(now64(6)) AS now_micros
SELECT
    toDate(fromUnixTimestamp64Micro(received_micros, 'UTC')) AS day,
    count() AS received_cases,
    countIf(refunded_at IS NOT NULL AND refund_micros <= target_micros) AS refunded_within_target,
    countIf(refunded_at IS NOT NULL AND refund_micros > target_micros) AS refunded_late,
    countIf(refunded_at IS NULL AND now_micros - received_micros > target_micros) AS open_past_target,
    countIf(refunded_at IS NULL AND now_micros - received_micros <= target_micros) AS open_within_target,
    (refunded_late + open_past_target) / received_cases AS breach_rate
FROM
(
    SELECT
        refunded_at,
        toUnixTimestamp64Micro(assumeNotNull(received_at)) AS received_micros,
        toUnixTimestamp64Micro(refunded_at) - received_micros AS refund_micros
    FROM cases_store FINAL
    WHERE kind = 'return' AND NOT rejected AND received_at IS NOT NULL
)
GROUP BY day;

-- The earlier analytics objects, by the same definitions, on the stores.

-- Return cases: the first request's line and quantity, rejected cases left out.
CREATE OR REPLACE VIEW return_cases AS
SELECT case_id, order_id, order_line_id, quantity, reason, opened_at AS requested_at
FROM cases_store FINAL
WHERE kind = 'return' AND NOT rejected;

-- Return rate by sale day, SKU, category, channel and customer segment: units sold (the
-- current lines of orders not deleted) and units returned (requested, not rejected, on those
-- lines). Sum units_sold and units_returned to roll up; never average return_rate.
CREATE OR REPLACE VIEW return_rates AS
SELECT
    s.day AS day,
    s.sku AS sku,
    s.category AS category,
    s.channel AS channel,
    s.customer_segment AS customer_segment,
    s.units_sold AS units_sold,
    s.units_returned AS units_returned,
    if(units_sold = 0, 0, units_returned / units_sold) AS return_rate
FROM sales_store AS s
INNER JOIN (SELECT day, snapshot FROM sales_days FINAL) AS d
    ON s.day = d.day AND s.snapshot = d.snapshot;

-- Refund times: the first request to the first refund or store credit, rejected cases and
-- negative times left out (they are in data_quality).
CREATE OR REPLACE VIEW refund_times AS
SELECT
    case_id,
    order_id,
    channel,
    method,
    opened_at AS requested_at,
    assumeNotNull(refunded_at) AS refunded_at,
    toDate(requested_at) AS day,
    toUnixTimestamp64Micro(refunded_at) - toUnixTimestamp64Micro(requested_at) AS refund_micros,
    refund_micros / 1e6 AS refund_seconds
FROM cases_store FINAL
WHERE kind = 'return' AND NOT rejected AND refunded_at IS NOT NULL AND refunded_at >= opened_at;

-- Exchange conversion by the case's first day and channel: cases started by a return or
-- exchange request, and those with an exchange request never cancelled.
CREATE OR REPLACE VIEW exchange_conversion AS
SELECT
    toDate(assumeNotNull(conversion_at)) AS day,
    conversion_channel AS channel,
    count() AS cases,
    countIf(exchange_requested AND NOT exchange_cancelled) AS exchanged_cases,
    exchanged_cases / cases AS conversion
FROM cases_store FINAL
WHERE kind IN ('return', 'exchange')
GROUP BY day, channel;

-- One row per warranty claim.
CREATE OR REPLACE VIEW warranty_claims AS
SELECT
    case_id,
    toDate(assumeNotNull(warranty_filed_at)) AS day,
    warranty_category AS category,
    toUInt8(warranty_approved) AS approved,
    toUInt8(warranty_denied) AS denied,
    assumeNotNull(warranty_filed_at) AS filed_at,
    -- The types 0002 gave these columns: the epoch when not resolved.
    ifNull(warranty_resolved_at, toDateTime64(0, 6, 'UTC')) AS resolved_at,
    warranty_resolved_at IS NOT NULL AS resolved,
    if(resolved, toUnixTimestamp64Micro(warranty_resolved_at) - toUnixTimestamp64Micro(filed_at), NULL) AS resolution_micros
FROM cases_store FINAL
WHERE warranty_filed_at IS NOT NULL;

-- Why customers return: requested return cases by category (the line's, as the orders table
-- holds it) and reason.
CREATE OR REPLACE VIEW return_reasons AS
SELECT
    if(line_known, line_category, 'unknown') AS category,
    ifNull(reason, 'UNSPECIFIED') AS reason,
    count() AS cases,
    cases / sum(cases) OVER (PARTITION BY category) AS share
FROM cases_store FINAL
WHERE kind = 'return' AND NOT rejected
GROUP BY category, reason;
