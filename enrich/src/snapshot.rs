//! Snapshots of a reference table on local disk (`--state-dir`): the table's rows and, per
//! partition of its topic, the offset they include everything before. A restart loads the
//! snapshot and reads the topic on from those offsets, instead of every partition from the
//! beginning.
//!
//! A snapshot is ignored, and the topic read whole, when it is missing or damaged, is of
//! another topic or partition count, names an offset the topic no longer has (recreated,
//! or records deleted), or is older than [`MAX_AGE`]: compaction may by then have removed
//! tombstones written after it (`delete.retention.ms`, a day by default), and a key deleted
//! since would stay.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use boomerang_runtime::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter, file_name};
use boomerang_schemas::TimestampMicros;

use crate::tables::{ReferenceTables, Table};

/// v2: orders carry their customer's key (to forget them with the customer); a v1 snapshot is
/// not read, and the table is read from its topic instead.
const MAGIC: &[u8] = b"boomerang-reference-snapshot-v2\n";
/// The oldest snapshot used: well inside the default `delete.retention.ms` (24 h).
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// Where and how often a loader snapshots its table.
#[derive(Debug, Clone)]
pub struct Snapshots {
    pub dir: PathBuf,
    pub interval: Duration,
}

pub fn path(dir: &Path, topic: &str) -> PathBuf {
    dir.join("reference")
        .join(format!("{}.snapshot", file_name(topic)))
}

/// `table`'s rows as of `positions` (the next offset per partition of `topic`), ready to write.
pub fn encode(
    topic: &str,
    table: Table,
    positions: &HashMap<i32, i64>,
    tables: &ReferenceTables,
) -> SnapshotWriter {
    let mut writer = SnapshotWriter::new(MAGIC);
    writer.str(topic);
    writer.str(table.name());
    writer.i64(TimestampMicros::now().as_unix_millis());
    let mut partitions: Vec<_> = positions.iter().collect();
    partitions.sort();
    writer.u64(partitions.len() as u64);
    for (partition, position) in partitions {
        writer.i64(i64::from(*partition));
        writer.i64(*position);
    }
    tables.write_rows(table, &mut writer);
    writer
}

/// Loads the snapshot of `topic` in `dir` into `tables`, if it is usable against the topic's
/// `watermarks` (low and high, per partition) now. Returns the offsets to read on from.
pub fn load(
    dir: &Path,
    topic: &str,
    table: Table,
    watermarks: &HashMap<i32, (i64, i64)>,
    tables: &mut ReferenceTables,
) -> Result<HashMap<i32, i64>, SnapshotError> {
    let mut reader = SnapshotReader::open(&path(dir, topic), MAGIC)?;
    let (stored_topic, stored_table) = (reader.string()?, reader.string()?);
    if stored_topic != topic || stored_table != table.name() {
        return Err(SnapshotError::Stale(format!(
            "it is of {stored_topic} ({stored_table})"
        )));
    }
    let written_ms = reader.i64()?;
    let age_ms = TimestampMicros::now().as_unix_millis() - written_ms;
    if age_ms > MAX_AGE.as_millis() as i64 {
        return Err(SnapshotError::Stale(format!(
            "it is {} h old: tombstones written since may have been compacted away",
            age_ms / 3_600_000
        )));
    }
    let count = reader.count(16)?;
    let mut positions = HashMap::with_capacity(count);
    for _ in 0..count {
        let partition = i32::try_from(reader.i64()?).map_err(|_| SnapshotError::Corrupt)?;
        positions.insert(partition, reader.i64()?);
    }
    if positions.len() != watermarks.len() {
        return Err(SnapshotError::Stale(format!(
            "it has {} partitions, the topic {}",
            positions.len(),
            watermarks.len()
        )));
    }
    for (partition, (low, high)) in watermarks {
        let Some(position) = positions.get(partition) else {
            return Err(SnapshotError::Stale(format!(
                "it does not have partition {partition}"
            )));
        };
        if position < low || position > high {
            return Err(SnapshotError::Stale(format!(
                "partition {partition} holds offsets {low}..{high}, the snapshot reads on from \
                 {position}"
            )));
        }
    }
    tables.read_rows(table, &mut reader)?;
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use boomerang_testkit::samples::customer;

    use super::*;
    use crate::tables::ref_key;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "boomerang-reference-snapshot-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn written(dir: &Path) -> ReferenceTables {
        let mut tables = ReferenceTables::default();
        tables.upsert_customer(ref_key(b"cu-1"), &customer("cu-1", "vip", true));
        let positions = HashMap::from([(0, 5), (1, 7)]);
        encode("customers", Table::Customers, &positions, &tables)
            .write_to(&path(dir, "customers"))
            .expect("write");
        tables
    }

    #[test]
    fn a_snapshot_loads_when_the_topic_still_has_its_offsets() {
        let dir = scratch("loads");
        written(&dir);
        let mut tables = ReferenceTables::default();
        let watermarks = HashMap::from([(0, (0, 5)), (1, (2, 9))]);
        let positions = load(
            &dir,
            "customers",
            Table::Customers,
            &watermarks,
            &mut tables,
        )
        .expect("usable");
        assert_eq!(positions, HashMap::from([(0, 5), (1, 7)]));
        assert_eq!(tables.len(Table::Customers), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_snapshot_past_the_topic_or_of_other_partitions_is_not_used() {
        let dir = scratch("stale");
        written(&dir);
        let mut tables = ReferenceTables::default();
        for watermarks in [
            HashMap::from([(0, (0, 4)), (1, (0, 9))]), // recreated: ends before the snapshot
            HashMap::from([(0, (6, 9)), (1, (0, 9))]), // records deleted since
            HashMap::from([(0, (0, 9))]),              // another partition count
        ] {
            assert!(
                load(
                    &dir,
                    "customers",
                    Table::Customers,
                    &watermarks,
                    &mut tables
                )
                .is_err(),
                "{watermarks:?}"
            );
        }
        assert!(
            load(&dir, "orders", Table::Orders, &HashMap::new(), &mut tables).is_err(),
            "another topic"
        );
        assert_eq!(tables.len(Table::Customers), 0, "nothing loaded");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
