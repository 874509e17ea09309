//! Backfilled events (`boomerang backfill`, marked by the `boomerang.history` header) are
//! de-duplicated here against what ClickHouse holds, a batch at a time, just before the insert.
//!
//! Why here: ingest keeps idempotency keys in memory for its live window only (seven days of
//! event time), so history older than that passes ingest unchecked — a year of keys in memory
//! is what a backfill must not cost. ClickHouse already holds every key written, ordered by
//! idempotency key (the events table's primary key): one `IN` query per batch finds which of
//! the batch's history keys are there — an overlap with live traffic, a file backfilled twice,
//! a run resumed after a crash — and those rows are not written. Live events skip the query.
//!
//! What the query cannot see — a copy of the key in an insert still in flight — is the same
//! enriched partition's recent key window's job (`recent_keys.rs`): both copies carry one
//! order id, so one partition and one sink instance, and the later copy meets the first there.

use std::collections::HashSet;

use boomerang_runtime::error_kind::ErrorKind;
use boomerang_runtime::retry::{Backoff, Retry};
use boomerang_runtime::stage_loop::Fence;

use crate::rows::EventRow;
use crate::write::{FIRST_BACKOFF, Keyed, MAX_BACKOFF, NotWritten, Writer};

/// Keys per query: a query's text is limited (`max_query_size`, raised for it below).
const KEYS_PER_QUERY: usize = 20_000;

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct KeyRow {
    idempotency_key: String,
}

impl Writer {
    /// Drops from `rows` the backfilled events whose idempotency key `table` already holds;
    /// answers how many it dropped.
    pub(crate) async fn drop_stored_history(
        &self,
        table: &'static str,
        rows: &mut Vec<Keyed<EventRow>>,
        fence: Option<&Fence>,
    ) -> Result<u64, NotWritten> {
        let keys: Vec<&str> = rows
            .iter()
            .filter(|keyed| !keyed.row.backfill_run.is_empty())
            .map(|keyed| keyed.row.idempotency_key.as_str())
            .collect();
        if keys.is_empty() {
            return Ok(0);
        }
        let mut stored = HashSet::new();
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            stored.extend(self.stored_keys(table, chunk, fence).await?);
        }
        if stored.is_empty() {
            return Ok(0);
        }
        let before = rows.len();
        rows.retain(|keyed| {
            keyed.row.backfill_run.is_empty() || !stored.contains(&keyed.row.idempotency_key)
        });
        let dropped = (before - rows.len()) as u64;
        self.metrics.history_already_stored.inc_by(dropped);
        Ok(dropped)
    }

    /// Which of `keys` `table` holds, retried like an insert while ClickHouse is unavailable.
    async fn stored_keys(
        &self,
        table: &'static str,
        keys: &[&str],
        fence: Option<&Fence>,
    ) -> Result<Vec<String>, NotWritten> {
        let what = format!("checking backfilled keys against {table}");
        let mut retry = Retry::new(&what, &self.metrics.errors, &self.shutdown)
            .with_backoff(Backoff::new(FIRST_BACKOFF, MAX_BACKOFF))
            .jittered();
        loop {
            if let Some(fence) = fence {
                tokio::select! {
                    confirmed = fence.confirm() => {
                        confirmed.map_err(|fenced| NotWritten::Fenced(fenced.to_string()))?;
                    }
                    () = self.shutdown.cancelled() => return Err(NotWritten::Shutdown),
                }
            }
            let result = self
                .client
                .query(&format!(
                    "SELECT idempotency_key FROM {table} WHERE idempotency_key IN ?"
                ))
                .bind(keys)
                .with_setting("max_query_size", "67108864")
                .fetch_all::<KeyRow>()
                .await;
            match result {
                Ok(rows) => return Ok(rows.into_iter().map(|row| row.idempotency_key).collect()),
                Err(error) => {
                    if !retry
                        .failed(ErrorKind::ClickhouseUnavailable, &error.to_string())
                        .await
                    {
                        return Err(NotWritten::Shutdown);
                    }
                }
            }
        }
    }
}
