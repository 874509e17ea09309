//! De-duplication survives what at-least-once delivery throws at it: a process killed after its
//! outputs were acknowledged but before its offsets were committed, and partitions moving
//! between two running instances.

mod support;

use std::time::Duration;

use boomerang_runtime::stage_loop::{
    CRASH_AFTER_PRODUCE_ENV, DROP_COMMITS_ENV, IDEMPOTENCY_KEY_HEADER,
};
use boomerang_testkit::{metric_sum, poll_until, wait_committed};
use support::{Pipeline, count_per_key, counter, metrics, owned_partitions, wait_until_received};

#[tokio::test]
async fn a_crash_between_produce_and_commit_publishes_nothing_twice() {
    crash_then_restart(&[], &[]).await;
}

/// A rolling upgrade: an instance writing the headers that every ingest without
/// `--validated-headers` wrote crashes; the instance that replays its partitions reads the
/// keys back from those headers (and writes none itself).
#[tokio::test]
async fn a_restart_reads_back_the_keys_of_records_written_with_headers() {
    crash_then_restart(&[("BOOMERANG_VALIDATED_HEADERS", "full")], &[]).await;
}

/// A rollback to headers (`--validated-headers full`): the restarted instance reads the keys
/// of records written without them from their datums.
#[tokio::test]
async fn a_restart_writing_headers_reads_back_the_keys_of_records_without() {
    crash_then_restart(&[], &[("BOOMERANG_VALIDATED_HEADERS", "full")]).await;
}

/// 30 events; an instance with `crashing` in its environment crashes after its first batch is
/// produced, before its commit; one with `restarted` replays and must pass each key once.
async fn crash_then_restart(crashing: &[(&str, &str)], restarted: &[(&str, &str)]) {
    let pipeline = Pipeline::new(2).await;
    let events: Vec<_> = (0..30)
        .map(|n| pipeline.current(&pipeline.event(&format!("c{n}"))))
        .collect();
    pipeline.produce(&events).await;

    let crash_environment: Vec<(&str, &str)> = crashing
        .iter()
        .copied()
        .chain([(CRASH_AFTER_PRODUCE_ENV, "1")])
        .collect();
    let mut crashed = pipeline.start(&crash_environment);
    let exit = crashed.wait_exit(Duration::from_secs(60)).await;
    assert!(!exit.success(), "the test hook aborts the process: {exit}");
    let published_before_crash = pipeline.validated().len();
    assert!(
        published_before_crash > 0,
        "the crash came after a batch was produced"
    );
    let writes_headers = |environment: &[(&str, &str)]| {
        environment.contains(&("BOOMERANG_VALIDATED_HEADERS", "full"))
    };
    let with_key_header = || {
        pipeline
            .validated()
            .iter()
            .filter(|record| record.header(IDEMPOTENCY_KEY_HEADER).is_some())
            .count()
    };
    let headed_before_crash = if writes_headers(crashing) {
        published_before_crash
    } else {
        0
    };
    assert_eq!(with_key_header(), headed_before_crash);

    // The restart replays everything after the last commit, which is everything.
    let restarted_process = pipeline.start(restarted);
    wait_until_received(&[&restarted_process], events.len() as u64).await;
    let per_key = count_per_key(&pipeline.validated());
    assert_eq!(per_key.len(), events.len());
    assert!(per_key.values().all(|count| *count == 1), "{per_key:?}");
    let text = metrics(&restarted_process).await;
    assert_eq!(
        counter(&text, "boomerang_deduplicated_events_total"),
        published_before_crash as u64,
        "what the crashed process published is recognised on replay"
    );
    assert_eq!(
        counter(&text, "boomerang_sent_events_total"),
        (events.len() - published_before_crash) as u64
    );
    let headed_after_restart = if writes_headers(restarted) {
        events.len() - published_before_crash
    } else {
        0
    };
    assert_eq!(
        with_key_header(),
        headed_before_crash + headed_after_restart
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
