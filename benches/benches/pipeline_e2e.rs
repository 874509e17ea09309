//! End-to-end harness: the three release stage binaries against a null pipeline — three
//! rdkafka stages that only forward bytes (raw → 1 → 2 → 3) — in the same run, on the local
//! stack. Two measurements:
//!
//! - sustained throughput: a pre-filled raw topic drained until every event is queryable in
//!   ClickHouse (Boomerang) or forwarded by the third stage (null), timed from the moment the
//!   first stage receives its first record — joining the consumer group (and ingest's restore
//!   of its de-duplication state) is start-up, not sustained work; the time including it is
//!   reported beside. Three rounds by default (`BOOMERANG_BENCH_ROUNDS`), each on its own
//!   pre-filled topic, the pipelines taking turns to drain first; the median ratio is the
//!   figure, because one round's ratio moves by ±0.1 on these shared 2-core machines. 1M
//!   events per round by default: over 200k the null pipeline drains in under 1.5 s and
//!   Boomerang's batch waits (about 1 s of pipeline latency) weigh as much as its rate. Run
//!   it on a freshly started stack (`deploy/local/stack.sh clean`, then `up`): the in-memory
//!   broker keeps every record of every run and slows down as it fills;
//! - event-to-queryable latency at a fixed input rate: each event carries its produce time;
//!   Boomerang's is `inserted_at` in ClickHouse minus that, the null pipeline's the third
//!   stage's receive time minus that. The paced events start once the stages own their
//!   partitions and have loaded and written the reference data published before them.
//!
//! Targets: Boomerang ≥ 0.7× the null pipeline's throughput; p99 ≤ 1 s at 2k events/s.
//!
//! cargo bench -p boomerang-benches --bench pipeline_e2e
//! BOOMERANG_BENCH_EVENTS=1000000 BOOMERANG_BENCH_ROUNDS=3 BOOMERANG_BENCH_RATE=2000 BOOMERANG_BENCH_SECONDS=30 cargo bench …
//! BOOMERANG_BENCH_NULL_HEADERS=3 cargo bench …   (the null forwarders carry the pipeline's headers)

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boomerang_benches::harness::{
    built_release_binary, env_number, median, peak_rss_kib, wait_for_quiet_machine,
};
use boomerang_benches::pipeline::{
    PARTITIONS, Setup, cpu_now, pipeline_pids, print_cpu_used, producer, rows_inserted, send,
    send_record, setup, stack_pids, start_stages,
};
use boomerang_benches::reference_world::{customer, event, order};
use boomerang_runtime::kafka::{KafkaArgs, TopicSpec, ensure_topics};
use boomerang_schemas::{TimestampMicros, codec};
use boomerang_testkit::{Stack, StageProcess, metrics, poll_until, unique_name, value};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
/// The null stages are threads of this process: they get the allocator the stage binaries use
/// (mimalloc, serving librdkafka's C allocations too), so the comparison is of the pipelines,
/// not of allocators. (It made no difference to the null pipeline: 5.9-7.0 s for 1M events
/// either way.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CUSTOMERS: usize = 20_000;
/// How idle the machine must be, over one second, before a drain or the paced run starts.
const QUIET_IDLE_SHARE: f64 = 0.85;
/// How long to wait for that at most: then the run goes on, and says so.
const QUIET_MAX_WAIT: Duration = Duration::from_secs(120);
/// How often both drains look whether the last hop has every event.
const NULL_WATCH_INTERVAL: Duration = Duration::from_millis(20);
/// How often Boomerang's drain looks while its end is more than a second away at its rate.
const FAR_WATCH_INTERVAL: Duration = Duration::from_millis(200);

fn now_micros() -> i64 {
    TimestampMicros::now().as_unix_micros()
}

/// Customers and the orders events 0..events refer to, so every event joins at once.
fn publish_reference_data(kafka: &KafkaArgs, setup: &Setup, orders: usize) {
    let producer = producer(kafka);
    let now = TimestampMicros::now();
    for n in 0..CUSTOMERS {
        let customer = customer(n);
        send(
            &producer,
            &setup.topics.customers,
            customer.customer_id.as_bytes(),
            &codec::encode_framed(setup.customer_schema, &customer).expect("encode"),
        );
    }
    for n in 0..orders {
        let order = order(n, CUSTOMERS, now);
        send(
            &producer,
            &setup.topics.orders,
            order.order_id.as_bytes(),
            &codec::encode_framed(setup.order_schema, &order).expect("encode"),
        );
    }
    producer.flush(Duration::from_secs(300)).expect("flush");
}

/// Event `n`, its id carrying the produce time (microseconds) for the latency measurement.
fn raw_event(schema_id: u32, n: usize) -> (Vec<u8>, Vec<u8>) {
    let produced = now_micros();
    let mut event = event(n, CUSTOMERS, TimestampMicros::from_unix_micros(produced));
    event.event_id = format!("lat-{produced}-{n}");
    (
        event.order_id.clone().into_bytes(),
        codec::encode_framed(schema_id, &event).expect("encode"),
    )
}

async fn received(stage: &StageProcess) -> u64 {
    value(
        &metrics(stage).await,
        "boomerang_received_events_total",
        &[],
    )
}

async fn events_inserted(sink: &StageProcess) -> u64 {
    rows_inserted(sink, "post_purchase_events").await
}

/// Which headers the null forwarders carry (`BOOMERANG_BENCH_NULL_HEADERS`): none by default;
/// `3`, the pipeline's three (idempotency key, source, event time) as ingest writes them;
/// `1`, the same values in one header. The first hop writes them, the next two read and copy
/// them, as enrich does: what the pipeline's header contract costs librdkafka, measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NullHeaders {
    None,
    One,
    Three,
}

impl NullHeaders {
    fn from_env() -> Self {
        match env_number("BOOMERANG_BENCH_NULL_HEADERS", 0) {
            0 => NullHeaders::None,
            1 => NullHeaders::One,
            3 => NullHeaders::Three,
            other => panic!("BOOMERANG_BENCH_NULL_HEADERS={other}: 0, 1 or 3"),
        }
    }

    /// The headers a forwarder produces `message` with, or `None` for none: the consumed
    /// record's, copied, if it has any (hops two and three); else the pipeline's, written.
    fn of(self, message: &BorrowedMessage<'_>, text: &mut String) -> Option<OwnedHeaders> {
        const KEY: &str = "returns-portal:rma-000123456:return_requested";
        const EVENT_TIME_MS: &str = "1763000000123";
        if self == NullHeaders::None {
            return None;
        }
        if let Some(incoming) = message.headers() {
            let mut headers = OwnedHeaders::new_with_capacity(incoming.count());
            for header in incoming.iter() {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
            return Some(headers);
        }
        let (partition, offset) = (message.partition(), message.offset());
        text.clear();
        let header = |key, value| Header {
            key,
            value: Some(value),
        };
        if self == NullHeaders::One {
            let _ = write!(text, "{EVENT_TIME_MS};{partition}/{offset};{KEY}");
            return Some(
                OwnedHeaders::new_with_capacity(1).insert(header("boomerang.event", text.as_str())),
            );
        }
        let _ = write!(text, "{partition}/{offset}");
        Some(
            OwnedHeaders::new_with_capacity(3)
                .insert(header("boomerang.idempotency_key", KEY))
                .insert(header("boomerang.source", text.as_str()))
                .insert(header("boomerang.event_time_ms", EVENT_TIME_MS)),
        )
    }
}

/// A null stage: forwards every record's key and bytes from `from` to `to`, with `headers`.
/// With `latencies`, records how long each record took since the produce time in its key.
fn null_stage(
    kafka: KafkaArgs,
    from: String,
    to: String,
    stop: Arc<AtomicBool>,
    measure: bool,
    first_record: Option<Arc<OnceLock<Instant>>>,
) -> JoinHandle<(u64, Vec<i64>)> {
    let headers = NullHeaders::from_env();
    std::thread::spawn(move || {
        let consumer: BaseConsumer = kafka
            .consumer_config(&unique_name("bench-null"))
            .create()
            .expect("consumer");
        consumer.subscribe(&[&from]).expect("subscribe");
        let producer = producer(&kafka);
        let mut forwarded = 0u64;
        let mut latencies = Vec::new();
        let mut text = String::new();
        while !stop.load(Ordering::Relaxed) {
            let Some(message) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let message = message.expect("consume");
            if let Some(first_record) = &first_record {
                first_record.get_or_init(Instant::now);
            }
            let key = message.key().unwrap_or_default();
            if measure
                && let Some(produced) = std::str::from_utf8(key)
                    .ok()
                    .and_then(|key| key.split('|').next())
                    .and_then(|micros| micros.parse::<i64>().ok())
            {
                latencies.push(now_micros() - produced);
            }
            let payload = message.payload().unwrap_or_default();
            match headers.of(&message, &mut text) {
                None => send(&producer, &to, key, payload),
                Some(headers) => send_record(
                    &producer,
                    BaseRecord::to(&to)
                        .key(key)
                        .payload(payload)
                        .headers(headers),
                ),
            }
            forwarded += 1;
        }
        producer.flush(Duration::from_secs(60)).expect("flush");
        (forwarded, latencies)
    })
}

fn percentile(sorted: &[i64], level: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((level * sorted.len() as f64) as usize).min(sorted.len() - 1)] as f64 / 1e6
}

/// How long a pipeline took to drain the pre-filled topic: from the start of its processes,
/// and from the moment its first stage received its first record (after joining its consumer
/// group and, for ingest, restoring its de-duplication state: a one-off, not sustained work).
#[derive(Clone, Copy)]
struct Drain {
    with_start_up: f64,
    from_first_record: f64,
}

/// Three null stages draining `topic` (already holding `events`): how long until the third has
/// forwarded them all. With a producer at `rate`, the latencies instead.
fn null_pipeline(
    kafka: &KafkaArgs,
    raw: &str,
    events: u64,
    rate_for: Option<(u64, u64)>,
) -> (Drain, Vec<i64>) {
    let prefix = unique_name("bnull");
    let hops: Vec<String> = (1..=3).map(|hop| format!("{prefix}.{hop}")).collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime
        .block_on(ensure_topics(
            kafka,
            &hops
                .iter()
                .map(|hop| TopicSpec::new(hop, PARTITIONS))
                .collect::<Vec<_>>(),
        ))
        .expect("null topics");
    let stop = Arc::new(AtomicBool::new(false));
    let (input, produced_by) = match rate_for {
        None => (raw.to_string(), None),
        Some((rate, seconds)) => {
            let input = format!("{prefix}.0");
            runtime
                .block_on(ensure_topics(kafka, &[TopicSpec::new(&input, PARTITIONS)]))
                .expect("input topic");
            let kafka = kafka.clone();
            let topic = input.clone();
            let handle = std::thread::spawn(move || {
                let paced_producer = producer(&kafka);
                let value = vec![0u8; 300];
                paced(rate, seconds, |n| {
                    let key = format!("{}|{n}", now_micros());
                    send(&paced_producer, &topic, key.as_bytes(), &value);
                });
                paced_producer
                    .flush(Duration::from_secs(60))
                    .expect("flush");
            });
            (input, Some(handle))
        }
    };
    let started = Instant::now();
    let first_record = Arc::new(OnceLock::new());
    let stages = vec![
        null_stage(
            kafka.clone(),
            input,
            hops[0].clone(),
            stop.clone(),
            false,
            Some(first_record.clone()),
        ),
        null_stage(
            kafka.clone(),
            hops[0].clone(),
            hops[1].clone(),
            stop.clone(),
            false,
            None,
        ),
        null_stage(
            kafka.clone(),
            hops[1].clone(),
            hops[2].clone(),
            stop.clone(),
            true,
            None,
        ),
    ];
    if let Some(handle) = produced_by {
        handle.join().expect("producer");
    }
    // Done when the third hop holds every record.
    let consumer: BaseConsumer = kafka
        .consumer_config("bench-null-watch")
        .create()
        .expect("watch");
    let expected = rate_for.map_or(events, |(rate, seconds)| rate * seconds);
    loop {
        let total: i64 = (0..PARTITIONS)
            .map(|partition| {
                consumer
                    .fetch_watermarks(&hops[2], partition, Duration::from_secs(5))
                    .map_or(0, |(_, high)| high)
            })
            .sum();
        if total as u64 >= expected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the null pipeline stalled at {total}"
        );
        std::thread::sleep(NULL_WATCH_INTERVAL); // polling, with the deadline above
    }
    let drain = Drain {
        with_start_up: started.elapsed().as_secs_f64(),
        from_first_record: first_record
            .get()
            .map_or(f64::NAN, |first| first.elapsed().as_secs_f64()),
    };
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for stage in stages {
        latencies.extend(stage.join().expect("null stage").1);
    }
    latencies.sort_unstable();
    (drain, latencies)
}

/// Calls `send(n)` `rate` times a second for `seconds`, evenly spaced.
fn paced(rate: u64, seconds: u64, mut send: impl FnMut(usize)) {
    let started = Instant::now();
    let total = rate * seconds;
    for n in 0..total {
        let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait); // pacing the input rate, not waiting for a result
        }
        send(n as usize);
    }
}

#[derive(serde::Deserialize, clickhouse::Row)]
struct LatencyRow {
    rows: u64,
    p50_ms: f64,
    p99_ms: f64,
    /// The p99 split at `enriched_at`, when enrich joined the event: ingest, enrich and two
    /// broker hops before; the sink and ClickHouse after.
    p99_to_enriched_ms: f64,
    p99_enriched_to_queryable_ms: f64,
}

/// The null pipeline draining `setup`'s pre-filled raw topic, with its CPU.
fn null_drain(kafka: &KafkaArgs, setup: &Setup, events: u64) -> Drain {
    // The null stages are threads of this process: its CPU, and the broker's, over their drain.
    let mut measured = vec![("null stages (this process)", std::process::id())];
    measured.extend(
        stack_pids()
            .into_iter()
            .filter(|(name, _)| *name == "kafka"),
    );
    let cpu_before = cpu_now(&measured);
    let (drain, _) = null_pipeline(kafka, &setup.topics.raw_events, events, None);
    eprintln!(
        "null pipeline: {:.2} s ({:.2} s with start-up)",
        drain.from_first_record, drain.with_start_up
    );
    print_cpu_used(&measured, &cpu_before, events);
    drain
}

/// Waits until the sink's analytics stores hold everything ClickHouse holds now: the refresh
/// of the reference data just loaded (20k customers' orders) is start-up, as the load is.
async fn analytics_caught_up(sink: &StageProcess) {
    let now_seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    poll_until(
        "the analytics stores to catch up with the reference data",
        Duration::from_secs(900),
        || async {
            let refreshed_at = value(
                &metrics(sink).await,
                "boomerang_sink_analytics_refreshed_at_seconds",
                &[],
            );
            (refreshed_at > now_seconds).then_some(())
        },
    )
    .await;
}

/// The three stage binaries draining `setup`'s pre-filled raw topic into ClickHouse, with
/// their CPU.
fn boomerang_drain(
    runtime: &tokio::runtime::Runtime,
    stack: &Stack,
    setup: &Setup,
    binaries: &[String; 3],
    events: u64,
) -> Drain {
    let drain = runtime.block_on(async {
        // enrich and sink first, until the reference data is loaded and in ClickHouse: the
        // clock then measures the events only, like the null pipeline's.
        let group = unique_name("bench-e2e");
        let downstream = start_stages(stack, setup, binaries, &group, &[1, 2]).await;
        let loading = Instant::now();
        while rows_inserted(&downstream[1], "orders").await < events
            || rows_inserted(&downstream[1], "customers").await < CUSTOMERS as u64
        {
            assert!(
                loading.elapsed() < Duration::from_secs(900),
                "reference data did not load"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        analytics_caught_up(&downstream[1]).await;
        let ingest = start_stages(stack, setup, binaries, &group, &[0]).await;
        let measured = pipeline_pids(&ingest[0], &downstream[0], &downstream[1]);
        let cpu_before = cpu_now(&measured);
        let profiler = start_profiler();
        let started = Instant::now();
        let mut first_record: Option<Instant> = None;
        loop {
            let inserted = events_inserted(&downstream[1]).await;
            if inserted >= events {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1800),
                "the pipeline stalled"
            );
            if first_record.is_none() {
                if received(&ingest[0]).await > 0 {
                    first_record = Some(Instant::now());
                } else {
                    // Polling often only until ingest has its partitions and its first record.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
            // Once the end is less than a second away at the rate so far, as often as the null
            // pipeline's watch polls its last hop: the same resolution. Until then, every
            // 200 ms: each look renders the sink's whole `/metrics`, and 50 a second were 7% of
            // the sink's CPU in a drain (`perf`, 2026-12-03), a cost of the watch, not of the
            // pipeline (Prometheus scrapes every few seconds). A rate misjudged low only makes
            // the drain look longer.
            let near_the_end = first_record.is_none_or(|first| {
                let rate = inserted as f64 / first.elapsed().as_secs_f64().max(1e-3);
                (events - inserted) as f64 / rate.max(1.0) < 1.0
            });
            tokio::time::sleep(if near_the_end {
                NULL_WATCH_INTERVAL
            } else {
                FAR_WATCH_INTERVAL
            })
            .await;
        }
        let drain = Drain {
            with_start_up: started.elapsed().as_secs_f64(),
            from_first_record: first_record.map_or(f64::NAN, |first| first.elapsed().as_secs_f64()),
        };
        stop_profiler(profiler);
        print_cpu_used(&measured, &cpu_before, events);
        let sink_metrics = metrics(&downstream[1]).await;
        let events_table = ["table=\"post_purchase_events\""];
        let inserts = value(
            &sink_metrics,
            "boomerang_sink_insert_rows_count",
            &events_table,
        );
        let rows = value(
            &sink_metrics,
            "boomerang_sink_insert_rows_sum",
            &events_table,
        );
        eprintln!(
            "sink: {inserts} inserts of events, {} rows per insert",
            rows / inserts.max(1)
        );
        for (name, process) in ["ingest", "enrich", "sink"]
            .iter()
            .zip(ingest.iter().chain(&downstream))
        {
            let exposition = metrics(process).await;
            let batches = value(&exposition, "boomerang_batch_duration_seconds_count", &[]);
            let records = value(&exposition, "boomerang_received_events_total", &[]);
            eprintln!(
                "{name}: {batches} batches, {} records per batch; peak rss {} MiB",
                records / batches.max(1),
                peak_rss_kib(process.id()) / 1024
            );
        }
        for process in ingest.iter().chain(&downstream) {
            process.terminate();
        }
        drain
    });
    eprintln!(
        "boomerang: {:.2} s ({:.2} s with start-up)",
        drain.from_first_record, drain.with_start_up
    );
    drain
}

/// `BOOMERANG_BENCH_PROFILE`: a shell command run while Boomerang drains, from its clock's
/// start to its end (then sent SIGINT), e.g. `perf record -F 499 -a -g -o /tmp/e2e.perf`.
fn start_profiler() -> Option<std::process::Child> {
    let command = std::env::var("BOOMERANG_BENCH_PROFILE").ok()?;
    let child = std::process::Command::new("sh")
        .args(["-c", &format!("exec {command}")])
        .spawn()
        .expect("start BOOMERANG_BENCH_PROFILE");
    Some(child)
}

fn stop_profiler(profiler: Option<std::process::Child>) {
    let Some(mut child) = profiler else { return };
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn main() {
    let events = env_number("BOOMERANG_BENCH_EVENTS", 1_000_000);
    let rate = env_number("BOOMERANG_BENCH_RATE", 2_000);
    let seconds = env_number("BOOMERANG_BENCH_SECONDS", 30);
    let rounds_wanted = env_number("BOOMERANG_BENCH_ROUNDS", 3).max(1);
    let binaries = [
        built_release_binary("boomerang-ingest", "boomerang-ingest")
            .to_string_lossy()
            .into_owned(),
        built_release_binary("boomerang-enrich", "boomerang-enrich")
            .to_string_lossy()
            .into_owned(),
        built_release_binary("boomerang-sink", "boomerang-sink")
            .to_string_lossy()
            .into_owned(),
    ];
    let stack = Stack::from_env();
    let kafka = KafkaArgs::for_brokers(&stack.kafka_brokers);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    // Throughput: rounds, each with a new pre-filled raw topic drained by both pipelines, the
    // order alternating so that neither always runs on the fresher broker.
    let mut rounds = Vec::new();
    for round in 0..rounds_wanted {
        let setup = runtime.block_on(setup(&stack, &kafka, &unique_name("be2e-t")));
        publish_reference_data(&kafka, &setup, events as usize);
        let prefill = producer(&kafka);
        for n in 0..events as usize {
            let (key, value) = raw_event(setup.event_schema, n);
            send(&prefill, &setup.topics.raw_events, &key, &value);
        }
        prefill.flush(Duration::from_secs(300)).expect("flush");
        eprintln!("round {}: pre-filled {events} events", round + 1);
        let null_first = round % 2 == 0;
        // Each drain starts on a quiet machine: not while ClickHouse merges what the last one
        // inserted, nor while the broker settles the pre-fill.
        let quiet = || wait_for_quiet_machine(QUIET_IDLE_SHARE, QUIET_MAX_WAIT);
        let (null, boomerang) = if null_first {
            quiet();
            let null = null_drain(&kafka, &setup, events);
            quiet();
            (
                null,
                boomerang_drain(&runtime, &stack, &setup, &binaries, events),
            )
        } else {
            quiet();
            let boomerang = boomerang_drain(&runtime, &stack, &setup, &binaries, events);
            quiet();
            (null_drain(&kafka, &setup, events), boomerang)
        };
        eprintln!(
            "round {}: null {:.2} s, Boomerang {:.2} s: {:.2}",
            round + 1,
            null.from_first_record,
            boomerang.from_first_record,
            null.from_first_record / boomerang.from_first_record
        );
        rounds.push((null_first, null, boomerang));
    }

    // Latency at a fixed rate.
    wait_for_quiet_machine(QUIET_IDLE_SHARE, QUIET_MAX_WAIT);
    let latency = runtime.block_on(setup(&stack, &kafka, &unique_name("be2e-l")));
    let total = (rate * seconds) as usize;
    publish_reference_data(&kafka, &latency, total);
    let boomerang_latency: LatencyRow = runtime.block_on(async {
        let processes = start_stages(&stack, &latency, &binaries, &unique_name("bench-e2e"), &[0, 1, 2]).await;
        // Paced events start once every stage owns its partitions and the reference data
        // published above is loaded (enrich) and written (sink), as in the drains: joining the
        // consumer group and loading a backlog are start-up, not an event's latency. Without
        // the second wait the first events queued behind the sink's insert of the 60k orders
        // (~1 s) and alone decided the p99.
        for process in &processes {
            poll_until("the stage to own its partitions", Duration::from_secs(60), || async {
                (value(&metrics(process).await, "boomerang_owned_partitions", &[]) > 0).then_some(())
            })
            .await;
        }
        poll_until("the reference data to be loaded and written", Duration::from_secs(900), || async {
            let loaded = value(&metrics(&processes[1]).await, "boomerang_enrich_reference_caught_up", &[]) == 1;
            let written = rows_inserted(&processes[2], "orders").await >= total as u64
                && rows_inserted(&processes[2], "customers").await >= CUSTOMERS as u64;
            (loaded && written).then_some(())
        })
        .await;
        analytics_caught_up(&processes[2]).await;
        // CPU over the paced run, per process: at a low rate the broker's share is the one that
        // moves (the local broker's reads cost more the more batches a partition holds).
        let measured = pipeline_pids(&processes[0], &processes[1], &processes[2]);
        let cpu_before = cpu_now(&measured);
        let kafka = kafka.clone();
        let topic = latency.topics.raw_events.clone();
        let schema = latency.event_schema;
        let producing = std::thread::spawn(move || {
            let paced_producer = producer(&kafka);
            paced(rate, seconds, |n| {
                let (key, value) = raw_event(schema, n);
                send(&paced_producer, &topic, &key, &value);
            });
            paced_producer.flush(Duration::from_secs(60)).expect("flush");
        });
        let started = Instant::now();
        let mut last_report = Instant::now();
        loop {
            let inserted = events_inserted(&processes[2]).await;
            if inserted >= total as u64 {
                break;
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                last_report = Instant::now();
                eprintln!("latency run: {inserted} of {total} events queryable");
            }
            assert!(started.elapsed() < Duration::from_secs(600), "the pipeline fell behind");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        producing.join().expect("producer");
        eprintln!("latency run: all {total} events queryable; querying the latencies");
        print_cpu_used(&measured, &cpu_before, total as u64);
        for process in &processes {
            process.terminate();
        }
        latency
            .clickhouse
            .client()
            .query(
                "SELECT count() AS rows, \
                 quantileExact(0.5)(toUnixTimestamp64Micro(inserted_at) - toInt64(splitByChar('-', event_id)[2])) / 1000 AS p50_ms, \
                 quantileExact(0.99)(toUnixTimestamp64Micro(inserted_at) - toInt64(splitByChar('-', event_id)[2])) / 1000 AS p99_ms, \
                 quantileExact(0.99)(toUnixTimestamp64Micro(enriched_at) - toInt64(splitByChar('-', event_id)[2])) / 1000 AS p99_to_enriched_ms, \
                 quantileExact(0.99)(toUnixTimestamp64Micro(inserted_at) - toUnixTimestamp64Micro(enriched_at)) / 1000 AS p99_enriched_to_queryable_ms \
                 FROM post_purchase_events",
            )
            .fetch_one()
            .await
            .expect("latency")
    });
    eprintln!(
        "boomerang at {rate}/s: {} events, p50 {:.0} ms, p99 {:.0} ms (p99 produce → enriched {:.0} ms, enriched → queryable {:.0} ms)",
        boomerang_latency.rows,
        boomerang_latency.p50_ms,
        boomerang_latency.p99_ms,
        boomerang_latency.p99_to_enriched_ms,
        boomerang_latency.p99_enriched_to_queryable_ms
    );
    let (_, null_latencies) = null_pipeline(&kafka, "", 0, Some((rate, seconds)));

    let events_rate = |seconds: f64| events as f64 / seconds;
    println!();
    println!(
        "| round (first to drain) | null s | null events/s | Boomerang s | Boomerang events/s | vs null | with start-up: null s | Boomerang s | vs null |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (index, (null_first, null, boomerang)) in rounds.iter().enumerate() {
        println!(
            "| {} ({}) | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            index + 1,
            if *null_first { "null" } else { "Boomerang" },
            null.from_first_record,
            events_rate(null.from_first_record),
            boomerang.from_first_record,
            events_rate(boomerang.from_first_record),
            null.from_first_record / boomerang.from_first_record,
            null.with_start_up,
            boomerang.with_start_up,
            null.with_start_up / boomerang.with_start_up,
        );
    }
    let ratios = |of: fn(&Drain) -> f64| {
        median(
            &rounds
                .iter()
                .map(|(_, null, boomerang)| of(null) / of(boomerang))
                .collect::<Vec<_>>(),
        )
    };
    println!(
        "| **median of {} rounds, {events} events each** | | | | | **{:.2}** | | | {:.2} |",
        rounds.len(),
        ratios(|drain| drain.from_first_record),
        ratios(|drain| drain.with_start_up),
    );
    println!();
    println!("| at {rate} events/s for {seconds} s | events | p50 | p99 |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| null pipeline, produce → third hop | {} | {:.0} ms | {:.0} ms |",
        null_latencies.len(),
        percentile(&null_latencies, 0.5) * 1000.0,
        percentile(&null_latencies, 0.99) * 1000.0
    );
    println!(
        "| Boomerang, produce → queryable in ClickHouse | {} | {:.0} ms | {:.0} ms |",
        boomerang_latency.rows, boomerang_latency.p50_ms, boomerang_latency.p99_ms
    );
}
