//! Every intelligence object (`0006_intelligence.sql`) returns what this test worked out by
//! hand from its own small world, in which each situation the objects exist for happens on
//! purpose: a duplicate request naming another method, a refund above the line's cost, a
//! request after the window, a refund on a rejected case, a refund whose clock put it before
//! the request, a second return on a line, a return on an order never published, money events
//! of a case never opened, an exchange, a warranty denial, repeat purchases. The expected
//! figures below are literals, derived in the comments, not computed by the code under test.
//! The sink's refund-SLA gauges and its analytics gauges are checked on the same world.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use boomerang_schemas::{
    Channel, Disposition, EnrichedPostPurchaseEvent, EventType, Money, Order, OrderLine,
    ReturnMethod, TimestampMicros,
};
use boomerang_testkit::poll_until;
use boomerang_testkit::samples::customer;
use support::{Pipeline, enriched, metrics, value, wait_all_committed, wait_analytics_refreshed};

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;

struct World {
    base: i64,
}

impl World {
    /// `days` after the world's first day, which is 105 days ago at midnight UTC.
    fn at(&self, days: i64, hours: i64) -> TimestampMicros {
        TimestampMicros::from_unix_micros(self.base + days * DAY + hours * HOUR)
    }
}

fn order(
    world: &World,
    id: &str,
    customer: &str,
    channel: Channel,
    day: i64,
    lines: &[(&str, i32, i64)],
) -> Order {
    Order {
        order_id: id.into(),
        customer_id: customer.into(),
        channel,
        currency: "EUR".into(),
        placed_at: world.at(day, 0),
        delivered_at: Some(world.at(day + 2, 0)),
        lines: lines
            .iter()
            .enumerate()
            .map(|(n, (category, quantity, price))| OrderLine {
                order_line_id: format!("{id}/{}", n + 1),
                sku: format!("SKU-{category}"),
                category: (*category).into(),
                quantity: *quantity,
                unit_price_minor: *price,
            })
            .collect(),
        updated_at: world.at(day, 0),
    }
}

/// One case's events, enriched as enrich would have: the line's category and price when the
/// order is known, the return-window flag on requests.
struct Case<'w> {
    world: &'w World,
    id: &'static str,
    order: &'static str,
    line: u32,
    customer: &'static str,
    channel: Channel,
    /// (category, unit price) of the line, None for an order never published.
    line_ref: Option<(&'static str, i64)>,
    quantity: i32,
    events: Vec<EnrichedPostPurchaseEvent>,
}

impl Case<'_> {
    fn event(
        &mut self,
        event_type: EventType,
        days: i64,
        hours: i64,
    ) -> &mut EnrichedPostPurchaseEvent {
        let mut event = enriched(
            event_type,
            self.id,
            self.order,
            self.line,
            self.customer,
            self.world.at(days, hours),
        );
        event.event.channel = self.channel;
        event.event.quantity = self.quantity;
        match self.line_ref {
            Some((category, price)) => {
                event.line_category = Some(category.into());
                event.line_unit_price = Some(Money::new(price, "EUR"));
            }
            None => event.order_missing = true,
        }
        if matches!(
            event_type,
            EventType::ExchangeRequested | EventType::ExchangeCompleted
        ) {
            event.event.replacement_sku = Some("SKU-other".into());
        }
        self.events.push(event);
        self.events.last_mut().expect("pushed")
    }

    fn request(
        &mut self,
        days: i64,
        hours: i64,
        method: Option<ReturnMethod>,
        in_window: Option<bool>,
    ) {
        let request = self.event(EventType::ReturnRequested, days, hours);
        request.event.method = method;
        request.within_return_window = in_window;
    }

    fn money(&mut self, event_type: EventType, days: i64, hours: i64, amount: i64) {
        self.event(event_type, days, hours).event.amount = Some(Money::new(amount, "EUR"));
    }
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct KeyCount {
    key: String,
    count: u64,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct CaseFlag {
    case_id: String,
    flag: String,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct RepeatRow {
    customer_segment: String,
    channel: String,
    outcome: String,
    customers: u64,
    eligible_30d: u64,
    repeated_30d: u64,
    eligible_90d: u64,
    repeated_90d: u64,
    eligible_365d: u64,
    repeated_365d: u64,
    rate_30d: f64,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct ValueRow {
    category: String,
    refunded: i64,
    store_credit: i64,
    exchanged: i64,
    retained_share: f64,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct StepsRow {
    method: String,
    cases: u64,
    received: u64,
    receipt_p50: Option<f64>,
    inspected: u64,
    inspection_p50: Option<f64>,
    refunded: u64,
    refund_p50: Option<f64>,
}

/// Method; cases; received and p50 hours; inspected and p50 hours; refunded and p50 hours.
type Steps = (
    String,
    u64,
    u64,
    Option<f64>,
    u64,
    Option<f64>,
    u64,
    Option<f64>,
);

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct SlaRow {
    day: u16,
    received_cases: u64,
    refunded_within_target: u64,
    refunded_late: u64,
    open_past_target: u64,
    open_within_target: u64,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct DispositionRow {
    category: String,
    disposition: String,
    cases: u64,
    share: f64,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct RefundTimeRow {
    case_id: String,
    refund_micros: i64,
}

#[tokio::test]
async fn each_intelligence_object_matches_what_the_world_says() {
    let pipeline = Pipeline::new().await;
    let world = World {
        base: (TimestampMicros::now().as_unix_micros() / DAY - 105) * DAY,
    };
    let w = &world;
    let customers = [
        customer("cu-1", "vip", true),
        customer("cu-2", "regular", true),
        customer("cu-3", "regular", false),
        customer("cu-4", "new", true),
    ];
    let orders = [
        order(
            w,
            "o-1",
            "cu-1",
            Channel::Web,
            0,
            &[("apparel", 2, 1_000), ("shoes", 1, 5_000)],
        ),
        order(w, "o-2", "cu-1", Channel::Web, 20, &[("apparel", 1, 2_000)]),
        order(w, "o-3", "cu-2", Channel::Store, 0, &[("home", 1, 3_000)]),
        order(
            w,
            "o-4",
            "cu-3",
            Channel::MobileApp,
            0,
            &[("electronics", 1, 10_000)],
        ),
        order(
            w,
            "o-5",
            "cu-3",
            Channel::MobileApp,
            100,
            &[("beauty", 1, 500)],
        ),
        order(w, "o-6", "cu-4", Channel::Web, 10, &[("home", 1, 700)]),
        order(w, "o-7", "cu-4", Channel::Web, 30, &[("home", 1, 700)]),
    ];
    let case = |id, order, line, customer, channel, line_ref, quantity| Case {
        world: w,
        id,
        order,
        line,
        customer,
        channel,
        line_ref,
        quantity,
        events: Vec::new(),
    };
    let mut cases = Vec::new();
    // A: refunded 1 day after receipt (within 72 h), 4 days after the request.
    let mut a = case(
        "A",
        "o-1",
        1,
        "cu-1",
        Channel::Web,
        Some(("apparel", 1_000)),
        2,
    );
    a.request(5, 0, Some(ReturnMethod::Mail), Some(true));
    a.event(EventType::ReturnReceived, 8, 0);
    a.event(EventType::ReturnInspected, 8, 12).event.disposition = Some(Disposition::Restock);
    a.money(EventType::RefundIssued, 9, 0, 2_000);
    cases.push(a);
    // B: requested twice (in store, then by mail), credited 4 days after receipt (late) for
    // more than the unit cost.
    let mut b = case(
        "B",
        "o-1",
        2,
        "cu-1",
        Channel::Web,
        Some(("shoes", 5_000)),
        1,
    );
    b.request(5, 0, Some(ReturnMethod::InStore), Some(true));
    b.request(5, 2, Some(ReturnMethod::Mail), Some(true));
    b.event(EventType::ReturnReceived, 6, 0);
    b.event(EventType::ReturnInspected, 6, 5).event.disposition = Some(Disposition::Refurbish);
    b.money(EventType::StoreCreditIssued, 10, 0, 5_495);
    cases.push(b);
    // C: requested after the window, rejected, refunded all the same.
    let mut c = case(
        "C",
        "o-3",
        1,
        "cu-2",
        Channel::Store,
        Some(("home", 3_000)),
        1,
    );
    c.request(40, 0, Some(ReturnMethod::Mail), Some(false));
    c.event(EventType::ReturnRejected, 41, 0);
    c.money(EventType::RefundIssued, 42, 0, 3_000);
    cases.push(c);
    // D: became an exchange, worth the line's 10,000.
    let mut d = case(
        "D",
        "o-4",
        1,
        "cu-3",
        Channel::MobileApp,
        Some(("electronics", 10_000)),
        1,
    );
    d.request(5, 0, None, Some(true));
    d.event(EventType::ExchangeRequested, 5, 5);
    d.event(EventType::ExchangeCompleted, 9, 0);
    cases.push(d);
    // E: the same line returned again (2 units returned of 1 sold); refunded 12 h before the
    // receipt by the producers' clocks.
    let mut e = case(
        "E",
        "o-4",
        1,
        "cu-3",
        Channel::MobileApp,
        Some(("electronics", 10_000)),
        1,
    );
    e.request(6, 0, Some(ReturnMethod::Mail), Some(true));
    e.event(EventType::ReturnReceived, 7, 0);
    e.money(EventType::RefundIssued, 6, 12, 1_000);
    cases.push(e);
    // F: a return on an order never published; received, never refunded.
    let mut f = case("F", "o-9", 1, "cu-9", Channel::Web, None, 1);
    f.request(5, 0, Some(ReturnMethod::DropOff), None);
    f.event(EventType::ReturnReceived, 7, 0);
    cases.push(f);
    // G: a refund of a case whose request never came.
    let mut g = case(
        "G",
        "o-3",
        1,
        "cu-2",
        Channel::Store,
        Some(("home", 3_000)),
        1,
    );
    g.money(EventType::RefundIssued, 45, 0, 100);
    cases.push(g);
    // H: a warranty claim, denied.
    let mut h = case(
        "H",
        "o-1",
        2,
        "cu-1",
        Channel::Web,
        Some(("shoes", 5_000)),
        1,
    );
    h.event(EventType::WarrantyFiled, 30, 0);
    h.event(EventType::WarrantyDenied, 32, 0);
    cases.push(h);
    // J: refunded a day before its request by the producers' clocks.
    let mut j = case(
        "J",
        "o-3",
        1,
        "cu-2",
        Channel::Store,
        Some(("home", 3_000)),
        1,
    );
    j.request(50, 0, Some(ReturnMethod::Mail), Some(true));
    j.money(EventType::RefundIssued, 49, 0, 3_000);
    cases.push(j);

    for customer in &customers {
        pipeline.produce_customer(customer).await;
    }
    for order in &orders {
        pipeline.produce_order(order).await;
    }
    let events: Vec<&EnrichedPostPurchaseEvent> =
        cases.iter().flat_map(|case| &case.events).collect();
    for event in &events {
        pipeline.produce_enriched(event).await;
    }
    // A replay of every event: written once, counted once.
    for event in &events {
        pipeline.produce_enriched(event).await;
    }
    let sink = pipeline.start(
        &[
            "--refund-sla-horizon-days",
            "365",
            "--analytics-gauges-secs",
            "1",
        ],
        &[],
    );
    wait_all_committed(&pipeline).await;
    assert_eq!(
        pipeline.count("post_purchase_events").await,
        events.len() as u64
    );
    wait_analytics_refreshed(&pipeline).await;
    let client = pipeline.clickhouse.client();
    // Thresholds small enough for a small world: the views read them.
    client
        .query(
            "INSERT INTO analytics_settings (name, value) VALUES \
             ('velocity_7d_cases', 2), ('serial_returner_min_units', 2)",
        )
        .execute()
        .await
        .expect("settings");
    let counts = |sql: &'static str| {
        let client = client.clone();
        async move {
            client
                .query(sql)
                .fetch_all::<KeyCount>()
                .await
                .unwrap_or_else(|error| panic!("{sql}: {error}"))
                .into_iter()
                .map(|row| (row.key, row.count))
                .collect::<BTreeMap<_, _>>()
        }
    };
    let map = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs
            .iter()
            .map(|(key, count)| ((*key).to_string(), *count))
            .collect()
    };

    // Kinds: G has no request; H is a warranty claim; the rest are returns.
    assert_eq!(
        counts("SELECT kind AS key, count() AS count FROM case_facts GROUP BY kind").await,
        map(&[("return", 7), ("unopened", 1), ("warranty", 1)])
    );

    // Data quality: one case of each kind the world holds.
    assert_eq!(
        counts("SELECT kind AS key, cases AS count FROM data_quality").await,
        map(&[
            ("case_without_request", 1),         // G
            ("duplicate_return_request", 1),     // B
            ("mixed_return_methods", 1),         // B: in store, then mail
            ("refund_before_received", 1),       // E
            ("refund_before_request", 1),        // J
            ("refund_on_rejected_case", 1),      // C
            ("return_on_unknown_order_line", 1), // F
        ])
    );

    // Refund times: A (4 days), B (5 days, from the first request), E (12 h); C is rejected and
    // J negative.
    let times: Vec<RefundTimeRow> = client
        .query("SELECT case_id, refund_micros FROM refund_times ORDER BY case_id")
        .fetch_all()
        .await
        .expect("refund_times");
    let times: Vec<(String, i64)> = times
        .into_iter()
        .map(|row| (row.case_id, row.refund_micros))
        .collect();
    assert_eq!(
        times,
        vec![
            ("A".to_string(), 4 * DAY),
            ("B".to_string(), 5 * DAY),
            ("E".to_string(), 12 * HOUR)
        ]
    );

    // Return steps by the first request's method (rejected C left out): MAIL A, E, J; IN_STORE
    // B; DROP_OFF F; UNKNOWN D. Receipt: A 3 d, E 1 d (p50 of two: the upper, 3 d); B 1 d;
    // F 2 d. Inspection: A 12 h, B 5 h. Receipt to refund: A 1 d, B 4 d; E negative.
    let steps: Vec<StepsRow> = client
        .query(
            "SELECT method, count() AS cases, \
             count(receipt_micros) AS received, quantileExactOrNull(0.5)(receipt_micros) / 3.6e9 AS receipt_p50, \
             count(inspection_micros) AS inspected, quantileExactOrNull(0.5)(inspection_micros) / 3.6e9 AS inspection_p50, \
             count(refund_micros) AS refunded, quantileExactOrNull(0.5)(refund_micros) / 3.6e9 AS refund_p50 \
             FROM return_steps GROUP BY method ORDER BY method",
        )
        .fetch_all()
        .await
        .expect("return_steps");
    let steps: Vec<Steps> = steps
        .into_iter()
        .map(|row| {
            (
                row.method,
                row.cases,
                row.received,
                row.receipt_p50,
                row.inspected,
                row.inspection_p50,
                row.refunded,
                row.refund_p50,
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            ("DROP_OFF".into(), 1, 1, Some(48.0), 0, None, 0, None),
            (
                "IN_STORE".into(),
                1,
                1,
                Some(24.0),
                1,
                Some(5.0),
                1,
                Some(96.0)
            ),
            (
                "MAIL".into(),
                3,
                2,
                Some(72.0),
                1,
                Some(12.0),
                1,
                Some(24.0)
            ),
            ("UNKNOWN".into(), 1, 0, None, 0, None, 0, None),
        ]
    );
    let operations: u64 = client
        .query("SELECT toUInt64(sum(cases)) FROM return_operations")
        .fetch_one()
        .await
        .expect("return_operations");
    assert_eq!(operations, 6);

    // Dispositions: A restocked (apparel), B refurbished (shoes).
    let dispositions: Vec<DispositionRow> = client
        .query("SELECT category, disposition, cases, share FROM dispositions ORDER BY category")
        .fetch_all()
        .await
        .expect("dispositions");
    let dispositions: Vec<(String, String, u64, f64)> = dispositions
        .into_iter()
        .map(|row| (row.category, row.disposition, row.cases, row.share))
        .collect();
    assert_eq!(
        dispositions,
        vec![
            ("apparel".into(), "RESTOCK".into(), 1, 1.0),
            ("shoes".into(), "REFURBISH".into(), 1, 1.0)
        ]
    );

    // Money by category (all EUR): refunds A 2,000; C 3,000 + G 100 + J 3,000 (home); E 1,000;
    // store credit B 5,495; exchange D 10,000 (the line's price, 1 unit).
    let money: Vec<ValueRow> = client
        .query(
            "SELECT category, toInt64(sum(refunded_minor)) AS refunded, \
             toInt64(sum(store_credit_minor)) AS store_credit, toInt64(sum(exchange_value_minor)) AS exchanged, \
             sum(retained_minor) / sum(returned_value_minor) AS retained_share \
             FROM return_value WHERE currency = 'EUR' GROUP BY category ORDER BY category",
        )
        .fetch_all()
        .await
        .expect("return_value");
    let money: Vec<(String, i64, i64, i64, f64)> = money
        .into_iter()
        .map(|row| {
            (
                row.category,
                row.refunded,
                row.store_credit,
                row.exchanged,
                row.retained_share,
            )
        })
        .collect();
    assert_eq!(
        money,
        vec![
            ("apparel".into(), 2_000, 0, 0, 0.0),
            ("electronics".into(), 1_000, 0, 10_000, 10_000.0 / 11_000.0),
            ("home".into(), 6_100, 0, 0, 0.0),
            ("shoes".into(), 0, 5_495, 0, 1.0),
        ]
    );

    // Risk flags, with velocity 2 in 7 days and serial returners from 2 units bought:
    // B above cost (5,495 > 5,000); C after the window; D and E return 2 of 1 sold; A and B
    // (same hour) and E (a day after D) reach 2 cases in 7 days; cu-1 returned 3 of 4 units
    // (A, B) and cu-3 2 of 2 (D, E). C is rejected, F's customer bought nothing.
    let flags: Vec<CaseFlag> = client
        .query("SELECT case_id, flag FROM flagged_cases ORDER BY flag, case_id")
        .fetch_all()
        .await
        .expect("flagged_cases");
    let flags: Vec<(String, String)> = flags
        .into_iter()
        .map(|row| (row.flag, row.case_id))
        .collect();
    let expected_flags: Vec<(String, String)> = [
        ("quantity_above_sold", "D"),
        ("quantity_above_sold", "E"),
        ("refund_above_line_cost", "B"),
        ("requested_after_window", "C"),
        ("return_velocity", "A"),
        ("return_velocity", "B"),
        ("return_velocity", "E"),
        ("serial_returner", "A"),
        ("serial_returner", "B"),
        ("serial_returner", "D"),
        ("serial_returner", "E"),
    ]
    .iter()
    .map(|(flag, case)| ((*flag).to_string(), (*case).to_string()))
    .collect();
    assert_eq!(flags, expected_flags);
    assert_eq!(
        counts("SELECT flag AS key, toUInt64(sum(cases)) AS count FROM risk_flags GROUP BY flag")
            .await,
        map(&[
            ("quantity_above_sold", 2),
            ("refund_above_line_cost", 1),
            ("requested_after_window", 1),
            ("return_velocity", 3),
            ("serial_returner", 4),
        ])
    );

    // Refund SLA (72 h): received B (day 6, late), E (day 7, refunded before: within), F (day
    // 7, open for months: past the target), A (day 8, within).
    let sla: Vec<SlaRow> = client
        .query(
            "SELECT toUInt16(day - toDate(fromUnixTimestamp64Micro(?))) AS day, received_cases, \
             refunded_within_target, refunded_late, open_past_target, open_within_target \
             FROM refund_sla ORDER BY day",
        )
        .bind(world.base)
        .fetch_all()
        .await
        .expect("refund_sla");
    let sla: Vec<(u16, u64, u64, u64, u64, u64)> = sla
        .into_iter()
        .map(|row| {
            (
                row.day,
                row.received_cases,
                row.refunded_within_target,
                row.refunded_late,
                row.open_past_target,
                row.open_within_target,
            )
        })
        .collect();
    assert_eq!(
        sla,
        vec![(6, 1, 0, 1, 0, 0), (7, 2, 1, 0, 1, 0), (8, 1, 1, 0, 0, 0)]
    );

    // Repeat purchase (the newest order is o-5, day 100). cu-1: first resolved A (day 9,
    // refund, web), ordered again on day 20. cu-3: first resolved E (day 6.5, refund, app);
    // its next order (day 100) is after 90 days. cu-2: C rejected on day 41, no order after;
    // 90 days from then are not covered. cu-4 has no case: from its first order (day 10) it
    // ordered again on day 30. cu-9 has only an open case: in no cohort.
    let repeat: Vec<RepeatRow> = client
        .query(
            "SELECT customer_segment, channel, outcome, customers, eligible_30d, repeated_30d, \
             eligible_90d, repeated_90d, eligible_365d, repeated_365d, rate_30d \
             FROM repeat_purchase ORDER BY outcome, customer_segment",
        )
        .fetch_all()
        .await
        .expect("repeat_purchase");
    let repeat: Vec<(String, String, String, [u64; 7], f64)> = repeat
        .into_iter()
        .map(|row| {
            (
                row.customer_segment,
                row.channel,
                row.outcome,
                [
                    row.customers,
                    row.eligible_30d,
                    row.repeated_30d,
                    row.eligible_90d,
                    row.repeated_90d,
                    row.eligible_365d,
                    row.repeated_365d,
                ],
                row.rate_30d,
            )
        })
        .collect();
    assert_eq!(
        repeat,
        vec![
            (
                "new".into(),
                "WEB".into(),
                "no_case".into(),
                [1, 1, 1, 1, 1, 0, 0],
                1.0
            ),
            (
                "regular".into(),
                "MOBILE_APP".into(),
                "refund".into(),
                [1, 1, 0, 1, 0, 0, 0],
                0.0
            ),
            (
                "vip".into(),
                "WEB".into(),
                "refund".into(),
                [1, 1, 1, 1, 1, 0, 0],
                1.0
            ),
            (
                "regular".into(),
                "STORE".into(),
                "rejected".into(),
                [1, 1, 0, 0, 0, 0, 0],
                0.0
            ),
        ]
    );

    // The stream's refund SLA: F is open and past the target; A and E met it, B missed it.
    // The analytics gauges show what data_quality and risk_flags hold.
    let exposition = poll_until(
        "the sink's analytics gauges",
        Duration::from_secs(30),
        || async {
            let exposition = metrics(&sink).await;
            (value(
                &exposition,
                "boomerang_sink_refund_sla_breached_open_cases",
                &[],
            ) == 1
                && value(
                    &exposition,
                    "boomerang_risk_flagged_cases",
                    &["flag=\"serial_returner\""],
                ) == 4)
                .then_some(exposition)
        },
    )
    .await;
    assert_eq!(
        value(&exposition, "boomerang_sink_refund_sla_open_cases", &[]),
        1
    );
    assert_eq!(
        value(
            &exposition,
            "boomerang_sink_refunds_total",
            &["sla=\"met\""]
        ),
        2
    );
    assert_eq!(
        value(
            &exposition,
            "boomerang_sink_refunds_total",
            &["sla=\"missed\""]
        ),
        1
    );
    assert_eq!(value(&exposition, "boomerang_data_quality_cases", &[]), 7);
    assert_eq!(
        value(&exposition, "boomerang_sink_refund_sla_target_seconds", &[]),
        72 * 3_600
    );

    // A restarted sink reads nothing new (all committed), yet follows F again: its partition's
    // open cases come back from ClickHouse on assignment.
    drop(sink);
    let sink = pipeline.start(&["--refund-sla-horizon-days", "365"], &[]);
    let exposition = poll_until(
        "F open again after a restart",
        Duration::from_secs(60),
        || async {
            let exposition = metrics(&sink).await;
            (value(
                &exposition,
                "boomerang_sink_refund_sla_breached_open_cases",
                &[],
            ) == 1)
                .then_some(exposition)
        },
    )
    .await;
    assert_eq!(
        value(&exposition, "boomerang_sink_refund_sla_open_cases", &[]),
        1
    );
    assert_eq!(
        value(&exposition, "boomerang_received_events_total", &[]),
        0
    );
}
