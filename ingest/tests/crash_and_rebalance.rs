//! De-duplication survives what at-least-once delivery throws at it: a process killed after its
//! outputs were acknowledged but before its offsets were committed, and partitions moving
//! between two running instances.

mod support;

use std::time::Duration;

use boomerang_runtime::stage_loop::{CRASH_AFTER_PRODUCE_ENV, DROP_COMMITS_ENV};
use boomerang_testkit::{metric_sum, poll_until, wait_committed};
use support::{Pipeline, count_per_key, counter, metrics, owned_partitions, wait_until_received};

#[tokio::test]
async fn a_crash_between_produce_and_commit_publishes_nothing_twice() {
    let pipeline = Pipeline::new(2).await;
    let events: Vec<_> = (0..30)
        .map(|n| pipeline.current(&pipeline.event(&format!("c{n}"))))
        .collect();
    pipeline.produce(&events).await;

    let mut crashing = pipeline.start(&[(CRASH_AFTER_PRODUCE_ENV, "1")]);
    let exit = crashing.wait_exit(Duration::from_secs(60)).await;
    assert!(!exit.success(), "the test hook aborts the process: {exit}");
    let published_before_crash = pipeline.validated().len();
    assert!(
        published_before_crash > 0,
        "the crash came after a batch was produced"
    );

    // The restart replays everything after the last commit, which is everything.
    let restarted = pipeline.start(&[]);
    wait_until_received(&[&restarted], events.len() as u64).await;
    let per_key = count_per_key(&pipeline.validated());
    assert_eq!(per_key.len(), events.len());
    assert!(per_key.values().all(|count| *count == 1), "{per_key:?}");
    let text = metrics(&restarted).await;
    assert_eq!(
        counter(&text, "boomerang_deduplicated_events_total"),
        published_before_crash as u64,
        "what the crashed process published is recognised on replay"
    );
    assert_eq!(
        counter(&text, "boomerang_sent_events_total"),
        (events.len() - published_before_crash) as u64
    );
}

#[tokio::test]
async fn two_instances_share_the_partitions_and_a_rebalance_passes_one_event_per_key() {
    const PARTITIONS: usize = 4;
    let pipeline = Pipeline::new(PARTITIONS as i32).await;
    let key = |n: usize| format!("r{n}");

    let mut first = pipeline.start(&[]);
    let round_1: Vec<_> = (0..40)
        .map(|n| pipeline.current(&pipeline.event(&key(n))))
        .collect();
    pipeline.produce(&round_1).await;
    wait_until_received(&[&first], 40).await;

    // A second instance joins: the partitions are split, and each restores what the first passed.
    let second = pipeline.start(&[]);
    poll_until(
        "the partitions to be split",
        Duration::from_secs(60),
        || async {
            let (mine, theirs) = (
                owned_partitions(&first).await,
                owned_partitions(&second).await,
            );
            (mine > 0 && theirs > 0 && mine + theirs == PARTITIONS).then_some(())
        },
    )
    .await;
    let round_2: Vec<_> = (0..80)
        .map(|n| pipeline.current(&pipeline.event(&key(n))))
        .collect();
    pipeline.produce(&round_2).await;
    wait_until_received(&[&first, &second], 120).await;
    let second_received = counter(&metrics(&second).await, "boomerang_received_events_total");
    assert!(
        second_received > 0,
        "the second instance processed its share"
    );
    let first_text = metrics(&first).await;

    // The first instance leaves: the second takes every partition over and restores them.
    first.terminate();
    assert!(first.wait_exit(Duration::from_secs(10)).await.success());
    poll_until(
        "the second instance to own every partition",
        Duration::from_secs(60),
        || async { (owned_partitions(&second).await == PARTITIONS).then_some(()) },
    )
    .await;
    let round_3: Vec<_> = (0..80)
        .map(|n| pipeline.current(&pipeline.event(&key(n))))
        .collect();
    pipeline.produce(&round_3).await;
    poll_until(
        "round 3 to be received",
        Duration::from_secs(90),
        || async {
            let received = counter(&metrics(&second).await, "boomerang_received_events_total");
            (received >= second_received + 80).then_some(())
        },
    )
    .await;

    let per_key = count_per_key(&pipeline.validated());
    assert_eq!(per_key.len(), 80);
    assert!(per_key.values().all(|count| *count == 1), "{per_key:?}");

    // Conservation across both instances.
    let second_text = metrics(&second).await;
    let total = |name: &str| counter(&first_text, name) + counter(&second_text, name);
    assert_eq!(total("boomerang_received_events_total"), 200);
    assert_eq!(total("boomerang_sent_events_total"), 80);
    assert_eq!(total("boomerang_deduplicated_events_total"), 120);
    assert_eq!(
        metric_sum(&second_text, "boomerang_dead_lettered_events_total", &[]),
        0.0
    );
}

/// Found by the chaos soak: a commit refused during a rebalance right after a stage's last
/// batch was never made again while the topic stayed quiet, so those offsets stayed
/// uncommitted (and were replayed by the next owner). An idle stage now commits again.
#[tokio::test]
async fn a_refused_commit_is_made_again_while_the_stage_is_idle() {
    let pipeline = Pipeline::new(1).await;
    let events: Vec<_> = (0..10)
        .map(|n| pipeline.current(&pipeline.event(&format!("r{n}"))))
        .collect();
    pipeline.produce(&events).await;
    // Every commit after a batch is refused (not made): only the idle loop's commit can
    // move the group's offset.
    let stage = pipeline.start(&[(DROP_COMMITS_ENV, "1000000")]);
    wait_until_received(&[&stage], 10).await;
    wait_committed(
        &pipeline.stack.kafka_brokers,
        &pipeline.group,
        &pipeline.topics.raw_events,
    )
    .await;
    let text = metrics(&stage).await;
    assert!(
        metric_sum(
            &text,
            "boomerang_errors_total",
            &["error_kind=\"commit_failed\""]
        ) >= 1.0,
        "the hook refused the batch's commit"
    );
}
