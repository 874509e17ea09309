//! What the end-to-end harnesses share: a pipeline's own topics, schemas and ClickHouse
//! database, the three release stage binaries started on them, and the CPU they use.

use std::time::Duration;

use boomerang_clickhouse::ClickhouseArgs;
use boomerang_clickhouse::migrations;
use boomerang_runtime::kafka::{KafkaArgs, TopicSpec, ensure_topics};
use boomerang_runtime::registry::{RegistryArgs, register_all};
use boomerang_runtime::topics::{TopicsArgs, value_subject};
use boomerang_testkit::{Stack, StageProcess, metrics, value};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

use crate::harness::cpu_seconds;

/// Partitions of each event topic.
pub const PARTITIONS: i32 = 4;

pub fn producer(kafka: &KafkaArgs) -> ThreadedProducer<DefaultProducerContext> {
    let mut config = kafka.producer_config();
    config.set("queue.buffering.max.messages", "1000000");
    // nisshi 0.8.1 rejected a paced idempotent producer's batch as out of sequence once,
    // stalling the run; the harness's own producers do not need idempotence.
    config.set("enable.idempotence", "false");
    config.create().expect("producer")
}

pub fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &[u8],
    value: &[u8],
) {
    send_record(
        producer,
        BaseRecord::<[u8], [u8]>::to(topic).key(key).payload(value),
    );
}

/// Hands `record` to the producer, waiting while its queue is full.
pub fn send_record(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// One pipeline's topics, schemas and ClickHouse database.
pub struct Setup {
    pub topics: TopicsArgs,
    pub clickhouse: ClickhouseArgs,
    pub event_schema: u32,
    pub customer_schema: u32,
    pub order_schema: u32,
}

pub async fn setup(stack: &Stack, kafka: &KafkaArgs, name: &str) -> Setup {
    let topics = TopicsArgs::with_prefix(name);
    ensure_topics(
        kafka,
        &[
            TopicSpec::new(&topics.raw_events, PARTITIONS),
            TopicSpec::new(&topics.validated_events, PARTITIONS),
            TopicSpec::new(&topics.enriched_events, PARTITIONS),
            TopicSpec::new(&topics.customers, 2).compacted(),
            TopicSpec::new(&topics.orders, 2).compacted(),
            TopicSpec::new(&topics.erasure_requests, 1),
            TopicSpec::new(&topics.dead_letter, 1),
        ],
    )
    .await
    .expect("topics");
    let clickhouse = ClickhouseArgs::for_url(&stack.clickhouse_url, &name.replace('-', "_"));
    migrations::apply(&clickhouse, None).await.expect("migrate");
    let settings = RegistryArgs::for_url(&stack.schema_registry_url)
        .settings()
        .expect("registry");
    let registrations = register_all(&settings, &topics).await.expect("register");
    let id = |topic: &str| {
        registrations
            .iter()
            .find(|registration| {
                registration.current && registration.subject == value_subject(topic)
            })
            .map(|registration| registration.schema_id)
            .expect("schema id")
    };
    Setup {
        event_schema: id(&topics.raw_events),
        customer_schema: id(&topics.customers),
        order_schema: id(&topics.orders),
        topics,
        clickhouse,
    }
}

/// Starts the stage binaries `which` (0 ingest, 1 enrich, 2 sink) on `setup`, waits until all
/// are ready.
pub async fn start_stages(
    stack: &Stack,
    setup: &Setup,
    binaries: &[String; 3],
    group: &str,
    which: &[usize],
) -> Vec<StageProcess> {
    let topics = &setup.topics;
    let common: Vec<String> = [
        ("--kafka-brokers", stack.kafka_brokers.as_str()),
        ("--schema-registry-url", stack.schema_registry_url.as_str()),
        ("--raw-events-topic", topics.raw_events.as_str()),
        ("--validated-events-topic", topics.validated_events.as_str()),
        ("--enriched-events-topic", topics.enriched_events.as_str()),
        ("--customers-topic", topics.customers.as_str()),
        ("--orders-topic", topics.orders.as_str()),
        ("--erasure-requests-topic", topics.erasure_requests.as_str()),
        ("--dead-letter-topic", topics.dead_letter.as_str()),
        ("--log-format", "text"),
        ("--log-filter", "warn"),
    ]
    .iter()
    .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
    .collect();
    let mut processes = Vec::new();
    for (index, binary) in binaries.iter().enumerate() {
        if !which.contains(&index) {
            continue;
        }
        let mut arguments = common.clone();
        arguments.extend(["--group-id".to_string(), format!("{group}-{index}")]);
        if index > 0 {
            arguments.extend([
                "--pseudonym-key".to_string(),
                "benchmark-pseudonym-key".to_string(),
            ]);
        }
        if index == 2 {
            arguments.extend([
                "--clickhouse-url".to_string(),
                setup.clickhouse.url.clone(),
                "--clickhouse-database".to_string(),
                setup.clickhouse.database.clone(),
            ]);
        }
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        processes.push(StageProcess::start(binary, &arguments, &[]));
    }
    for process in &processes {
        boomerang_testkit::wait_ready(process).await;
    }
    processes
}

pub async fn rows_inserted(sink: &StageProcess, table: &str) -> u64 {
    value(
        &metrics(sink).await,
        "boomerang_sink_rows_inserted_total",
        &[&format!("table=\"{table}\"")],
    )
}

/// CPU seconds of each process now, for [`print_cpu_used`].
pub fn cpu_now(measured: &[(&str, u32)]) -> Vec<f64> {
    measured.iter().map(|(_, pid)| cpu_seconds(*pid)).collect()
}

/// Each process's CPU since `before`, in total and per event.
pub fn print_cpu_used(measured: &[(&str, u32)], before: &[f64], events: u64) {
    for ((name, pid), before) in measured.iter().zip(before) {
        let used = cpu_seconds(*pid) - before;
        eprintln!(
            "cpu {name}: {used:.2} s ({:.1} µs per event)",
            used * 1e6 / events as f64
        );
    }
}

/// The three stages (ingest, enrich, sink) and the stack's broker and ClickHouse front end:
/// the processes whose CPU a run reports.
pub fn pipeline_pids(
    ingest: &StageProcess,
    enrich: &StageProcess,
    sink: &StageProcess,
) -> Vec<(&'static str, u32)> {
    let mut pids = vec![
        ("ingest", ingest.id()),
        ("enrich", enrich.id()),
        ("sink", sink.id()),
    ];
    pids.extend(stack_pids());
    pids
}

/// The local stack's broker and ClickHouse front end, by their pid files: beside the env file
/// `BOOMERANG_STACK_ENV` names (another clone's stack), else in this checkout's stack.
pub fn stack_pids() -> Vec<(&'static str, u32)> {
    let pids = std::env::var_os("BOOMERANG_STACK_ENV")
        .and_then(|env_file| {
            std::path::Path::new(&env_file)
                .parent()
                .map(|dir| dir.join("pids"))
        })
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/stack/pids")
        });
    ["kafka", "clickhouse"]
        .into_iter()
        .filter_map(|name| {
            let pid = std::fs::read_to_string(pids.join(format!("{name}.pid"))).ok()?;
            Some((name, pid.trim().parse().ok()?))
        })
        .collect()
}
