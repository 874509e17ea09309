//! `boomerang migrate`'s engine against the local stack's ClickHouse: applying twice is
//! harmless, the check sees pending migrations, and every analytics object answers.

use boomerang_clickhouse::ClickhouseArgs;
use boomerang_clickhouse::migrations::{self, MIGRATIONS, MigrationError};
use boomerang_testkit::{Stack, unique_name};

fn fresh_database() -> ClickhouseArgs {
    let database = unique_name("it_migrate").replace('-', "_");
    ClickhouseArgs::for_url(&Stack::from_env().clickhouse_url, &database)
}

#[tokio::test]
async fn applying_twice_is_harmless_and_the_check_follows() {
    let args = fresh_database();
    match migrations::check(&args).await {
        Err(MigrationError::Pending(pending)) => assert_eq!(pending.len(), MIGRATIONS.len()),
        other => panic!("expected every migration pending, got {other:?}"),
    }
    let first = migrations::apply(&args, None).await.expect("apply");
    assert_eq!(first.applied.len(), MIGRATIONS.len());
    let second = migrations::apply(&args, Some(365))
        .await
        .expect("apply again");
    assert!(second.applied.is_empty());
    assert_eq!(second.already.len(), MIGRATIONS.len());
    migrations::check(&args).await.expect("all applied");

    let client = args.client();
    let recorded: u64 = client
        .query("SELECT count() FROM schema_migrations")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!(recorded as usize, MIGRATIONS.len());
    let ttl: String = client
        .query("SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = 'post_purchase_events'")
        .fetch_one()
        .await
        .expect("table");
    assert!(ttl.contains("toIntervalDay(365)"), "{ttl}");
    // The sink inserts a row format: LowCardinality columns would make every insert cost
    // ClickHouse about 3.5 times the CPU (0003_plain_strings.sql).
    let dictionary_columns: Vec<String> = client
        .query(
            "SELECT concat(table, '.', name) FROM system.columns \
             WHERE database = currentDatabase() \
             AND table IN ('post_purchase_events', 'orders', 'customers') \
             AND type LIKE '%LowCardinality%'",
        )
        .fetch_all()
        .await
        .expect("columns");
    assert!(dictionary_columns.is_empty(), "{dictionary_columns:?}");
    for object in [
        "order_lines",
        "return_cases",
        "return_rates",
        "refund_times",
        "refund_time_quantiles",
        "exchange_conversion",
        "warranty_claims",
        "warranty_outcomes",
        "return_reasons",
        "case_facts",
        "data_quality_cases",
        "data_quality",
        "repeat_purchase",
        "return_value",
        "return_steps",
        "return_operations",
        "dispositions",
        "flagged_cases",
        "risk_flags",
        "refund_sla",
    ] {
        let rows: u64 = client
            .query(&format!("SELECT count() FROM {object}"))
            .fetch_one()
            .await
            .unwrap_or_else(|error| panic!("{object}: {error}"));
        assert_eq!(rows, 0, "{object} on empty tables");
    }
}

/// `--clickhouse-compression none`: inserts and answers travel uncompressed, and both work.
#[tokio::test]
async fn an_uncompressed_client_inserts_and_reads() {
    let mut args = fresh_database();
    args.compression = boomerang_clickhouse::args::Compression::None;
    migrations::apply(&args, None).await.expect("apply");
    let client = args.client();
    client
        .query("CREATE TABLE plain (n UInt64) ENGINE = MergeTree ORDER BY n")
        .execute()
        .await
        .expect("create");
    let mut insert = client.insert::<Plain>("plain").await.expect("insert");
    for n in 0..1000u64 {
        insert.write(&Plain { n }).await.expect("write");
    }
    insert.end().await.expect("end");
    let sum: u64 = client
        .query("SELECT sum(n) FROM plain")
        .fetch_one()
        .await
        .expect("sum");
    assert_eq!(sum, 999 * 1000 / 2);
}

#[derive(clickhouse::Row, serde::Serialize)]
struct Plain {
    n: u64,
}
