//! Harness: how fast the analytics objects answer on a large history, and what keeping their
//! stores fresh costs. Fills a fresh database on the local ClickHouse (`deploy/local/stack.sh
//! up`) with a world generated inside ClickHouse (`benches/sql/analytics_world.sql`: N events in
//! about N/6 cases, N × 0.55 orders, N/10 customers), refreshes the analytics stores from
//! scratch (as after an upgrade or a backfill), then times, best of three:
//!
//! - each object's typical query (what the report, the dashboard and the README run), and
//!   `SELECT *` of each object (its whole answer, written nowhere);
//! - an incremental refresh after 1,000 new events of existing customers (steady state).
//!
//! cargo bench -p boomerang-benches --bench analytics                       # 10M events
//! BOOMERANG_BENCH_EVENTS=1000000 cargo bench -p boomerang-benches --bench analytics

use std::time::{Duration, Instant};

use boomerang_benches::harness::env_number;
use boomerang_clickhouse::ClickhouseArgs;
use boomerang_clickhouse::analytics_refresh::{RefreshMetrics, Refresher};
use boomerang_clickhouse::migrations;
use boomerang_testkit::{Stack, unique_name};

/// Typical queries: grouped as analysts read them.
const TYPICAL: [(&str, &str); 14] = [
    (
        "return_rates",
        "SELECT category, sum(units_returned) / sum(units_sold) FROM return_rates GROUP BY category",
    ),
    (
        "return_reasons",
        "SELECT category, reason, cases, share FROM return_reasons",
    ),
    (
        "refund_time_quantiles",
        "SELECT * FROM refund_time_quantiles ORDER BY day DESC LIMIT 30",
    ),
    (
        "exchange_conversion",
        "SELECT channel, sum(exchanged_cases) / sum(cases) FROM exchange_conversion GROUP BY channel",
    ),
    (
        "warranty_outcomes",
        "SELECT category, sum(approved_claims) / sum(decided_claims) FROM warranty_outcomes GROUP BY category",
    ),
    (
        "repeat_purchase",
        "SELECT outcome, sum(repeated_30d) / sum(eligible_30d) FROM repeat_purchase GROUP BY outcome",
    ),
    (
        "return_value",
        "SELECT currency, sum(retained_minor) / sum(returned_value_minor) FROM return_value GROUP BY currency",
    ),
    (
        "return_steps",
        "SELECT method, quantileExact(0.5)(receipt_micros) FROM return_steps GROUP BY method",
    ),
    (
        "return_operations",
        "SELECT * FROM return_operations ORDER BY day DESC LIMIT 30",
    ),
    ("dispositions", "SELECT * FROM dispositions"),
    (
        "flagged_cases",
        "SELECT * FROM flagged_cases WHERE flag = 'serial_returner' ORDER BY day DESC LIMIT 50",
    ),
    (
        "risk_flags",
        "SELECT flag, sum(cases) FROM risk_flags GROUP BY flag",
    ),
    (
        "refund_sla",
        "SELECT day, breach_rate FROM refund_sla ORDER BY day DESC LIMIT 14",
    ),
    ("data_quality", "SELECT kind, cases FROM data_quality"),
];

/// Best of three runs of `sql`, its result discarded.
async fn best_of_three(client: &clickhouse::Client, sql: &str) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        client
            .query(&format!("{sql} FORMAT Null"))
            .execute()
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
        best = best.min(started.elapsed());
    }
    best
}

fn main() {
    let events = env_number("BOOMERANG_BENCH_EVENTS", 10_000_000);
    let cases = events / 6;
    let orders = events * 55 / 100;
    let customers = (events / 10).max(1);
    let stack = Stack::from_env();
    let name = unique_name("bench-analytics").replace('-', "_");
    let clickhouse = ClickhouseArgs::for_url(&stack.clickhouse_url, &name);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        migrations::apply(&clickhouse, None).await.expect("migrate");
        let client = clickhouse.client();
        let started = Instant::now();
        let world = include_str!("../sql/analytics_world.sql");
        for statement in migrations::statements(world) {
            client
                .query(&statement)
                .param("customers", customers)
                .param("orders", orders)
                .param("cases", cases)
                .execute()
                .await
                .expect("fill");
        }
        let rows: u64 = client
            .query("SELECT count() FROM post_purchase_events")
            .fetch_one()
            .await
            .expect("count");
        println!(
            "filled {rows} events ({cases} cases), {orders} orders, {customers} customers in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        let mut refresher = Refresher::new(
            client.clone(),
            Duration::ZERO,
            RefreshMetrics::new().expect("metrics"),
        );
        let started = Instant::now();
        let mut refreshed = 0;
        loop {
            let customers = refresher.refresh_once().await.expect("refresh");
            refreshed += customers;
            if customers == 0 {
                break;
            }
        }
        println!(
            "full refresh of the stores: {refreshed} customers in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        println!("\n{:<24} {:>12} {:>12}", "object", "typical", "SELECT *");
        for (object, typical) in TYPICAL {
            let typical = best_of_three(&client, typical).await;
            let whole = best_of_three(&client, &format!("SELECT * FROM {object}")).await;
            println!(
                "{object:<24} {:>10.3} s {:>10.3} s",
                typical.as_secs_f64(),
                whole.as_secs_f64()
            );
        }

        // Steady state: 1,000 new events (refunds of existing cases), then one refresh.
        let mut incremental = Duration::MAX;
        let mut customers_refreshed = 0;
        for round in 0..3u64 {
            client
                .query(
                    "INSERT INTO post_purchase_events SELECT * REPLACE ( \
                     concat(idempotency_key, '-more-', toString(?)) AS idempotency_key, \
                     source_offset + 1000000000 * (? + 1) AS source_offset) \
                     FROM post_purchase_events WHERE event_type = 'RETURN_RECEIVED' LIMIT 1000",
                )
                .bind(round)
                .bind(round)
                .execute()
                .await
                .expect("more events");
            let started = Instant::now();
            customers_refreshed = refresher.refresh_once().await.expect("refresh");
            incremental = incremental.min(started.elapsed());
        }
        println!(
            "\nincremental refresh after 1,000 new events ({customers_refreshed} customers): {:.3} s (best of three)",
            incremental.as_secs_f64()
        );
        client
            .query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute()
            .await
            .expect("drop the benchmark database");
    });
}
