//! A stage killed with kill -9 and restarted under the same `--instance-id` (static group
//! membership) owns its partitions again within seconds, not after the dead member's session
//! timeout, and passes one event per key across the restart.

mod support;

use boomerang_ingest::restore::RESTORE_DELAY_ENV;

use std::time::{Duration, Instant};

use boomerang_testkit::poll_until;
use support::{
    Pipeline, counter, metrics, owned_partitions, partition_changes, wait_until_received,
};

const PARTITIONS: usize = 2;
const ROLLING_PARTITIONS: usize = 4;

#[tokio::test]
async fn a_static_member_killed_and_restarted_owns_its_partitions_again_at_once() {
    let pipeline = Pipeline::new(PARTITIONS as i32).await;
    // A session timeout far above the 10 s this test allows: only static membership can give
    // the partitions back in time. (A later argument wins over the support's 6 s.)
    let static_member = [
        "--instance-id",
        "ingest-0",
        "--kafka-property",
        "session.timeout.ms=45000",
    ];
    let mut first = pipeline.start_with(&static_member, &[]);
    let round_1: Vec<_> = (0..20)
        .map(|n| pipeline.current(&pipeline.event(&format!("s{n}"))))
        .collect();
    pipeline.produce(&round_1).await;
    wait_until_received(&[&first], 20).await;
    first.kill();
    first.wait_exit(Duration::from_secs(10)).await;

    let restarted_at = Instant::now();
    let second = pipeline.start_with(&static_member, &[]);
    poll_until(
        "the restarted instance to own its partitions",
        Duration::from_secs(10),
        || async { (owned_partitions(&second).await == PARTITIONS).then_some(()) },
    )
    .await;
    let round_2: Vec<_> = (0..40)
        .map(|n| pipeline.current(&pipeline.event(&format!("s{n}"))))
        .collect();
    pipeline.produce(&round_2).await;
    wait_until_received(&[&second], 40).await;
    let back_in = restarted_at.elapsed();
    assert!(
        back_in < Duration::from_secs(15),
        "processing again {back_in:?} after the restart"
    );
    let text = metrics(&second).await;
    assert_eq!(
        counter(&text, "boomerang_sent_events_total"),
        20,
        "s20..s39"
    );
    assert_eq!(counter(&text, "boomerang_deduplicated_events_total"), 20);
}

/// A rolling restart (SIGTERM, then the same instance back under its id) moves no partition:
/// the stopped member does not leave the group, so its partner is never rebalanced, and the
/// restarted one gets its own partitions back. (A static member that unsubscribed on the way
/// out sent LeaveGroup: every restart moved every partition twice.)
#[tokio::test]
async fn a_rolling_restart_of_a_static_member_moves_no_partition() {
    let pipeline = Pipeline::new(ROLLING_PARTITIONS as i32).await;
    let first = pipeline.start_with(&["--instance-id", "rolling-0"], &[]);
    let mut second = pipeline.start_with(&["--instance-id", "rolling-1"], &[]);
    let half = ROLLING_PARTITIONS / 2;
    poll_until(
        "each member to own half",
        Duration::from_secs(30),
        || async {
            (owned_partitions(&first).await == half && owned_partitions(&second).await == half)
                .then_some(())
        },
    )
    .await;
    let before = partition_changes(&first).await;

    second.terminate();
    second.wait_exit(Duration::from_secs(20)).await;
    let restarted_at = Instant::now();
    let restarted = pipeline.start_with(&["--instance-id", "rolling-1"], &[]);
    poll_until(
        "the restarted member to own its half again",
        Duration::from_secs(10),
        || async { (owned_partitions(&restarted).await == half).then_some(()) },
    )
    .await;
    let back_in = restarted_at.elapsed();
    assert_eq!(
        partition_changes(&first).await,
        before,
        "the partner was rebalanced by a restart ({back_in:?} to own again)"
    );
    assert_eq!(owned_partitions(&first).await, half);
    assert_eq!(
        partition_changes(&restarted).await,
        (half as u64, 0),
        "the restarted member got its own partitions back, nothing more"
    );
}

/// Found by the chaos soak: an ingest asked to stop while it restored a large partition's
/// de-duplication state took more than 20 s to exit, and was killed: the async runtime waited
/// for the restore on its blocking thread. A stopping stage now exits within its drain timeout
/// (8 s) and a second of grace, whatever blocking work is still running.
#[tokio::test]
async fn a_stage_asked_to_stop_during_a_long_restore_exits_at_once() {
    let pipeline = Pipeline::new(1).await;
    // Every restore takes 60 s.
    let mut stage = pipeline.start(&[(RESTORE_DELAY_ENV, "60000")]);
    poll_until("a restore under way", Duration::from_secs(30), || async {
        (counter(
            &metrics(&stage).await,
            "boomerang_dedup_restoring_partitions",
        ) == 1)
            .then_some(())
    })
    .await;
    stage.terminate();
    let asked_at = Instant::now();
    stage.wait_exit(Duration::from_secs(90)).await;
    let took = asked_at.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "exited {took:?} after SIGTERM"
    );
}

/// Found by the 1M-event chaos soak: an ingest whose session timed out on an overloaded broker
/// was refused on its return (FENCED_INSTANCE_ID, fatal in librdkafka) and then stayed up for
/// good, ready and owning nothing, logging a consumer error every 200 ms. A stage whose
/// consumer failed for good now stops with an error, for its supervisor to restart it.
#[tokio::test]
async fn an_instance_whose_static_id_another_took_stops_instead_of_idling() {
    let pipeline = Pipeline::new(1).await;
    let mut first = pipeline.start_with(&["--instance-id", "twin"], &[]);
    poll_until(
        "the first instance to own the partition",
        Duration::from_secs(30),
        || async { (owned_partitions(&first).await == 1).then_some(()) },
    )
    .await;
    // A second process with the same id fences the first.
    let second = pipeline.start_with(&["--instance-id", "twin"], &[]);
    let status = first.wait_exit(Duration::from_secs(60)).await;
    assert!(
        !status.success(),
        "the fenced instance stops with an error: {status:?}"
    );
    poll_until(
        "the second instance to own the partition",
        Duration::from_secs(30),
        || async { (owned_partitions(&second).await == 1).then_some(()) },
    )
    .await;
}
