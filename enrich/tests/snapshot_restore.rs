//! A restarted enrich is back quickly: with `--state-dir` it loads its reference tables from
//! its local snapshots and reads from the reference topics only what was written since (joins
//! after the restart see the snapshot's rows and the updates, deletions and new rows written
//! after it), and it rejoins its group before its catch-up, not after.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use boomerang_enrich::reference::CATCH_UP_DELAY_ENV;
use boomerang_enrich::snapshot::path as snapshot_path;
use boomerang_testkit::samples::customer;
use boomerang_testkit::{StageProcess, poll_until, unique_name};
use support::{Pipeline, event, metrics, order, value, wait_ready};

const CUSTOMERS: usize = 50;
const MAX_WAIT_MS: u64 = 1_000;

fn start(pipeline: &Pipeline, dir: &str) -> StageProcess {
    pipeline.start_with(
        MAX_WAIT_MS,
        &["--state-dir", dir, "--snapshot-interval-secs", "1"],
    )
}

#[tokio::test]
async fn a_restart_loads_the_snapshot_and_reads_only_the_updates_since() {
    let pipeline = Pipeline::new(1).await;
    let dir: PathBuf = std::env::temp_dir().join(unique_name("boomerang-it-enrich-state"));
    let dir_arg = dir.to_string_lossy().to_string();
    for n in 0..CUSTOMERS {
        pipeline
            .produce_customer(&customer(&format!("cu-{n}"), "regular", true))
            .await;
        pipeline
            .produce_order(&order(&format!("o-{n}"), &format!("cu-{n}")))
            .await;
    }
    let mut first = start(&pipeline, &dir_arg);
    wait_ready(&first).await;
    pipeline.produce_event(&event("e-0", "o-0", "cu-0")).await;
    pipeline.wait_for_enriched("e-0").await;
    let files = [
        snapshot_path(&dir, &pipeline.topics.customers),
        snapshot_path(&dir, &pipeline.topics.orders),
    ];
    poll_until(
        "both tables snapshotted",
        Duration::from_secs(30),
        || async { files.iter().all(|file| file.exists()).then_some(()) },
    )
    .await;
    first.kill();
    first.wait_exit(Duration::from_secs(10)).await;

    // Written while enrich is down: an update, a deletion and a new order.
    pipeline
        .produce_customer(&customer("cu-1", "vip", true))
        .await;
    pipeline.delete_customer("cu-2").await;
    pipeline.produce_order(&order("o-new", "cu-3")).await;

    let second = start(&pipeline, &dir_arg);
    wait_ready(&second).await;
    let text = metrics(&second).await;
    for table in ["customers", "orders"] {
        assert_eq!(
            value(
                &text,
                "boomerang_enrich_reference_restores_total",
                &[&format!("table=\"{table}\""), "source=\"snapshot\""]
            ),
            1,
            "{table}"
        );
    }
    assert_eq!(
        value(
            &text,
            "boomerang_enrich_reference_changes_total",
            &["change=\"upsert\""]
        ),
        2,
        "only what was written since the snapshot is read: cu-1 and o-new"
    );
    assert_eq!(
        value(
            &text,
            "boomerang_enrich_reference_records",
            &["table=\"customers\""]
        ),
        CUSTOMERS as u64 - 1
    );

    for (id, order_id, customer_id) in [
        ("e-old", "o-10", "cu-10"),
        ("e-updated", "o-1", "cu-1"),
        ("e-deleted", "o-2", "cu-2"),
        ("e-new-order", "o-new", "cu-3"),
    ] {
        pipeline
            .produce_event(&event(id, order_id, customer_id))
            .await;
    }
    let old = pipeline.wait_for_enriched("e-old").await;
    assert_eq!(old.customer_segment.as_deref(), Some("regular"));
    assert!(!old.order_missing);
    let updated = pipeline.wait_for_enriched("e-updated").await;
    assert_eq!(updated.customer_segment.as_deref(), Some("vip"));
    let deleted = pipeline.wait_for_enriched("e-deleted").await;
    assert!(
        deleted.customer_missing,
        "cu-2 was deleted after the snapshot"
    );
    let new_order = pipeline.wait_for_enriched("e-new-order").await;
    assert!(!new_order.order_missing, "o-new arrived after the snapshot");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A restarted instance must be back in its group under its static id within its session
/// timeout, however long its reference catch-up takes, or its partners are rebalanced (the
/// soak's rolling restart moved partitions while enrich instances caught up). Enrich joins
/// the group at once, and joins no event before its tables caught up.
#[tokio::test]
async fn the_group_is_joined_before_the_catch_up_and_no_event_joined_before_it_ends() {
    let pipeline = Pipeline::new(2).await;
    pipeline
        .produce_customer(&customer("cu-1", "regular", true))
        .await;
    pipeline.produce_order(&order("o-1", "cu-1")).await;
    pipeline
        .produce_event(&event("e-early", "o-1", "cu-1"))
        .await;
    // A short wait for reference data: an event joined before the catch-up ended would be
    // emitted with its order missing.
    let stage = pipeline.start_with_environment(
        100,
        &["--instance-id", "catching-up-0"],
        &[(CATCH_UP_DELAY_ENV, "8000")],
    );
    poll_until(
        "the group joined while the catch-up goes on",
        Duration::from_secs(30),
        || async {
            let text = metrics(&stage).await;
            let owned = value(&text, "boomerang_owned_partitions", &[]);
            let caught_up = value(&text, "boomerang_enrich_reference_caught_up", &[]);
            assert_eq!(
                caught_up, 0,
                "the catch-up ended before the group was joined"
            );
            (owned == 2).then_some(())
        },
    )
    .await;
    assert!(
        pipeline.enriched().is_empty(),
        "an event was joined before the tables caught up"
    );
    let joined = pipeline.wait_for_enriched("e-early").await;
    assert!(!joined.order_missing && !joined.customer_missing);
}
