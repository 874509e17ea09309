//! The sink never writes a row twice: not after a kill -9 between an insert and its commit, not
//! when the group is reset and every offset replayed — checked with `count()` without FINAL.

mod support;

use std::time::Duration;

use boomerang_runtime::stage_loop::CRASH_AFTER_PRODUCE_ENV;
use boomerang_schemas::{EventType, TimestampMicros};
use boomerang_testkit::poll_until;
use boomerang_testkit::samples::{customer, order};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use support::{Pipeline, enriched, metrics, value, wait_all_committed};

const EVENTS: u64 = 60;
const ORDERS: u64 = 10;
const CUSTOMERS: u64 = 5;

async fn produce_world(pipeline: &Pipeline) {
    for n in 0..CUSTOMERS {
        pipeline
            .produce_customer(&customer(&format!("cu-{n}"), "regular", true))
            .await;
    }
    for n in 0..ORDERS {
        pipeline
            .produce_order(&order(
                &format!("o-{n}"),
                &format!("cu-{}", n % CUSTOMERS),
                None,
            ))
            .await;
    }
    let start = TimestampMicros::now().as_unix_micros() - 3_600_000_000;
    for n in 0..EVENTS {
        let at = TimestampMicros::from_unix_micros(start + n as i64 * 1_000_000);
        pipeline
            .produce_enriched(&enriched(
                EventType::ReturnRequested,
                &format!("case-{n}"),
                &format!("o-{}", n % ORDERS),
                1,
                &format!("cu-{}", n % CUSTOMERS),
                at,
            ))
            .await;
    }
}

async fn total_rows(pipeline: &Pipeline) -> u64 {
    pipeline.count("post_purchase_events").await
        + pipeline.count("orders").await
        + pipeline.count("customers").await
}

fn rewind_group(pipeline: &Pipeline) {
    let consumer: BaseConsumer = pipeline
        .kafka
        .consumer_config(&pipeline.group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for topic in [
        &pipeline.topics.enriched_events,
        &pipeline.topics.orders,
        &pipeline.topics.customers,
    ] {
        for partition in 0..2 {
            list.add_partition_offset(topic, partition, Offset::Offset(0))
                .expect("offset");
        }
    }
    consumer
        .commit(&list, CommitMode::Sync)
        .expect("rewind the group");
}

#[tokio::test]
async fn a_kill_9_between_insert_and_commit_and_a_full_replay_add_no_rows() {
    let pipeline = Pipeline::new().await;
    produce_world(&pipeline).await;

    // A sink that dies (abort, as kill -9) right after its first insert, before committing.
    let mut crashed = pipeline.start(
        &["--insert-max-rows", "20"],
        &[(CRASH_AFTER_PRODUCE_ENV, "1")],
    );
    let exit = crashed.wait_exit(Duration::from_secs(60)).await;
    assert!(!exit.success(), "the test hook aborts: {exit}");
    let left_behind = total_rows(&pipeline).await;
    assert!(left_behind > 0, "the crashed sink inserted a batch");

    // Its successor replays from the last commit and skips what ClickHouse already has.
    let mut second = pipeline.start(&[], &[]);
    pipeline.wait_for_rows("post_purchase_events", EVENTS).await;
    wait_all_committed(&pipeline).await;
    assert_eq!(
        pipeline.count("post_purchase_events").await,
        EVENTS,
        "without FINAL"
    );
    assert_eq!(pipeline.count("orders").await, ORDERS);
    assert_eq!(pipeline.count("customers").await, CUSTOMERS);
    // The crashed sink may have had a second insert in flight: ClickHouse can finish it after
    // the process died, so `left_behind` is a lower bound of what the successor finds stored.
    // Exact is that every record is written once, by one sink or the other.
    let exposition = metrics(&second).await;
    let already_stored = value(&exposition, "boomerang_sink_rows_already_stored_total", &[]);
    let inserted = value(&exposition, "boomerang_sink_rows_inserted_total", &[]);
    assert!(
        already_stored >= left_behind,
        "skipped {already_stored}, found {left_behind} rows after the crash"
    );
    assert_eq!(
        already_stored + inserted,
        EVENTS + ORDERS + CUSTOMERS,
        "each record stored by the crashed sink or inserted by its successor, once"
    );
    let received = value(&exposition, "boomerang_received_events_total", &[]);
    let sent = value(&exposition, "boomerang_sent_events_total", &[]);
    let skipped = value(&exposition, "boomerang_deduplicated_events_total", &[]);
    assert_eq!(received, sent + skipped, "every record accounted for");
    second.terminate();
    second.wait_exit(Duration::from_secs(15)).await;

    // The group rewound to the beginning: every record replayed, not one row added.
    rewind_group(&pipeline);
    let third = pipeline.start(&[], &[]);
    let all = EVENTS + ORDERS + CUSTOMERS;
    poll_until("every record replayed", Duration::from_secs(60), || async {
        (value(
            &metrics(&third).await,
            "boomerang_received_events_total",
            &[],
        ) >= all)
            .then_some(())
    })
    .await;
    let exposition = metrics(&third).await;
    assert_eq!(
        value(&exposition, "boomerang_sink_rows_already_stored_total", &[]),
        all
    );
    assert_eq!(
        value(&exposition, "boomerang_sink_rows_inserted_total", &[]),
        0
    );
    assert_eq!(total_rows(&pipeline).await, all, "without FINAL");
}
