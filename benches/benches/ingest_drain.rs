//! End-to-end harness: the ingest binary draining a pre-filled raw topic, beside a bare
//! rdkafka consumer draining the same topic, in the same run and on the same stack, so the
//! ratio holds even on a shared, noisy machine. Needs the local stack
//! (`deploy/local/stack.sh up`). Target: ingest ≥ 0.7× the bare consumer's rate.
//!
//! cargo bench -p boomerang-benches --bench ingest_drain            # 1M events
//! BOOMERANG_BENCH_EVENTS=200000 cargo bench -p boomerang-benches --bench ingest_drain

use std::time::{Duration, Instant};

use boomerang_benches::harness::{cpu_seconds, env_number, peak_rss_kib, prefill};
use boomerang_runtime::kafka::{KafkaArgs, TopicSpec, ensure_topics};
use boomerang_runtime::registry::{RegistryArgs, register_all};
use boomerang_runtime::topics::{TopicsArgs, value_subject};
use boomerang_schemas::{PostPurchaseEvent, TimestampMicros};
use boomerang_testkit::{Stack, StageProcess, metrics, poll_until, unique_name, value};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const PARTITIONS: i32 = 4;

fn event(n: usize, now: TimestampMicros) -> PostPurchaseEvent {
    boomerang_testkit::samples::refund_event(n, now)
}

fn bare_consumer_drain(kafka: &KafkaArgs, topic: &str, events: usize) -> Duration {
    let consumer: BaseConsumer = kafka
        .consumer_config(&unique_name("bench-bare"))
        .create()
        .expect("consumer");
    let started = Instant::now();
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut consumed = 0usize;
    let mut bytes = 0usize;
    while consumed < events {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("consume");
            bytes += rdkafka::Message::payload(&message).map_or(0, <[u8]>::len);
            consumed += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "bare consumer stalled at {consumed}"
        );
    }
    std::hint::black_box(bytes);
    started.elapsed()
}

/// The least a consume → produce stage can do: forward each record's bytes to another topic,
/// same partition, with the producer settings ingest uses, no waiting until the end.
fn bare_forwarder_drain(kafka: &KafkaArgs, topic: &str, to_topic: &str, events: usize) -> Duration {
    let consumer: BaseConsumer = kafka
        .consumer_config(&unique_name("bench-forward"))
        .create()
        .expect("consumer");
    let mut config = kafka.producer_config();
    config.set("queue.buffering.max.messages", "1000000");
    let producer: ThreadedProducer<DefaultProducerContext> = config.create().expect("producer");
    let started = Instant::now();
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut forwarded = 0usize;
    while forwarded < events {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.expect("consume");
        let mut record =
            BaseRecord::<[u8], [u8]>::to(to_topic).partition(rdkafka::Message::partition(&message));
        if let Some(key) = rdkafka::Message::key(&message) {
            record = record.key(key);
        }
        if let Some(payload) = rdkafka::Message::payload(&message) {
            record = record.payload(payload);
        }
        let mut pending = record;
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((_, record)) => {
                    pending = record;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        forwarded += 1;
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "forwarder stalled at {forwarded}"
        );
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    started.elapsed()
}

fn main() {
    let events = env_number("BOOMERANG_BENCH_EVENTS", 1_000_000) as usize;
    let binary =
        boomerang_benches::harness::built_release_binary("boomerang-ingest", "boomerang-ingest");
    let stack = Stack::from_env();
    let kafka = KafkaArgs::for_brokers(&stack.kafka_brokers);
    let topics = TopicsArgs::with_prefix(&unique_name("bench-ingest"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let schema_id = runtime.block_on(async {
        ensure_topics(
            &kafka,
            &[
                TopicSpec::new(&topics.raw_events, PARTITIONS),
                TopicSpec::new(&topics.validated_events, PARTITIONS),
                TopicSpec::new(&topics.dead_letter, 1),
            ],
        )
        .await
        .expect("topics");
        let settings = RegistryArgs::for_url(&stack.schema_registry_url)
            .settings()
            .expect("registry");
        let registrations = register_all(&settings, &topics).await.expect("register");
        registrations
            .iter()
            .find(|registration| {
                registration.current && registration.subject == value_subject(&topics.raw_events)
            })
            .map(|registration| registration.schema_id)
            .expect("raw schema id")
    });

    println!("pre-filling {} with {events} events…", topics.raw_events);
    let now = TimestampMicros::now();
    let prefill_time = prefill(&kafka, &topics.raw_events, schema_id, events, |n| {
        let event = event(n, now);
        (event.order_id.clone(), event)
    });
    println!("pre-filled in {:.1} s", prefill_time.as_secs_f64());

    let bare = bare_consumer_drain(&kafka, &topics.raw_events, events);
    println!(
        "bare rdkafka consumer drained it in {:.2} s",
        bare.as_secs_f64()
    );
    // A short name: nisshi 0.8.1 answered CreateTopics for a 60-character name with a response
    // librdkafka could not parse ("Bad message format").
    let forwarded_topic = unique_name("bench-fwd");
    runtime
        .block_on(ensure_topics(
            &kafka,
            &[TopicSpec::new(&forwarded_topic, PARTITIONS)],
        ))
        .expect("forwarded topic");
    let forwarder = bare_forwarder_drain(&kafka, &topics.raw_events, &forwarded_topic, events);
    println!(
        "bare rdkafka forwarder drained it in {:.2} s",
        forwarder.as_secs_f64()
    );

    let group = unique_name("bench-ingest-group");
    let arguments = [
        "--kafka-brokers",
        &stack.kafka_brokers,
        "--schema-registry-url",
        &stack.schema_registry_url,
        "--raw-events-topic",
        &topics.raw_events,
        "--validated-events-topic",
        &topics.validated_events,
        "--dead-letter-topic",
        &topics.dead_letter,
        "--group-id",
        &group,
        "--log-format",
        "text",
        "--log-filter",
        "warn",
    ];
    // BOOMERANG_BENCH_INGEST_WRAPPER runs the binary under a wrapper (a profiler, say).
    let binary = std::env::var("BOOMERANG_BENCH_INGEST_WRAPPER")
        .unwrap_or_else(|_| binary.to_string_lossy().into_owned());
    let (ingest, peak_rss, ingest_cpu) = runtime.block_on(async {
        let mut process = StageProcess::start(&binary, &arguments, &[]);
        boomerang_testkit::wait_ready(&process).await;
        let started = Instant::now();
        let cpu_at_start = cpu_seconds(process.id());
        let stage = &process;
        let text = poll_until(
            "ingest to receive every event",
            Duration::from_secs(1800),
            || async move {
                let text = metrics(stage).await;
                (value(&text, "boomerang_received_events_total", &[]) >= events as u64)
                    .then_some(text)
            },
        )
        .await;
        let elapsed = started.elapsed();
        let sent = value(&text, "boomerang_sent_events_total", &[]);
        assert_eq!(sent, events as u64, "every event is distinct and valid");
        let peak_rss = peak_rss_kib(process.id());
        let ingest_cpu = cpu_seconds(process.id()) - cpu_at_start;
        process.terminate();
        process.wait_exit(Duration::from_secs(15)).await;
        (elapsed, peak_rss, ingest_cpu)
    });
    let rate = |elapsed: Duration| events as f64 / elapsed.as_secs_f64();
    println!();
    println!("| run | events | seconds | events/s |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| bare rdkafka consumer | {events} | {:.2} | {:.0} |",
        bare.as_secs_f64(),
        rate(bare)
    );
    println!(
        "| bare rdkafka forwarder (consume, produce the same bytes) | {events} | {:.2} | {:.0} |",
        forwarder.as_secs_f64(),
        rate(forwarder)
    );
    println!(
        "| boomerang-ingest (decode, validate, de-dup, publish, commit) | {events} | {:.2} | {:.0} |",
        ingest.as_secs_f64(),
        rate(ingest)
    );
    println!();
    println!(
        "ingest / bare consumer = {:.2}; ingest / bare forwarder = {:.2}; ingest peak RSS {} MiB",
        rate(ingest) / rate(bare),
        rate(ingest) / rate(forwarder),
        peak_rss / 1024
    );
    println!(
        "ingest used {ingest_cpu:.2} CPU seconds while draining ({:.1} µs per event, {:.0}% of one core)",
        ingest_cpu * 1e6 / events as f64,
        100.0 * ingest_cpu / ingest.as_secs_f64()
    );
}
