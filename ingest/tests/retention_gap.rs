//! A group whose committed offset is older than what the topic still retains: the records
//! retention deleted are never lost silently. By default the stage resumes at the oldest
//! retained record, logging and counting what was lost; `--on-retention-gap stop` stops the
//! stage instead, with nothing read past the gap.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use boomerang_testkit::{committed_and_high_watermarks, poll_until, wait_committed};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};
use support::{Pipeline, counter, metrics};

const FIRST: usize = 10;
const SECOND: usize = 10;
/// Retention deletes everything before this offset: 5 records the group never read.
const OLDEST_RETAINED: i64 = 15;

/// Ingest reads the first 10 events and stops; 10 more arrive; retention deletes up to
/// offset 15 while the group is away.
async fn group_left_behind_by_retention(pipeline: &Pipeline) {
    let first: Vec<_> = (0..FIRST)
        .map(|n| pipeline.current(&pipeline.event(&format!("kept-{n}"))))
        .collect();
    pipeline.produce(&first).await;
    let mut stage = pipeline.start(&[]);
    wait_committed(
        &pipeline.stack.kafka_brokers,
        &pipeline.group,
        &pipeline.topics.raw_events,
    )
    .await;
    stage.terminate();
    stage.wait_exit(Duration::from_secs(20)).await;

    let second: Vec<_> = (FIRST..FIRST + SECOND)
        .map(|n| pipeline.current(&pipeline.event(&format!("later-{n}"))))
        .collect();
    pipeline.produce(&second).await;
    let admin: AdminClient<DefaultClientContext> =
        pipeline.kafka.client_config().create().expect("admin");
    let mut before = TopicPartitionList::new();
    before
        .add_partition_offset(
            &pipeline.topics.raw_events,
            0,
            Offset::Offset(OLDEST_RETAINED),
        )
        .expect("offset");
    let deleted = admin
        .delete_records(&before, &AdminOptions::new())
        .await
        .expect("delete records");
    assert_eq!(
        deleted.elements()[0].offset(),
        Offset::Offset(OLDEST_RETAINED),
        "the topic's oldest record is now at {OLDEST_RETAINED}"
    );
}

fn validated_keys(pipeline: &Pipeline) -> HashSet<String> {
    pipeline
        .validated()
        .iter()
        .filter_map(|record| record.key.as_ref())
        .map(|key| String::from_utf8_lossy(key).into_owned())
        .collect()
}

#[tokio::test]
async fn by_default_the_stage_resumes_at_the_oldest_retained_record_and_counts_the_loss() {
    let pipeline = Pipeline::new(1).await;
    group_left_behind_by_retention(&pipeline).await;

    let stage = pipeline.start(&[]);
    let retained = (OLDEST_RETAINED as usize)..FIRST + SECOND;
    let expected = FIRST + retained.len();
    poll_until(
        "the retained events validated",
        Duration::from_secs(60),
        || async { (validated_keys(&pipeline).len() == expected).then_some(()) },
    )
    .await;
    let keys = validated_keys(&pipeline);
    for n in retained {
        assert!(
            keys.contains(&format!("ord-later-{n}")),
            "later-{n}: {keys:?}"
        );
    }
    let text = metrics(&stage).await;
    assert_eq!(
        counter(&text, "boomerang_records_lost_to_retention_total"),
        5
    );
    assert_eq!(counter(&text, "boomerang_retention_gaps_total"), 1);
    assert_eq!(counter(&text, "boomerang_received_events_total"), 5);
}

#[tokio::test]
async fn with_stop_the_stage_stops_and_reads_nothing_past_the_gap() {
    let pipeline = Pipeline::new(1).await;
    group_left_behind_by_retention(&pipeline).await;

    let mut stage = pipeline.start_with(&["--on-retention-gap", "stop"], &[]);
    let status = stage.wait_exit(Duration::from_secs(60)).await;
    assert!(
        !status.success(),
        "the stage stops with an error: {status:?}"
    );
    assert_eq!(
        validated_keys(&pipeline).len(),
        FIRST,
        "nothing past the gap"
    );
    let offsets = committed_and_high_watermarks(
        &pipeline.stack.kafka_brokers,
        &pipeline.group,
        &pipeline.topics.raw_events,
    );
    assert_eq!(
        offsets,
        vec![(0, FIRST as i64, (FIRST + SECOND) as i64)],
        "the committed offset stays before the gap, for the operator to decide"
    );
}
