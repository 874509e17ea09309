//! Backfilled history (`boomerang.history` header) at ingest: the event-age limit is waived,
//! the header travels on to the validated topic, and only history inside the live window is
//! de-duplicated (and remembered) here — older history passes for the sink to check against
//! ClickHouse, so a backfill of months does not fill ingest's memory. Live traffic keeps its
//! limits.

mod support;

use std::time::Duration;

use boomerang_runtime::stage_loop::HISTORY_HEADER;
use boomerang_schemas::{PostPurchaseEvent, TimestampMicros};
use support::{Pipeline, Raw, counter, metrics, wait_until_received};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn days_ago(pipeline: &Pipeline, key: &str, days: u32) -> PostPurchaseEvent {
    PostPurchaseEvent {
        occurred_at: TimestampMicros::now().saturating_sub(DAY * days),
        ..pipeline.event(key)
    }
}

fn history(mut raw: Raw) -> Raw {
    raw.headers.push((HISTORY_HEADER, "run-1"));
    raw
}

#[tokio::test]
async fn history_passes_the_age_limit_and_only_the_live_window_is_deduplicated_here() {
    let pipeline = Pipeline::new(1).await;
    let process = pipeline.start(&[]);
    let old = days_ago(&pipeline, "old", 90);
    let recent = days_ago(&pipeline, "recent", 2);
    let records = vec![
        // Months old, twice: both pass ingest (the sink drops the second against ClickHouse).
        history(pipeline.current(&old)),
        history(pipeline.current(&old)),
        // Inside the live window: history, then the same key live, then history again.
        history(pipeline.current(&recent)),
        pipeline.current(&recent),
        history(pipeline.current(&recent)),
        // Live traffic months old is still implausible.
        pipeline.current(&days_ago(&pipeline, "old-live", 90)),
    ];
    pipeline.produce(&records).await;
    wait_until_received(&[&process], records.len() as u64).await;

    let validated = pipeline.validated();
    let keys: Vec<String> = validated
        .iter()
        .filter_map(support::validated_key)
        .collect();
    assert_eq!(keys, ["old", "old", "recent"]);
    assert!(
        validated
            .iter()
            .all(|record| record.header(HISTORY_HEADER).as_deref() == Some("run-1")),
        "the validated records carry the run"
    );
    let dead_letters = pipeline.dead_letters();
    assert_eq!(dead_letters.len(), 1);
    assert_eq!(
        dead_letters[0]
            .header(boomerang_runtime::dead_letter::ERROR_KIND)
            .as_deref(),
        Some("occurred_too_long_ago")
    );

    let exposition = metrics(&process).await;
    assert_eq!(
        counter(&exposition, "boomerang_deduplicated_events_total"),
        2
    );
    assert_eq!(
        boomerang_testkit::value(
            &exposition,
            "boomerang_ingest_history_events_total",
            &["deduplicated_by=\"sink\""]
        ),
        2
    );
    assert_eq!(
        boomerang_testkit::value(
            &exposition,
            "boomerang_ingest_history_events_total",
            &["deduplicated_by=\"ingest\""]
        ),
        1
    );
    // Only the key inside the window is remembered.
    assert_eq!(counter(&exposition, "boomerang_dedup_keys"), 1);

    // A restart reads the validated topic back: still only the window's key.
    let mut process = process;
    process.terminate();
    assert!(process.wait_exit(Duration::from_secs(30)).await.success());
    let restarted = pipeline.start(&[]);
    boomerang_testkit::wait_ready(&restarted).await;
    pipeline.produce(&[pipeline.current(&recent)]).await;
    wait_until_received(&[&restarted], 1).await;
    let exposition = metrics(&restarted).await;
    assert_eq!(counter(&exposition, "boomerang_dedup_keys"), 1);
    assert_eq!(
        counter(&exposition, "boomerang_deduplicated_events_total"),
        1
    );
}
