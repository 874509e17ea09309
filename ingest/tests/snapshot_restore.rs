//! With `--state-dir`, a restarted ingest starts from its local snapshot of the
//! de-duplication state and reads back from the validated topic only what was written since,
//! and still passes exactly one event per key; a damaged snapshot is ignored, not trusted.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use boomerang_ingest::snapshot::{CLOCK_SLACK_ENV, path as snapshot_path};
use boomerang_testkit::{StageProcess, poll_until, unique_name, value};
use support::{Pipeline, count_per_key, counter, metrics, wait_until_received};

const ORIGINALS: usize = 200;
const NEW: usize = 20;

/// Publishes the originals again and `NEW` new events, waits until every new one passed, and
/// checks that each key passed exactly once over both instances' lives.
async fn republish_and_verify(pipeline: &Pipeline) {
    let again: Vec<_> = (0..ORIGINALS)
        .map(|n| pipeline.current(&pipeline.event(&format!("o{n}"))))
        .chain((0..NEW).map(|n| pipeline.current(&pipeline.event(&format!("new{n}")))))
        .collect();
    pipeline.produce(&again).await;
    let per_key = poll_until(
        "every new event passed",
        Duration::from_secs(60),
        || async {
            let per_key = count_per_key(&pipeline.validated());
            (0..NEW)
                .all(|n| per_key.contains_key(&format!("new{n}")))
                .then_some(per_key)
        },
    )
    .await;
    for n in 0..ORIGINALS {
        assert_eq!(per_key.get(&format!("o{n}")), Some(&1), "o{n}");
    }
    let twice: Vec<_> = per_key.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "passed twice: {twice:?}");
}

fn state_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name("boomerang-it-state"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start(pipeline: &Pipeline, dir: &Path) -> StageProcess {
    let dir = dir.to_string_lossy().to_string();
    pipeline.start_with(
        &[
            "--state-dir",
            &dir,
            "--snapshot-interval-secs",
            "1",
            "--instance-id",
            "snapshotting-0",
        ],
        // Replay from the mark itself: the test does not wait out the clock's slack.
        &[(CLOCK_SLACK_ENV, "0")],
    )
}

/// Passes `ORIGINALS` events, then a trickle until a snapshot taken after them is written,
/// then kills the instance with kill -9.
async fn pass_originals_and_crash(pipeline: &Pipeline, dir: &Path) {
    let mut first = start(pipeline, dir);
    let originals: Vec<_> = (0..ORIGINALS)
        .map(|n| pipeline.current(&pipeline.event(&format!("o{n}"))))
        .collect();
    pipeline.produce(&originals).await;
    wait_until_received(&[&first], ORIGINALS as u64).await;
    let written = |text: &str| {
        value(
            text,
            "boomerang_dedup_snapshots_total",
            &["outcome=\"written\""],
        )
    };
    let after_originals = written(&metrics(&first).await);
    let mut tick = 0;
    poll_until(
        "a snapshot taken after the originals passed",
        Duration::from_secs(30),
        || {
            tick += 1;
            let record = pipeline.current(&pipeline.event(&format!("tick{tick}")));
            let first = &first;
            async move {
                // A snapshot needs a mark, and marks are noted as records are processed.
                pipeline.produce(&[record]).await;
                (written(&metrics(first).await) >= after_originals + 2).then_some(())
            }
        },
    )
    .await;
    first.kill();
    first.wait_exit(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_restart_reads_back_only_what_was_written_since_the_snapshot() {
    let pipeline = Pipeline::new(1).await;
    let dir = state_dir();
    pass_originals_and_crash(&pipeline, &dir).await;
    assert!(snapshot_path(&dir, &pipeline.topics.validated_events, 0).exists());

    let second = start(&pipeline, &dir);
    republish_and_verify(&pipeline).await;
    let text = metrics(&second).await;
    assert_eq!(restores(&text, "snapshot"), 1);
    let read_back = counter(&text, "boomerang_dedup_restored_records_total");
    assert!(
        read_back < ORIGINALS as u64 / 2,
        "read back {read_back} records: not only the tail since the snapshot"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_damaged_snapshot_is_ignored_and_the_whole_window_read_instead() {
    let pipeline = Pipeline::new(1).await;
    let dir = state_dir();
    pass_originals_and_crash(&pipeline, &dir).await;
    let file = snapshot_path(&dir, &pipeline.topics.validated_events, 0);
    let mut bytes = std::fs::read(&file).expect("the snapshot");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, bytes).expect("damage it");

    let second = start(&pipeline, &dir);
    republish_and_verify(&pipeline).await;
    let text = metrics(&second).await;
    assert_eq!(restores(&text, "topic"), 1);
    assert!(counter(&text, "boomerang_dedup_restored_records_total") >= ORIGINALS as u64);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Restores the instance made, by where they started (`snapshot` or `topic`).
fn restores(exposition: &str, source: &str) -> u64 {
    value(
        exposition,
        "boomerang_dedup_restores_total",
        &[&format!("source=\"{source}\"")],
    )
}
