//! The events' Native inserts (`native.rs`) store exactly what the `clickhouse` crate's
//! RowBinary inserts store, column by column, whether the block is built from owned rows or
//! appended to as events are processed (`NativeEvents`), and a row ClickHouse refuses is still
//! found and dead-lettered alone. Against the local stack's ClickHouse, through the sink's
//! `Writer`.

use std::sync::Arc;
use std::time::Duration;

use boomerang_clickhouse::{ClickhouseArgs, migrations};
use boomerang_runtime::http::Readiness;
use boomerang_runtime::metrics::Metrics;
use boomerang_runtime::stage_loop::Writes;
use boomerang_sink::metrics::SinkMetrics;
use boomerang_sink::processor::EVENTS_TABLE;
use boomerang_sink::rows::EventRow;
use boomerang_sink::write::{EventEntry, InsertFormat, Keyed, NativeEvents, Writer};
use boomerang_testkit::{Stack, unique_name};
use compact_str::CompactString;
use tokio_util::sync::CancellationToken;

/// Rows that between them put a null and a value, an empty and a long string, a negative and
/// the extreme numbers in every column that can have them. Times are of this year: the table's
/// TTL drops rows whose event is older than three years as they are inserted.
fn rows(count: usize, topic: &Arc<str>) -> Vec<EventRow> {
    let some = |index: usize, bit: usize| (index >> bit) & 1 == 1;
    (0..count)
        .map(|index| {
            let text = |what: &str| -> CompactString {
                match index % 4 {
                    0 => CompactString::default(),
                    1 => format!("{what}-{index}").into(),
                    2 => format!("{what}-ünïcødé-✓-{index}").into(),
                    _ => format!("{what}-{}", "x".repeat(300 + index)).into(),
                }
            };
            let optional = |bit: usize, what: &str| some(index, bit).then(|| text(what));
            let time = 1_780_000_000_123_456 + index as i64 * 1_000_001;
            EventRow {
                idempotency_key: format!("key-{index:05}").into(),
                event_id: text("event"),
                event_type: ["RETURN_REQUESTED", "REFUND_ISSUED"][index % 2],
                case_id: text("case"),
                order_id: text("order"),
                order_line_id: text("line"),
                customer_key: text("p_customer"),
                sku: text("sku"),
                quantity: [1, 7, i32::MAX][index % 3],
                reason: some(index, 0).then_some("DAMAGED"),
                amount_minor: some(index, 1).then_some([-5, 0, i64::MAX, i64::MIN][index % 4]),
                amount_currency: optional(2, "EUR"),
                method: some(index, 3).then_some("ORIGINAL_PAYMENT"),
                channel: "WEB",
                outcome: "APPROVED",
                occurred_at: if index % 5 == 0 {
                    time - 86_400_000_001
                } else {
                    time
                },
                source_system: text("portal"),
                replacement_sku: optional(4, "sku"),
                warranty_resolution: some(index, 5).then_some("REPAIRED"),
                disposition: some(index, 6).then_some("RESTOCK"),
                customer_missing: some(index, 0),
                order_missing: some(index, 1),
                order_line_missing: some(index, 2),
                customer_pseudonymised: some(index, 3),
                customer_segment: optional(7, "vip"),
                customer_region: optional(8, "eu"),
                order_channel: some(index, 0).then_some("STORE"),
                order_placed_at: some(index, 1).then_some(time - 7),
                order_delivered_at: some(index, 2).then_some(time - 1),
                line_category: optional(3, "apparel"),
                line_unit_price_minor: some(index, 4).then_some(2_999),
                line_currency: optional(5, "JPY"),
                days_since_delivery: some(index, 6).then_some(-3 + index as i32),
                within_return_window: some(index, 7).then_some(some(index, 8)),
                enriched_at: time + 5,
                source_topic: topic.clone(),
                source_partition: (index % 3) as i32,
                source_offset: i64::MAX - index as i64,
                backfill_run: optional(9, "run").unwrap_or_default(),
            }
        })
        .collect()
}

fn keyed(rows: Vec<EventRow>, topic: &Arc<str>) -> Vec<Keyed<EventRow>> {
    let mut writes = Writes::default();
    rows.into_iter()
        .enumerate()
        .map(|(offset, row)| Keyed {
            partition: (topic.clone(), row.source_partition),
            row,
            offset: offset as i64,
            write: writes.write().1,
        })
        .collect()
}

/// The same rows as the sink's processor keeps them: appended to one block as they come.
fn native_events(keyed: &[Keyed<EventRow>]) -> NativeEvents {
    let mut events = NativeEvents::default();
    for row in keyed {
        let entry = Keyed {
            row: EventEntry::default(),
            partition: row.partition.clone(),
            offset: row.offset,
            write: row.write,
        };
        events.push(&row.row.as_ref(), entry);
    }
    events
}

async fn database(stack: &Stack) -> ClickhouseArgs {
    let args = ClickhouseArgs::for_url(
        &stack.clickhouse_url,
        &unique_name("it_format").replace('-', "_"),
    );
    migrations::apply(&args, None).await.expect("migrate");
    args
}

fn writer(args: &ClickhouseArgs, format: InsertFormat) -> Writer {
    let metrics = Metrics::for_stage("sink").expect("metrics");
    Writer {
        client: args.client().with_validation(false),
        format,
        metrics: SinkMetrics::register(&metrics).expect("sink metrics"),
        readiness: Readiness::new("test"),
        shutdown: CancellationToken::new(),
        timeout: Duration::from_secs(30),
    }
}

/// Every stored column but the server's own `inserted_at`, as text, in key order.
async fn stored(args: &ClickhouseArgs) -> String {
    let mut cursor = args
        .client()
        .query(&format!(
            "SELECT * EXCEPT inserted_at FROM {EVENTS_TABLE} ORDER BY idempotency_key"
        ))
        .fetch_bytes("TSVWithNamesAndTypes")
        .expect("query");
    String::from_utf8(cursor.collect().await.expect("read").to_vec()).expect("utf-8")
}

#[tokio::test]
async fn native_and_rowbinary_inserts_store_the_same_rows() {
    let stack = Stack::from_env();
    let topic: Arc<str> = Arc::from("enriched");
    let (native, rowbinary, appended) = (
        database(&stack).await,
        database(&stack).await,
        database(&stack).await,
    );
    let keyed = keyed(rows(1_024, &topic), &topic);
    for (args, format) in [
        (&native, InsertFormat::Native),
        (&rowbinary, InsertFormat::RowBinary),
    ] {
        let written = writer(args, format)
            .write_all(EVENTS_TABLE, keyed.as_slice(), None)
            .await;
        assert!(
            written.rejected.is_empty(),
            "{format:?}: {:?}",
            written.rejected
        );
        assert!(!written.abandoned && written.fenced.is_none());
    }
    let written = writer(&appended, InsertFormat::Native)
        .write_all(EVENTS_TABLE, &native_events(&keyed), None)
        .await;
    assert!(written.rejected.is_empty(), "{:?}", written.rejected);
    assert!(!written.abandoned && written.fenced.is_none());
    let (from_native, from_rowbinary) = (stored(&native).await, stored(&rowbinary).await);
    assert_eq!(
        stored(&appended).await,
        from_native,
        "appended as processed"
    );
    assert_eq!(
        from_native.lines().count(),
        2 + 1_024,
        "names, types, every row"
    );
    assert!(
        from_native.contains("DateTime64(6, \\'UTC\\')")
            || from_native.contains("DateTime64(6, 'UTC')"),
        "the table's own types: {}",
        from_native.lines().nth(1).unwrap_or_default()
    );
    for (native_line, rowbinary_line) in from_native.lines().zip(from_rowbinary.lines()) {
        assert_eq!(native_line, rowbinary_line);
    }
    assert_eq!(from_native, from_rowbinary);
}

#[tokio::test]
async fn a_row_clickhouse_refuses_in_a_native_block_is_the_only_one_dead_lettered() {
    let stack = Stack::from_env();
    let topic: Arc<str> = Arc::from("enriched");
    let args = database(&stack).await;
    let mut rows = rows(300, &topic);
    // The table's constraint: a quantity is positive.
    rows[217].quantity = 0;
    let keyed = keyed(rows, &topic);
    // As owned rows, then appended as processed (the split inserts parts of the block).
    let appended = database(&stack).await;
    for (args, written) in [
        (
            &args,
            writer(&args, InsertFormat::Native)
                .write_all(EVENTS_TABLE, keyed.as_slice(), None)
                .await,
        ),
        (
            &appended,
            writer(&appended, InsertFormat::Native)
                .write_all(EVENTS_TABLE, &native_events(&keyed), None)
                .await,
        ),
    ] {
        let refused: Vec<usize> = written
            .rejected
            .iter()
            .map(|(write, _)| write.get())
            .collect();
        assert_eq!(refused, [keyed[217].write.get()]);
        assert!(
            written.rejected[0].1.message.contains("quantity"),
            "{:?}",
            written.rejected[0].1
        );
        let count = args
            .client()
            .query(&format!("SELECT count() FROM {EVENTS_TABLE}"))
            .fetch_one::<u64>()
            .await
            .expect("count");
        assert_eq!(count, 299);
    }
    assert_eq!(stored(&appended).await, stored(&args).await);
}
