//! ClickHouse's Native format: a batch's rows as one block of columns, for the events table's
//! inserts (`--clickhouse-insert-format native`, the default).
//!
//! Why: RowBinary is a row format, which ClickHouse parses a value at a time; a Native block is
//! already the server's in-memory layout, each column a run of values. `insert_format` in
//! `benches/` measured the events table's rows at 5–20% less server CPU per row as Native than
//! as RowBinary, both LZ4-compressed (17–25% less uncompressed): that CPU is the user's
//! ClickHouse bill. The `clickhouse` crate's own Native insert cannot compress; this block goes
//! through `insert_formatted_with`, which compresses like every other insert.
//!
//! The block is built row by row, each row appending its values in one pass over it (a column
//! at a time over 50k rows would read each row once per column), into one buffer per column.
//! A row names each value's column and its type in the same call that appends it, so the
//! block's header cannot disagree with its data; the first row's calls make the columns.
//!
//! The layout, as ClickHouse's `NativeReader` reads an HTTP body (protocol revision 0, so no
//! block info and no serialization kinds): the number of columns and of rows (unsigned LEB128),
//! then for each column its name, its type (both strings) and its values: a `String` as its
//! length and bytes; integers, `Bool` (one byte) and `DateTime64` (an `Int64` of its unit)
//! little-endian; a `Nullable` column as one byte per row (1: null) and then a value for every
//! row, a default one where the row is null.

use std::sync::Arc;

use bytes::Bytes;

const STRING: &str = "String";
const NULLABLE_STRING: &str = "Nullable(String)";
const INT32: &str = "Int32";
const NULLABLE_INT32: &str = "Nullable(Int32)";
const INT64: &str = "Int64";
const NULLABLE_INT64: &str = "Nullable(Int64)";
const BOOL: &str = "Bool";
const NULLABLE_BOOL: &str = "Nullable(Bool)";
const MICROS: &str = "DateTime64(6, 'UTC')";
const NULLABLE_MICROS: &str = "Nullable(DateTime64(6, 'UTC'))";

/// One column of a block being built.
#[derive(Debug, Clone)]
struct Column {
    name: &'static str,
    type_name: &'static str,
    /// A `Nullable` column's null map, one byte per row; empty otherwise.
    nulls: Vec<u8>,
    values: Vec<u8>,
}

/// A Native block, built a row at a time: a row appends a value to every column, in the same
/// order every time, then [`NativeBlock::end_row`].
#[derive(Debug, Clone, Default)]
pub struct NativeBlock {
    columns: Vec<Column>,
    rows: usize,
    /// The column the next value goes to.
    next: usize,
    /// How many rows the block is expected to hold: once the first row is in, every column
    /// makes room for that many rows like it, so that a batch's columns are not regrown (and
    /// copied into freshly faulted pages) a doubling at a time.
    expected_rows: usize,
    /// A row appended a value whose column or type differs from the first row's at that
    /// place, or a different number of values: a bug in the row's code, never its data.
    mismatch: Option<String>,
    /// Where the values of a mismatched append go, so that appending never fails.
    scratch_nulls: Vec<u8>,
    scratch: Vec<u8>,
}

/// A block whose rows did not append the same columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch(pub String);

impl std::fmt::Display for Mismatch {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "the rows of a Native block disagree: {}", self.0)
    }
}

impl std::error::Error for Mismatch {}

impl NativeBlock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A block expected to hold `rows` rows (see `expected_rows`).
    pub fn with_rows(rows: usize) -> Self {
        Self {
            expected_rows: rows,
            ..Self::default()
        }
    }

    /// The rows appended so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The columns' names, in order, as the `INSERT` names them.
    pub fn column_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.columns.iter().map(|column| column.name)
    }

    /// The buffers of the next value's column, after checking it is `name` of `type_name`.
    /// Called for every value of every row: the check is two address comparisons, inlined,
    /// and the rest is out of line. (As one function, its frame and the mismatch's formatting
    /// made it a tenth of the sink's main thread in `perf`.)
    #[inline]
    fn column(
        &mut self,
        name: &'static str,
        type_name: &'static str,
    ) -> (&mut Vec<u8>, &mut Vec<u8>) {
        let index = self.next;
        self.next += 1;
        // The same literals every row: their addresses match, and no bytes are compared.
        let same = self.columns.get(index).is_some_and(|column| {
            std::ptr::eq(column.name, name) && std::ptr::eq(column.type_name, type_name)
        });
        if same {
            // `same` found the column at `index`.
            let column = &mut self.columns[index];
            return (&mut column.nulls, &mut column.values);
        }
        self.first_row_column_or_mismatch(index, name, type_name)
    }

    /// [`Self::column`] for a first row's new column, for the same name at another address,
    /// and for a mismatch.
    #[cold]
    #[inline(never)]
    fn first_row_column_or_mismatch(
        &mut self,
        index: usize,
        name: &'static str,
        type_name: &'static str,
    ) -> (&mut Vec<u8>, &mut Vec<u8>) {
        if self.rows == 0 && index == self.columns.len() {
            self.columns.push(Column {
                name,
                type_name,
                nulls: Vec::new(),
                values: Vec::new(),
            });
        }
        match self.columns.get_mut(index) {
            Some(column) if column.name == name && column.type_name == type_name => {
                (&mut column.nulls, &mut column.values)
            }
            found => {
                if self.mismatch.is_none() {
                    self.mismatch = Some(match found {
                        Some(column) => format!(
                            "row {} has {name} {type_name} where the first row has {} {}",
                            self.rows, column.name, column.type_name
                        ),
                        None => format!("row {} has more columns than the first", self.rows),
                    });
                }
                self.scratch_nulls.clear();
                self.scratch.clear();
                (&mut self.scratch_nulls, &mut self.scratch)
            }
        }
    }

    /// Ends the row whose values were appended since the last.
    pub fn end_row(&mut self) {
        if self.next != self.columns.len() && self.mismatch.is_none() {
            self.mismatch = Some(format!(
                "row {} has {} columns where the first has {}",
                self.rows,
                self.next,
                self.columns.len()
            ));
        }
        self.rows += 1;
        self.next = 0;
        if self.rows == 1 && self.expected_rows > 1 {
            let more = self.expected_rows - 1;
            for column in &mut self.columns {
                // A string's length varies from row to row: a quarter more than the first. A
                // first row with a huge value must not ask for its size times the batch: the
                // room is capped, and the column grows as it must beyond it.
                let room = column.values.len().saturating_mul(more) / 4 * 5;
                column.values.reserve(room.min(MAX_ROOM_BYTES));
                if !column.nulls.is_empty() {
                    column.nulls.reserve(more.min(MAX_ROOM_BYTES));
                }
            }
        }
    }

    #[inline]
    pub fn string(&mut self, name: &'static str, value: &str) {
        let (_, values) = self.column(name, STRING);
        put_string(values, value);
    }

    #[inline]
    pub fn optional_string(&mut self, name: &'static str, value: Option<&str>) {
        let (nulls, values) = self.column(name, NULLABLE_STRING);
        nulls.push(u8::from(value.is_none()));
        put_string(values, value.unwrap_or_default());
    }

    #[inline]
    pub fn int32(&mut self, name: &'static str, value: i32) {
        self.fixed(name, INT32, value.to_le_bytes());
    }

    #[inline]
    pub fn optional_int32(&mut self, name: &'static str, value: Option<i32>) {
        self.optional_fixed(name, NULLABLE_INT32, value.map(i32::to_le_bytes));
    }

    #[inline]
    pub fn int64(&mut self, name: &'static str, value: i64) {
        self.fixed(name, INT64, value.to_le_bytes());
    }

    #[inline]
    pub fn optional_int64(&mut self, name: &'static str, value: Option<i64>) {
        self.optional_fixed(name, NULLABLE_INT64, value.map(i64::to_le_bytes));
    }

    #[inline]
    pub fn boolean(&mut self, name: &'static str, value: bool) {
        self.fixed(name, BOOL, [u8::from(value)]);
    }

    #[inline]
    pub fn optional_boolean(&mut self, name: &'static str, value: Option<bool>) {
        self.optional_fixed(name, NULLABLE_BOOL, value.map(|value| [u8::from(value)]));
    }

    /// A `DateTime64(6, 'UTC')`: microseconds since the epoch.
    #[inline]
    pub fn micros(&mut self, name: &'static str, micros: i64) {
        self.fixed(name, MICROS, micros.to_le_bytes());
    }

    #[inline]
    pub fn optional_micros(&mut self, name: &'static str, micros: Option<i64>) {
        self.optional_fixed(name, NULLABLE_MICROS, micros.map(i64::to_le_bytes));
    }

    /// A fixed-width value, already in its little-endian bytes.
    #[inline]
    fn fixed<const N: usize>(
        &mut self,
        name: &'static str,
        type_name: &'static str,
        value: [u8; N],
    ) {
        let (_, values) = self.column(name, type_name);
        values.extend_from_slice(&value);
    }

    /// A `Nullable` fixed-width value: a null is written as zeros behind its null-map byte.
    #[inline]
    fn optional_fixed<const N: usize>(
        &mut self,
        name: &'static str,
        type_name: &'static str,
        value: Option<[u8; N]>,
    ) {
        let (nulls, values) = self.column(name, type_name);
        nulls.push(u8::from(value.is_none()));
        values.extend_from_slice(&value.unwrap_or([0; N]));
    }

    /// The block's bytes, as an `INSERT … FORMAT Native` body, in pieces to be sent one after
    /// the other. A column's buffers become pieces of their own that borrow the block, not
    /// copies: a batch's block is about as large as its rows, and one contiguous copy of it
    /// used to double the sink's memory for it while it was sent. The small parts between
    /// (the header, each column's name and type, short columns) are gathered into shared
    /// pieces. The block is shared, so a retry sends the same block again.
    pub fn pieces(self: &Arc<Self>) -> Result<Vec<Bytes>, Mismatch> {
        if let Some(mismatch) = &self.mismatch {
            return Err(Mismatch(mismatch.clone()));
        }
        if self.next != 0 {
            return Err(Mismatch(format!("row {} was not ended", self.rows)));
        }
        let mut pieces = Vec::new();
        let mut small = Vec::new();
        put_varuint(&mut small, self.columns.len() as u64);
        put_varuint(&mut small, self.rows as u64);
        for (index, column) in self.columns.iter().enumerate() {
            put_string(&mut small, column.name);
            put_string(&mut small, column.type_name);
            for (part, nulls) in [(&column.nulls, true), (&column.values, false)] {
                if part.len() < OWN_PIECE_BYTES {
                    small.extend_from_slice(part);
                } else {
                    if !small.is_empty() {
                        pieces.push(Bytes::from(std::mem::take(&mut small)));
                    }
                    pieces.push(Bytes::from_owner(ColumnPart {
                        block: self.clone(),
                        column: index,
                        nulls,
                    }));
                }
            }
        }
        if !small.is_empty() {
            pieces.push(Bytes::from(small));
        }
        Ok(pieces)
    }

    /// [`Self::pieces`] of a block not shared.
    pub fn finish(self) -> Result<Vec<Bytes>, Mismatch> {
        Arc::new(self).pieces()
    }

    /// Empties the block and keeps its buffers, for the next batch to fill: a batch's columns
    /// are tens of MB, and fresh ones are page-faulted and zeroed by the kernel as they fill.
    pub fn clear(&mut self) {
        for column in &mut self.columns {
            column.nulls.clear();
            column.values.clear();
        }
        self.rows = 0;
        self.next = 0;
        self.mismatch = None;
    }

    /// A block of some of this block's rows, in the order given: for the rare insert of part
    /// of a batch (ClickHouse refused a row, or backfilled rows were already stored). Each
    /// column is walked once to find where its rows start.
    pub fn select(&self, rows: &[usize]) -> NativeBlock {
        let mut selected = NativeBlock {
            rows: rows.len(),
            mismatch: self.mismatch.clone(),
            ..NativeBlock::default()
        };
        for column in &self.columns {
            let starts = column.row_starts(self.rows);
            let mut values = Vec::new();
            let mut nulls = Vec::new();
            for &row in rows {
                if let (Some(&start), Some(&end)) = (starts.get(row), starts.get(row + 1)) {
                    values.extend_from_slice(&column.values[start..end]);
                }
                if let Some(&null) = column.nulls.get(row) {
                    nulls.push(null);
                }
            }
            selected.columns.push(Column {
                name: column.name,
                type_name: column.type_name,
                nulls,
                values,
            });
        }
        selected
    }
}

impl Column {
    /// Where each of the column's `rows` values starts in `values`, and where the last ends.
    fn row_starts(&self, rows: usize) -> Vec<usize> {
        let mut starts = Vec::with_capacity(rows + 1);
        let mut at = 0;
        for _ in 0..rows {
            starts.push(at);
            at += match fixed_width(self.type_name) {
                Some(width) => width,
                None => {
                    // A string: its length, then its bytes. The block wrote both.
                    let (length, read) = read_varuint(&self.values[at.min(self.values.len())..]);
                    read + length
                }
            };
            at = at.min(self.values.len());
        }
        starts.push(at);
        starts
    }
}

/// The bytes of a value of a fixed-width type; `None` for a string.
fn fixed_width(type_name: &str) -> Option<usize> {
    match type_name {
        INT32 | NULLABLE_INT32 => Some(4),
        INT64 | NULLABLE_INT64 | MICROS | NULLABLE_MICROS => Some(8),
        BOOL | NULLABLE_BOOL => Some(1),
        _ => None,
    }
}

/// A `VarUInt` at the start of `bytes`, and how many bytes it took (0, 0 for none).
fn read_varuint(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    for (index, byte) in bytes.iter().enumerate().take(10) {
        value |= usize::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return (value, index + 1);
        }
    }
    (value, bytes.len().min(10))
}

/// One of a shared block's column buffers, as a piece of an insert's body.
struct ColumnPart {
    block: Arc<NativeBlock>,
    column: usize,
    nulls: bool,
}

impl AsRef<[u8]> for ColumnPart {
    fn as_ref(&self) -> &[u8] {
        match self.block.columns.get(self.column) {
            Some(column) if self.nulls => &column.nulls,
            Some(column) => &column.values,
            None => &[],
        }
    }
}

/// The most room a column makes up front (`NativeBlock::with_rows`): a batch of 50k events
/// needs a few MiB per column.
const MAX_ROOM_BYTES: usize = 16 << 20;

/// A column's buffer at least this long is a piece of its own; shorter ones are copied into
/// the piece being gathered.
const OWN_PIECE_BYTES: usize = 64 * 1024;

/// Unsigned LEB128, ClickHouse's `VarUInt`.
fn put_varuint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // The low seven bits, with the continuation bit: always below 256.
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_string(out: &mut Vec<u8>, value: &str) {
    put_varuint(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varuints_are_leb128() {
        let encoded = |value| {
            let mut out = Vec::new();
            put_varuint(&mut out, value);
            out
        };
        assert_eq!(encoded(0), [0]);
        assert_eq!(encoded(127), [127]);
        assert_eq!(encoded(128), [0x80, 1]);
        assert_eq!(encoded(300), [0xac, 0x02]);
        assert_eq!(encoded(u64::MAX).len(), 10);
    }

    #[test]
    fn a_block_is_its_header_then_each_column_with_its_null_map_first() {
        let mut block = NativeBlock::new();
        for (name, amount, at) in [("a", Some(-2), 1), ("bc", None, 2)] {
            block.string("name", name);
            block.optional_int64("amount", amount);
            block.micros("at", at);
            block.boolean("flag", at == 2);
            block.end_row();
        }
        assert_eq!(block.rows(), 2);
        assert_eq!(
            block.column_names().collect::<Vec<_>>(),
            ["name", "amount", "at", "flag"]
        );
        let body = block.finish().expect("one shape").concat();
        let mut expected = vec![4, 2];
        expected.extend_from_slice(b"\x04name\x06String\x01a\x02bc");
        expected.extend_from_slice(b"\x06amount\x0fNullable(Int64)\x00\x01");
        expected.extend_from_slice(&(-2i64).to_le_bytes());
        expected.extend_from_slice(&0i64.to_le_bytes());
        expected.extend_from_slice(b"\x02at\x14DateTime64(6, 'UTC')");
        expected.extend_from_slice(&1i64.to_le_bytes());
        expected.extend_from_slice(&2i64.to_le_bytes());
        expected.extend_from_slice(b"\x04flag\x04Bool\x00\x01");
        assert_eq!(body, expected);
    }

    #[test]
    fn long_columns_are_pieces_of_their_own_and_the_pieces_are_the_block() {
        let long = "x".repeat(OWN_PIECE_BYTES);
        let mut block = NativeBlock::new();
        for row in 0..3 {
            block.int32("n", row);
            block.string("long", &long);
            block.optional_string("maybe", (row == 1).then_some("y"));
            block.end_row();
        }
        let pieces = block.finish().expect("one shape");
        // The header, n and long's name and type; long's values; maybe's name, type and data.
        assert_eq!(
            pieces.len(),
            3,
            "{:?}",
            pieces.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        assert_eq!(
            pieces[1].len(),
            3 * (3 + OWN_PIECE_BYTES),
            "long's values alone"
        );
        let mut expected = vec![3, 3];
        expected.extend_from_slice(b"\x01n\x05Int32");
        for row in 0i32..3 {
            expected.extend_from_slice(&row.to_le_bytes());
        }
        expected.extend_from_slice(b"\x04long\x06String");
        for _ in 0..3 {
            expected.extend_from_slice(&[0x80, 0x80, 0x04]);
            expected.extend_from_slice(long.as_bytes());
        }
        expected.extend_from_slice(b"\x05maybe\x10Nullable(String)\x01\x00\x01\x00\x01y\x00");
        assert_eq!(pieces.concat(), expected);
    }

    #[test]
    fn room_made_for_the_expected_rows_changes_no_byte() {
        let build = |mut block: NativeBlock, rows: i32| {
            for row in 0..rows {
                block.int32("n", row);
                block.string("text", &"t".repeat(row as usize % 7));
                block.optional_int64("maybe", (row % 3 == 0).then_some(i64::from(row)));
                block.end_row();
            }
            block.finish().expect("one shape").concat()
        };
        for (expected, rows) in [(0, 5), (1, 5), (5, 5), (1_000, 5), (3, 700)] {
            assert_eq!(
                build(NativeBlock::with_rows(expected), rows),
                build(NativeBlock::new(), rows),
                "{rows} rows where {expected} were expected"
            );
        }
    }

    #[test]
    fn a_huge_first_row_does_not_make_room_for_a_batch_of_its_size() {
        let huge = "h".repeat(1 << 20);
        let mut block = NativeBlock::with_rows(1_000_000);
        block.string("text", &huge);
        block.optional_string("maybe", None);
        block.end_row();
        let text = &block.columns[0];
        assert!(
            text.values.capacity() <= text.values.len() + MAX_ROOM_BYTES,
            "{} bytes of room",
            text.values.capacity()
        );
        assert!(block.columns[1].nulls.capacity() <= 1 + MAX_ROOM_BYTES);
        block.string("text", "small");
        block.optional_string("maybe", Some("y"));
        block.end_row();
        assert_eq!(block.rows(), 2);
        assert!(block.finish().is_ok());
    }

    #[test]
    fn rows_that_disagree_are_refused_not_encoded() {
        let mut block = NativeBlock::new();
        block.string("a", "x");
        block.end_row();
        block.int32("a", 1);
        block.end_row();
        let refused = block.finish().expect_err("a type changed");
        assert!(refused.0.contains("Int32"), "{refused}");

        let mut block = NativeBlock::new();
        block.string("a", "x");
        block.string("b", "y");
        block.end_row();
        block.string("a", "x");
        block.end_row();
        assert!(block.finish().is_err(), "a column missing");

        let mut block = NativeBlock::new();
        block.string("a", "x");
        block.end_row();
        block.string("a", "x");
        block.string("b", "y");
        block.end_row();
        assert!(block.finish().is_err(), "a column too many");

        let mut block = NativeBlock::new();
        block.string("a", "x");
        assert!(block.finish().is_err(), "a row not ended");
    }

    /// A row of every kind of column, its values varying with `n` (strings long enough for
    /// two-byte lengths).
    fn varied_row(block: &mut NativeBlock, n: usize) {
        block.string("s", &"x".repeat(n * 37 % 300));
        block.optional_string("o", n.is_multiple_of(3).then_some("y"));
        block.int32("i", n as i32);
        block.optional_int32("oi", (n % 2 == 1).then_some(-(n as i32)));
        block.int64("l", n as i64 * 1_000_000_007);
        block.optional_int64("ol", n.is_multiple_of(2).then_some(n as i64));
        block.boolean("b", n.is_multiple_of(2));
        block.optional_boolean("ob", (!n.is_multiple_of(5)).then_some(n.is_multiple_of(3)));
        block.micros("t", n as i64);
        block.optional_micros("ot", n.is_multiple_of(4).then_some(n as i64));
        block.end_row();
    }

    fn concat(pieces: Vec<Bytes>) -> Vec<u8> {
        pieces
            .iter()
            .flat_map(|piece| piece.iter().copied())
            .collect()
    }

    #[test]
    fn a_selection_is_the_block_of_those_rows() {
        let mut all = NativeBlock::new();
        for n in 0..60 {
            varied_row(&mut all, n);
        }
        for picked in [vec![0, 3, 4, 17, 59], vec![59], (0..60).collect(), vec![]] {
            let mut expected = NativeBlock::new();
            for &n in &picked {
                varied_row(&mut expected, n);
            }
            let selected = all.select(&picked);
            assert_eq!(selected.rows(), picked.len());
            if picked.is_empty() {
                continue;
            }
            assert_eq!(
                concat(selected.finish().expect("one shape")),
                concat(expected.finish().expect("one shape")),
                "{picked:?}"
            );
        }
    }

    #[test]
    fn a_cleared_block_fills_again_as_a_new_one() {
        let mut reused = NativeBlock::with_rows(10);
        for n in 0..10 {
            varied_row(&mut reused, n);
        }
        reused.clear();
        let mut fresh = NativeBlock::new();
        for n in 20..25 {
            varied_row(&mut reused, n);
            varied_row(&mut fresh, n);
        }
        assert_eq!(
            concat(reused.finish().expect("one shape")),
            concat(fresh.finish().expect("one shape"))
        );
    }

    #[test]
    fn shared_pieces_are_the_block_and_let_it_go() {
        let mut block = NativeBlock::new();
        for n in 0..2_000 {
            varied_row(&mut block, n);
        }
        let expected = concat(block.clone().finish().expect("one shape"));
        let mut shared = Arc::new(block);
        let pieces = shared.pieces().expect("one shape");
        assert!(pieces.len() > 1, "the long columns are pieces of their own");
        assert_eq!(concat(pieces), expected);
        assert!(
            Arc::get_mut(&mut shared).is_some(),
            "no piece holds the block"
        );
    }
}
