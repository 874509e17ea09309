//! End-to-end harness: the sink binary draining 1M enriched events from Kafka into ClickHouse,
//! beside a bare `clickhouse` crate insert of the same rows (built in memory beforehand, in
//! batches of the sink's size) in the same run, on the same ClickHouse endpoint. Needs the
//! local stack (`deploy/local/stack.sh up`). Target: sink ≥ 0.8× the bare insert rate.
//!
//! cargo bench -p boomerang-benches --bench sink_drain          # 1M events
//! BOOMERANG_BENCH_EVENTS=200000 cargo bench -p boomerang-benches --bench sink_drain

use std::time::{Duration, Instant};

use boomerang_benches::harness::{built_release_binary, cpu_seconds, env_number, prefill};
use boomerang_benches::reference_world::enriched;
use boomerang_clickhouse::ClickhouseArgs;
use boomerang_clickhouse::migrations;
use boomerang_runtime::kafka::{KafkaArgs, TopicSpec, ensure_topics};
use boomerang_runtime::pseudonym::{PseudonymCache, Pseudonymiser};
use boomerang_runtime::registry::{RegistryArgs, register_all};
use boomerang_runtime::topics::{TopicsArgs, value_subject};
use boomerang_schemas::{EnrichedEventRef, TimestampMicros};
use boomerang_sink::rows::{EventRow, Source};
use boomerang_testkit::{Stack, StageProcess, metrics, poll_until, unique_name, value};

const PARTITIONS: i32 = 4;
const BATCH: usize = 50_000;
const PSEUDONYM_KEY: &str = "benchmark-pseudonym-key";

/// The same rows, built beforehand, inserted with the `clickhouse` crate in batches of the
/// sink's size into a copy of the events table: the least a ClickHouse writer can do.
async fn bare_insert(clickhouse: &ClickhouseArgs, events: usize, now: TimestampMicros) -> Duration {
    let client = clickhouse.client();
    client
        .query("CREATE TABLE bare_events AS post_purchase_events")
        .execute()
        .await
        .expect("bare table");
    let mut pseudonyms =
        PseudonymCache::new(Pseudonymiser::new(PSEUDONYM_KEY.as_bytes()).expect("key"));
    let topic = std::sync::Arc::from("bench");
    let rows: Vec<EventRow> = (0..events)
        .map(|n| {
            let source = Source {
                topic: &topic,
                partition: (n % PARTITIONS as usize) as i32,
                offset: n as i64,
            };
            EventRow::new(
                &EnrichedEventRef::of(&enriched(n, now)),
                &source,
                &mut pseudonyms,
            )
        })
        .collect();
    let started = Instant::now();
    for batch in rows.chunks(BATCH) {
        let mut insert = client
            .insert::<EventRow>("bare_events")
            .await
            .expect("insert");
        for row in batch {
            insert.write(row).await.expect("write");
        }
        insert.end().await.expect("end");
    }
    started.elapsed()
}

fn main() {
    let events = env_number("BOOMERANG_BENCH_EVENTS", 1_000_000) as usize;
    let binary = built_release_binary("boomerang-sink", "boomerang-sink");
    let stack = Stack::from_env();
    let kafka = KafkaArgs::for_brokers(&stack.kafka_brokers);
    let name = unique_name("bench-sink");
    let topics = TopicsArgs::with_prefix(&name);
    let clickhouse = ClickhouseArgs::for_url(&stack.clickhouse_url, &name.replace('-', "_"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let now = TimestampMicros::now();
    let schema_id = runtime.block_on(async {
        ensure_topics(
            &kafka,
            &[
                TopicSpec::new(&topics.enriched_events, PARTITIONS),
                TopicSpec::new(&topics.orders, 1).compacted(),
                TopicSpec::new(&topics.customers, 1).compacted(),
                TopicSpec::new(&topics.erasure_requests, 1),
                TopicSpec::new(&topics.dead_letter, 1),
            ],
        )
        .await
        .expect("topics");
        migrations::apply(&clickhouse, None).await.expect("migrate");
        let settings = RegistryArgs::for_url(&stack.schema_registry_url)
            .settings()
            .expect("registry");
        let registrations = register_all(&settings, &topics).await.expect("register");
        registrations
            .iter()
            .find(|registration| {
                registration.current
                    && registration.subject == value_subject(&topics.enriched_events)
            })
            .map(|registration| registration.schema_id)
            .expect("enriched schema id")
    });
    let filled = Instant::now();
    prefill(&kafka, &topics.enriched_events, schema_id, events, |n| {
        let enriched = enriched(n, now);
        (enriched.event.order_id.clone(), enriched)
    });
    eprintln!(
        "pre-filled {events} enriched events in {:.1?}",
        filled.elapsed()
    );

    let bare = runtime.block_on(bare_insert(&clickhouse, events, now));
    eprintln!("bare insert: {:.2} s", bare.as_secs_f64());

    let group = unique_name("bench-sink-group");
    let arguments = [
        "--kafka-brokers",
        &stack.kafka_brokers,
        "--schema-registry-url",
        &stack.schema_registry_url,
        "--enriched-events-topic",
        &topics.enriched_events,
        "--orders-topic",
        &topics.orders,
        "--customers-topic",
        &topics.customers,
        "--erasure-requests-topic",
        &topics.erasure_requests,
        "--dead-letter-topic",
        &topics.dead_letter,
        "--clickhouse-url",
        &clickhouse.url,
        "--clickhouse-database",
        &clickhouse.database,
        "--pseudonym-key",
        PSEUDONYM_KEY,
        "--group-id",
        &group,
        "--log-format",
        "text",
        "--log-filter",
        "warn",
    ];
    let binary = binary.to_string_lossy().into_owned();
    let sink = runtime.block_on(async {
        let mut process = StageProcess::start(&binary, &arguments, &[]);
        boomerang_testkit::wait_ready(&process).await;
        let started = Instant::now();
        let stage = &process;
        poll_until(
            "the sink to insert every row",
            Duration::from_secs(1800),
            || async move {
                let text = metrics(stage).await;
                (value(&text, "boomerang_sink_rows_inserted_total", &[]) >= events as u64)
                    .then_some(())
            },
        )
        .await;
        let elapsed = started.elapsed();
        let cpu = cpu_seconds(process.id());
        eprintln!(
            "sink: {cpu:.2} s of CPU since its start ({:.1} µs per row)",
            cpu * 1e6 / events as f64
        );
        process.terminate();
        process.wait_exit(Duration::from_secs(30)).await;
        elapsed
    });
    let rate = |elapsed: Duration| events as f64 / elapsed.as_secs_f64();
    println!();
    println!("| run | rows | seconds | rows/s | vs bare |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| bare `clickhouse` crate insert, rows prebuilt, batches of {BATCH} | {events} | {:.2} | {:.0} | 1.00 |",
        bare.as_secs_f64(),
        rate(bare)
    );
    println!(
        "| boomerang-sink (consume, decode, insert, commit) | {events} | {:.2} | {:.0} | {:.2} |",
        sink.as_secs_f64(),
        rate(sink),
        rate(sink) / rate(bare)
    );
}
