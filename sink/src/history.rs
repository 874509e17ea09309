//! Backfilled events (`boomerang backfill`, marked by the `boomerang.history` header) are
//! de-duplicated here against what ClickHouse holds, a batch at a time, just before the insert.
//!
//! Why here: ingest keeps idempotency keys in memory for its live window only (seven days of
//! event time), so history older than that passes ingest unchecked — a year of keys in memory
//! is what a backfill must not cost. ClickHouse already holds every key written: one lookup per
//! batch finds which of the batch's history keys are there — a file backfilled twice, a run
//! resumed after a crash, a line repeated in an export — and those rows are not written. Live
//! events skip it.
//!
//! The lookup reads `event_key_hashes` (migration 0005: every key's 64-bit hash, in granules of
//! 64), so a batch costs about the same at 1M rows as at 100M; only the hashes it finds are
//! confirmed against the events table by key.
//!
//! What the query cannot see — a copy of the key in an insert still in flight — is the same
//! enriched partition's recent key window's job (`recent_keys.rs`): both copies carry one
//! order id, so one partition and one sink instance, and the later copy meets the first there.

use std::collections::HashSet;

use boomerang_runtime::error_kind::ErrorKind;
use boomerang_runtime::stage_loop::Fence;

use crate::rows::EventRow;
use crate::write::{Keyed, NativeEvents, NotWritten, Writer, keep_indexes};

/// Keys per query: a query's text is limited (`max_query_size`, raised for it below).
const KEYS_PER_QUERY: usize = 50_000;

/// Between the keys of one query. The keys travel as one string literal that ClickHouse splits:
/// parsing 50k string literals of an array cost ClickHouse 0.2 s a query, one long literal a
/// fifth of that. A key holding it is sent in the array form.
const SEPARATOR: char = '\n';

/// Room for a query carrying a batch's keys (ClickHouse's default is 256 KiB).
const MAX_QUERY_SIZE: &str = "67108864";

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct KeyRow {
    idempotency_key: String,
}

/// A batch's events as the history check reads them: as rows (RowBinary inserts) or as a block
/// and its records (`NativeEvents`).
pub(crate) trait HistoryRows {
    fn len(&self) -> usize;
    /// The idempotency key of the event at `index`, if it was backfilled.
    fn history_key(&self, index: usize) -> Option<&str>;
    /// Keeps only the events at `kept`, in order.
    fn keep(&mut self, kept: &[usize]);
}

impl HistoryRows for Vec<Keyed<EventRow>> {
    fn len(&self) -> usize {
        self.len()
    }

    fn history_key(&self, index: usize) -> Option<&str> {
        self.get(index)
            .filter(|keyed| !keyed.row.backfill_run.is_empty())
            .map(|keyed| keyed.row.idempotency_key.as_str())
    }

    fn keep(&mut self, kept: &[usize]) {
        keep_indexes(self, kept);
    }
}

impl HistoryRows for NativeEvents {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn history_key(&self, index: usize) -> Option<&str> {
        self.rows
            .get(index)
            .and_then(|keyed| keyed.row.history_key.as_deref())
    }

    fn keep(&mut self, kept: &[usize]) {
        NativeEvents::keep(self, kept);
    }
}

impl Writer {
    /// Drops from `rows` the backfilled events whose idempotency key `table` already holds;
    /// answers how many it dropped.
    pub(crate) async fn drop_stored_history<H: HistoryRows + Send + Sync>(
        &self,
        table: &'static str,
        rows: &mut H,
        fence: Option<&Fence>,
    ) -> Result<u64, NotWritten> {
        let keys: Vec<&str> = (0..rows.len())
            .filter_map(|index| rows.history_key(index))
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
        let kept: Vec<usize> = (0..rows.len())
            .filter(|&index| {
                rows.history_key(index)
                    .is_none_or(|key| !stored.contains(key))
            })
            .collect();
        let dropped = (rows.len() - kept.len()) as u64;
        rows.keep(&kept);
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
        let mut retry = self.retry(&what);
        loop {
            self.confirm_ownership(fence).await?;
            match self.lookup(table, keys).await {
                Ok(found) => return Ok(found),
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

    /// The lookup itself: the keys' hashes in `event_key_hashes` (migration 0005), then, only
    /// for the hashes found, the keys themselves in `table`.
    async fn lookup(
        &self,
        table: &'static str,
        keys: &[&str],
    ) -> Result<Vec<String>, clickhouse::error::Error> {
        if keys.iter().any(|key| key.contains(SEPARATOR)) {
            // A key that holds the separator: the plain form, which reads the key column.
            return Ok(self
                .client
                .query(&format!(
                    "SELECT idempotency_key FROM {table} WHERE idempotency_key IN ?"
                ))
                .bind(keys)
                .with_setting("max_query_size", MAX_QUERY_SIZE)
                .fetch_all::<KeyRow>()
                .await?
                .into_iter()
                .map(|row| row.idempotency_key)
                .collect());
        }
        let joined = keys.join("\n");
        let hashes: Vec<u64> = self
            .client
            .query(
                "SELECT DISTINCT key_hash FROM event_key_hashes WHERE key_hash IN \
                 (SELECT cityHash64(arrayJoin(splitByChar('\\n', ?))))",
            )
            .bind(&joined)
            .with_setting("max_query_size", MAX_QUERY_SIZE)
            .fetch_all::<u64>()
            .await?;
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .client
            .query(&format!(
                "SELECT idempotency_key FROM {table} WHERE idempotency_key IN \
                 (SELECT key FROM (SELECT arrayJoin(splitByChar('\\n', ?)) AS key) \
                  WHERE cityHash64(key) IN ?)"
            ))
            .bind(&joined)
            .bind(hashes)
            .with_setting("max_query_size", MAX_QUERY_SIZE)
            .fetch_all::<KeyRow>()
            .await?
            .into_iter()
            .map(|row| row.idempotency_key)
            .collect())
    }
}
