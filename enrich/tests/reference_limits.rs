//! An order with more lines than `--max-order-lines` is not held in memory: it is skipped like
//! an unreadable reference record (logged, counted as rejected), and an event for it is joined
//! as `order_missing` once its wait is over. An order at the limit is held and joined.

mod support;

use support::{Pipeline, event, metrics, order, value, wait_for_metric, wait_ready};

const MAX_WAIT_MS: u64 = 1_000;
const MAX_LINES: usize = 50;

fn order_with_lines(order_id: &str, lines: usize) -> boomerang_schemas::Order {
    let mut order = order(order_id, "cu-1");
    let template = order.lines[0].clone();
    order.lines = (1..=lines)
        .map(|n| boomerang_schemas::OrderLine {
            order_line_id: format!("{order_id}/{n}"),
            ..template.clone()
        })
        .collect();
    order
}

#[tokio::test]
async fn an_order_over_the_line_limit_is_skipped_and_one_at_it_is_joined() {
    let pipeline = Pipeline::new(1).await;
    pipeline
        .produce_order(&order_with_lines("o-at", MAX_LINES))
        .await;
    pipeline
        .produce_order(&order_with_lines("o-over", MAX_LINES + 1))
        .await;
    let limit = MAX_LINES.to_string();
    let process = pipeline.start_with(MAX_WAIT_MS, &["--max-order-lines", &limit]);
    wait_ready(&process).await;
    let exposition = metrics(&process).await;
    assert_eq!(
        value(
            &exposition,
            "boomerang_enrich_reference_records",
            &["table=\"orders\""]
        ),
        1,
        "only the order at the limit is held"
    );
    assert_eq!(
        value(
            &exposition,
            "boomerang_enrich_reference_changes_total",
            &["table=\"orders\"", "change=\"rejected\""]
        ),
        1
    );

    let mut at = event("e-at", "o-at", "cu-1");
    at.order_line_id = format!("o-at/{MAX_LINES}");
    pipeline.produce_event(&at).await;
    let mut over = event("e-over", "o-over", "cu-1");
    over.order_line_id = "o-over/1".into();
    pipeline.produce_event(&over).await;
    let joined = pipeline.wait_for_enriched("e-at").await;
    assert!(!joined.order_missing && !joined.order_line_missing);
    let missing = pipeline.wait_for_enriched("e-over").await;
    assert!(missing.order_missing, "the skipped order is not joined");
    wait_for_metric(&process, "boomerang_sent_events_total", &[], 2).await;
}

/// A hostile producer's order of 100,000 lines (a few MB) at the default limit (10,000): enrich
/// keeps running, does not hold it, and joins its event as `order_missing`.
#[tokio::test]
async fn an_order_of_100k_lines_is_skipped_at_the_default_limit() {
    let pipeline = Pipeline::new(1).await;
    pipeline
        .produce_order(&order_with_lines("o-huge", 100_000))
        .await;
    let mut process = pipeline.start(MAX_WAIT_MS);
    wait_ready(&process).await;
    assert_eq!(
        value(
            &metrics(&process).await,
            "boomerang_enrich_reference_changes_total",
            &["table=\"orders\"", "change=\"rejected\""]
        ),
        1
    );
    let mut huge = event("e-huge", "o-huge", "cu-1");
    huge.order_line_id = "o-huge/1".into();
    pipeline.produce_event(&huge).await;
    assert!(pipeline.wait_for_enriched("e-huge").await.order_missing);
    assert!(process.is_running(), "enrich keeps running");
}
