//! Harness: how long the sink takes to erase one customer among many events. Fills a fresh
//! database on the local ClickHouse (`deploy/local/stack.sh up`) with N events (generated inside
//! ClickHouse: 50 per customer, one order per 5 events), N/5 orders and N/50 customers, then
//! times one request's `first` pass (find, copy with tokens, delete, per table, and the audit
//! row) and its `settled` pass (nothing left to find), with the sink's own code; then twenty
//! requests applied together, as the sink applies the requests it reads at once.
//!
//! cargo bench -p boomerang-benches --bench erasure                     # 10M events
//! BOOMERANG_BENCH_EVENTS=1000000 cargo bench -p boomerang-benches --bench erasure

use std::time::Instant;

use boomerang_benches::harness::env_number;
use boomerang_clickhouse::ClickhouseArgs;
use boomerang_clickhouse::migrations;
use boomerang_runtime::pseudonym::Pseudonymiser;
use boomerang_schemas::{ErasureRequest, TimestampMicros};
use boomerang_sink::erase::{Applier, Pass};
use boomerang_testkit::{Stack, unique_name};

const PSEUDONYM_KEY: &str = "benchmark-pseudonym-key";
/// The customer erased alone: one of the many; the next [`BATCH`] are erased together.
const ERASED: u64 = 4_321;
const BATCH: u64 = 20;

async fn fill(client: &clickhouse::Client, events: u64, erased_keys: &[String]) {
    let customers = (events / 50).max(ERASED + BATCH + 1);
    let orders = (events / 5).max(1);
    // Every customer key is a pseudonym's shape; the erased customers' are theirs.
    let customer_key = |number: &str| {
        format!(
            "if({number} % {customers} BETWEEN {ERASED} AND {last}, \
             {{erased:Array(String)}}[{number} % {customers} - {ERASED} + 1], \
             concat('p_', lower(hex(substring(SHA256(toString({number} % {customers})), 1, 16)))))",
            last = ERASED + BATCH,
        )
    };
    let statements = [
        format!(
            "INSERT INTO post_purchase_events (idempotency_key, event_id, event_type, case_id, \
             order_id, order_line_id, customer_key, sku, quantity, reason, amount_minor, \
             amount_currency, method, channel, outcome, occurred_at, source_system, \
             replacement_sku, warranty_resolution, disposition, customer_missing, order_missing, \
             order_line_missing, customer_pseudonymised, customer_segment, customer_region, \
             order_channel, order_placed_at, order_delivered_at, line_category, \
             line_unit_price_minor, line_currency, days_since_delivery, within_return_window, \
             enriched_at, source_topic, source_partition, source_offset) \
             SELECT concat('key-', toString(number)), concat('ev-', toString(number)), \
             ['RETURN_REQUESTED', 'RETURN_RECEIVED', 'REFUND_ISSUED'][number % 3 + 1], \
             concat('case-', toString(intDiv(number, 3))), concat('o-', toString(intDiv(number, 5))), \
             concat('o-', toString(intDiv(number, 5)), '/1'), {key}, \
             concat('SKU-', toString(number % 997)), 1, 'TOO_SMALL', \
             if(number % 3 = 2, 2999, NULL), if(number % 3 = 2, 'EUR', NULL), 'MAIL', 'WEB', \
             'REFUNDED', toDateTime64('2026-01-01 00:00:00', 6, 'UTC') + toIntervalSecond(number * 2), \
             'bench', NULL, NULL, NULL, false, false, false, false, ['vip', 'regular', 'new'][number % 3 + 1], \
             'emea', 'WEB', NULL, NULL, 'apparel', 2999, 'EUR', 3, true, now64(6), 'bench', \
             toInt32(number % 6), toInt64(number) \
             FROM numbers({events})",
            key = customer_key("intDiv(number, 50)"),
        ),
        format!(
            "INSERT INTO orders (order_id, customer_key, channel, currency, placed_at, \
             delivered_at, updated_at, line_ids, line_skus, line_categories, line_quantities, \
             line_unit_prices_minor, is_deleted, source_topic, source_partition, source_offset) \
             SELECT concat('o-', toString(number)), {key}, 'WEB', 'EUR', \
             toDateTime64('2026-01-01 00:00:00', 6, 'UTC') + toIntervalSecond(number * 10), NULL, \
             toDateTime64('2026-01-01 00:00:00', 6, 'UTC'), [concat('o-', toString(number), '/1')], \
             ['SKU-1'], ['apparel'], [1], [2999], 0, 'bench', 0, toInt64(number) \
             FROM numbers({orders})",
            key = customer_key("intDiv(number, 10)"),
        ),
        format!(
            "INSERT INTO customers (customer_key, segment, region, country, analytics_consent, \
             updated_at, is_deleted, source_topic, source_partition, source_offset) \
             SELECT {key}, 'vip', 'emea', 'GB', true, toDateTime64('2026-01-01 00:00:00', 6, 'UTC'), \
             0, 'bench', 0, toInt64(number) FROM numbers({customers})",
            key = customer_key("number"),
        ),
    ];
    for statement in statements {
        client
            .query(&statement)
            .param("erased", erased_keys)
            .execute()
            .await
            .expect("fill");
    }
}

fn main() {
    let events = env_number("BOOMERANG_BENCH_EVENTS", 10_000_000);
    let stack = Stack::from_env();
    let name = unique_name("bench-erasure").replace('-', "_");
    let clickhouse = ClickhouseArgs::for_url(&stack.clickhouse_url, &name);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        migrations::apply(&clickhouse, None).await.expect("migrate");
        let client = clickhouse.client();
        let pseudonymiser = Pseudonymiser::new(PSEUDONYM_KEY.as_bytes()).expect("key");
        let customer_ids: Vec<String> = (ERASED..=ERASED + BATCH)
            .map(|n| format!("cu-{n}"))
            .collect();
        let keys: Vec<String> = customer_ids
            .iter()
            .map(|id| pseudonymiser.pseudonym(id))
            .collect();
        let started = Instant::now();
        fill(&client, events, &keys).await;
        eprintln!(
            "filled {events} events, {} orders, {} customers in {:.1} s",
            events / 5,
            (events / 50).max(ERASED + BATCH + 1),
            started.elapsed().as_secs_f64()
        );
        let applier = Applier::new(client.clone(), pseudonymiser);
        let request_for = |customer_id: &String| ErasureRequest {
            request_id: format!("er-bench-{customer_id}"),
            customer_id: customer_id.clone(),
            requested_at: TimestampMicros::now(),
            requested_by: "bench".into(),
            anonymisation_salt: "0123456789abcdef0123456789abcdef".into(),
        };
        let request = request_for(&customer_ids[0]);
        for pass in [Pass::First, Pass::Settled] {
            let started = Instant::now();
            let erased = applier.apply(&request, pass).await.expect("apply");
            println!(
                "erasure {:<8} {:>7.2} s   events {:>3}, orders {:>3}, customers {} rows anonymised ({events} events in the table)",
                pass.as_str(),
                started.elapsed().as_secs_f64(),
                erased.events,
                erased.orders,
                erased.customers
            );
        }
        let batch: Vec<ErasureRequest> = customer_ids[1..].iter().map(request_for).collect();
        let batch: Vec<&ErasureRequest> = batch.iter().collect();
        for pass in [Pass::First, Pass::Settled] {
            let started = Instant::now();
            let erased = applier.apply_all(&batch, pass).await.expect("apply");
            println!(
                "erasure {:<8} {:>7.2} s   {} requests together: events {}, orders {}, customers {} rows anonymised",
                pass.as_str(),
                started.elapsed().as_secs_f64(),
                batch.len(),
                erased.iter().map(|e| e.events).sum::<u64>(),
                erased.iter().map(|e| e.orders).sum::<u64>(),
                erased.iter().map(|e| e.customers).sum::<u64>(),
            );
        }
        let total: u64 = client
            .query("SELECT count() FROM post_purchase_events")
            .fetch_one()
            .await
            .expect("count");
        assert_eq!(total, events, "one anonymised row per erased row");
        client
            .query(&format!("DROP DATABASE {name}"))
            .execute()
            .await
            .expect("drop");
    });
}
