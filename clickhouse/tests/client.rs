//! Against the local stack's ClickHouse endpoint (chDB behind deploy/local/chfront), with the
//! `clickhouse` crate at its default settings: LZ4-compressed, streamed RowBinary inserts and
//! validated RowBinaryWithNamesAndTypes reads.

use boomerang_testkit::{Stack, unique_name};
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
struct ReturnRow {
    idempotency_key: String,
    quantity: u32,
    refund_minor: i64,
    version: u64,
}

fn client() -> Client {
    Client::default().with_url(Stack::from_env().clickhouse_url)
}

async fn replacing_table(client: &Client) -> String {
    let table = unique_name("it_returns").replace('-', "_");
    client
        .query(&format!(
            "CREATE TABLE {table} (idempotency_key String, quantity UInt32, refund_minor Int64, \
             version UInt64) ENGINE = ReplacingMergeTree(version) ORDER BY idempotency_key"
        ))
        .execute()
        .await
        .expect("create table");
    table
}

#[tokio::test]
async fn the_engine_is_clickhouse_26() {
    let version: String = client()
        .query("SELECT version()")
        .fetch_one()
        .await
        .expect("version");
    assert!(version.starts_with("26."), "{version}");
}

#[tokio::test]
async fn rows_inserted_into_a_replacing_merge_tree_read_back_latest_version_per_key() {
    let client = client();
    let table = replacing_table(&client).await;
    let rows = vec![
        ReturnRow {
            idempotency_key: "a".into(),
            quantity: 1,
            refund_minor: 1_000,
            version: 1,
        },
        ReturnRow {
            idempotency_key: "b".into(),
            quantity: 2,
            refund_minor: 2_000,
            version: 1,
        },
        ReturnRow {
            idempotency_key: "a".into(),
            quantity: 1,
            refund_minor: 1_500,
            version: 2,
        },
    ];
    let mut insert = client.insert::<ReturnRow>(&table).await.expect("insert");
    for row in &rows {
        insert.write(row).await.expect("write row");
    }
    insert.end().await.expect("end insert");

    let read: Vec<ReturnRow> = client
        .query(&format!(
            "SELECT ?fields FROM {table} FINAL ORDER BY idempotency_key"
        ))
        .fetch_all()
        .await
        .expect("read back");
    assert_eq!(read, vec![rows[2].clone(), rows[1].clone()]);
}

#[tokio::test]
async fn a_large_insert_spans_many_compressed_blocks() {
    let client = client();
    let table = replacing_table(&client).await;
    const ROWS: u64 = 200_000;
    let mut insert = client.insert::<ReturnRow>(&table).await.expect("insert");
    for n in 0..ROWS {
        let row = ReturnRow {
            idempotency_key: format!("key-{n:08}"),
            quantity: (n % 5) as u32 + 1,
            refund_minor: n as i64,
            version: 1,
        };
        insert.write(&row).await.expect("write row");
    }
    insert.end().await.expect("end insert");
    let (count, sum): (u64, i64) = client
        .query(&format!("SELECT count(), sum(refund_minor) FROM {table}"))
        .fetch_one()
        .await
        .expect("aggregate");
    assert_eq!(count, ROWS);
    assert_eq!(sum, (ROWS * (ROWS - 1) / 2) as i64);
}

#[tokio::test]
async fn bad_sql_fails_like_clickhouse_and_the_endpoint_survives() {
    let client = client();
    let error = client
        .query("SELEC 1")
        .execute()
        .await
        .expect_err("bad SQL must fail");
    let message = error.to_string();
    assert!(message.contains("Code: 62"), "{message}");
    assert!(message.contains("SYNTAX_ERROR"), "{message}");
    let one: u8 = client
        .query("SELECT 1")
        .fetch_one()
        .await
        .expect("still serving");
    assert_eq!(one, 1);
}

#[tokio::test]
async fn server_side_parameters_bind() {
    let sum: u64 = client()
        .query("SELECT {a:UInt64} + {b:UInt64}")
        .param("a", 40)
        .param("b", 2)
        .fetch_one()
        .await
        .expect("parameters");
    assert_eq!(sum, 42);
}
