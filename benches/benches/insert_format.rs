//! What one inserted event row costs ClickHouse, by the insert's format: RowBinary (a row
//! format, what the sink sends) against Native (ClickHouse's columnar format, which the
//! `clickhouse` crate's `InsertNative` sends), each LZ4-compressed as the sink sends it and
//! uncompressed (the crate's `InsertNative` cannot compress yet). The server's CPU is the bill
//! a user pays for every row, whatever the sink costs.
//!
//! The rows are the sink's own (`EventRow`, built from the benchmark's enriched events) in a
//! fresh database. ClickHouse itself then writes them out in each format, one body per
//! 50,000 rows (the sink's insert size), and each body is inserted again into an emptied copy
//! of the events table, the formats taking turns, while the ClickHouse process's CPU time
//! (`/proc`) is read before and after. Needs the local stack (`deploy/local/stack.sh up`).
//!
//! cargo bench -p boomerang-benches --bench insert_format
//! BOOMERANG_BENCH_EVENTS=200000 BOOMERANG_BENCH_ROUNDS=4 cargo bench -p boomerang-benches --bench insert_format

use std::time::Instant;

use boomerang_benches::harness::{cpu_seconds, env_number, median};
use boomerang_benches::pipeline::stack_pids;
use boomerang_benches::reference_world::enriched;
use boomerang_clickhouse::ClickhouseArgs;
use boomerang_clickhouse::migrations;
use boomerang_runtime::pseudonym::{PseudonymCache, Pseudonymiser};
use boomerang_schemas::{EnrichedEventRef, TimestampMicros};
use boomerang_sink::rows::{EventRow, Source};
use boomerang_testkit::{Stack, unique_name};
use clickhouse::Compression;

/// Rows per insert: the sink's batch under full load.
const BATCH: usize = 50_000;
const PARTITIONS: usize = 4;

/// The ways to send a row that are measured: format, and whether the body is LZ4-compressed.
const WAYS: [(&str, bool); 4] = [
    ("RowBinary", true),
    ("Native", true),
    ("RowBinary", false),
    ("Native", false),
];

fn main() {
    let events = env_number("BOOMERANG_BENCH_EVENTS", 200_000) as usize;
    let rounds = env_number("BOOMERANG_BENCH_ROUNDS", 4) as usize;
    let stack = Stack::from_env();
    let clickhouse_pid = stack_pids()
        .into_iter()
        .find_map(|(name, pid)| (name == "clickhouse").then_some(pid))
        .expect("the local stack's ClickHouse pid (target/stack/pids/clickhouse.pid)");
    let name = unique_name("bench-format").replace('-', "_");
    let clickhouse = ClickhouseArgs::for_url(&stack.clickhouse_url, &name);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        migrations::apply(&clickhouse, None).await.expect("migrate");
        let client = clickhouse.client();
        fill(&client, events).await;
        let mut bodies: Vec<Vec<_>> = Vec::new();
        for (format, _) in &WAYS[..2] {
            let mut batches = Vec::new();
            for start in (0..events).step_by(BATCH) {
                let body = client
                    .query(&format!(
                        "SELECT * FROM post_purchase_events \
                         WHERE source_offset >= {start} AND source_offset < {} \
                         ORDER BY source_offset",
                        start + BATCH
                    ))
                    .fetch_bytes(format)
                    .expect("query")
                    .collect()
                    .await
                    .expect("body");
                batches.push(body);
            }
            bodies.push(batches);
        }
        client
            .query("CREATE TABLE probe AS post_purchase_events")
            .execute()
            .await
            .expect("probe table");

        let mut figures: Vec<Vec<f64>> = vec![Vec::new(); WAYS.len()];
        for round in 0..rounds {
            // Each round starts with another way, so no way always follows the same one.
            for turn in 0..WAYS.len() {
                let way = (round + turn) % WAYS.len();
                let (format, lz4) = WAYS[way];
                let sender = client.clone().with_compression(if lz4 {
                    Compression::Lz4
                } else {
                    Compression::None
                });
                client
                    .query("TRUNCATE TABLE probe")
                    .execute()
                    .await
                    .expect("truncate");
                let cpu_before = cpu_seconds(clickhouse_pid);
                let started = Instant::now();
                for body in &bodies[way % 2] {
                    let mut insert =
                        sender.insert_formatted_with(format!("INSERT INTO probe FORMAT {format}"));
                    insert.send(body.clone()).await.expect("send");
                    insert.end().await.expect("end");
                }
                let cpu = cpu_seconds(clickhouse_pid) - cpu_before;
                let wall = started.elapsed().as_secs_f64();
                let rows = client
                    .query("SELECT count() FROM probe")
                    .fetch_one::<u64>()
                    .await
                    .expect("count");
                assert_eq!(rows, events as u64, "{format}: every row inserted once");
                let per_row = cpu / events as f64 * 1e6;
                eprintln!(
                    "round {}: {format}{}: ClickHouse {cpu:.2} s CPU ({per_row:.2} µs per row), {wall:.2} s",
                    round + 1,
                    if lz4 { " + LZ4" } else { "" },
                );
                figures[way].push(per_row);
            }
        }

        println!();
        println!("| format | body bytes per row (uncompressed) | ClickHouse CPU per row, each round (µs) | median |");
        println!("| --- | ---: | --- | ---: |");
        for (way, (format, lz4)) in WAYS.iter().enumerate() {
            let bytes: usize = bodies[way % 2].iter().map(|body| body.len()).sum();
            let mut rounds = figures[way].clone();
            rounds.sort_by(f64::total_cmp);
            let listed: Vec<String> = rounds.iter().map(|x| format!("{x:.2}")).collect();
            println!(
                "| {format}{} | {} | {} | **{:.2}** |",
                if *lz4 { " + LZ4" } else { "" },
                bytes / events,
                listed.join(", "),
                median(&rounds),
            );
        }
    });
}

/// The benchmark's events as the sink's rows, inserted as the sink inserts them.
async fn fill(client: &clickhouse::Client, events: usize) {
    let now = TimestampMicros::now();
    let mut pseudonyms =
        PseudonymCache::new(Pseudonymiser::new(b"benchmark-pseudonym-key").expect("key"));
    let topic = std::sync::Arc::from("bench");
    for start in (0..events).step_by(BATCH) {
        let mut insert = client
            .insert::<EventRow>("post_purchase_events")
            .await
            .expect("insert");
        for n in start..(start + BATCH).min(events) {
            let source = Source {
                topic: &topic,
                partition: (n % PARTITIONS) as i32,
                offset: n as i64,
            };
            let row = EventRow::new(
                &EnrichedEventRef::of(&enriched(n, now)),
                &source,
                &mut pseudonyms,
            );
            insert.write(&row).await.expect("write");
        }
        insert.end().await.expect("end");
    }
}
