//! The analytics stores stay exact: refreshed bit by bit while duplicates, replays, late and
//! changed reference data, tombstones, conflicting events and new cases arrive, every
//! analytics object answers exactly what a refresh from scratch of the same tables answers —
//! and a replay alone changes nothing. Against the local stack's ClickHouse.

use std::collections::BTreeMap;
use std::time::Duration;

use boomerang_clickhouse::ClickhouseArgs;
use boomerang_clickhouse::analytics_refresh::{RefreshMetrics, Refresher};
use boomerang_clickhouse::migrations;
use boomerang_testkit::{Stack, unique_name};

/// Every analytics object; `refund_sla` depends on the clock and is compared separately.
const OBJECTS: [&str; 18] = [
    "return_rates",
    "return_reasons",
    "refund_time_quantiles",
    "exchange_conversion",
    "warranty_outcomes",
    "warranty_claims",
    "return_cases",
    "refund_times",
    "return_value",
    "dispositions",
    "risk_flags",
    "flagged_cases",
    "data_quality",
    "data_quality_cases",
    "repeat_purchase",
    "return_operations",
    "return_steps",
    "case_facts",
];

async fn database(prefix: &str) -> ClickhouseArgs {
    let args = ClickhouseArgs::for_url(
        &Stack::from_env().clickhouse_url,
        &unique_name(prefix).replace('-', "_"),
    );
    migrations::apply(&args, None).await.expect("migrate");
    args
}

async fn execute(client: &clickhouse::Client, sql: &str) {
    client
        .query(sql)
        .execute()
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

/// Refreshes until nothing marked is left; how many customers that took.
async fn refresh(refresher: &mut Refresher) -> usize {
    let mut customers = 0;
    loop {
        let refreshed = refresher.refresh_once().await.expect("refresh");
        customers += refreshed;
        if refreshed == 0 {
            return customers;
        }
    }
}

fn refresher_for(args: &ClickhouseArgs) -> Refresher {
    Refresher::new(
        args.client(),
        Duration::ZERO,
        RefreshMetrics::new().expect("metrics"),
    )
}

/// Each object's whole answer: its row count and a hash of every row, every column as text.
async fn answers(client: &clickhouse::Client) -> BTreeMap<&'static str, (u64, u64)> {
    let mut answers = BTreeMap::new();
    for object in OBJECTS {
        let answer: (u64, u64) = client
            .query(&format!(
                "SELECT count(), sum(cityHash64(arrayMap(x -> toString(x), [*]))) FROM (SELECT * FROM {object})"
            ))
            .fetch_one()
            .await
            .unwrap_or_else(|error| panic!("{object}: {error}"));
        answers.insert(object, answer);
    }
    answers
}

/// What goes wrong in real feeds, each on a slice of the world chosen by hash (filtered in a
/// subquery where the SELECT replaces the filtered column: its alias would shadow it).
const CHANGES: [&str; 7] = [
    // Events delivered again, some with a later enrichment that found another category.
    "INSERT INTO post_purchase_events SELECT * REPLACE (enriched_at + INTERVAL 1 HOUR AS enriched_at, \
     if(cityHash64(idempotency_key) % 2 = 0, 'shoes', line_category) AS line_category, \
     source_offset + 100000000 AS source_offset) \
     FROM post_purchase_events WHERE cityHash64(idempotency_key) % 17 = 0",
    // Orders changed: moved a few days, more units, some deleted, some to another channel.
    "INSERT INTO orders SELECT * EXCEPT (version) REPLACE ( \
     if(cityHash64(order_id) % 5 = 0, placed_at + INTERVAL 3 DAY, placed_at) AS placed_at, \
     arrayMap(q -> q + 1, line_quantities) AS line_quantities, \
     if(cityHash64(order_id) % 7 = 0, 1, 0) AS is_deleted, \
     if(cityHash64(order_id) % 3 = 0, 'STORE', channel) AS channel, \
     source_offset + 100000000 AS source_offset) \
     FROM orders WHERE cityHash64(order_id) % 11 = 0",
    // Customers changed segment, some deleted.
    "INSERT INTO customers SELECT * EXCEPT (version) REPLACE ( \
     if(cityHash64(customer_key) % 2 = 0, 'vip', 'new') AS segment, \
     if(cityHash64(customer_key) % 9 = 0, 1, 0) AS is_deleted, \
     source_offset + 100000000 AS source_offset) \
     FROM customers WHERE cityHash64(customer_key) % 7 = 0",
    // A second request under another key, by another method, before the receipt.
    "INSERT INTO post_purchase_events SELECT * REPLACE (concat(idempotency_key, '-again') AS idempotency_key, \
     'RETURN_REQUESTED' AS event_type, occurred_at - INTERVAL 2 HOUR AS occurred_at, \
     'DROP_OFF' AS method, source_offset + 300000000 AS source_offset) \
     FROM (SELECT * FROM post_purchase_events \
           WHERE event_type = 'RETURN_RECEIVED' AND cityHash64(idempotency_key) % 5 = 0)",
    // Refunds of rejected cases, dated a month early by a producer's clock.
    "INSERT INTO post_purchase_events SELECT * REPLACE (concat(idempotency_key, '-late') AS idempotency_key, \
     'REFUND_ISSUED' AS event_type, occurred_at - INTERVAL 30 DAY AS occurred_at, \
     toNullable(toInt64(99999)) AS amount_minor, toNullable('EUR') AS amount_currency, \
     source_offset + 400000000 AS source_offset) \
     FROM (SELECT * FROM post_purchase_events \
           WHERE event_type = 'RETURN_REJECTED' AND cityHash64(idempotency_key) % 2 = 0)",
    // New cases on orders that never arrived.
    "INSERT INTO post_purchase_events SELECT * REPLACE (concat('new-', idempotency_key) AS idempotency_key, \
     concat('new-', case_id) AS case_id, concat('ord-x', order_id) AS order_id, \
     source_offset + 500000000 AS source_offset) \
     FROM post_purchase_events WHERE cityHash64(case_id) % 23 = 0",
    // Orders that arrive late for those cases' neighbours: new orders of existing customers.
    "INSERT INTO orders SELECT * EXCEPT (version) REPLACE (concat(order_id, '-late') AS order_id, \
     placed_at + INTERVAL 40 DAY AS placed_at, source_offset + 600000000 AS source_offset) \
     FROM orders WHERE cityHash64(order_id) % 13 = 0",
];

#[tokio::test]
async fn refreshed_bit_by_bit_the_stores_answer_what_a_refresh_from_scratch_answers() {
    let live = database("it_stores").await;
    let client = live.client();
    let world = include_str!("../../benches/sql/analytics_world.sql");
    for statement in migrations::statements(world) {
        client
            .query(&statement)
            .param("customers", 300u64)
            .param("orders", 1_650u64)
            .param("cases", 500u64)
            .execute()
            .await
            .expect("fill");
    }
    let mut refresher = refresher_for(&live);
    assert_eq!(refresh(&mut refresher).await, 300, "every customer, once");
    let first = answers(&client).await;
    assert!(first["return_rates"].0 > 0 && first["flagged_cases"].0 > 0);

    // A replay of every event and every order at new offsets: nothing changes.
    execute(
        &client,
        "INSERT INTO post_purchase_events SELECT * REPLACE (source_offset + 900000000 AS source_offset) \
         FROM post_purchase_events",
    )
    .await;
    execute(
        &client,
        "INSERT INTO customers SELECT * EXCEPT (version) FROM customers",
    )
    .await;
    assert!(refresh(&mut refresher).await > 0, "the replay marked them");
    assert_eq!(answers(&client).await, first, "a replay changes nothing");

    // The feeds go wrong, one after the other, refreshed in between.
    for change in CHANGES {
        execute(&client, change).await;
        refresh(&mut refresher).await;
    }
    let incremental = answers(&client).await;
    assert_ne!(incremental, first, "the changes changed figures");
    let kinds: Vec<String> = client
        .query("SELECT kind FROM data_quality ORDER BY kind")
        .fetch_all()
        .await
        .expect("data_quality");
    assert!(kinds.len() >= 4, "{kinds:?}");

    // The same tables, refreshed from scratch.
    let scratch = database("it_stores_scratch").await;
    let scratch_client = scratch.client();
    for table in ["post_purchase_events", "orders", "customers"] {
        execute(
            &scratch_client,
            &format!(
                "INSERT INTO {table} SELECT * {except} FROM {}.{table}",
                live.database,
                except = if table == "post_purchase_events" {
                    ""
                } else {
                    "EXCEPT (version)"
                }
            ),
        )
        .await;
    }
    refresh(&mut refresher_for(&scratch)).await;
    assert_eq!(answers(&scratch_client).await, incremental);
    for args in [&live, &scratch] {
        execute(
            &args.client(),
            &format!("DROP DATABASE IF EXISTS {}", args.database),
        )
        .await;
    }
}
