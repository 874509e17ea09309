//! Where a backfill run got to, so that a crash or Ctrl-C resumes instead of starting over.
//!
//! Written (atomically: a new file renamed over the old) only after the producer has confirmed
//! every record counted in it, so a resumed run re-publishes at most what was in flight — which
//! the pipeline de-duplicates (ingest inside the live window, the sink against ClickHouse).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What one input kind's files have been through so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Records read from the files.
    pub read: u64,
    /// Published to the pipeline's topics.
    pub published: u64,
    /// Reference records not published: the topic already holds that version or a newer one.
    pub not_newer: u64,
    /// Records that could not be read, dead-lettered by the backfill itself (reference data)
    /// or published as they are for ingest to dead-letter (events).
    pub unreadable: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Marks every event of the run (`boomerang.history`) and its rows (`backfill_run`).
    pub run_id: String,
    /// When the run started, UTC milliseconds: its dead letters are counted from then.
    pub started_at_ms: i64,
    /// Records done, by file (its path as given).
    pub files: BTreeMap<String, u64>,
    pub customers: Counts,
    pub orders: Counts,
    pub events: Counts,
    /// Every file is published; what is left is waiting for the pipeline and the summary.
    pub published: bool,
    /// The summary was printed: a later run with this checkpoint starts afresh.
    pub complete: bool,
}

impl Checkpoint {
    pub fn new(run_id: String, started_at_ms: i64) -> Self {
        Self {
            run_id,
            started_at_ms,
            files: BTreeMap::new(),
            customers: Counts::default(),
            orders: Counts::default(),
            events: Counts::default(),
            published: false,
            complete: false,
        }
    }

    /// The checkpoint at `path`, if there is one.
    pub fn load(path: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not a backfill checkpoint", path.display())
            })?)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => {
                Err(anyhow::Error::new(error).context(format!("cannot read {}", path.display())))
            }
        }
    }

    pub fn save(&self, path: &PathBuf) -> anyhow::Result<()> {
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("cannot create {}", folder.display()))?;
        }
        let partial = path.with_extension("partial");
        std::fs::write(&partial, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, path)
            .with_context(|| format!("cannot replace {}", path.display()))
    }

    pub fn done(&self, file: &str) -> u64 {
        self.files.get(file).copied().unwrap_or(0)
    }
}

/// An exclusive lock on a checkpoint (`<checkpoint>.lock`), held for a run's life; the system
/// releases it when the process ends, however it ends.
pub struct Lock(#[allow(dead_code)] std::fs::File);

impl Lock {
    pub fn take(checkpoint: &Path) -> anyhow::Result<Self> {
        if let Some(folder) = checkpoint.parent()
            && !folder.as_os_str().is_empty()
        {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("cannot create {}", folder.display()))?;
        }
        let path = checkpoint.with_extension("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Self(file)),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another backfill runs with the checkpoint {} ({} is locked)",
                checkpoint.display(),
                path.display()
            ),
            Err(std::fs::TryLockError::Error(error)) => {
                Err(anyhow::Error::new(error).context(format!("cannot lock {}", path.display())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_checkpoint_loads_as_it_was() {
        let dir = std::env::temp_dir().join(format!("backfill-checkpoint-{}", std::process::id()));
        let path = dir.join("run.json");
        assert_eq!(
            Checkpoint::load(&path).expect("no file is no checkpoint"),
            None
        );
        let mut checkpoint = Checkpoint::new("backfill-1".into(), 42);
        checkpoint.files.insert("events.avro".into(), 1_000);
        checkpoint.events.published = 1_000;
        checkpoint.save(&path).expect("saved");
        let loaded = Checkpoint::load(&path).expect("read").expect("there");
        assert_eq!(loaded, checkpoint);
        assert_eq!(loaded.done("events.avro"), 1_000);
        assert_eq!(loaded.done("orders.avro"), 0);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn one_run_at_a_time_holds_a_checkpoint() {
        let dir = std::env::temp_dir().join(format!("backfill-lock-{}", std::process::id()));
        let path = dir.join("run.json");
        let first = Lock::take(&path).expect("the first run locks");
        assert!(Lock::take(&path).is_err(), "a second run is refused");
        drop(first);
        assert!(Lock::take(&path).is_ok(), "free again once the first ends");
        std::fs::remove_dir_all(dir).ok();
    }
}
