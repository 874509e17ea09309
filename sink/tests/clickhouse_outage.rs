//! ClickHouse stopped for 20 s mid-run: the sink retries, says why on /readyz, stops
//! consuming behind its failing inserts, and catches up by itself when ClickHouse is back —
//! nothing lost, nothing doubled. (Alone in its test binary: the outage would fail others.)

mod support;

use std::time::{Duration, Instant};

use boomerang_testkit::poll_until;
use support::{Pipeline, metrics, produce_cases, stack, value, wait_committed};

const OUTAGE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn clickhouse_down_for_20_seconds_loses_nothing_and_the_sink_catches_up() {
    let pipeline = Pipeline::new().await;
    produce_cases(&pipeline, 0, 30).await;
    let sink = pipeline.start(&["--clickhouse-timeout-secs", "2"], &[]);
    pipeline.wait_for_rows("post_purchase_events", 30).await;

    let stopped = Instant::now();
    stack(&["stop", "clickhouse"]);
    let result = std::panic::AssertUnwindSafe(async {
        produce_cases(&pipeline, 30, 60).await;
        let (status, reason) = poll_until(
            "/readyz to say ClickHouse is failing",
            Duration::from_secs(30),
            || async {
                sink.get("/readyz")
                    .await
                    .filter(|(_, body)| body.contains("clickhouse"))
            },
        )
        .await;
        assert_eq!(status, 503, "{reason}");
        let exposition = metrics(&sink).await;
        assert!(
            value(
                &exposition,
                "boomerang_sink_insert_retries_total",
                &["kind=\"connection\""]
            ) > 0,
            "{exposition}"
        );
        assert_eq!(value(&exposition, "boomerang_sink_inserts_failing", &[]), 1);
        // The outage's length, not a wait for anything.
        tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
    });
    let outcome = futures_lite(result).await;
    stack(&["up"]);
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));

    pipeline.wait_for_rows("post_purchase_events", 60).await;
    wait_committed(&pipeline, &pipeline.topics.enriched_events).await;
    assert_eq!(
        pipeline.count("post_purchase_events").await,
        60,
        "without FINAL"
    );
    poll_until(
        "/readyz to say ready again",
        Duration::from_secs(30),
        || async {
            sink.get("/readyz")
                .await
                .filter(|(status, _)| *status == 200)
        },
    )
    .await;
    let exposition = metrics(&sink).await;
    assert_eq!(value(&exposition, "boomerang_sink_inserts_failing", &[]), 0);
    assert_eq!(
        value(&exposition, "boomerang_received_events_total", &[]),
        60
    );
    assert_eq!(value(&exposition, "boomerang_sent_events_total", &[]), 60);
}

/// Runs `future`, catching a panic so the stack is restarted whatever happens.
async fn futures_lite<F: std::future::Future<Output = ()>>(
    future: std::panic::AssertUnwindSafe<F>,
) -> Result<(), Box<dyn std::any::Any + Send>> {
    use futures::FutureExt;
    future.catch_unwind().await
}
