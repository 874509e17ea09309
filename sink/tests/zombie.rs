//! A zombie sink is fenced. An instance paused (SIGSTOP) past its session timeout, with an
//! insert in hand, resumes after another instance has taken its partitions over and written
//! the same records: before it writes, it asks the group whether it is still a member, learns
//! it is not, and stops without writing. One row per key, `count()` without FINAL. (Alone in
//! its test binary: it stops ClickHouse.)

mod support;

use std::process::Command;
use std::time::Duration;

use boomerang_testkit::{StageProcess, poll_until};
use support::{Pipeline, metrics, produce_cases, stack, value, wait_committed};

fn signal(process: &StageProcess, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &process.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name}");
}

#[tokio::test]
async fn a_paused_sink_that_resumes_after_the_group_moved_on_writes_nothing() {
    let pipeline = Pipeline::new().await;
    produce_cases(&pipeline, 0, 20).await;
    let mut zombie = pipeline.start(&["--clickhouse-timeout-secs", "2"], &[]);
    pipeline.wait_for_rows("post_purchase_events", 20).await;
    wait_committed(&pipeline, &pipeline.topics.enriched_events).await;

    // Its next insert fails while ClickHouse is down, and it retries with the rows in hand.
    stack(&["stop", "clickhouse"]);
    let outcome = std::panic::AssertUnwindSafe(async {
        produce_cases(&pipeline, 20, 30).await;
        poll_until(
            "the insert to be retrying",
            Duration::from_secs(30),
            || async {
                (value(
                    &metrics(&zombie).await,
                    "boomerang_sink_insert_retries_total",
                    &[],
                ) > 0)
                    .then_some(())
            },
        )
        .await;
        signal(&zombie, "STOP");
    });
    futures::FutureExt::catch_unwind(outcome).await.ok();
    stack(&["up"]);

    // Another instance takes the partitions over after the zombie's session times out, and
    // writes the same records in batches of another size.
    let successor = pipeline.start(&["--insert-max-rows", "4"], &[]);
    pipeline.wait_for_rows("post_purchase_events", 30).await;
    wait_committed(&pipeline, &pipeline.topics.enriched_events).await;

    // The zombie resumes with its insert in hand: it must not write it.
    signal(&zombie, "CONT");
    let exit = zombie.wait_exit(Duration::from_secs(60)).await;
    assert!(!exit.success(), "a fenced sink stops: {exit}");
    assert_eq!(
        pipeline.count("post_purchase_events").await,
        30,
        "one row per key, without FINAL"
    );
    assert_eq!(
        value(
            &metrics(&successor).await,
            "boomerang_sink_rows_inserted_total",
            &["table=\"post_purchase_events\""]
        ),
        10
    );
}
