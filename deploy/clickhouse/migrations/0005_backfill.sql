-- Backfilled history (`boomerang backfill`): which run brought an event, empty for live
-- traffic. The backfill's summary counts what its run wrote with it, and an analyst can tell
-- history from live rows.
ALTER TABLE post_purchase_events
    ADD COLUMN IF NOT EXISTS backfill_run String DEFAULT '' AFTER source_offset;

-- The sink checks each batch of backfilled events against the keys ClickHouse holds. Looked up
-- in the events table, 50k keys in no order touch every granule of every part: the whole key
-- column is read per batch, a cost that grows with the table (0.1 s at 1M rows). Here each key
-- is a 64-bit hash in small granules, so a batch reads about 50k × 64 hashes whatever the
-- table's size; the few hashes found are confirmed against the events table by key, so a hash
-- collision never drops an event. A materialized view keeps it filled (erasure's copies
-- included; a deleted original's hash stays, and is ruled out by the confirmation).
CREATE TABLE IF NOT EXISTS event_key_hashes
(
    key_hash UInt64,
    occurred_at DateTime64(6, 'UTC')
)
ENGINE = MergeTree
ORDER BY key_hash
TTL toDateTime(occurred_at) + INTERVAL 1095 DAY
SETTINGS index_granularity = 64;

CREATE MATERIALIZED VIEW IF NOT EXISTS event_key_hashes_mv TO event_key_hashes AS
SELECT cityHash64(idempotency_key) AS key_hash, occurred_at
FROM post_purchase_events;

-- The keys written before this migration.
INSERT INTO event_key_hashes
SELECT cityHash64(idempotency_key), occurred_at FROM post_purchase_events;
