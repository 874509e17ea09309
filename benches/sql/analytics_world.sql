-- A post-purchase world generated inside ClickHouse, for the analytics benchmark
-- (benches/benches/analytics.rs): {customers} customers, {orders} orders of two lines over a
-- year, {cases} cases of 2 to 7 events each (returns refunded or credited, rejected returns,
-- exchanges, warranty claims) — about 6 events per case. Statements end at a line ending ';'.

INSERT INTO customers (customer_key, segment, region, country, analytics_consent, updated_at, is_deleted, source_topic, source_partition, source_offset)
SELECT concat('p_', hex(cityHash64(number))), ['new','regular','vip'][number % 3 + 1], ['emea','amer','apac'][number % 3 + 1], 'DE', 1,
       toDateTime64('2026-01-01 00:00:00', 6, 'UTC'), 0, 'customers', toInt32(number % 6), toInt64(number)
FROM numbers({customers:UInt64});

INSERT INTO orders (order_id, customer_key, channel, currency, placed_at, delivered_at, updated_at, line_ids, line_skus, line_categories, line_quantities, line_unit_prices_minor, is_deleted, source_topic, source_partition, source_offset)
SELECT concat('ord-', toString(number)), concat('p_', hex(cityHash64(number % {customers:UInt64}))),
       ['WEB','MOBILE_APP','STORE','MARKETPLACE'][number % 4 + 1], 'EUR',
       toDateTime64('2025-06-01 00:00:00', 6, 'UTC') + toIntervalSecond(intDiv(number * 517, 100) % 31536000) AS placed,
       placed + toIntervalDay(2), placed + toIntervalDay(2),
       [concat('ord-', toString(number), '/1'), concat('ord-', toString(number), '/2')],
       [concat('SKU-', toString(number % 997)), concat('SKU-', toString(number % 991))],
       [['apparel','shoes','electronics','home','beauty'][number % 5 + 1], ['apparel','shoes','electronics','home','beauty'][(number + 2) % 5 + 1]],
       [toInt32(1 + number % 2), toInt32(1)], [toInt64(1000 + number % 9000), toInt64(500 + number % 4000)],
       0, 'orders', toInt32(number % 6), toInt64(number)
FROM numbers({orders:UInt64});

INSERT INTO post_purchase_events (idempotency_key, event_id, event_type, case_id, order_id, order_line_id, customer_key, sku, quantity, reason, amount_minor, amount_currency, method, channel, outcome, occurred_at, source_system, disposition, customer_missing, order_missing, order_line_missing, customer_pseudonymised, customer_segment, line_category, line_unit_price_minor, line_currency, days_since_delivery, within_return_window, enriched_at, source_topic, source_partition, source_offset)
SELECT
    concat('k-', toString(c), '-', toString(i)), concat('e-', toString(c), '-', toString(i)),
    types[i] AS event_type, concat('case-', toString(c)), concat('ord-', toString(o)), concat('ord-', toString(o), '/', toString(line)),
    concat('p_', hex(cityHash64(o % {customers:UInt64}))), concat('SKU-', toString(o % 997)), toInt32(1),
    if(i = 1, 'TOO_SMALL', NULL),
    if(event_type IN ('REFUND_ISSUED', 'STORE_CREDIT_ISSUED'), toInt64(1000 + o % 9000), NULL), if(event_type IN ('REFUND_ISSUED', 'STORE_CREDIT_ISSUED'), 'EUR', NULL),
    if(event_type IN ('RETURN_REQUESTED', 'RETURN_LABEL_CREATED'), ['MAIL','IN_STORE','DROP_OFF'][c % 3 + 1], NULL),
    ['WEB','MOBILE_APP','STORE','MARKETPLACE'][o % 4 + 1], 'COMPLETED',
    toDateTime64('2025-06-01 00:00:00', 6, 'UTC') + toIntervalSecond(intDiv(o * 517, 100) % 31536000) + toIntervalSecond(3 * 86400 + i * 40000 + c % 50000) AS occurred,
    'portal', if(event_type = 'RETURN_INSPECTED', ['RESTOCK','REFURBISH','RESELL','DISPOSE'][c % 4 + 1], NULL),
    0, 0, 0, 1, 'regular', ['apparel','shoes','electronics','home','beauty'][o % 5 + 1], toInt64(1000 + o % 9000), 'EUR', toInt32(3 + i), 1,
    occurred, 'enriched', toInt32(o % 6), toInt64(c * 8 + i)
FROM
(
    SELECT number AS c, intDiv(number * 10, 3) AS o, 1 + number % 2 AS line,
        multiIf(number % 20 = 0, ['WARRANTY_FILED','WARRANTY_APPROVED','WARRANTY_REPAIRED','WARRANTY_RESOLVED'],
                number % 20 IN (1, 2), ['RETURN_REQUESTED','RETURN_REJECTED'],
                number % 20 IN (3, 4, 5), ['RETURN_REQUESTED','EXCHANGE_REQUESTED','EXCHANGE_APPROVED','EXCHANGE_SHIPPED','EXCHANGE_COMPLETED'],
                ['RETURN_REQUESTED','RETURN_APPROVED','RETURN_LABEL_CREATED','RETURN_IN_TRANSIT','RETURN_RECEIVED','RETURN_INSPECTED', if(number % 5 = 0, 'STORE_CREDIT_ISSUED', 'REFUND_ISSUED')]) AS types,
        arrayJoin(arrayEnumerate(types)) AS i
    FROM numbers({cases:UInt64})
);
