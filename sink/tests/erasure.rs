//! A customer's erasure request, applied by the real sink to the local ClickHouse: afterwards no
//! row holds the customer's pseudonym or any id of theirs, every aggregate is what it was, and
//! the audit says so; the request applied again changes nothing; a sink that dies in the middle
//! of a request finishes it when it is back.

mod support;

use std::time::Duration;

use boomerang_runtime::pseudonym::Pseudonymiser;
use boomerang_schemas::{Channel, ErasureRequest, EventType, Money, Order, TimestampMicros};
use boomerang_testkit::poll_until;
use boomerang_testkit::samples::{customer, order};
use support::{PSEUDONYM_KEY, Pipeline, enriched, wait_all_committed, wait_analytics_refreshed};

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;
const CUSTOMERS: usize = 4;
const ORDERS: usize = 12;
/// The aggregates analysts read: none of them may change when one customer is erased.
const AGGREGATES: [&str; 11] = [
    "return_rates",
    "refund_time_quantiles",
    "exchange_conversion",
    "warranty_outcomes",
    "return_reasons",
    "repeat_purchase",
    "return_value",
    "return_operations",
    "dispositions",
    "risk_flags",
    "data_quality",
];

struct World {
    orders: Vec<Order>,
    /// Every event's idempotency key, event, case, order and line id, by customer.
    identifiers: Vec<(String, Vec<String>)>,
}

/// Customers `cu-0..`, each with orders; every line returned, most refunded, some exchanged.
async fn publish_world(pipeline: &Pipeline) -> World {
    let base = (TimestampMicros::now().as_unix_micros() / DAY - 20) * DAY;
    let mut identifiers: Vec<(String, Vec<String>)> = (0..CUSTOMERS)
        .map(|n| (format!("cu-{n}"), Vec::new()))
        .collect();
    for (n, (id, _)) in identifiers.iter().enumerate() {
        pipeline
            .produce_customer(&customer(id, ["vip", "regular"][n % 2], n != 3))
            .await;
    }
    let mut orders = Vec::new();
    for n in 0..ORDERS {
        let customer_id = format!("cu-{}", n % CUSTOMERS);
        let placed = base + (n % 3) as i64 * DAY;
        let mut order = order(&format!("o-{n}"), &customer_id, Some(placed + 2 * DAY));
        order.placed_at = TimestampMicros::from_unix_micros(placed);
        order.updated_at = order.placed_at;
        order.channel = [Channel::Web, Channel::Store, Channel::MobileApp][n % 3];
        pipeline.produce_order(&order).await;
        for (line, returned) in [(1u32, 1), (2, 1)] {
            let case = format!("case-{n}-{line}");
            let requested = placed + (4 + (n % 4) as i64) * DAY;
            let mut events = vec![enriched(
                EventType::ReturnRequested,
                &case,
                &order.order_id,
                line,
                &customer_id,
                TimestampMicros::from_unix_micros(requested),
            )];
            let closing = if (n + line as usize).is_multiple_of(3) {
                EventType::ExchangeShipped
            } else {
                EventType::RefundIssued
            };
            events.push(enriched(
                closing,
                &case,
                &order.order_id,
                line,
                &customer_id,
                TimestampMicros::from_unix_micros(requested + (6 + n as i64) * HOUR),
            ));
            for mut event in events {
                let category = if line == 1 { "apparel" } else { "electronics" };
                event.line_category = Some(category.into());
                event.event.quantity = returned;
                event.event.channel = order.channel;
                event.customer_segment = Some(["vip", "regular"][n % CUSTOMERS % 2].into());
                match event.event.event_type {
                    EventType::RefundIssued => {
                        event.event.amount = Some(Money::new(2_999, "EUR"));
                    }
                    EventType::ExchangeShipped => {
                        event.event.replacement_sku = Some("SKU-NEW".into());
                    }
                    _ => {}
                }
                let ids = &mut identifiers[n % CUSTOMERS].1;
                ids.extend([
                    event.event.idempotency_key.clone(),
                    event.event.event_id.clone(),
                    event.event.case_id.clone(),
                    event.event.order_id.clone(),
                    event.event.order_line_id.clone(),
                ]);
                pipeline.produce_enriched(&event).await;
            }
        }
        orders.push(order);
    }
    World {
        orders,
        identifiers,
    }
}

fn request(id: &str, customer_id: &str) -> ErasureRequest {
    ErasureRequest {
        request_id: id.into(),
        customer_id: customer_id.into(),
        requested_at: TimestampMicros::now(),
        requested_by: "integration-test".into(),
        anonymisation_salt: "00112233445566778899aabbccddeeff00112233".into(),
    }
}

async fn text(pipeline: &Pipeline, query: &str) -> String {
    let bytes = pipeline
        .clickhouse
        .client()
        .query(query)
        .fetch_bytes("TSV")
        .expect("query")
        .collect()
        .await
        .unwrap_or_else(|error| panic!("{query}: {error}"));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Every aggregate view, whole and sorted.
async fn aggregates(pipeline: &Pipeline) -> Vec<String> {
    wait_analytics_refreshed(pipeline).await;
    let mut all = Vec::new();
    for view in AGGREGATES {
        all.push(text(pipeline, &format!("SELECT * FROM {view} ORDER BY ALL")).await);
    }
    all
}

/// Rows of the three tables (without FINAL) that hold the customer's pseudonym, or one of
/// their ids anywhere in an identifier column.
async fn linkable_rows(pipeline: &Pipeline, customer_id: &str, ids: &[String]) -> u64 {
    linkable(
        pipeline,
        customer_id,
        ids,
        &[
            (
                "post_purchase_events",
                "[idempotency_key, event_id, case_id, order_id, order_line_id, customer_key]",
            ),
            ("orders", "arrayConcat([order_id, customer_key], line_ids)"),
            ("customers", "[customer_key]"),
        ],
    )
    .await
}

/// The same in the analytics stores and their bookkeeping, whose row counts move with every
/// refresh and merge: only ever expected to be 0.
async fn linkable_store_rows(pipeline: &Pipeline, customer_id: &str, ids: &[String]) -> u64 {
    linkable(
        pipeline,
        customer_id,
        ids,
        &[
            (
                "cases_store",
                "[case_id, order_id, order_line_id, customer_key]",
            ),
            ("customers_store", "[customer_key]"),
            ("analytics_dirty", "[customer_key]"),
            ("analytics_refresh_batch", "[customer_key]"),
        ],
    )
    .await
}

async fn linkable(
    pipeline: &Pipeline,
    customer_id: &str,
    ids: &[String],
    tables: &[(&str, &str)],
) -> u64 {
    let pseudonym = Pseudonymiser::new(PSEUDONYM_KEY.as_bytes())
        .expect("key")
        .pseudonym(customer_id);
    let client = pipeline.clickhouse.client();
    let mut rows = 0;
    for (table, columns) in tables {
        let count: u64 = client
            .query(&format!(
                "SELECT count() FROM {table} WHERE hasAny({columns}, {{ids:Array(String)}})"
            ))
            .param(
                "ids",
                ids.iter()
                    .cloned()
                    .chain([pseudonym.clone(), customer_id.to_string()])
                    .collect::<Vec<_>>(),
            )
            .fetch_one()
            .await
            .expect("count linkable rows");
        rows += count;
    }
    rows
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct Status {
    complete: bool,
    events_rows: u64,
    orders_rows: u64,
    customers_rows: u64,
}

async fn status(pipeline: &Pipeline, request_id: &str) -> Option<Status> {
    pipeline
        .clickhouse
        .client()
        .query(
            "SELECT complete, events_rows, orders_rows, customers_rows \
             FROM erasure_requests WHERE request_id = {id:String}",
        )
        .param("id", request_id)
        .fetch_optional()
        .await
        .expect("erasure_requests")
}

async fn wait_complete(pipeline: &Pipeline, request_id: &str, passes: u64) -> Status {
    poll_until(
        &format!("{passes} passes of {request_id} in erasure_audit"),
        Duration::from_secs(90),
        || async {
            let done = pipeline
                .count(&format!(
                    "erasure_audit WHERE request_id = '{request_id}' AND pass = 'settled'"
                ))
                .await;
            (done * 2 >= passes).then_some(())
        },
    )
    .await;
    status(pipeline, request_id).await.expect("a status")
}

async fn produce_request(pipeline: &Pipeline, request: &ErasureRequest) {
    pipeline
        .produce(
            &pipeline.topics.erasure_requests,
            &request.customer_id,
            request,
        )
        .await;
}

#[tokio::test]
async fn an_erased_customer_leaves_no_linkable_row_and_every_aggregate_unchanged() {
    let pipeline = Pipeline::new().await;
    let world = publish_world(&pipeline).await;
    let sink = pipeline.start(&["--erasure-settle-secs", "1"], &[]);
    wait_all_committed(&pipeline).await;
    let before = aggregates(&pipeline).await;
    for (view, rows) in AGGREGATES.iter().zip(&before) {
        if ["return_rates", "refund_time_quantiles", "return_reasons"].contains(view) {
            assert!(
                rows.lines().count() > 1,
                "{view} has figures to keep: {rows}"
            );
        }
    }
    let events_before = pipeline.count("post_purchase_events").await;
    let (erased_id, erased_ids) = &world.identifiers[1];
    let erased_events = erased_ids.len() as u64 / 5;
    assert!(linkable_rows(&pipeline, erased_id, erased_ids).await > 0);
    let (kept_id, kept_ids) = &world.identifiers[2];
    let kept = linkable_rows(&pipeline, kept_id, kept_ids).await;

    let first = request("er-first", erased_id);
    produce_request(&pipeline, &first).await;
    let status = wait_complete(&pipeline, "er-first", 2).await;
    assert!(status.complete);
    let orders_of_customer = world
        .orders
        .iter()
        .filter(|order| order.customer_id == *erased_id)
        .count() as u64;
    assert_eq!(
        (
            status.events_rows,
            status.orders_rows,
            status.customers_rows
        ),
        (erased_events, orders_of_customer, 1),
        "the first pass anonymised them all, the settled pass found nothing more"
    );
    assert_eq!(linkable_rows(&pipeline, erased_id, erased_ids).await, 0);
    assert!(linkable_store_rows(&pipeline, kept_id, kept_ids).await > 0);
    assert_eq!(
        linkable_store_rows(&pipeline, erased_id, erased_ids).await,
        0,
        "nor any row of the analytics stores"
    );
    assert_eq!(
        linkable_rows(&pipeline, kept_id, kept_ids).await,
        kept,
        "other customers untouched"
    );
    assert_eq!(aggregates(&pipeline).await, before, "aggregates unchanged");
    assert_eq!(
        pipeline.count("post_purchase_events").await,
        events_before,
        "one anonymised row per erased row, without FINAL"
    );
    let audit = text(&pipeline, "SELECT * FROM erasure_audit FORMAT TSV").await;
    assert!(
        !audit.contains(erased_id) && !audit.contains(&first.anonymisation_salt),
        "the audit holds neither the id nor the salt: {audit}"
    );

    // The same request again (a replay), then a second request for the same customer.
    produce_request(&pipeline, &first).await;
    let again = wait_complete(&pipeline, "er-first", 4).await;
    assert_eq!(
        (again.events_rows, again.orders_rows, again.customers_rows),
        (
            status.events_rows,
            status.orders_rows,
            status.customers_rows
        ),
        "applied again, nothing more to anonymise"
    );
    produce_request(&pipeline, &request("er-second", erased_id)).await;
    let second = wait_complete(&pipeline, "er-second", 2).await;
    assert_eq!(
        (
            second.events_rows,
            second.orders_rows,
            second.customers_rows
        ),
        (0, 0, 0)
    );
    assert_eq!(aggregates(&pipeline).await, before);
    assert_eq!(pipeline.count("post_purchase_events").await, events_before);

    // A request the sink cannot apply is dead-lettered, and the next one still applied.
    let mut unsalted = request("er-unsalted", "cu-3");
    unsalted.anonymisation_salt = "short".into();
    produce_request(&pipeline, &unsalted).await;
    // Two more requests at once: applied together, each customer with its own salt.
    let (last_id, last_ids) = &world.identifiers[3];
    let (zero_id, zero_ids) = &world.identifiers[0];
    produce_request(&pipeline, &request("er-last", last_id)).await;
    let mut zero = request("er-zero", zero_id);
    zero.anonymisation_salt = "ffeeddccbbaa99887766554433221100".into();
    produce_request(&pipeline, &zero).await;
    let last = wait_complete(&pipeline, "er-last", 2).await;
    let zero = wait_complete(&pipeline, "er-zero", 2).await;
    assert!(last.events_rows > 0 && zero.events_rows > 0);
    assert!(status_is_absent(&pipeline, "er-unsalted").await);
    assert_eq!(linkable_rows(&pipeline, last_id, last_ids).await, 0);
    assert_eq!(linkable_rows(&pipeline, zero_id, zero_ids).await, 0);
    assert_eq!(pipeline.count("post_purchase_events").await, events_before);
    assert_eq!(
        pipeline
            .count(
                "(SELECT DISTINCT customer_key FROM customers WHERE customer_key LIKE 'erased_%')"
            )
            .await,
        3,
        "three customers erased (cu-1 twice), each under its own token"
    );
    let letters = pipeline.dead_letters();
    assert!(
        letters.iter().any(
            |letter| letter.header("boomerang.dlq.error_kind").as_deref()
                == Some("invalid_erasure_request")
        ),
        "the unsalted request was dead-lettered"
    );
    assert_eq!(aggregates(&pipeline).await, before);
    sink.terminate();
}

async fn status_is_absent(pipeline: &Pipeline, request_id: &str) -> bool {
    status(pipeline, request_id).await.is_none()
}

#[tokio::test]
async fn a_sink_that_dies_mid_erasure_finishes_it_when_back() {
    let pipeline = Pipeline::new().await;
    let world = publish_world(&pipeline).await;
    let mut sink = pipeline.start(&[], &[]);
    wait_all_committed(&pipeline).await;
    // While the sink runs: it keeps the analytics stores the aggregates read.
    let before = aggregates(&pipeline).await;
    sink.terminate();
    sink.wait_exit(Duration::from_secs(30)).await;
    let events_before = pipeline.count("post_purchase_events").await;
    let (erased_id, erased_ids) = &world.identifiers[0];
    produce_request(&pipeline, &request("er-crash", erased_id)).await;

    // Dies after copying the events with tokens, before deleting the originals.
    let mut dying = pipeline.start(
        &["--erasure-settle-secs", "1"],
        &[(boomerang_sink::erase::CRASH_AFTER_COPY_ENV, "1")],
    );
    let exit = dying.wait_exit(Duration::from_secs(90)).await;
    assert!(!exit.success(), "{exit:?}");
    assert!(
        pipeline.count("post_purchase_events").await > events_before,
        "the copies were made before the crash"
    );

    let sink = pipeline.start(&["--erasure-settle-secs", "1"], &[]);
    let status = wait_complete(&pipeline, "er-crash", 2).await;
    assert!(status.complete);
    assert_eq!(linkable_rows(&pipeline, erased_id, erased_ids).await, 0);
    assert_eq!(aggregates(&pipeline).await, before, "aggregates unchanged");
    assert_eq!(
        linkable_store_rows(&pipeline, erased_id, erased_ids).await,
        0
    );
    assert_eq!(
        pipeline.count("post_purchase_events").await,
        events_before,
        "no copy made twice"
    );
    sink.terminate();
}
