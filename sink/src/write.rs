//! Writing rows to ClickHouse: inserts with the `clickhouse` crate, retried until they land,
//! and split to find the rows ClickHouse refuses for good. The events go as one Native block
//! per insert (`native.rs`, `--clickhouse-insert-format`), orders and customers as RowBinary.
//!
//! - A failure that is not the rows' fault (connection refused, timeout, too many parts, memory
//!   limit, an unknown table, anything unrecognised) is retried with capped exponential backoff
//!   and jitter, for as long as it takes; `/readyz` says why meanwhile. The loop keeps at most a
//!   few batches in flight, so consumption pauses behind a failing insert and lag grows.
//! - Every attempt of one set of rows carries the same `insert_deduplication_token`, and the
//!   tables keep a deduplication window: an insert that landed although its answer was lost
//!   (a timeout) is not written twice by its retry.
//! - A failure that is the data's (a violated constraint, a value out of range) splits the rows
//!   in halves, recursively, until the refused rows are alone; those are returned to be
//!   dead-lettered and the rest are written.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boomerang_runtime::dead_letter::Rejection;
use boomerang_runtime::error_kind::{DeadLetterKind, ErrorKind};
use boomerang_runtime::http::Readiness;
use boomerang_runtime::retry::{Backoff, Retry};
use boomerang_runtime::stage_loop::{Fence, Partition, WriteIndex};
use clickhouse::error::Error as ClickhouseError;
use compact_str::CompactString;
use tokio_util::sync::CancellationToken;

use crate::metrics::SinkMetrics;
use crate::native::NativeBlock;
use crate::rows::{CustomerRow, EventRow, EventRowRef, OrderRow};

/// The dead-letter kind of a row ClickHouse refused.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A row and the record it came from.
#[derive(Debug, Clone)]
pub struct Keyed<R> {
    pub row: R,
    pub partition: Partition,
    pub offset: i64,
    /// How the loop knows the record, should ClickHouse refuse the row.
    pub write: WriteIndex,
}

/// What became of a set of rows.
#[derive(Debug, Default)]
pub struct Written {
    pub rejected: Vec<(WriteIndex, Rejection)>,
    /// Shutdown came while an insert was still failing.
    pub abandoned: bool,
    /// The group moved on without this instance before an insert: nothing more was written.
    pub fenced: Option<String>,
}

/// Why an insert was not made.
pub(crate) enum NotWritten {
    /// Shutdown came while it was still failing.
    Shutdown,
    /// The group has fenced this instance.
    Fenced(String),
}

/// How the sink encodes the events it inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InsertFormat {
    /// One block of columns per insert: ClickHouse's own layout, the least server CPU per
    /// row (`insert_format` in `benches/`).
    Native,
    /// A row at a time, through the `clickhouse` crate's serde rows.
    #[value(name = "rowbinary")]
    RowBinary,
}

/// A row type the sink inserts.
pub trait TableRow: clickhouse::RowOwned + clickhouse::RowWrite + Send + Sync + Sized {
    /// The rows as one Native block; `None`: this table's rows go as RowBinary.
    fn native_block(_rows: &[Keyed<Self>]) -> Option<NativeBlock> {
        None
    }
}

impl TableRow for EventRow {
    fn native_block(rows: &[Keyed<Self>]) -> Option<NativeBlock> {
        let mut block = NativeBlock::with_rows(rows.len());
        for keyed in rows {
            keyed.row.append_to(&mut block);
        }
        Some(block)
    }
}

impl TableRow for OrderRow {}

impl TableRow for CustomerRow {}

/// What one insert into a table takes a run of: its rows' records, in order, and how to insert
/// some of them. Rows of a [`TableRow`] type, or the events of a batch already in a block
/// ([`NativeEvents`]).
pub trait TableRows: Sync {
    type Entry: Sync;

    /// The rows' records, in order.
    fn keys(&self) -> &[Keyed<Self::Entry>];

    /// One attempt at inserting the rows at `range`.
    fn insert(
        &self,
        writer: &Writer,
        table: &str,
        range: Range<usize>,
        token: &str,
    ) -> impl Future<Output = Result<(), ClickhouseError>> + Send;
}

impl<R: TableRow> TableRows for [Keyed<R>] {
    type Entry = R;

    fn keys(&self) -> &[Keyed<R>] {
        self
    }

    async fn insert(
        &self,
        writer: &Writer,
        table: &str,
        range: Range<usize>,
        token: &str,
    ) -> Result<(), ClickhouseError> {
        writer.insert_once(table, &self[range], token).await
    }
}

/// What the sink keeps of an event whose row is in the batch's block: its record, and the
/// idempotency key of a backfilled one, to check against ClickHouse (`history.rs`).
#[derive(Debug, Clone, Default)]
pub struct EventEntry {
    pub history_key: Option<CompactString>,
}

/// A batch's events as the sink inserts them by default: their rows in one Native block, each
/// appended as its event was processed, and the records they came from, row for row.
#[derive(Debug, Clone, Default)]
pub struct NativeEvents {
    /// Shared with the pieces of an insert in flight (`NativeBlock::pieces`).
    pub block: Arc<NativeBlock>,
    pub rows: Vec<Keyed<EventEntry>>,
}

impl NativeEvents {
    /// No events, with room for as many as `like` holds.
    pub fn with_room_of(like: &NativeEvents) -> Self {
        Self {
            block: Arc::new(NativeBlock::with_rows(like.rows.len())),
            rows: Vec::with_capacity(like.rows.len()),
        }
    }

    /// Appends an event's row, and keeps its record.
    pub fn push(&mut self, row: &EventRowRef<'_>, keyed: Keyed<EventEntry>) {
        // The block being filled is this batch's own: nothing else holds it, and `make_mut`
        // never copies it.
        row.append_to(Arc::make_mut(&mut self.block));
        self.rows.push(keyed);
    }

    /// Empties the batch and keeps its buffers, if no insert still holds the block.
    pub fn clear(&mut self) {
        self.rows.clear();
        match Arc::get_mut(&mut self.block) {
            Some(block) => block.clear(),
            None => self.block = Arc::new(NativeBlock::new()),
        }
    }

    /// Keeps only the rows at `kept`, in order.
    pub fn keep(&mut self, kept: &[usize]) {
        if kept.len() == self.rows.len() {
            return;
        }
        self.block = Arc::new(self.block.select(kept));
        keep_indexes(&mut self.rows, kept);
    }
}

/// Keeps only the items of `items` at `kept`, which ascend.
pub(crate) fn keep_indexes<T>(items: &mut Vec<T>, kept: &[usize]) {
    let mut kept = kept.iter().peekable();
    let mut index = 0;
    items.retain(|_| {
        let keep = kept.next_if_eq(&&index).is_some();
        index += 1;
        keep
    });
}

impl TableRows for NativeEvents {
    type Entry = EventEntry;

    fn keys(&self) -> &[Keyed<EventEntry>] {
        &self.rows
    }

    async fn insert(
        &self,
        writer: &Writer,
        table: &str,
        range: Range<usize>,
        token: &str,
    ) -> Result<(), ClickhouseError> {
        // The whole batch goes as its block; a part of it (a split around a refused row) as a
        // block of those rows.
        let part;
        let block = if range.start == 0 && range.end == self.rows.len() {
            &self.block
        } else {
            part = Arc::new(self.block.select(&range.collect::<Vec<_>>()));
            &part
        };
        let columns: Vec<&str> = block.column_names().collect();
        let sql = format!("INSERT INTO {table} ({}) FORMAT Native", columns.join(", "));
        match block.pieces() {
            Ok(pieces) => writer.send_native(&sql, pieces, token).await,
            // A bug in the row's code (`EventRowRef::append_to`), never the data's fault: the
            // insert is retried, and `/readyz` and the logs say why.
            Err(mismatch) => Err(ClickhouseError::Custom(mismatch.to_string())),
        }
    }
}

/// How much of a Native body is compressed and handed to the connection at a time: the
/// crate's own inserts send a few hundred KiB at a time, too.
const NATIVE_CHUNK_BYTES: usize = 1 << 20;

#[derive(Clone)]
pub struct Writer {
    pub client: clickhouse::Client,
    pub format: InsertFormat,
    pub metrics: SinkMetrics,
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
    pub timeout: Duration,
}

/// Why one insert failed.
#[derive(Debug)]
enum Failure {
    /// Not the rows' fault: retry the same rows.
    Retry { kind: &'static str, message: String },
    /// Some row is refused: split.
    Refused { message: String },
}

/// ClickHouse error codes that mean the data itself is refused.
const DATA_ERROR_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    190, // SIZES_OF_ARRAYS_DONT_MATCH
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    469, // VIOLATED_CONSTRAINT
];

/// The `Code: N` of a server exception.
fn error_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn classify(error: &ClickhouseError) -> Failure {
    let message = error.to_string();
    match error {
        ClickhouseError::Network(_) => Failure::Retry {
            kind: "connection",
            message,
        },
        ClickhouseError::TimedOut => Failure::Retry {
            kind: "timeout",
            message,
        },
        ClickhouseError::Custom(_) => Failure::Refused { message },
        ClickhouseError::BadResponse(_) => match error_code(&message) {
            Some(code) if DATA_ERROR_CODES.contains(&code) => Failure::Refused { message },
            Some(252) => Failure::Retry {
                kind: "too_many_parts",
                message,
            },
            Some(241) => Failure::Retry {
                kind: "memory_limit",
                message,
            },
            Some(159 | 209 | 210) => Failure::Retry {
                kind: "timeout",
                message,
            },
            _ => Failure::Retry {
                kind: "server",
                message,
            },
        },
        _ => Failure::Retry {
            kind: "server",
            message,
        },
    }
}

/// The same for every attempt at these rows, different for other rows.
fn dedup_token<R>(table: &str, rows: &[Keyed<R>]) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for row in rows {
        row.partition.hash(&mut hasher);
        row.offset.hash(&mut hasher);
    }
    format!("boomerang:{table}:{}:{:016x}", rows.len(), hasher.finish())
}

impl Writer {
    /// The retry of a ClickHouse request: capped exponential backoff with jitter, each failed
    /// attempt counted.
    pub(crate) fn retry<'a>(&'a self, what: &'a str) -> Retry<'a> {
        Retry::new(what, &self.metrics.errors, &self.shutdown)
            .with_backoff(Backoff::new(FIRST_BACKOFF, MAX_BACKOFF))
            .jittered()
    }

    /// Before each attempt of a write: that this instance still owns the batch's partitions
    /// (`None`: no fence to ask). A confirmation may wait for a rebalance to end: never past a
    /// shutdown.
    pub(crate) async fn confirm_ownership(&self, fence: Option<&Fence>) -> Result<(), NotWritten> {
        let Some(fence) = fence else {
            return Ok(());
        };
        tokio::select! {
            confirmed = fence.confirm() => {
                confirmed.map_err(|fenced| NotWritten::Fenced(fenced.to_string()))
            }
            () = self.shutdown.cancelled() => Err(NotWritten::Shutdown),
        }
    }

    async fn insert_once<R: TableRow>(
        &self,
        table: &str,
        rows: &[Keyed<R>],
        token: &str,
    ) -> Result<(), ClickhouseError> {
        if self.format == InsertFormat::Native
            && let Some(block) = R::native_block(rows)
        {
            let columns: Vec<&str> = block.column_names().collect();
            let sql = format!("INSERT INTO {table} ({}) FORMAT Native", columns.join(", "));
            match block.finish() {
                Ok(pieces) => return self.send_native(&sql, pieces, token).await,
                // A bug in a row's code, not the data's fault: the rows still go, as RowBinary.
                Err(mismatch) => {
                    tracing::error!(table, %mismatch, "cannot build a Native block; inserting RowBinary");
                }
            }
        }
        let mut insert = self
            .client
            .insert::<R>(table)
            .await?
            .with_timeouts(Some(self.timeout), Some(self.timeout))
            .with_setting("insert_deduplication_token", token);
        for row in rows {
            insert.write(&row.row).await?;
        }
        insert.end().await
    }

    /// One `INSERT … FORMAT Native` of a block's pieces, in order, compressed as the client's
    /// other inserts are. Each piece is let go once it is sent.
    async fn send_native(
        &self,
        sql: &str,
        pieces: Vec<bytes::Bytes>,
        token: &str,
    ) -> Result<(), ClickhouseError> {
        let mut insert = self
            .client
            .insert_formatted_with(sql)
            .with_timeouts(Some(self.timeout), Some(self.timeout))
            .with_setting("insert_deduplication_token", token);
        for mut piece in pieces {
            while !piece.is_empty() {
                let chunk = piece.split_to(piece.len().min(NATIVE_CHUNK_BYTES));
                insert.send(chunk).await?;
            }
        }
        insert.end().await
    }

    /// Inserts `rows`, retrying until ClickHouse has them or refuses some for good; `Err` if
    /// shutdown came first.
    async fn insert_with_retry<T>(
        &self,
        table: &'static str,
        rows: &T,
        range: Range<usize>,
        fence: Option<&Fence>,
    ) -> Result<Option<String>, NotWritten>
    where
        T: TableRows + ?Sized,
    {
        let count = range.len();
        let token = dedup_token(table, &rows.keys()[range.clone()]);
        let what = format!("inserting into {table}");
        let mut retry = self.retry(&what);
        loop {
            // Every attempt, a retry after a long outage too: a paused instance must not write
            // what the partition's new owner writes.
            self.confirm_ownership(fence).await?;
            let started = Instant::now();
            let result = rows.insert(self, table, range.clone(), &token).await;
            let failure = match result {
                Ok(()) => {
                    self.metrics
                        .rows_inserted
                        .with_label_values(&[table])
                        .inc_by(count as u64);
                    self.metrics
                        .insert_duration
                        .with_label_values(&[table])
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics
                        .insert_rows
                        .with_label_values(&[table])
                        .observe(count as f64);
                    self.metrics.inserts_failing.set(0);
                    if retry.failures() > 0 {
                        tracing::info!(
                            table,
                            attempts = retry.failures() + 1,
                            "insert succeeded after retries"
                        );
                    }
                    self.readiness.unblock("clickhouse");
                    return Ok(None);
                }
                Err(error) => classify(&error),
            };
            match failure {
                Failure::Refused { message } => return Ok(Some(message)),
                Failure::Retry { kind, message } => {
                    self.metrics
                        .insert_retries
                        .with_label_values(&[table, kind])
                        .inc();
                    self.metrics.inserts_failing.set(1);
                    self.readiness.block(
                        "clickhouse",
                        format!("clickhouse insert into {table} failing ({kind}); retrying"),
                    );
                    if !retry
                        .failed(
                            ErrorKind::ClickhouseUnavailable,
                            &format!("{kind}: {message}"),
                        )
                        .await
                    {
                        return Err(NotWritten::Shutdown);
                    }
                }
            }
        }
    }

    /// Writes every row, isolating and returning the ones ClickHouse refuses for good.
    /// `fence`, when given, is asked before every attempt (`Fence::confirm`).
    pub async fn write_all<T>(
        &self,
        table: &'static str,
        rows: &T,
        fence: Option<&Fence>,
    ) -> Written
    where
        T: TableRows + ?Sized,
    {
        let mut written = Written::default();
        // Ranges still to insert; the first half of a split goes first.
        let mut ranges = vec![(0, rows.keys().len())];
        while let Some((start, end)) = ranges.pop() {
            if start == end {
                continue;
            }
            let slice = &rows.keys()[start..end];
            match self.insert_with_retry(table, rows, start..end, fence).await {
                Err(NotWritten::Shutdown) => {
                    written.abandoned = true;
                    return written;
                }
                Err(NotWritten::Fenced(reason)) => {
                    written.fenced = Some(reason);
                    return written;
                }
                Ok(None) => {}
                Ok(Some(message)) if slice.len() == 1 => {
                    let row = &slice[0];
                    tracing::warn!(
                        table,
                        partition = row.partition.1,
                        offset = row.offset,
                        "ClickHouse refused a row; dead-lettering it"
                    );
                    self.metrics.rows_rejected.with_label_values(&[table]).inc();
                    written.rejected.push((
                        row.write,
                        Rejection::new(
                            DeadLetterKind::RejectedByClickhouse,
                            format!("{table}: {message}"),
                        ),
                    ));
                }
                Ok(Some(_message)) => {
                    let middle = start + (end - start) / 2;
                    ranges.push((middle, end));
                    ranges.push((start, middle));
                }
            }
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_events_keep_their_rows_and_records_together() {
        let topic: Arc<str> = Arc::from("enriched");
        let mut writes = boomerang_runtime::stage_loop::Writes::default();
        let mut events = NativeEvents::default();
        let mut expected = NativeBlock::new();
        for offset in 0..6_i64 {
            let key = format!("key-{offset}");
            let row = EventRowRef {
                idempotency_key: &key,
                source_offset: offset,
                ..EventRowRef::example()
            };
            if offset % 2 == 1 {
                row.append_to(&mut expected);
            }
            let entry = Keyed {
                row: EventEntry {
                    history_key: Some(key.as_str().into()),
                },
                partition: (topic.clone(), 0),
                offset,
                write: writes.write().1,
            };
            events.push(&row, entry);
        }
        events.keep(&[1, 3, 5]);
        let offsets: Vec<i64> = events.rows.iter().map(|keyed| keyed.offset).collect();
        assert_eq!(offsets, [1, 3, 5]);
        assert_eq!(events.block.rows(), 3);
        let concat = |pieces: Vec<bytes::Bytes>| -> Vec<u8> {
            pieces
                .iter()
                .flat_map(|piece| piece.iter().copied())
                .collect()
        };
        assert_eq!(
            concat(events.block.pieces().expect("one shape")),
            concat(expected.finish().expect("one shape"))
        );
        events.clear();
        assert!(events.rows.is_empty() && events.block.rows() == 0);
    }

    #[test]
    fn kept_indexes_are_kept_in_order() {
        let mut items: Vec<char> = "abcdef".chars().collect();
        keep_indexes(&mut items, &[0, 2, 5]);
        assert_eq!(items, ['a', 'c', 'f']);
        keep_indexes(&mut items, &[]);
        assert!(items.is_empty());
    }

    #[test]
    fn failures_are_told_apart_by_code() {
        let refused = ClickhouseError::BadResponse("Code: 469. DB::Exception: Constraint `quantity_positive` is violated. (VIOLATED_CONSTRAINT)".into());
        assert!(matches!(classify(&refused), Failure::Refused { .. }));
        let parts = ClickhouseError::BadResponse(
            "Code: 252. DB::Exception: Too many parts (TOO_MANY_PARTS)".into(),
        );
        assert!(matches!(
            classify(&parts),
            Failure::Retry {
                kind: "too_many_parts",
                ..
            }
        ));
        let memory = ClickhouseError::BadResponse(
            "Code: 241. DB::Exception: Memory limit exceeded (MEMORY_LIMIT_EXCEEDED)".into(),
        );
        assert!(matches!(
            classify(&memory),
            Failure::Retry {
                kind: "memory_limit",
                ..
            }
        ));
        let unknown_table = ClickhouseError::BadResponse(
            "Code: 60. DB::Exception: Unknown table (UNKNOWN_TABLE)".into(),
        );
        assert!(
            matches!(
                classify(&unknown_table),
                Failure::Retry { kind: "server", .. }
            ),
            "not the rows' fault"
        );
        assert!(matches!(
            classify(&ClickhouseError::TimedOut),
            Failure::Retry {
                kind: "timeout",
                ..
            }
        ));
    }

    #[test]
    fn tokens_follow_the_rows() {
        let rows = |offsets: &[i64]| -> Vec<Keyed<()>> {
            let mut writes = boomerang_runtime::stage_loop::Writes::default();
            offsets
                .iter()
                .map(|offset| Keyed {
                    row: (),
                    partition: ("t".into(), 0),
                    offset: *offset,
                    write: writes.write().1,
                })
                .collect()
        };
        assert_eq!(
            dedup_token("e", &rows(&[1, 2])),
            dedup_token("e", &rows(&[1, 2]))
        );
        assert_ne!(
            dedup_token("e", &rows(&[1, 2])),
            dedup_token("e", &rows(&[1, 3]))
        );
        assert_ne!(
            dedup_token("e", &rows(&[1, 2])),
            dedup_token("o", &rows(&[1, 2]))
        );
    }
}
