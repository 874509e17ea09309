//! Local snapshots of a stage's state, so that a restart reads back only what was written to
//! Kafka since the snapshot instead of the whole history (the way Kafka Streams checkpoints its
//! state stores beside their changelogs).
//!
//! A snapshot is only ever a shortcut: Kafka stays the source of truth. Each snapshot says up
//! to which offset of its topic it holds the state; a restore loads it and reads the topic
//! from there. A snapshot that is missing, unreadable, corrupt, for another topic, or whose
//! offsets the topic no longer has is ignored, and the state is read from the topic as if
//! there were none.
//!
//! The file format is private to Boomerang and versioned by its magic: a snapshot from another
//! version is ignored the same way. A file is written to a temporary name, synced and renamed
//! over the old one, so a crash while writing leaves the previous snapshot.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::xxh3_64;

/// Where a stage keeps its snapshots.
#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    /// A directory for local snapshots of the stage's state (ingest: de-duplication keys;
    /// enrich: reference tables). With it, a restart reads back from Kafka only what was
    /// written since the last snapshot: seconds instead of the whole window. Without it, every
    /// start reads the state from Kafka. Give each instance its own directory that outlives
    /// restarts (a persistent volume); deleting it is always safe.
    #[arg(long = "state-dir", env = "BOOMERANG_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// How often a snapshot is written while records flow, in seconds.
    #[arg(
        long = "snapshot-interval-secs",
        env = "BOOMERANG_SNAPSHOT_INTERVAL_SECS",
        default_value_t = 30
    )]
    pub snapshot_interval_secs: u64,
}

impl StateArgs {
    pub fn snapshot_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.snapshot_interval_secs.max(1))
    }
}

/// A snapshot being built in memory.
pub struct SnapshotWriter {
    buffer: Vec<u8>,
}

impl SnapshotWriter {
    pub fn new(magic: &[u8]) -> Self {
        let mut buffer = Vec::with_capacity(1 << 16);
        buffer.extend_from_slice(magic);
        Self { buffer }
    }

    pub fn reserve(&mut self, bytes: usize) {
        self.buffer.reserve(bytes);
    }

    pub fn u8(&mut self, value: u8) {
        self.buffer.push(value);
    }

    pub fn u32(&mut self, value: u32) {
        self.buffer.extend_from_slice(&value.to_le_bytes());
    }

    pub fn u64(&mut self, value: u64) {
        self.buffer.extend_from_slice(&value.to_le_bytes());
    }

    pub fn i64(&mut self, value: i64) {
        self.buffer.extend_from_slice(&value.to_le_bytes());
    }

    pub fn u128(&mut self, value: u128) {
        self.buffer.extend_from_slice(&value.to_le_bytes());
    }

    pub fn str(&mut self, value: &str) {
        self.u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
        let len = value.len().min(u32::MAX as usize);
        self.buffer.extend_from_slice(&value.as_bytes()[..len]);
    }

    /// Writes the snapshot to `path` with its checksum, replacing the previous one only once
    /// the new one is whole on disk.
    pub fn write_to(mut self, path: &Path) -> std::io::Result<()> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let checksum = xxh3_64(&self.buffer);
        self.u64(checksum);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let temporary = path.with_extension(format!(
            "tmp.{}.{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = File::create(&temporary)?;
            file.write_all(&self.buffer)?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }
}

/// Why a snapshot was not used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("written by another version of Boomerang")]
    OtherVersion,
    #[error("its checksum does not match (a torn or damaged file)")]
    Corrupt,
    #[error("it ends early")]
    Truncated,
    #[error("{0}")]
    Stale(String),
}

/// A snapshot read back whole, its checksum verified.
pub struct SnapshotReader {
    buffer: Vec<u8>,
    position: usize,
}

impl SnapshotReader {
    pub fn open(path: &Path, magic: &[u8]) -> Result<Self, SnapshotError> {
        Self::from_bytes(std::fs::read(path)?, magic)
    }

    pub fn from_bytes(mut buffer: Vec<u8>, magic: &[u8]) -> Result<Self, SnapshotError> {
        if !buffer.starts_with(magic) {
            return Err(SnapshotError::OtherVersion);
        }
        let Some(body) = buffer.len().checked_sub(8) else {
            return Err(SnapshotError::Truncated);
        };
        let mut stored = [0u8; 8];
        stored.copy_from_slice(&buffer[body..]);
        if xxh3_64(&buffer[..body]) != u64::from_le_bytes(stored) {
            return Err(SnapshotError::Corrupt);
        }
        buffer.truncate(body);
        Ok(Self {
            buffer,
            position: magic.len(),
        })
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let end = self.position + N;
        let bytes = self
            .buffer
            .get(self.position..end)
            .ok_or(SnapshotError::Truncated)?;
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        self.position = end;
        Ok(array)
    }

    pub fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take::<1>()?[0])
    }

    pub fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    pub fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    pub fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_le_bytes(self.take()?))
    }

    pub fn u128(&mut self) -> Result<u128, SnapshotError> {
        Ok(u128::from_le_bytes(self.take()?))
    }

    pub fn string(&mut self) -> Result<String, SnapshotError> {
        let len = self.u32()? as usize;
        let end = self.position + len;
        let bytes = self
            .buffer
            .get(self.position..end)
            .ok_or(SnapshotError::Truncated)?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| SnapshotError::Corrupt)?;
        self.position = end;
        Ok(text)
    }

    /// A count of items still to read, each at least `item_bytes` long: never more than the
    /// bytes left could hold, so a damaged count cannot make a reader allocate wildly.
    pub fn count(&mut self, item_bytes: usize) -> Result<usize, SnapshotError> {
        let count = usize::try_from(self.u64()?).map_err(|_| SnapshotError::Corrupt)?;
        let left = self.buffer.len() - self.position;
        if count.saturating_mul(item_bytes.max(1)) > left {
            return Err(SnapshotError::Truncated);
        }
        Ok(count)
    }
}

/// A file name for `topic` that is safe on any file system.
pub fn file_name(topic: &str) -> String {
    topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8] = b"test-snapshot-v1\n";

    /// A fresh directory under the system's temporary one.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "boomerang-snapshot-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn what_is_written_reads_back() {
        let path = scratch("roundtrip").join("a/b.snap");
        let mut writer = SnapshotWriter::new(MAGIC);
        writer.u8(7);
        writer.i64(-3);
        writer.u128(u128::MAX - 1);
        writer.str("orders");
        writer.u64(2);
        writer.u32(1);
        writer.u32(2);
        writer.write_to(&path).expect("write");
        let mut reader = SnapshotReader::open(&path, MAGIC).expect("open");
        assert_eq!(reader.u8().expect("u8"), 7);
        assert_eq!(reader.i64().expect("i64"), -3);
        assert_eq!(reader.u128().expect("u128"), u128::MAX - 1);
        assert_eq!(reader.string().expect("str"), "orders");
        assert_eq!(reader.count(4).expect("count"), 2);
        assert!(reader.count(4).is_err(), "nothing left to count");
    }

    #[test]
    fn a_damaged_or_foreign_file_is_refused() {
        let mut writer = SnapshotWriter::new(MAGIC);
        writer.u64(42);
        let path = scratch("damaged").join("s");
        writer.write_to(&path).expect("write");
        let mut bytes = std::fs::read(&path).expect("read");
        assert!(matches!(
            SnapshotReader::from_bytes(bytes.clone(), b"other-magic-v1\n"),
            Err(SnapshotError::OtherVersion)
        ));
        bytes[MAGIC.len()] ^= 1;
        assert!(matches!(
            SnapshotReader::from_bytes(bytes.clone(), MAGIC),
            Err(SnapshotError::Corrupt)
        ));
        bytes.truncate(MAGIC.len() + 3);
        assert!(SnapshotReader::from_bytes(bytes, MAGIC).is_err());
    }

    #[test]
    fn a_huge_count_is_refused_before_anything_is_allocated() {
        let mut writer = SnapshotWriter::new(MAGIC);
        writer.u64(u64::MAX / 2);
        let path = scratch("huge").join("s");
        writer.write_to(&path).expect("write");
        let mut reader = SnapshotReader::open(&path, MAGIC).expect("open");
        assert!(matches!(reader.count(24), Err(SnapshotError::Truncated)));
    }
}
