-- Roles for a production ClickHouse (not applied by `boomerang migrate`, and not available on
-- the local stack, whose chDB front end has no users). Replace `boomerang` with your database
-- and run as an administrator:
--   clickhouse-client --multiquery < deploy/clickhouse/production/roles.sql

-- Analysts read the tables and the analytics views, nothing else.
CREATE ROLE IF NOT EXISTS boomerang_analyst;
GRANT SELECT ON boomerang.* TO boomerang_analyst;

-- The sink inserts rows and reads back which Kafka offsets are already stored (after a restart)
-- and which migrations are applied. It never alters or drops anything.
CREATE ROLE IF NOT EXISTS boomerang_sink_writer;
GRANT INSERT, SELECT ON boomerang.post_purchase_events TO boomerang_sink_writer;
GRANT INSERT, SELECT ON boomerang.orders TO boomerang_sink_writer;
GRANT INSERT, SELECT ON boomerang.customers TO boomerang_sink_writer;
GRANT SELECT ON boomerang.schema_migrations TO boomerang_sink_writer;
-- Backfilled events are looked up by key hash; an erasure request copies a customer's rows
-- anonymised, deletes the originals and writes an audit row.
GRANT SELECT ON boomerang.event_key_hashes TO boomerang_sink_writer;
GRANT ALTER DELETE ON boomerang.post_purchase_events TO boomerang_sink_writer;
GRANT ALTER DELETE ON boomerang.orders TO boomerang_sink_writer;
GRANT ALTER DELETE ON boomerang.customers TO boomerang_sink_writer;
GRANT INSERT, SELECT ON boomerang.erasure_audit TO boomerang_sink_writer;
-- It keeps the analytics stores fresh (`--analytics-refresh-ms`): reads the marks its inserts
-- leave (and an erasure's), rewrites the stores, prunes old sales snapshots.
GRANT INSERT, SELECT ON boomerang.analytics_dirty TO boomerang_sink_writer;
GRANT ALTER DELETE ON boomerang.analytics_dirty TO boomerang_sink_writer;
GRANT INSERT, SELECT ON boomerang.analytics_refresh_batch TO boomerang_sink_writer;
GRANT ALTER DELETE ON boomerang.analytics_refresh_batch TO boomerang_sink_writer;
GRANT INSERT, SELECT ON boomerang.analytics_refresh_days TO boomerang_sink_writer;
GRANT INSERT, SELECT ON boomerang.analytics_refresh_state TO boomerang_sink_writer;
GRANT INSERT, SELECT ON boomerang.cases_store TO boomerang_sink_writer;
GRANT ALTER DELETE ON boomerang.cases_store TO boomerang_sink_writer;
GRANT INSERT, SELECT ON boomerang.customers_store TO boomerang_sink_writer;
GRANT ALTER DELETE ON boomerang.customers_store TO boomerang_sink_writer;
GRANT INSERT, SELECT ON boomerang.sales_store TO boomerang_sink_writer;
GRANT ALTER DELETE ON boomerang.sales_store TO boomerang_sink_writer;
GRANT INSERT, SELECT ON boomerang.sales_days TO boomerang_sink_writer;
GRANT SELECT ON boomerang.refresh_cases TO boomerang_sink_writer;
GRANT SELECT ON boomerang.refresh_customers TO boomerang_sink_writer;
GRANT SELECT ON boomerang.refresh_sales TO boomerang_sink_writer;
GRANT SELECT ON boomerang.data_quality TO boomerang_sink_writer;
GRANT SELECT ON boomerang.risk_flags TO boomerang_sink_writer;
-- It records its refund SLA target (--refund-sla-hours) for the refund_sla view.
GRANT INSERT, SELECT ON boomerang.analytics_settings TO boomerang_sink_writer;

-- `boomerang migrate` runs as an owner of the database's schema.
CREATE ROLE IF NOT EXISTS boomerang_migrator;
GRANT CREATE DATABASE ON boomerang.*, CREATE TABLE, CREATE VIEW, ALTER, DROP VIEW, INSERT, SELECT ON boomerang.* TO boomerang_migrator;

-- Users: one per person or service, with a role each, e.g.
--   CREATE USER sink IDENTIFIED WITH sha256_password BY '...' DEFAULT ROLE boomerang_sink_writer;
--   GRANT boomerang_sink_writer TO sink;
--   CREATE USER ana IDENTIFIED WITH sha256_password BY '...' DEFAULT ROLE boomerang_analyst;
--   GRANT boomerang_analyst TO ana;
