//! Snapshots of a partition's de-duplication state on local disk (`--state-dir`), so that a
//! restart reads back from the validated topic only the records written since the snapshot.
//!
//! A snapshot holds only keys whose validated records are acknowledged, and the validated
//! offset from which a restore must read on: every record at or after it is read back, so
//! whatever was passed after the snapshot was taken — by this instance or by any later owner
//! of the partition — is restored too. Any instance's snapshot of a partition is therefore
//! valid for any later owner.
//!
//! How the processor knows which keys are acknowledged: while it processes a partition it
//! notes a *mark* about once a second (the raw offset it is about to process, the time, and how
//! many keys it had remembered). Once the loop reports the raw offsets before a mark all
//! acknowledged, the keys remembered before that mark are durable, and every record passed
//! after it was produced after the mark's time: the snapshot replays from the first validated
//! record written since then (less [`CLOCK_SLACK`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter, file_name};
use prometheus::IntCounterVec;
use rdkafka::consumer::{BaseConsumer, Consumer};

const MAGIC: &[u8] = b"boomerang-dedup-snapshot-v1\n";
/// How far before a mark a restore starts reading: more than the host's clock may step back
/// between a mark and a produce.
const CLOCK_SLACK: Duration = Duration::from_secs(10);
/// Test hook: the clock slack in milliseconds, so that a test need not wait for it to pass.
pub const CLOCK_SLACK_ENV: &str = "BOOMERANG_TEST_SNAPSHOT_CLOCK_SLACK_MS";

/// [`CLOCK_SLACK`], or the test hook's.
pub fn clock_slack_ms() -> i64 {
    std::env::var(CLOCK_SLACK_ENV)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(CLOCK_SLACK.as_millis() as i64)
}
/// How often a mark is noted while a partition's records are processed.
pub const MARK_INTERVAL_MS: i64 = 1_000;
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// A partition's de-duplication state as of a validated offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupSnapshot {
    pub topic: String,
    pub partition: i32,
    pub window: Duration,
    /// Where a restore reads on from: the keys of every validated record before it are in
    /// `entries` (or were older than the window).
    pub replay_from: i64,
    /// Event time in microseconds and key hash, oldest first.
    pub entries: Vec<(i64, u128)>,
}

pub fn path(dir: &Path, topic: &str, partition: i32) -> PathBuf {
    dir.join("dedup")
        .join(file_name(topic))
        .join(format!("{partition}.snapshot"))
}

impl DedupSnapshot {
    fn write(&self, dir: &Path) -> std::io::Result<()> {
        let mut writer = SnapshotWriter::new(MAGIC);
        writer.reserve(self.entries.len() * 24 + 128);
        writer.str(&self.topic);
        writer.i64(i64::from(self.partition));
        writer.u64(self.window.as_secs());
        writer.i64(self.replay_from);
        writer.u64(self.entries.len() as u64);
        for (micros, hash) in &self.entries {
            writer.i64(*micros);
            writer.u128(*hash);
        }
        writer.write_to(&path(dir, &self.topic, self.partition))
    }

    /// The snapshot of `topic`/`partition` in `dir`, if it is there, whole, and covers
    /// `window`.
    pub fn load(
        dir: &Path,
        topic: &str,
        partition: i32,
        window: Duration,
    ) -> Result<Self, SnapshotError> {
        let mut reader = SnapshotReader::open(&path(dir, topic, partition), MAGIC)?;
        let stored_topic = reader.string()?;
        let stored_partition = reader.i64()?;
        if stored_topic != topic || stored_partition != i64::from(partition) {
            return Err(SnapshotError::Stale(format!(
                "it is of {stored_topic}/{stored_partition}"
            )));
        }
        let stored_window = Duration::from_secs(reader.u64()?);
        if stored_window < window {
            return Err(SnapshotError::Stale(format!(
                "its window ({} s) is shorter than the one configured now",
                stored_window.as_secs()
            )));
        }
        let replay_from = reader.i64()?;
        let count = reader.count(24)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push((reader.i64()?, reader.u128()?));
        }
        Ok(Self {
            topic: stored_topic,
            partition,
            window: stored_window,
            replay_from,
            entries,
        })
    }
}

/// Where a snapshot's restore reads on from.
#[derive(Debug, Clone, Copy)]
pub enum ReplayFrom {
    /// This validated offset.
    Offset(i64),
    /// The first validated record written at or after this time (ms since the epoch).
    WrittenSince(i64),
}

/// A snapshot to write.
pub struct Job {
    pub partition: i32,
    pub entries: Vec<(i64, u128)>,
    pub replay_from: ReplayFrom,
}

/// A processing mark: the raw offset about to be processed, when, and how many keys the
/// partition's state had remembered so far.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pub raw_offset: i64,
    pub at_ms: i64,
    pub remembered: u64,
}

/// A partition's marks, and the newest whose raw offsets before it are all acknowledged.
#[derive(Debug, Default)]
pub struct Marks {
    pending: VecDeque<Mark>,
    durable: Option<Mark>,
}

impl Marks {
    /// Notes a mark if the last one is older than [`MARK_INTERVAL_MS`].
    pub fn note(&mut self, raw_offset: i64, now_ms: i64, remembered: impl FnOnce() -> u64) {
        let due = self
            .pending
            .back()
            .is_none_or(|last| now_ms - last.at_ms >= MARK_INTERVAL_MS);
        if due {
            self.pending.push_back(Mark {
                raw_offset,
                at_ms: now_ms,
                remembered: remembered(),
            });
        }
    }

    /// The raw offsets before `next_offset` are all acknowledged.
    pub fn acknowledged(&mut self, next_offset: i64) {
        while let Some(mark) = self.pending.front() {
            if mark.raw_offset > next_offset {
                break;
            }
            self.durable = self.pending.pop_front();
        }
    }

    /// Takes the newest durable mark, if there is one not taken yet.
    pub fn take_durable(&mut self) -> Option<Mark> {
        self.durable.take()
    }
}

/// Writes snapshots on a thread of its own, so that the loop never waits for a disk or for
/// the broker's answer to where a snapshot replays from. Jobs that find the queue full are
/// skipped: the next one supersedes them.
pub struct SnapshotWriterThread {
    sender: Option<SyncSender<Job>>,
    handle: Option<JoinHandle<()>>,
}

impl SnapshotWriterThread {
    pub fn start(
        dir: PathBuf,
        kafka: KafkaArgs,
        topic: String,
        window: Duration,
        outcomes: IntCounterVec,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(8);
        let handle = std::thread::Builder::new()
            .name("dedup-snapshots".into())
            .spawn(move || write_jobs(receiver, &dir, &kafka, &topic, window, &outcomes))?;
        Ok(Self {
            sender: Some(sender),
            handle: Some(handle),
        })
    }

    pub fn submit(&self, job: Job) {
        let Some(sender) = &self.sender else { return };
        match sender.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                tracing::debug!(
                    partition = job.partition,
                    "snapshot writer busy; this snapshot is skipped"
                );
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Drop for SnapshotWriterThread {
    /// Writes what was submitted, then stops.
    fn drop(&mut self) {
        drop(self.sender.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn write_jobs(
    jobs: Receiver<Job>,
    dir: &Path,
    kafka: &KafkaArgs,
    topic: &str,
    window: Duration,
    outcomes: &IntCounterVec,
) {
    let count = |outcome: &str| outcomes.with_label_values(&[outcome]).inc();
    let mut consumer: Option<BaseConsumer> = None;
    for job in jobs {
        let replay_from = match job.replay_from {
            ReplayFrom::Offset(offset) => Ok(offset),
            ReplayFrom::WrittenSince(since_ms) => {
                resolve(kafka, &mut consumer, topic, job.partition, since_ms)
            }
        };
        let replay_from = match replay_from {
            Ok(offset) => offset,
            Err(error) => {
                count("failed");
                tracing::warn!(partition = job.partition, error = %error, "cannot find where a snapshot would replay from; not written");
                continue;
            }
        };
        let snapshot = DedupSnapshot {
            topic: topic.to_string(),
            partition: job.partition,
            window,
            replay_from,
            entries: job.entries,
        };
        match snapshot.write(dir) {
            Ok(()) => {
                count("written");
                tracing::debug!(
                    partition = job.partition,
                    keys = snapshot.entries.len(),
                    replay_from,
                    "de-duplication snapshot written"
                );
            }
            Err(error) => {
                count("failed");
                tracing::warn!(partition = job.partition, dir = %dir.display(), error = %error, "cannot write a de-duplication snapshot");
            }
        }
    }
}

/// The first offset of `topic`/`partition` written at or after `since_ms`.
fn resolve(
    kafka: &KafkaArgs,
    consumer: &mut Option<BaseConsumer>,
    topic: &str,
    partition: i32,
    since_ms: i64,
) -> anyhow::Result<i64> {
    if consumer.is_none() {
        *consumer = Some(kafka.client_config().create()?);
    }
    let Some(consumer) = consumer.as_ref() else {
        unreachable!("set just above");
    };
    // The end first: a record written after it lies past it, whatever its time.
    let (_low, high) = consumer.fetch_watermarks(topic, partition, KAFKA_TIMEOUT)?;
    crate::restore::first_offset_since(consumer, topic, partition, since_ms, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_back_and_refuses_a_longer_window() {
        let dir =
            std::env::temp_dir().join(format!("boomerang-dedup-snapshot-{}", std::process::id()));
        let snapshot = DedupSnapshot {
            topic: "validated".into(),
            partition: 3,
            window: Duration::from_secs(3600),
            replay_from: 42,
            entries: vec![(1, 2), (3, 4)],
        };
        snapshot.write(&dir).expect("write");
        let loaded =
            DedupSnapshot::load(&dir, "validated", 3, Duration::from_secs(60)).expect("load");
        assert_eq!(loaded.entries, snapshot.entries);
        assert_eq!(loaded.replay_from, 42);
        assert!(DedupSnapshot::load(&dir, "validated", 3, Duration::from_secs(7200)).is_err());
        assert!(DedupSnapshot::load(&dir, "validated", 2, Duration::from_secs(60)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_mark_becomes_durable_once_the_offsets_before_it_are_acknowledged() {
        let mut marks = Marks::default();
        marks.note(10, 0, || 5);
        marks.note(11, 10, || 6); // too soon: no mark
        marks.note(20, 1_000, || 15);
        marks.acknowledged(9);
        assert!(
            marks.take_durable().is_none(),
            "offset 9 and on is not acknowledged"
        );
        marks.acknowledged(15);
        let durable = marks.take_durable().expect("the mark at 10");
        assert_eq!((durable.raw_offset, durable.remembered), (10, 5));
        assert!(marks.take_durable().is_none(), "taken once");
        marks.acknowledged(20);
        assert_eq!(marks.take_durable().map(|mark| mark.remembered), Some(15));
    }
}
