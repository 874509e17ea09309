//! Every partition keeps an owner while static members are killed, stopped and restarted in
//! the middle of rebalances.
//!
//! Regression test for the chaos soak's stall: with incremental (cooperative) rebalancing, a
//! member that gave partitions up died before it rejoined to hand them over; restarted under
//! the same `--instance-id`, it was given its old assignment back without a rebalance, and
//! the partitions it had given up stayed without an owner, for good.

mod support;

use std::time::Duration;

use boomerang_testkit::{StageProcess, committed_and_high_watermarks, poll_until};
use support::Pipeline;

const PARTITIONS: i32 = 4;
const ROUNDS: usize = 8;
const EVENTS_PER_ROUND: usize = 24;

/// How long after a new member joins the other one is stopped, round by round: before,
/// during and after the rebalance the arrival starts.
const DELAYS_MS: [u64; ROUNDS] = [0, 100, 250, 500, 750, 1000, 1500, 2000];

fn start(pipeline: &Pipeline, instance_id: &str) -> StageProcess {
    pipeline.start_with(&["--instance-id", instance_id], &[])
}

#[tokio::test]
async fn every_partition_keeps_an_owner_through_kills_and_restarts_during_rebalances() {
    let pipeline = Pipeline::new(PARTITIONS).await;
    let mut steady = start(&pipeline, "churn-steady");
    let mut newcomer: Option<StageProcess> = None;
    let mut key = 0;

    for (round, delay) in DELAYS_MS.iter().enumerate() {
        // A member the group has not seen joins: a rebalance starts. (The previous newcomer
        // dies; its session ends a few seconds later: another rebalance.)
        if let Some(mut old) = newcomer.take() {
            old.kill();
        }
        newcomer = Some(start(&pipeline, &format!("churn-new-{round}")));
        tokio::time::sleep(Duration::from_millis(*delay)).await;
        // ... and the steady member stops somewhere inside it, and comes straight back under
        // the same id, as a rolling restart or a supervisor would bring it.
        if round % 4 == 3 {
            steady.kill();
        } else {
            steady.terminate();
            steady.wait_exit(Duration::from_secs(30)).await;
        }
        steady = start(&pipeline, "churn-steady");

        let events: Vec<_> = (0..EVENTS_PER_ROUND)
            .map(|_| {
                key += 1;
                pipeline.current(&pipeline.event(&format!("churn-{key}")))
            })
            .collect();
        pipeline.produce(&events).await;
        let brokers = pipeline.stack.kafka_brokers.clone();
        let group = pipeline.group.clone();
        let topic = pipeline.topics.raw_events.clone();
        // Longer than a dead member's session (6 s) plus a rebalance: an owned partition is
        // drained well inside it; a partition nobody owns never is.
        poll_until(
            &format!("round {round}: every partition drained"),
            Duration::from_secs(40),
            || {
                let (brokers, group, topic) = (brokers.clone(), group.clone(), topic.clone());
                async move {
                    let offsets = tokio::task::spawn_blocking(move || {
                        committed_and_high_watermarks(&brokers, &group, &topic)
                    })
                    .await
                    .expect("offsets task");
                    offsets
                        .iter()
                        .all(|(_, committed, high)| committed == high || *high == 0)
                        .then_some(())
                }
            },
        )
        .await;
    }
    let validated = pipeline.validated();
    let distinct: std::collections::HashSet<_> =
        validated.iter().map(|record| record.key.clone()).collect();
    assert_eq!(
        distinct.len(),
        ROUNDS * EVENTS_PER_ROUND,
        "every event validated"
    );
}
