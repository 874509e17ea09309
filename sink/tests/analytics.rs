//! Every analytics object returns what this test computes on its own from the same inputs:
//! return rates, refund-time quantiles, exchange conversion and warranty outcomes, with some
//! events delivered twice (they must be written once). And a row ClickHouse refuses is
//! dead-lettered while the rows around it are written.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use boomerang_schemas::{
    Channel, Customer, EnrichedPostPurchaseEvent, EventType, Order, OrderLine, ReturnMethod,
    TimestampMicros,
};
use boomerang_testkit::poll_until;
use boomerang_testkit::samples::customer;
use support::{
    Pipeline, enriched, metrics, value, wait_all_committed, wait_analytics_refreshed,
    wait_committed,
};

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;

/// A small deterministic random source (an LCG): the world is the same on every run.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % sides
    }
}

struct World {
    customers: Vec<Customer>,
    orders: Vec<Order>,
    events: Vec<EnrichedPostPurchaseEvent>,
}

fn day_of(micros: i64) -> String {
    let days = micros.div_euclid(DAY);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn world() -> World {
    let mut dice = Dice(42);
    let base = (TimestampMicros::now().as_unix_micros() / DAY - 30) * DAY;
    let segments = ["vip", "regular"];
    let customers: Vec<Customer> = (0..6)
        .map(|n| customer(&format!("cu-{n}"), segments[n % 2], n != 5))
        .collect();
    let channels = [Channel::Web, Channel::MobileApp, Channel::Store];
    let categories = ["apparel", "electronics", "home"];
    let mut orders = Vec::new();
    for n in 0..24usize {
        let placed = base + (n % 3) as i64 * DAY + 10 * HOUR;
        let lines = (0..1 + dice.roll(3) as usize)
            .map(|line| {
                let category = categories[(n + line) % 3];
                OrderLine {
                    order_line_id: format!("o-{n}/{}", line + 1),
                    sku: format!("SKU-{category}-{}", dice.roll(3)),
                    category: category.into(),
                    quantity: 1 + dice.roll(3) as i32,
                    unit_price_minor: 1_000 + dice.roll(10_000) as i64,
                }
            })
            .collect();
        orders.push(Order {
            order_id: format!("o-{n}"),
            customer_id: format!("cu-{}", n % 7), // cu-6 has no CRM record: segment unknown
            channel: channels[n % 3],
            currency: "EUR".into(),
            placed_at: TimestampMicros::from_unix_micros(placed),
            delivered_at: Some(TimestampMicros::from_unix_micros(placed + 2 * DAY)),
            lines,
            updated_at: TimestampMicros::from_unix_micros(placed),
        });
    }
    let methods = [ReturnMethod::Mail, ReturnMethod::InStore];
    let mut events = Vec::new();
    let mut case = 0;
    let event = |event_type: EventType, case_id: &str, order: &Order, line: &OrderLine, at: i64| {
        let line_number: u32 = line
            .order_line_id
            .rsplit('/')
            .next()
            .and_then(|number| number.parse().ok())
            .expect("line number");
        let mut enriched = enriched(
            event_type,
            case_id,
            &order.order_id,
            line_number,
            &order.customer_id,
            TimestampMicros::from_unix_micros(at),
        );
        enriched.event.quantity = line.quantity;
        enriched.event.sku = line.sku.clone();
        enriched.event.channel = order.channel;
        enriched.line_category = Some(line.category.clone());
        enriched
    };
    for order in &orders {
        for line in &order.lines {
            let start = order.placed_at.as_unix_micros()
                + (3 + dice.roll(5) as i64) * DAY
                + dice.roll(20) as i64 * HOUR;
            case += 1;
            let case_id = format!("case-{case}");
            match dice.roll(6) {
                // A return refunded (by money or store credit) hours or days later.
                0 | 1 => {
                    let mut requested =
                        event(EventType::ReturnRequested, &case_id, order, line, start);
                    requested.event.method = Some(methods[dice.roll(2) as usize]);
                    events.push(requested);
                    let refund = if dice.roll(2) == 0 {
                        EventType::RefundIssued
                    } else {
                        EventType::StoreCreditIssued
                    };
                    events.push(event(
                        refund,
                        &case_id,
                        order,
                        line,
                        start + (1 + dice.roll(120) as i64) * HOUR,
                    ));
                }
                // A return rejected: not a returned unit.
                2 => {
                    events.push(event(
                        EventType::ReturnRequested,
                        &case_id,
                        order,
                        line,
                        start,
                    ));
                    events.push(event(
                        EventType::ReturnRejected,
                        &case_id,
                        order,
                        line,
                        start + DAY,
                    ));
                }
                // A return that became an exchange, or an exchange cancelled.
                3 => {
                    events.push(event(
                        EventType::ReturnRequested,
                        &case_id,
                        order,
                        line,
                        start,
                    ));
                    events.push(event(
                        EventType::ExchangeRequested,
                        &case_id,
                        order,
                        line,
                        start + HOUR,
                    ));
                    if dice.roll(2) == 0 {
                        events.push(event(
                            EventType::ExchangeCancelled,
                            &case_id,
                            order,
                            line,
                            start + 2 * HOUR,
                        ));
                    }
                }
                // A warranty claim: approved and repaired, denied, or still open.
                4 => {
                    events.push(event(
                        EventType::WarrantyFiled,
                        &case_id,
                        order,
                        line,
                        start,
                    ));
                    match dice.roll(3) {
                        0 => {
                            events.push(event(
                                EventType::WarrantyApproved,
                                &case_id,
                                order,
                                line,
                                start + DAY,
                            ));
                            events.push(event(
                                EventType::WarrantyRepaired,
                                &case_id,
                                order,
                                line,
                                start + (5 + dice.roll(20) as i64) * DAY,
                            ));
                        }
                        1 => events.push(event(
                            EventType::WarrantyDenied,
                            &case_id,
                            order,
                            line,
                            start + 2 * DAY,
                        )),
                        _ => {}
                    }
                }
                _ => {} // kept
            }
        }
    }
    World {
        customers,
        orders,
        events,
    }
}

/// The order line an event is about.
fn line_of<'a>(
    world: &'a World,
    order_id: &str,
    line_id: &str,
) -> Option<(&'a Order, &'a OrderLine)> {
    let order = world
        .orders
        .iter()
        .find(|order| order.order_id == order_id)?;
    let line = order
        .lines
        .iter()
        .find(|line| line.order_line_id == line_id)?;
    Some((order, line))
}

fn cases(world: &World) -> BTreeMap<String, Vec<&EnrichedPostPurchaseEvent>> {
    let mut cases: BTreeMap<String, Vec<&EnrichedPostPurchaseEvent>> = BTreeMap::new();
    for event in &world.events {
        cases
            .entry(event.event.case_id.clone())
            .or_default()
            .push(event);
    }
    cases
}

fn has(events: &[&EnrichedPostPurchaseEvent], types: &[EventType]) -> bool {
    events
        .iter()
        .any(|event| types.contains(&event.event.event_type))
}

fn first_at(events: &[&EnrichedPostPurchaseEvent], types: &[EventType]) -> Option<i64> {
    events
        .iter()
        .filter(|event| types.contains(&event.event.event_type))
        .map(|event| event.event.occurred_at.as_unix_micros())
        .min()
}

/// quantileExact: the value at position floor(level * n) of the sorted values.
fn quantile_exact(sorted: &[i64], level: f64) -> f64 {
    let index = ((level * sorted.len() as f64).floor() as usize).min(sorted.len() - 1);
    sorted[index] as f64 / 1e6
}

type RateKey = (String, String, String, String, String);

/// Claims, approved, decided, resolution times in microseconds.
type Claims = (u64, u64, u64, Vec<i64>);

fn expected_return_rates(world: &World) -> BTreeMap<RateKey, (i64, i64)> {
    let segment_of = |customer_id: &str| {
        world
            .customers
            .iter()
            .find(|customer| customer.customer_id == customer_id)
            .map_or("unknown".to_string(), |customer| customer.segment.clone())
    };
    let key = |order: &Order, line: &OrderLine| -> RateKey {
        (
            day_of(order.placed_at.as_unix_micros()),
            line.sku.clone(),
            line.category.clone(),
            order.channel.symbol().to_string(),
            segment_of(&order.customer_id),
        )
    };
    let mut rates: BTreeMap<RateKey, (i64, i64)> = BTreeMap::new();
    for order in &world.orders {
        for line in &order.lines {
            rates.entry(key(order, line)).or_default().0 += i64::from(line.quantity);
        }
    }
    for events in cases(world).values() {
        if !has(events, &[EventType::ReturnRequested]) || has(events, &[EventType::ReturnRejected])
        {
            continue;
        }
        let requested = events
            .iter()
            .find(|event| event.event.event_type == EventType::ReturnRequested)
            .expect("requested");
        let (order, line) = line_of(
            world,
            &requested.event.order_id,
            &requested.event.order_line_id,
        )
        .expect("line");
        rates.entry(key(order, line)).or_default().1 += i64::from(requested.event.quantity);
    }
    rates
}

#[derive(Debug, PartialEq, serde::Deserialize, clickhouse::Row)]
struct RateRow {
    day: String,
    sku: String,
    category: String,
    channel: String,
    customer_segment: String,
    units_sold: i64,
    units_returned: i64,
    return_rate: f64,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct QuantileRow {
    day: String,
    channel: String,
    method: String,
    cases: u64,
    p50_seconds: f64,
    p90_seconds: f64,
    p99_seconds: f64,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct ConversionRow {
    day: String,
    channel: String,
    cases: u64,
    exchanged_cases: u64,
    conversion: f64,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct WarrantyRow {
    day: String,
    category: String,
    claims: u64,
    approved_claims: u64,
    decided_claims: u64,
    approval_rate: f64,
    resolved_claims: u64,
    resolution_p50_seconds: Option<f64>,
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn each_analytics_object_matches_an_independent_computation() {
    let pipeline = Pipeline::new().await;
    let world = world();
    for customer in &world.customers {
        pipeline.produce_customer(customer).await;
    }
    for order in &world.orders {
        pipeline.produce_order(order).await;
    }
    for event in &world.events {
        pipeline.produce_enriched(event).await;
    }
    // Upstream replays: a tenth of the events reach the sink twice, at other offsets.
    for event in world.events.iter().step_by(10) {
        pipeline.produce_enriched(event).await;
    }
    let duplicates = world.events.iter().step_by(10).count() as u64;
    let sink = pipeline.start(&[], &[]);
    wait_all_committed(&pipeline).await;
    // The second delivery of a duplicate is recognised by its idempotency key and not
    // written: one row per key, without FINAL as with it.
    assert_eq!(
        pipeline.count("post_purchase_events").await,
        world.events.len() as u64,
        "one row per idempotency key, without FINAL"
    );
    assert_eq!(
        pipeline.count("post_purchase_events FINAL").await,
        world.events.len() as u64,
        "one per idempotency key"
    );
    wait_analytics_refreshed(&pipeline).await;
    let client = pipeline.clickhouse.client();

    // Return rates, at their finest grain.
    let rows: Vec<RateRow> = client
        .query("SELECT toString(day) AS day, sku, category, channel, customer_segment, units_sold, units_returned, return_rate FROM return_rates ORDER BY day, sku, category, channel, customer_segment")
        .fetch_all()
        .await
        .expect("return_rates");
    let expected = expected_return_rates(&world);
    let actual: BTreeMap<RateKey, (i64, i64)> = rows
        .iter()
        .map(|row| {
            let rate = if row.units_sold == 0 {
                0.0
            } else {
                row.units_returned as f64 / row.units_sold as f64
            };
            assert!(close(row.return_rate, rate), "{row:?}");
            (
                (
                    row.day.clone(),
                    row.sku.clone(),
                    row.category.clone(),
                    row.channel.clone(),
                    row.customer_segment.clone(),
                ),
                (row.units_sold, row.units_returned),
            )
        })
        .collect();
    assert_eq!(actual, expected);
    assert!(
        expected.values().any(|(_, returned)| *returned > 0),
        "the world has returns"
    );
    assert!(
        expected.keys().any(|key| key.4 == "unknown"),
        "and a customer without a CRM record"
    );

    // Refund-time quantiles by request day, channel and method.
    let mut refund_times: BTreeMap<(String, String, String), Vec<i64>> = BTreeMap::new();
    for events in cases(&world).values() {
        let (Some(requested), Some(refunded)) = (
            first_at(events, &[EventType::ReturnRequested]),
            first_at(
                events,
                &[EventType::RefundIssued, EventType::StoreCreditIssued],
            ),
        ) else {
            continue;
        };
        let request = events
            .iter()
            .find(|event| event.event.event_type == EventType::ReturnRequested)
            .expect("request");
        let method = events
            .iter()
            .find_map(|event| event.event.method)
            .map_or("UNKNOWN", ReturnMethod::symbol);
        refund_times
            .entry((
                day_of(requested),
                request.event.channel.symbol().to_string(),
                method.to_string(),
            ))
            .or_default()
            .push(refunded - requested);
    }
    let rows: Vec<QuantileRow> = client
        .query("SELECT toString(day) AS day, channel, method, cases, p50_seconds, p90_seconds, p99_seconds FROM refund_time_quantiles")
        .fetch_all()
        .await
        .expect("refund_time_quantiles");
    assert_eq!(rows.len(), refund_times.len());
    for row in &rows {
        let mut micros =
            refund_times[&(row.day.clone(), row.channel.clone(), row.method.clone())].clone();
        micros.sort_unstable();
        assert_eq!(row.cases, micros.len() as u64, "{row:?}");
        assert!(
            close(row.p50_seconds, quantile_exact(&micros, 0.5)),
            "{row:?} {micros:?}"
        );
        assert!(
            close(row.p90_seconds, quantile_exact(&micros, 0.9)),
            "{row:?} {micros:?}"
        );
        assert!(
            close(row.p99_seconds, quantile_exact(&micros, 0.99)),
            "{row:?} {micros:?}"
        );
    }

    // Exchange conversion by the case's first day and channel.
    let mut conversion: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for events in cases(&world).values() {
        let relevant: Vec<&EnrichedPostPurchaseEvent> = events
            .iter()
            .copied()
            .filter(|event| {
                matches!(
                    event.event.event_type,
                    EventType::ReturnRequested
                        | EventType::ExchangeRequested
                        | EventType::ExchangeCancelled
                )
            })
            .collect();
        if !has(
            &relevant,
            &[EventType::ReturnRequested, EventType::ExchangeRequested],
        ) {
            continue;
        }
        let first = relevant
            .iter()
            .min_by_key(|event| event.event.occurred_at)
            .expect("first");
        let exchanged = has(&relevant, &[EventType::ExchangeRequested])
            && !has(&relevant, &[EventType::ExchangeCancelled]);
        let entry = conversion
            .entry((
                day_of(first.event.occurred_at.as_unix_micros()),
                first.event.channel.symbol().to_string(),
            ))
            .or_default();
        entry.0 += 1;
        entry.1 += u64::from(exchanged);
    }
    let rows: Vec<ConversionRow> = client
        .query("SELECT toString(day) AS day, channel, cases, exchanged_cases, conversion FROM exchange_conversion")
        .fetch_all()
        .await
        .expect("exchange_conversion");
    let actual: BTreeMap<(String, String), (u64, u64)> = rows
        .iter()
        .map(|row| {
            assert!(
                close(
                    row.conversion,
                    row.exchanged_cases as f64 / row.cases as f64
                ),
                "{row:?}"
            );
            (
                (row.day.clone(), row.channel.clone()),
                (row.cases, row.exchanged_cases),
            )
        })
        .collect();
    assert_eq!(actual, conversion);
    assert!(conversion.values().any(|(_, exchanged)| *exchanged > 0));

    // Warranty approval and resolution by filing day and category.
    // (day, category) → (claims, approved, decided, resolution times)
    let mut claims: BTreeMap<(String, String), Claims> = BTreeMap::new();
    for events in cases(&world).values() {
        let Some(filed) = first_at(events, &[EventType::WarrantyFiled]) else {
            continue;
        };
        let category = events[0]
            .line_category
            .clone()
            .unwrap_or_else(|| "unknown".into());
        let entry = claims.entry((day_of(filed), category)).or_default();
        entry.0 += 1;
        let approved = has(events, &[EventType::WarrantyApproved]);
        entry.1 += u64::from(approved);
        entry.2 += u64::from(approved || has(events, &[EventType::WarrantyDenied]));
        if let Some(resolved) = first_at(
            events,
            &[
                EventType::WarrantyRepaired,
                EventType::WarrantyReplaced,
                EventType::WarrantyResolved,
                EventType::WarrantyDenied,
            ],
        ) {
            entry.3.push(resolved - filed);
        }
    }
    let rows: Vec<WarrantyRow> = client
        .query("SELECT toString(day) AS day, category, claims, approved_claims, decided_claims, approval_rate, resolved_claims, resolution_p50_seconds FROM warranty_outcomes")
        .fetch_all()
        .await
        .expect("warranty_outcomes");
    assert_eq!(rows.len(), claims.len());
    for row in &rows {
        let (claimed, approved, decided, resolutions) =
            &claims[&(row.day.clone(), row.category.clone())];
        assert_eq!(
            (row.claims, row.approved_claims, row.decided_claims),
            (*claimed, *approved, *decided),
            "{row:?}"
        );
        let rate = if *decided == 0 {
            0.0
        } else {
            *approved as f64 / *decided as f64
        };
        assert!(close(row.approval_rate, rate), "{row:?}");
        assert_eq!(row.resolved_claims, resolutions.len() as u64);
        if !resolutions.is_empty() {
            let mut sorted = resolutions.clone();
            sorted.sort_unstable();
            assert!(
                close(
                    row.resolution_p50_seconds.unwrap_or(f64::NAN),
                    quantile_exact(&sorted, 0.5)
                ),
                "{row:?}"
            );
        }
    }

    // Conservation: every record consumed was written, or recognised as a duplicate.
    let exposition = metrics(&sink).await;
    let all = (world.customers.len() + world.orders.len() + world.events.len()) as u64 + duplicates;
    assert_eq!(
        value(&exposition, "boomerang_received_events_total", &[]),
        all
    );
    assert_eq!(
        value(
            &exposition,
            "boomerang_sent_events_total",
            &["topic=\"clickhouse\""]
        ),
        all - duplicates
    );
    assert_eq!(
        value(&exposition, "boomerang_deduplicated_events_total", &[]),
        duplicates
    );
    assert_eq!(
        value(&exposition, "boomerang_sink_duplicate_keys_total", &[]),
        duplicates
    );
    assert_eq!(
        value(&exposition, "boomerang_sink_rows_inserted_total", &[]),
        all - duplicates
    );
}

#[tokio::test]
async fn a_row_clickhouse_refuses_is_dead_lettered_and_its_neighbours_written() {
    let pipeline = Pipeline::new().await;
    let at = TimestampMicros::now();
    let good = |n: u32| {
        enriched(
            EventType::ReturnRequested,
            &format!("case-{n}"),
            "o-1",
            1,
            "cu-1",
            at,
        )
    };
    let mut refused = good(99);
    refused.event.quantity = 0; // the table's constraint refuses it
    for n in 0..10 {
        pipeline.produce_enriched(&good(n)).await;
    }
    pipeline.produce_enriched(&refused).await;
    for n in 10..20 {
        pipeline.produce_enriched(&good(n)).await;
    }
    pipeline.produce_raw_enriched("o-1", b"not avro").await;
    let sink = pipeline.start(&[], &[]);
    wait_committed(&pipeline, &pipeline.topics.enriched_events).await;
    assert_eq!(pipeline.count("post_purchase_events").await, 20);
    let dead_letters = poll_until("two dead letters", Duration::from_secs(30), || async {
        let dead_letters = pipeline.dead_letters();
        (dead_letters.len() >= 2).then_some(dead_letters)
    })
    .await;
    let kinds: BTreeSet<String> = dead_letters
        .iter()
        .filter_map(|record| record.header("boomerang.dlq.error_kind"))
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "rejected_by_clickhouse".to_string(),
            "bad_magic_byte".to_string()
        ])
    );
    let refused_letter = dead_letters
        .iter()
        .find(|record| {
            record.header("boomerang.dlq.error_kind").as_deref() == Some("rejected_by_clickhouse")
        })
        .expect("refused row");
    assert_eq!(
        refused_letter.header("boomerang.dlq.stage").as_deref(),
        Some("sink")
    );
    assert!(
        refused_letter
            .header("boomerang.dlq.error_message")
            .unwrap_or_default()
            .contains("VIOLATED_CONSTRAINT")
    );
    let exposition = metrics(&sink).await;
    assert_eq!(
        value(&exposition, "boomerang_dead_lettered_events_total", &[]),
        2
    );
    assert_eq!(
        value(&exposition, "boomerang_sink_rows_rejected_total", &[]),
        1
    );
    assert_eq!(
        value(&exposition, "boomerang_received_events_total", &[]),
        22
    );
    assert_eq!(value(&exposition, "boomerang_sent_events_total", &[]), 20);
}
