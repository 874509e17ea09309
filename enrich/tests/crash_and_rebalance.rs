//! Held events survive a kill -9 (their offsets were never committed), and two instances split
//! the event partitions while each holds both reference tables whole.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use boomerang_testkit::samples::customer;
use boomerang_testkit::{committed_and_high_watermarks, poll_until};
use support::{
    Pipeline, event, metrics, order, reference_records, value, wait_for_metric, wait_ready,
};

#[tokio::test]
async fn a_kill_9_with_events_held_loses_none() {
    let pipeline = Pipeline::new(2).await;
    pipeline
        .produce_customer(&customer("cu-1", "regular", true))
        .await;
    pipeline.produce_order(&order("o-here", "cu-1")).await;
    // Long enough that nothing is released by its deadline during the test.
    let mut first = pipeline.start(600_000);
    wait_ready(&first).await;

    for n in 0..10 {
        pipeline
            .produce_event(&event(&format!("held-{n}"), &format!("o-late-{n}"), "cu-1"))
            .await;
        pipeline
            .produce_event(&event(&format!("here-{n}"), "o-here", "cu-1"))
            .await;
    }
    wait_for_metric(&first, "boomerang_enrich_pending_events", &[], 10).await;
    poll_until(
        "the joinable events out",
        Duration::from_secs(30),
        || async {
            let out = pipeline.enriched().len();
            (out >= 10).then_some(())
        },
    )
    .await;
    // Nothing is committed past a held event: at least the 10 held are uncommitted.
    let partitions = committed_and_high_watermarks(
        &pipeline.stack.kafka_brokers,
        &pipeline.group,
        &pipeline.topics.validated_events,
    );
    let uncommitted: i64 = partitions
        .iter()
        .map(|(_, committed, high)| high - (*committed).max(0))
        .sum();
    assert!(uncommitted >= 10, "{partitions:?}");

    first.kill();
    for n in 0..10 {
        pipeline
            .produce_order(&order(&format!("o-late-{n}"), "cu-1"))
            .await;
    }
    let second = pipeline.start(600_000);
    wait_ready(&second).await;
    let wanted: BTreeSet<String> = (0..10).map(|n| format!("held-{n}")).collect();
    let joined = poll_until(
        "every held event joined",
        Duration::from_secs(60),
        || async {
            let joined: BTreeSet<String> = pipeline
                .enriched()
                .into_iter()
                .filter(|enriched| !enriched.order_missing)
                .map(|enriched| enriched.event.event_id)
                .filter(|id| id.starts_with("held-"))
                .collect();
            (joined == wanted).then_some(joined)
        },
    )
    .await;
    assert_eq!(joined.len(), 10);
    let all: BTreeSet<String> = pipeline
        .enriched()
        .into_iter()
        .map(|enriched| enriched.event.event_id)
        .collect();
    assert_eq!(all.len(), 20, "every event out at least once: {all:?}");
    assert!(
        pipeline
            .enriched()
            .iter()
            .all(|enriched| !enriched.order_missing)
    );
}

#[tokio::test]
async fn two_instances_split_the_events_and_both_hold_every_reference_record() {
    let pipeline = Pipeline::new(4).await;
    for n in 0..20 {
        pipeline
            .produce_customer(&customer(&format!("cu-{n}"), "regular", true))
            .await;
    }
    for n in 0..40 {
        pipeline
            .produce_order(&order(&format!("o-{n}"), &format!("cu-{}", n % 20)))
            .await;
    }
    let one = pipeline.start(10_000);
    let two = pipeline.start(10_000);
    wait_ready(&one).await;
    wait_ready(&two).await;
    for process in [&one, &two] {
        assert_eq!(reference_records(process).await, (20, 40));
    }

    // Produce rounds of events until both instances have had some (the group's rebalance
    // takes a moment).
    let mut produced = 0;
    poll_until("both instances consuming", Duration::from_secs(60), || {
        let start = produced;
        produced += 20;
        let pipeline = &pipeline;
        let (one, two) = (&one, &two);
        async move {
            for n in start..start + 20 {
                let order_n = n % 40;
                pipeline
                    .produce_event(&event(
                        &format!("e-{n}"),
                        &format!("o-{order_n}"),
                        &format!("cu-{}", order_n % 20),
                    ))
                    .await;
            }
            let received_one = value(&metrics(one).await, "boomerang_received_events_total", &[]);
            let received_two = value(&metrics(two).await, "boomerang_received_events_total", &[]);
            (received_one > 0 && received_two > 0).then_some(())
        }
    })
    .await;
    let wanted: BTreeSet<String> = (0..produced).map(|n| format!("e-{n}")).collect();
    poll_until("every event enriched", Duration::from_secs(60), || async {
        let out: BTreeSet<String> = pipeline
            .enriched()
            .into_iter()
            .map(|enriched| enriched.event.event_id)
            .collect();
        (out == wanted).then_some(())
    })
    .await;
    let enriched = pipeline.enriched();
    assert!(
        enriched
            .iter()
            .all(|enriched| !enriched.order_missing && !enriched.customer_missing)
    );
    let mut sent = 0;
    for process in [&one, &two] {
        sent += value(&metrics(process).await, "boomerang_sent_events_total", &[]);
    }
    assert_eq!(
        sent as usize,
        enriched.len(),
        "the counters account for every output"
    );
}
