//! Backfill harness: `boomerang backfill` loading N events of history (a year before the live
//! window) from Avro object container files, through the three release stage binaries, beside
//! the same stages draining N live events pre-filled in the raw topic — in the same run, on the
//! local stack.
//!
//! - Live: customers and orders published and in ClickHouse first, N events (inside the live
//!   window) pre-filled in the raw topic, then ingest started; timed from ingest's first record
//!   until every event is in ClickHouse (the `pipeline_e2e` drain).
//! - Backfill: the export files written first (not timed), the stages started with the
//!   demo's settings, then `boomerang backfill --from DIR`; timed from its start until it has
//!   printed a reconciled summary — reading the files, publishing customers and orders (and
//!   ClickHouse writing them), publishing the events, the pipeline draining them.
//!
//! The figure is the backfill's events per second over the live drain's (target ≥ 0.7), with
//! each process's CPU per event and ingest's memory (peak RSS and keys remembered) in both.
//!
//! BOOMERANG_BENCH_EVENTS=10000000 cargo bench -p boomerang-benches --bench backfill
//! (BOOMERANG_BENCH_LIVE_EVENTS sets the live drain's size apart, default the same; the
//! in-memory broker keeps every record of both rounds: start from `deploy/local/stack.sh
//! clean`.) Results in benches/README.md, "Backfill of 10M events".

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use boomerang_benches::harness::{built_release_binary, cpu_seconds, env_number, peak_rss_kib};
use boomerang_benches::pipeline::{
    Setup, cpu_now, pipeline_pids, print_cpu_used, producer, rows_inserted, send, setup,
    start_stages,
};
use boomerang_benches::reference_world::{customer, customer_id, event, order, order_id};
use boomerang_schemas::{AvroRecord, Customer, Order, PostPurchaseEvent, TimestampMicros, codec};
use boomerang_testkit::{Stack, StageProcess, metric_sum, metrics, unique_name, value};
use rdkafka::producer::Producer;

const CUSTOMERS: usize = 20_000;
/// Events per order: the reference data is a quarter the events'.
const EVENTS_PER_ORDER: usize = 4;
const DAY_MICROS: i64 = 86_400_000_000;

/// Event `n` of `events`, in time order from `oldest_days` ago to `newest_days` ago, as an
/// export ordered by time is (`ORDER BY occurred_at`): each of the sink's batches then falls in
/// one or two of the events table's monthly partitions. (Shuffled in time, the same 10M
/// events made 13 partitions' parts per insert and cost ClickHouse 30% more CPU.)
fn history_event(
    n: usize,
    events: usize,
    now: TimestampMicros,
    (oldest_days, newest_days): (i64, i64),
) -> PostPurchaseEvent {
    let order = n / EVENTS_PER_ORDER;
    let span = (oldest_days - newest_days).max(1) * DAY_MICROS;
    let back = newest_days * DAY_MICROS
        + (span as i128 * (events - n) as i128 / events.max(1) as i128) as i64;
    let mut event = event(
        n,
        CUSTOMERS,
        TimestampMicros::from_unix_micros(now.as_unix_micros() - back),
    );
    // Keys in no particular order, as a platform's UUIDs are: the sink's check against
    // ClickHouse cannot rely on a file sorted by key.
    event.idempotency_key = format!("returns-portal:{:016x}", splitmix(n as u64));
    event.order_id = order_id(order);
    event.order_line_id = format!("{}/1", order_id(order));
    event.customer_id = customer_id(order % CUSTOMERS);
    event
}

/// A well-mixed 64-bit function of `n` (SplitMix64's finaliser).
fn splitmix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn orders(events: usize) -> usize {
    events.div_ceil(EVENTS_PER_ORDER)
}

/// Writes `count` records to an Avro object container file.
fn write_file<T: AvroRecord>(path: &Path, count: usize, record: impl Fn(usize) -> T) {
    let file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).expect("create the export file"),
    );
    let mut writer = apache_avro::Writer::new(T::KIND.schema(), file).expect("writer");
    for n in 0..count {
        writer.append_ser(record(n)).expect("append");
    }
    writer.flush().expect("flush the export file");
}

fn stage_binaries() -> [String; 3] {
    [
        ("boomerang-ingest", "boomerang-ingest"),
        ("boomerang-enrich", "boomerang-enrich"),
        ("boomerang-sink", "boomerang-sink"),
    ]
    .map(|(package, bin)| built_release_binary(package, bin).display().to_string())
}

struct Round {
    seconds: f64,
    ingest_peak_rss_mib: u64,
    ingest_keys: u64,
}

async fn ingest_memory(ingest: &StageProcess) -> (u64, u64) {
    let exposition = metrics(ingest).await;
    (
        peak_rss_kib(ingest.id()) / 1024,
        metric_sum(&exposition, "boomerang_dedup_keys", &[]) as u64,
    )
}

/// The live drain: reference data first, N recent events pre-filled, then ingest.
async fn live(stack: &Stack, binaries: &[String; 3], events: usize) -> Round {
    let kafka = boomerang_runtime::kafka::KafkaArgs::for_brokers(&stack.kafka_brokers);
    let setup: Setup = setup(stack, &kafka, &unique_name("bbl")).await;
    let now = TimestampMicros::now();
    {
        let producer = producer(&kafka);
        for n in 0..CUSTOMERS {
            let customer = customer(n);
            let value = codec::encode_framed(setup.customer_schema, &customer).expect("encode");
            send(
                &producer,
                &setup.topics.customers,
                customer.customer_id.as_bytes(),
                &value,
            );
        }
        for n in 0..orders(events) {
            let order: Order = order(n, CUSTOMERS, now);
            let value = codec::encode_framed(setup.order_schema, &order).expect("encode");
            send(
                &producer,
                &setup.topics.orders,
                order.order_id.as_bytes(),
                &value,
            );
        }
        let mut value = Vec::with_capacity(512);
        for n in 0..events {
            // Inside the live window: the last five days.
            let event = history_event(n, events, now, (5, 0));
            value.clear();
            boomerang_schemas::wire::start_frame(setup.event_schema, &mut value);
            codec::encode_into(&event, &mut value).expect("encode");
            send(
                &producer,
                &setup.topics.raw_events,
                event.order_id.as_bytes(),
                &value,
            );
        }
        producer.flush(Duration::from_secs(600)).expect("flush");
    }
    eprintln!("live: {events} events pre-filled");
    let group = unique_name("bench-live");
    let downstream = start_stages(stack, &setup, binaries, &group, &[1, 2]).await;
    let loading = Instant::now();
    while rows_inserted(&downstream[1], "orders").await < orders(events) as u64 {
        assert!(
            loading.elapsed() < Duration::from_secs(1800),
            "reference data did not load"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ingest = start_stages(stack, &setup, binaries, &group, &[0]).await;
    let measured = pipeline_pids(&ingest[0], &downstream[0], &downstream[1]);
    let cpu_before = cpu_now(&measured);
    let mut first = None;
    let started = Instant::now();
    while rows_inserted(&downstream[1], "post_purchase_events").await < events as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "the live drain stalled"
        );
        if first.is_none()
            && value(
                &metrics(&ingest[0]).await,
                "boomerang_received_events_total",
                &[],
            ) > 0
        {
            first = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = first.map_or(f64::NAN, |first| first.elapsed().as_secs_f64());
    eprintln!(
        "live: {events} events in {seconds:.1} s ({:.0}/s)",
        events as f64 / seconds
    );
    print_cpu_used(&measured, &cpu_before, events as u64);
    let (ingest_peak_rss_mib, ingest_keys) = ingest_memory(&ingest[0]).await;
    Round {
        seconds,
        ingest_peak_rss_mib,
        ingest_keys,
    }
}

/// The backfill: export files written, stages started, `boomerang backfill` timed.
async fn backfill(stack: &Stack, binaries: &[String; 3], events: usize, dir: &Path) -> Round {
    let kafka = boomerang_runtime::kafka::KafkaArgs::for_brokers(&stack.kafka_brokers);
    let name = unique_name("bbf");
    let setup: Setup = setup(stack, &kafka, &name).await;
    let now = TimestampMicros::now();
    std::fs::create_dir_all(dir).expect("export folder");
    let writing = Instant::now();
    write_file::<Customer>(&dir.join("customers.avro"), CUSTOMERS, customer);
    write_file::<Order>(&dir.join("orders.avro"), orders(events), |n| {
        let mut order = order(n, CUSTOMERS, now);
        // Placed before its events, a year and more ago.
        let placed = now.as_unix_micros() - 400 * DAY_MICROS;
        order.placed_at = TimestampMicros::from_unix_micros(placed);
        order.delivered_at = Some(TimestampMicros::from_unix_micros(placed + 3 * DAY_MICROS));
        order.updated_at = order.placed_at;
        order
    });
    // History: from 8 to 373 days ago, all of it before ingest's seven-day window.
    write_file::<PostPurchaseEvent>(&dir.join("events.avro"), events, |n| {
        history_event(n, events, now, (373, 8))
    });
    eprintln!(
        "backfill: export of {events} events written in {:.1} s ({} MiB)",
        writing.elapsed().as_secs_f64(),
        std::fs::metadata(dir.join("events.avro")).map_or(0, |m| m.len()) >> 20
    );
    let group = unique_name("bench-backfill");
    let stages = start_stages(stack, &setup, binaries, &group, &[0, 1, 2]).await;
    let measured = pipeline_pids(&stages[0], &stages[1], &stages[2]);
    let cpu_before = cpu_now(&measured);
    let cli = built_release_binary("boomerang-cli", "boomerang");
    let topics = &setup.topics;
    let started = Instant::now();
    let mut child = Command::new(cli)
        .args(["backfill", "--from"])
        .arg(dir)
        .args(["--checkpoint"])
        .arg(dir.join(format!("{name}.checkpoint.json")))
        .args(["--progress-secs", "15"])
        .args(["--ingest-group", &format!("{group}-0")])
        .args(["--enrich-group", &format!("{group}-1")])
        .args(["--sink-group", &format!("{group}-2")])
        .env("BOOMERANG_KAFKA_BROKERS", &stack.kafka_brokers)
        .env("BOOMERANG_SCHEMA_REGISTRY_URL", &stack.schema_registry_url)
        .env("BOOMERANG_CLICKHOUSE_URL", &setup.clickhouse.url)
        .env("BOOMERANG_CLICKHOUSE_DATABASE", &setup.clickhouse.database)
        .env("BOOMERANG_RAW_EVENTS_TOPIC", &topics.raw_events)
        .env("BOOMERANG_VALIDATED_EVENTS_TOPIC", &topics.validated_events)
        .env("BOOMERANG_ENRICHED_EVENTS_TOPIC", &topics.enriched_events)
        .env("BOOMERANG_CUSTOMERS_TOPIC", &topics.customers)
        .env("BOOMERANG_ORDERS_TOPIC", &topics.orders)
        .env("BOOMERANG_ERASURE_REQUESTS_TOPIC", &topics.erasure_requests)
        .env("BOOMERANG_DEAD_LETTER_TOPIC", &topics.dead_letter)
        .stdout(Stdio::piped())
        .spawn()
        .expect("boomerang backfill");
    let pid = child.id();
    // Its CPU, read while it runs (the last reading before it exits).
    let mut cli_cpu = 0.0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        cli_cpu = cpu_seconds(pid).max(cli_cpu);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let summary = child
        .wait_with_output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    println!("{summary}");
    assert!(status.success(), "the backfill did not reconcile");
    eprintln!(
        "backfill: {events} events in {seconds:.1} s ({:.0}/s)",
        events as f64 / seconds
    );
    print_cpu_used(&measured, &cpu_before, events as u64);
    eprintln!(
        "cpu boomerang backfill: {cli_cpu:.2} s ({:.1} µs per event)",
        cli_cpu * 1e6 / events as f64
    );
    let (ingest_peak_rss_mib, ingest_keys) = ingest_memory(&stages[0]).await;
    Round {
        seconds,
        ingest_peak_rss_mib,
        ingest_keys,
    }
}

fn main() {
    let events = env_number("BOOMERANG_BENCH_EVENTS", 10_000_000) as usize;
    let live_events = env_number("BOOMERANG_BENCH_LIVE_EVENTS", events as u64) as usize;
    let stack = Stack::from_env();
    let binaries = stage_binaries();
    let dir: PathBuf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-backfill");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_string())
        })
        .unwrap_or_default();
    eprintln!("cpu: {cpu}");
    let backfilled = runtime.block_on(backfill(&stack, &binaries, events, &dir));
    let live = runtime.block_on(live(&stack, &binaries, live_events));
    let backfill_rate = events as f64 / backfilled.seconds;
    let live_rate = live_events as f64 / live.seconds;
    println!(
        "backfill of {events} events: {:.1} s, {backfill_rate:.0} events/s; live drain of {live_events}: {:.1} s, {live_rate:.0} events/s; ratio {:.2}",
        backfilled.seconds,
        live.seconds,
        backfill_rate / live_rate
    );
    println!(
        "ingest: backfill {} MiB peak, {} keys remembered; live {} MiB peak, {} keys remembered",
        backfilled.ingest_peak_rss_mib,
        backfilled.ingest_keys,
        live.ingest_peak_rss_mib,
        live.ingest_keys
    );
    std::fs::remove_dir_all(&dir).ok();
}
