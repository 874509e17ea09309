//! Sink: enriched events, orders and customers in, ClickHouse rows out.
//!
//! One record's way, by file: decode (the shared `boomerang_runtime::decode`) → skip it if
//! ClickHouse already has it ([`stored`]), or, for an event, its idempotency key
//! ([`recent_keys`]) → its table's row ([`rows`]) → the batch's insert
//! ([`write`]: retried, deduplicated by token, split to isolate refused rows; the events as
//! one columnar block, [`native`]; backfilled events first checked against the keys ClickHouse
//! holds, [`history`]). [`processor`] ties them into the shared stage loop, which commits a
//! batch's offsets only after its insert has finished. The tables and analytics views are in `deploy/clickhouse/migrations/`.
//!
//! A customer's erasure request takes its own way ([`erase`]): read from the erasure-request
//! topic by a consumer of its own, applied to every table in two passes, audited.

pub mod analytics_gauges;
pub mod erase;
pub mod history;
pub mod metrics;
pub mod native;
pub mod processor;
pub mod recent_keys;
pub mod refund_sla;
pub mod rows;
pub mod stored;
pub mod write;
