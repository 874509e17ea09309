-- What analysts query by name. Every object reads the tables with FINAL, so an event, order or
-- customer that reached ClickHouse twice counts once. Definitions (also in the README):
--   units sold           order lines of orders that exist (not deleted), by the order's day
--   units returned       quantity of return cases requested and not rejected, on the line
--   return rate          units returned / units sold, by sale day, SKU, category, channel, segment
--   refund time          a return case's RETURN_REQUESTED to its first REFUND_ISSUED or
--                        STORE_CREDIT_ISSUED
--   exchange conversion  cases with an EXCHANGE_REQUESTED never cancelled / cases that started
--                        with a RETURN_REQUESTED or an EXCHANGE_REQUESTED
--   warranty approval    claims approved / claims decided (approved or denied)
--   claim resolution     WARRANTY_FILED to the first of REPAIRED, REPLACED, RESOLVED or DENIED
-- Quantiles are exact (quantileExact: the value at position floor(level * n) of the sorted
-- values), so they can be checked.

-- Order lines with the customer's current segment ('unknown' without a CRM record).
CREATE VIEW IF NOT EXISTS order_lines AS
SELECT
    o.order_id AS order_id,
    order_line_id,
    sku,
    category,
    quantity,
    unit_price_minor,
    o.currency AS currency,
    o.channel AS channel,
    o.customer_key AS customer_key,
    if(c.segment = '', 'unknown', c.segment) AS customer_segment,
    o.placed_at AS placed_at,
    o.delivered_at AS delivered_at,
    toDate(o.placed_at) AS day
FROM (SELECT * FROM orders FINAL WHERE is_deleted = 0) AS o
ARRAY JOIN
    o.line_ids AS order_line_id,
    o.line_skus AS sku,
    o.line_categories AS category,
    o.line_quantities AS quantity,
    o.line_unit_prices_minor AS unit_price_minor
LEFT JOIN (SELECT customer_key, segment FROM customers FINAL WHERE is_deleted = 0) AS c
    ON o.customer_key = c.customer_key;

-- One row per return case: requested, not rejected.
CREATE VIEW IF NOT EXISTS return_cases AS
SELECT
    case_id,
    anyIf(order_id, event_type = 'RETURN_REQUESTED') AS order_id,
    anyIf(order_line_id, event_type = 'RETURN_REQUESTED') AS order_line_id,
    anyIf(quantity, event_type = 'RETURN_REQUESTED') AS quantity,
    anyIf(reason, event_type = 'RETURN_REQUESTED') AS reason,
    minIf(occurred_at, event_type = 'RETURN_REQUESTED') AS requested_at
FROM post_purchase_events FINAL
WHERE event_type IN ('RETURN_REQUESTED', 'RETURN_REJECTED')
GROUP BY case_id
HAVING countIf(event_type = 'RETURN_REQUESTED') > 0 AND countIf(event_type = 'RETURN_REJECTED') = 0;

-- Return rate by sale day, SKU, category, channel and customer segment. Sum units_sold and
-- units_returned to roll up; never average return_rate.
CREATE VIEW IF NOT EXISTS return_rates AS
SELECT
    l.day AS day,
    l.sku AS sku,
    l.category AS category,
    l.channel AS channel,
    l.customer_segment AS customer_segment,
    toInt64(sum(l.quantity)) AS units_sold,
    toInt64(sum(r.units_returned)) AS units_returned,
    if(units_sold = 0, 0, units_returned / units_sold) AS return_rate
FROM order_lines AS l
LEFT JOIN
(
    SELECT order_id, order_line_id, sum(quantity) AS units_returned
    FROM return_cases
    GROUP BY order_id, order_line_id
) AS r ON l.order_id = r.order_id AND l.order_line_id = r.order_line_id
GROUP BY day, sku, category, channel, customer_segment;

-- One row per refunded return case, with its refund time.
CREATE VIEW IF NOT EXISTS refund_times AS
SELECT
    case_id,
    anyIf(order_id, event_type = 'RETURN_REQUESTED') AS order_id,
    anyIf(channel, event_type = 'RETURN_REQUESTED') AS channel,
    ifNull(anyIf(method, method IS NOT NULL), 'UNKNOWN') AS method,
    minIf(occurred_at, event_type = 'RETURN_REQUESTED') AS requested_at,
    minIf(occurred_at, event_type IN ('REFUND_ISSUED', 'STORE_CREDIT_ISSUED')) AS refunded_at,
    toDate(requested_at) AS day,
    toUnixTimestamp64Micro(refunded_at) - toUnixTimestamp64Micro(requested_at) AS refund_micros,
    refund_micros / 1e6 AS refund_seconds
FROM post_purchase_events FINAL
GROUP BY case_id
HAVING countIf(event_type = 'RETURN_REQUESTED') > 0
   AND countIf(event_type IN ('REFUND_ISSUED', 'STORE_CREDIT_ISSUED')) > 0;

-- Refund-time quantiles by request day, channel and return method.
CREATE VIEW IF NOT EXISTS refund_time_quantiles AS
SELECT
    day,
    channel,
    method,
    count() AS cases,
    quantileExact(0.5)(refund_micros) / 1e6 AS p50_seconds,
    quantileExact(0.9)(refund_micros) / 1e6 AS p90_seconds,
    quantileExact(0.99)(refund_micros) / 1e6 AS p99_seconds
FROM refund_times
GROUP BY day, channel, method;

-- Exchange conversion by the case's first day and channel.
CREATE VIEW IF NOT EXISTS exchange_conversion AS
SELECT
    day,
    channel,
    count() AS cases,
    countIf(exchanged) AS exchanged_cases,
    exchanged_cases / cases AS conversion
FROM
(
    SELECT
        case_id,
        toDate(min(occurred_at)) AS day,
        argMin(channel, occurred_at) AS channel,
        countIf(event_type = 'EXCHANGE_REQUESTED') > 0
            AND countIf(event_type = 'EXCHANGE_CANCELLED') = 0 AS exchanged
    FROM post_purchase_events FINAL
    WHERE event_type IN ('RETURN_REQUESTED', 'EXCHANGE_REQUESTED', 'EXCHANGE_CANCELLED')
    GROUP BY case_id
    HAVING countIf(event_type IN ('RETURN_REQUESTED', 'EXCHANGE_REQUESTED')) > 0
)
GROUP BY day, channel;

-- One row per warranty claim.
CREATE VIEW IF NOT EXISTS warranty_claims AS
SELECT
    case_id,
    toDate(minIf(occurred_at, event_type = 'WARRANTY_FILED')) AS day,
    ifNull(anyIf(line_category, event_type = 'WARRANTY_FILED'), 'unknown') AS category,
    countIf(event_type = 'WARRANTY_APPROVED') > 0 AS approved,
    countIf(event_type = 'WARRANTY_DENIED') > 0 AS denied,
    minIf(occurred_at, event_type = 'WARRANTY_FILED') AS filed_at,
    minIf(occurred_at, event_type IN ('WARRANTY_REPAIRED', 'WARRANTY_REPLACED', 'WARRANTY_RESOLVED', 'WARRANTY_DENIED')) AS resolved_at,
    countIf(event_type IN ('WARRANTY_REPAIRED', 'WARRANTY_REPLACED', 'WARRANTY_RESOLVED', 'WARRANTY_DENIED')) > 0 AS resolved,
    if(resolved, toUnixTimestamp64Micro(resolved_at) - toUnixTimestamp64Micro(filed_at), NULL) AS resolution_micros
FROM post_purchase_events FINAL
WHERE event_type LIKE 'WARRANTY_%'
GROUP BY case_id
HAVING countIf(event_type = 'WARRANTY_FILED') > 0;

-- Warranty approval rate and resolution time by filing day and category.
CREATE VIEW IF NOT EXISTS warranty_outcomes AS
SELECT
    day,
    category,
    count() AS claims,
    countIf(approved) AS approved_claims,
    countIf(approved OR denied) AS decided_claims,
    if(decided_claims = 0, 0, approved_claims / decided_claims) AS approval_rate,
    countIf(resolved) AS resolved_claims,
    quantileExactIf(0.5)(resolution_micros, resolved) / 1e6 AS resolution_p50_seconds,
    quantileExactIf(0.9)(resolution_micros, resolved) / 1e6 AS resolution_p90_seconds
FROM warranty_claims
GROUP BY day, category;

-- Why customers return: requested return cases by category and reason.
CREATE VIEW IF NOT EXISTS return_reasons AS
SELECT
    ifNull(l.category, 'unknown') AS category,
    ifNull(r.reason, 'UNSPECIFIED') AS reason,
    count() AS cases,
    cases / sum(cases) OVER (PARTITION BY category) AS share
FROM return_cases AS r
LEFT JOIN (SELECT order_id, order_line_id, category FROM order_lines) AS l
    ON r.order_id = l.order_id AND r.order_line_id = l.order_line_id
GROUP BY category, reason;
