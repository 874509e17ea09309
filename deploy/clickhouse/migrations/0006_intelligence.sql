-- Post-purchase intelligence beyond the return rate: one row per case (`case_facts`), and on
-- it repeat purchase, the money of returns, operations times, dispositions, risk flags, the
-- refund SLA, and the data-quality object that lists every case a definition leaves out or
-- finds in conflict. Definitions, in one sentence each, are in the README ("Analytics").
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

-- One row per case: the facts every other object reads.
CREATE VIEW IF NOT EXISTS case_facts AS
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
    return_requests,
    return_methods,
    rejected,
    received_at,
    inspected_at,
    disposition,
    refunded_at,
    refund_minor,
    store_credit_minor,
    exchange_requested,
    exchange_cancelled,
    exchange_completed_at,
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
        -- The opening event: the first return request; else the first exchange request or
        -- warranty filing; else the case's first event.
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
        exchange_requests > 0 AS exchange_requested,
        countIf(event_type = 'EXCHANGE_CANCELLED') > 0 AS exchange_cancelled,
        if(countIf(event_type = 'EXCHANGE_COMPLETED') > 0,
           minIf(occurred_at, event_type = 'EXCHANGE_COMPLETED'), NULL) AS exchange_completed_at,
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
        -- A refund or store credit above what the units it is for cost (the same rule enrich
        -- counts in boomerang_enrich_risk_flags_total{flag="refund_above_line_cost"}).
        countIf(event_type IN ('REFUND_ISSUED', 'STORE_CREDIT_ISSUED')
            AND ifNull(amount_minor > line_unit_price_minor * quantity
                       AND amount_currency = line_currency, 0)) > 0 AS refund_above_line_cost,
        -- A completed exchange whose line enrich did not find: its value is unknown.
        countIf(event_type = 'EXCHANGE_COMPLETED' AND line_unit_price_minor IS NULL) > 0
            AS exchange_value_unknown
    FROM post_purchase_events FINAL
    GROUP BY case_id
);

-- Every case a definition leaves out or finds in conflict, one row per case and kind.
CREATE VIEW IF NOT EXISTS data_quality_cases AS
SELECT case_id, kind, customer_key, order_id, toDate(opened_at) AS day
FROM
(
    SELECT
        f.case_id AS case_id,
        f.customer_key AS customer_key,
        f.order_id AS order_id,
        f.opened_at AS opened_at,
        arrayJoin(arrayFilter(kind -> kind != '', [
            if(f.kind = 'unopened', 'case_without_request', ''),
            if(f.return_requests > 1, 'duplicate_return_request', ''),
            if(f.return_methods > 1, 'mixed_return_methods', ''),
            if(f.kind = 'return' AND f.rejected AND f.refunded_at IS NOT NULL, 'refund_on_rejected_case', ''),
            if(f.kind = 'return' AND f.refunded_at < f.opened_at, 'refund_before_request', ''),
            if(f.kind = 'return' AND f.received_at < f.opened_at, 'received_before_request', ''),
            if(f.kind = 'return' AND f.inspected_at < f.received_at, 'inspected_before_received', ''),
            if(f.kind = 'return' AND f.refunded_at < f.received_at, 'refund_before_received', ''),
            if(f.kind = 'return' AND l.order_line_id = '', 'return_on_unknown_order_line', ''),
            if(f.exchange_value_unknown, 'exchange_without_line_price', '')
        ])) AS kind
    FROM case_facts AS f
    LEFT JOIN
    (
        SELECT order_id, order_line_id FROM order_lines
    ) AS l ON f.order_id = l.order_id AND f.order_line_id = l.order_line_id
    SETTINGS join_use_nulls = 0
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
WITH (SELECT max(placed_at) FROM orders FINAL WHERE is_deleted = 0) AS horizon
SELECT
    ifNull(nullIf(c.segment, ''), 'unknown') AS customer_segment,
    r.channel AS channel,
    r.outcome AS outcome,
    count() AS customers,
    countIf(r.reference_at + INTERVAL 30 DAY <= horizon) AS eligible_30d,
    countIf(r.reference_at + INTERVAL 30 DAY <= horizon
        AND arrayExists(t -> t > r.reference_at AND t <= r.reference_at + INTERVAL 30 DAY, o.placed)) AS repeated_30d,
    if(eligible_30d = 0, 0, repeated_30d / eligible_30d) AS rate_30d,
    countIf(r.reference_at + INTERVAL 90 DAY <= horizon) AS eligible_90d,
    countIf(r.reference_at + INTERVAL 90 DAY <= horizon
        AND arrayExists(t -> t > r.reference_at AND t <= r.reference_at + INTERVAL 90 DAY, o.placed)) AS repeated_90d,
    if(eligible_90d = 0, 0, repeated_90d / eligible_90d) AS rate_90d,
    countIf(r.reference_at + INTERVAL 365 DAY <= horizon) AS eligible_365d,
    countIf(r.reference_at + INTERVAL 365 DAY <= horizon
        AND arrayExists(t -> t > r.reference_at AND t <= r.reference_at + INTERVAL 365 DAY, o.placed)) AS repeated_365d,
    if(eligible_365d = 0, 0, repeated_365d / eligible_365d) AS rate_365d
FROM
(
    SELECT
        customer_key,
        first.1 AS reference_at,
        first.2 AS channel,
        first.3 AS outcome
    FROM
    (
        SELECT customer_key, argMin((assumeNotNull(resolved_at), channel, outcome), (resolved_at, case_id)) AS first
        FROM case_facts
        WHERE kind != 'unopened' AND resolved_at IS NOT NULL
        GROUP BY customer_key
    )
    UNION ALL
    SELECT customer_key, first.1 AS reference_at, first.2 AS channel, 'no_case' AS outcome
    FROM
    (
        SELECT customer_key, argMin((placed_at, channel), (placed_at, order_id)) AS first
        FROM orders FINAL
        WHERE is_deleted = 0
          AND customer_key NOT IN (SELECT customer_key FROM case_facts WHERE kind != 'unopened')
        GROUP BY customer_key
    )
) AS r
LEFT JOIN
(
    SELECT customer_key, groupArray(placed_at) AS placed
    FROM orders FINAL
    WHERE is_deleted = 0
    GROUP BY customer_key
) AS o ON r.customer_key = o.customer_key
LEFT JOIN (SELECT customer_key, segment FROM customers FINAL WHERE is_deleted = 0) AS c
    ON r.customer_key = c.customer_key
GROUP BY customer_segment, channel, outcome;

-- The money of returns, by the day it moved, the line's category, the channel and the
-- currency (never summed across currencies): refunds, store credit, and the value of
-- completed exchanges (the line's unit price times the units exchanged). Retained revenue is
-- what stayed with the retailer as store credit or an exchange.
CREATE VIEW IF NOT EXISTS return_value AS
SELECT
    day,
    category,
    channel,
    currency,
    toInt64(sumIf(value_minor, event_type = 'REFUND_ISSUED')) AS refunded_minor,
    toInt64(sumIf(value_minor, event_type = 'STORE_CREDIT_ISSUED')) AS store_credit_minor,
    toInt64(sumIf(value_minor, event_type = 'EXCHANGE_COMPLETED')) AS exchange_value_minor,
    refunded_minor + store_credit_minor + exchange_value_minor AS returned_value_minor,
    store_credit_minor + exchange_value_minor AS retained_minor,
    if(returned_value_minor = 0, 0, retained_minor / returned_value_minor) AS retained_share
FROM
(
    SELECT day, category, channel, event_type, assumeNotNull(currency) AS currency,
           assumeNotNull(value) AS value_minor
    FROM
    (
        SELECT
            toDate(occurred_at) AS day,
            ifNull(line_category, 'unknown') AS category,
            channel,
            event_type,
            if(event_type = 'EXCHANGE_COMPLETED', line_currency, amount_currency) AS currency,
            if(event_type = 'EXCHANGE_COMPLETED', line_unit_price_minor * quantity, amount_minor) AS value
        FROM post_purchase_events FINAL
        WHERE event_type IN ('REFUND_ISSUED', 'STORE_CREDIT_ISSUED', 'EXCHANGE_COMPLETED')
    )
    WHERE currency IS NOT NULL AND value IS NOT NULL
)
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
    FROM case_facts
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
FROM case_facts
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
        f.case_id AS case_id,
        f.customer_key AS customer_key,
        f.order_id AS order_id,
        f.order_line_id AS order_line_id,
        f.opened_at AS opened_at,
        arrayJoin(arrayFilter(flag -> flag != '', [
            if(f.refund_above_line_cost, 'refund_above_line_cost', ''),
            if(ifNull(f.within_return_window, 1) = 0, 'requested_after_window', ''),
            if(NOT f.rejected AND q.returned > l.sold, 'quantity_above_sold', ''),
            if(NOT f.rejected AND (v.cases_7d >= velocity_7d OR v.cases_90d >= velocity_90d), 'return_velocity', ''),
            if(NOT f.rejected AND s.bought >= serial_min_units AND s.returned * 100 > s.bought * serial_percent, 'serial_returner', '')
        ])) AS flag
    FROM (SELECT * FROM case_facts WHERE kind = 'return') AS f
    LEFT JOIN
    (
        SELECT order_id, order_line_id, toInt64(sum(quantity)) AS returned
        FROM case_facts
        WHERE kind = 'return' AND NOT rejected
        GROUP BY order_id, order_line_id
    ) AS q ON f.order_id = q.order_id AND f.order_line_id = q.order_line_id
    LEFT JOIN
    (
        SELECT order_id, order_line_id, toInt64(quantity) AS sold FROM order_lines
    ) AS l ON f.order_id = l.order_id AND f.order_line_id = l.order_line_id
    LEFT JOIN
    (
        SELECT
            case_id,
            -- In whole seconds: a RANGE frame's offset is a 32-bit integer.
            count() OVER (PARTITION BY customer_key ORDER BY opened_seconds
                RANGE BETWEEN 604800 PRECEDING AND CURRENT ROW) AS cases_7d,
            count() OVER (PARTITION BY customer_key ORDER BY opened_seconds
                RANGE BETWEEN 7776000 PRECEDING AND CURRENT ROW) AS cases_90d
        FROM
        (
            SELECT case_id, customer_key, intDiv(toUnixTimestamp64Micro(opened_at), 1000000) AS opened_seconds
            FROM case_facts
            WHERE kind = 'return' AND NOT rejected
        )
    ) AS v ON f.case_id = v.case_id
    LEFT JOIN
    (
        SELECT b.customer_key AS customer_key, b.bought AS bought, ifNull(r.returned, 0) AS returned
        FROM
        (
            SELECT customer_key, toInt64(sum(quantity)) AS bought FROM order_lines GROUP BY customer_key
        ) AS b
        LEFT JOIN
        (
            SELECT customer_key, toInt64(sum(quantity)) AS returned
            FROM case_facts
            WHERE kind = 'return' AND NOT rejected
            GROUP BY customer_key
        ) AS r ON b.customer_key = r.customer_key
    ) AS s ON f.customer_key = s.customer_key
    SETTINGS join_use_nulls = 1
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
        received_at,
        refunded_at,
        toUnixTimestamp64Micro(assumeNotNull(received_at)) AS received_micros,
        toUnixTimestamp64Micro(refunded_at) - received_micros AS refund_micros
    FROM case_facts
    WHERE kind = 'return' AND NOT rejected AND received_at IS NOT NULL
)
GROUP BY day;

-- Refund times by the definitions above: the first request to the first refund or store
-- credit, rejected cases and negative times left out (they are in data_quality).
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
FROM case_facts
WHERE kind = 'return' AND NOT rejected AND refunded_at IS NOT NULL AND refunded_at >= opened_at;

-- Return cases: the first request's line and quantity, rejected cases left out.
CREATE OR REPLACE VIEW return_cases AS
SELECT
    case_id,
    order_id,
    order_line_id,
    quantity,
    reason,
    opened_at AS requested_at
FROM case_facts
WHERE kind = 'return' AND NOT rejected;
