-- Backfilled history (`boomerang backfill`): which run brought an event, empty for live
-- traffic. The backfill's summary counts what its run wrote with it, and an analyst can tell
-- history from live rows. The sink checks backfilled events' idempotency keys against the
-- table's primary key before it writes them, so a key is written once whichever came first.
ALTER TABLE post_purchase_events
    ADD COLUMN IF NOT EXISTS backfill_run String DEFAULT '' AFTER source_offset;
