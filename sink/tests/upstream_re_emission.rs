//! An event an upstream stage emitted twice (enrich killed between producing and committing
//! re-emits on restart, at new offsets) is written once: the sink remembers the idempotency
//! keys each partition wrote lately, and restores them from ClickHouse after its own kill -9.
//! Checked with `count()` without FINAL.

mod support;

use std::time::Duration;

use boomerang_schemas::{EnrichedPostPurchaseEvent, EventType, TimestampMicros};
use boomerang_testkit::poll_until;
use support::{Pipeline, enriched, metrics, value, wait_committed};

fn events(range: std::ops::Range<i64>) -> Vec<EnrichedPostPurchaseEvent> {
    let start = TimestampMicros::now().as_unix_micros() - 3_600_000_000;
    range
        .map(|n| {
            enriched(
                EventType::ReturnRequested,
                &format!("case-{n}"),
                &format!("o-{}", n % 7),
                1,
                "cu-1",
                TimestampMicros::from_unix_micros(start + n * 1_000_000),
            )
        })
        .collect()
}

async fn received(process: &boomerang_testkit::StageProcess) -> u64 {
    value(
        &metrics(process).await,
        "boomerang_received_events_total",
        &[],
    )
}

#[tokio::test]
async fn events_emitted_twice_upstream_become_one_row_across_a_sink_kill() {
    let pipeline = Pipeline::new().await;
    let first_emission = events(0..20);
    for event in &first_emission {
        pipeline.produce_enriched(event).await;
    }
    let mut sink = pipeline.start(&[], &[]);
    pipeline.wait_for_rows("post_purchase_events", 20).await;

    // Enrich "restarts" and emits the last 12 again, interleaved with 5 new events.
    for (n, event) in first_emission[8..].iter().enumerate() {
        pipeline.produce_enriched(event).await;
        if n < 5 {
            pipeline
                .produce_enriched(&events(100 + n as i64..101 + n as i64)[0])
                .await;
        }
    }
    poll_until("every record received", Duration::from_secs(60), || async {
        (received(&sink).await >= 37).then_some(())
    })
    .await;
    wait_committed(&pipeline, &pipeline.topics.enriched_events).await;
    assert_eq!(
        pipeline.count("post_purchase_events").await,
        25,
        "one row per key, without FINAL"
    );
    let exposition = metrics(&sink).await;
    assert_eq!(
        value(&exposition, "boomerang_sink_duplicate_keys_total", &[]),
        12
    );
    assert_eq!(
        value(&exposition, "boomerang_deduplicated_events_total", &[]),
        12
    );
    assert_eq!(
        value(&exposition, "boomerang_received_events_total", &[]),
        value(&exposition, "boomerang_sent_events_total", &[]) + 12,
        "every record accounted for"
    );

    // A sink killed and restarted remembers, from ClickHouse, what its partitions wrote.
    sink.kill();
    sink.wait_exit(Duration::from_secs(15)).await;
    for event in &first_emission[..5] {
        pipeline.produce_enriched(event).await;
    }
    let restarted = pipeline.start(&[], &[]);
    poll_until(
        "the re-emissions received",
        Duration::from_secs(60),
        || async { (received(&restarted).await >= 5).then_some(()) },
    )
    .await;
    wait_committed(&pipeline, &pipeline.topics.enriched_events).await;
    assert_eq!(pipeline.count("post_purchase_events").await, 25);
    assert_eq!(
        value(
            &metrics(&restarted).await,
            "boomerang_sink_duplicate_keys_total",
            &[]
        ),
        5
    );
}
