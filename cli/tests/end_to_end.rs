//! The main job, end to end, through the README's first command: a small generated world
//! through the real binaries on the local stack; every stage's counts and every analytics
//! figure must equal the generator's ground truth (the report exits non-zero otherwise).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn run_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/run.sh")
}

#[test]
fn a_small_world_matches_its_ground_truth_at_every_stage() {
    let output = Command::new(run_script())
        .args(["--orders", "1500", "--customers", "300", "--seed", "7"])
        .output()
        .expect("run deploy/local/run.sh");
    let stopped = Command::new(run_script()).arg("stop").status();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "run.sh failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stopped.is_ok_and(|status| status.success()),
        "run.sh stop failed"
    );
    assert!(
        stdout.contains("Everything matches the generator's ground truth."),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("  holds  ok").count(),
        3,
        "conservation at every stage: {stdout}"
    );
    assert!(!stdout.contains("MISMATCH"), "{stdout}");

    // The world exercised every fault the pipeline handles.
    let truth_line = stderr
        .lines()
        .find_map(|line| line.strip_prefix("gen: ground truth in "))
        .expect("the truth file's path");
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(truth_line.trim()).expect("truth file"))
            .expect("json");
    assert!(
        truth["ingest"]["deduplicated"].as_u64() > Some(0),
        "{truth}"
    );
    assert!(
        truth["ingest"]["dead_lettered"].as_u64() > Some(0),
        "{truth}"
    );
    assert!(truth["enrich_order_missing"].as_u64() > Some(0), "{truth}");
    assert!(truth["refund_time"]["cases"].as_u64() > Some(0), "{truth}");
    assert!(truth["warranty_decided"].as_u64() > Some(0), "{truth}");
}
