//! A private pipeline for one ingest test: its own topics, schemas and consumer group on the
//! local stack, the real binary, and ways to feed it and read what it wrote.

#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::time::Duration;

use apache_avro::Schema;
use boomerang_ingest::publish::IDEMPOTENCY_KEY_HEADER;
use boomerang_runtime::kafka::{KafkaArgs, TopicSpec, ensure_topics};
use boomerang_runtime::registry::{RegistryArgs, register_all};
use boomerang_runtime::topics::{TopicsArgs, value_subject};
use boomerang_runtime::wire;
use boomerang_schemas::codec;
use boomerang_schemas::{PostPurchaseEvent, SchemaKind};
use boomerang_testkit::{ReadRecord, Stack, StageProcess, poll_until, unique_name};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub const BINARY: &str = env!("CARGO_BIN_EXE_boomerang-ingest");

pub struct Pipeline {
    pub stack: Stack,
    pub topics: TopicsArgs,
    pub kafka: KafkaArgs,
    pub group: String,
    pub current_schema_id: u32,
    pub v1_schema_id: u32,
    pub customer_schema_id: u32,
    producer: FutureProducer,
}

/// A record to produce to the raw topic.
pub struct Raw {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Pipeline {
    pub async fn new(partitions: i32) -> Self {
        let stack = Stack::from_env();
        let topics = TopicsArgs::with_prefix(&unique_name("it-ingest"));
        let kafka = KafkaArgs::for_brokers(&stack.kafka_brokers);
        ensure_topics(
            &kafka,
            &[
                TopicSpec::new(&topics.raw_events, partitions),
                TopicSpec::new(&topics.validated_events, partitions),
                TopicSpec::new(&topics.dead_letter, 1),
            ],
        )
        .await
        .expect("create topics");
        let settings = RegistryArgs::for_url(&stack.schema_registry_url)
            .settings()
            .expect("registry settings");
        let registrations = register_all(&settings, &topics).await.expect("register");
        let id_of = |subject: String, current: bool| {
            registrations
                .iter()
                .find(|registration| {
                    registration.subject == subject && registration.current == current
                })
                .map(|registration| registration.schema_id)
                .expect("registered")
        };
        let producer = kafka.producer_config().create().expect("producer");
        Self {
            current_schema_id: id_of(value_subject(&topics.raw_events), true),
            v1_schema_id: id_of(value_subject(&topics.raw_events), false),
            customer_schema_id: id_of(value_subject(&topics.customers), true),
            group: unique_name("it-ingest-group"),
            stack,
            topics,
            kafka,
            producer,
        }
    }

    pub fn arguments(&self) -> Vec<String> {
        [
            // A killed instance holds its partitions until its session times out: keep it short.
            ("--kafka-property", "session.timeout.ms=6000"),
            ("--kafka-property", "heartbeat.interval.ms=500"),
            ("--kafka-brokers", self.stack.kafka_brokers.as_str()),
            (
                "--schema-registry-url",
                self.stack.schema_registry_url.as_str(),
            ),
            ("--raw-events-topic", self.topics.raw_events.as_str()),
            (
                "--validated-events-topic",
                self.topics.validated_events.as_str(),
            ),
            ("--dead-letter-topic", self.topics.dead_letter.as_str()),
            ("--group-id", self.group.as_str()),
            ("--batch-max-wait-ms", "50"),
            ("--log-format", "text"),
            ("--log-filter", "info,rdkafka=warn"),
        ]
        .iter()
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect()
    }

    pub fn start(&self, environment: &[(&str, &str)]) -> StageProcess {
        self.start_with(&[], environment)
    }

    /// Starts ingest with `extra` arguments after the usual ones (a later one wins).
    pub fn start_with(&self, extra: &[&str], environment: &[(&str, &str)]) -> StageProcess {
        let arguments = self.arguments();
        let mut arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        arguments.extend_from_slice(extra);
        StageProcess::start(BINARY, &arguments, environment)
    }

    pub fn event(&self, idempotency_key: &str) -> PostPurchaseEvent {
        PostPurchaseEvent {
            event_id: format!("evt-{idempotency_key}"),
            idempotency_key: idempotency_key.to_string(),
            case_id: format!("rma-{idempotency_key}"),
            order_id: format!("ord-{idempotency_key}"),
            order_line_id: format!("ord-{idempotency_key}/1"),
            source_system: "it".into(),
            ..boomerang_testkit::samples::event()
        }
    }

    /// The event as a producer on the current schema frames it.
    pub fn current(&self, event: &PostPurchaseEvent) -> Raw {
        let datum = codec::encode(event).expect("encode");
        Raw {
            key: event.order_id.clone(),
            value: Some(wire::frame(self.current_schema_id, &datum)),
            headers: vec![],
        }
    }

    /// The event as a producer still on version 1 of the schema frames it.
    pub fn version_1(&self, event: &PostPurchaseEvent) -> Raw {
        let v1 = Schema::parse_str(SchemaKind::PostPurchaseEvent.history()[0]).expect("v1");
        let datum = codec::encode_for_writer_schema(event, &v1).expect("v1 datum");
        Raw {
            key: event.order_id.clone(),
            value: Some(wire::frame(self.v1_schema_id, &datum)),
            headers: vec![],
        }
    }

    pub async fn produce(&self, records: &[Raw]) {
        for record in records {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(*value),
                });
            }
            let mut future_record: FutureRecord<'_, str, [u8]> =
                FutureRecord::to(&self.topics.raw_events)
                    .key(record.key.as_str())
                    .headers(headers);
            if let Some(value) = &record.value {
                future_record = future_record.payload(value.as_slice());
            }
            self.producer
                .send(future_record, Duration::from_secs(10))
                .await
                .expect("produce raw record");
        }
    }

    pub fn validated(&self) -> Vec<ReadRecord> {
        boomerang_testkit::read_topic_to_end(
            &self.stack.kafka_brokers,
            &self.topics.validated_events,
        )
    }

    pub fn dead_letters(&self) -> Vec<ReadRecord> {
        boomerang_testkit::read_topic_to_end(&self.stack.kafka_brokers, &self.topics.dead_letter)
    }
}

pub use boomerang_testkit::metrics;

/// A metric's total over all its label sets.
pub fn counter(exposition: &str, name: &str) -> u64 {
    boomerang_testkit::value(exposition, name, &[])
}

/// Waits until the processes together have received `expected` records and answered for them.
pub async fn wait_until_received(processes: &[&StageProcess], expected: u64) {
    poll_until(
        &format!("{expected} records received"),
        Duration::from_secs(90),
        || async {
            let mut received = 0;
            for process in processes {
                received += counter(&metrics(process).await, "boomerang_received_events_total");
            }
            (received >= expected).then_some(())
        },
    )
    .await;
}

/// The partitions a running instance owns (0 while it does not answer).
pub async fn owned_partitions(process: &StageProcess) -> usize {
    counter(&metrics(process).await, "boomerang_owned_partitions") as usize
}

/// Partitions a running instance has been given and has given up, over its life.
pub async fn partition_changes(process: &StageProcess) -> (u64, u64) {
    let text = metrics(process).await;
    (
        boomerang_testkit::value(
            &text,
            "boomerang_partition_changes_total",
            &["change=\"assigned\""],
        ),
        boomerang_testkit::value(
            &text,
            "boomerang_partition_changes_total",
            &["change=\"revoked\""],
        ),
    )
}

/// How many validated records each idempotency key has.
pub fn count_per_key(records: &[ReadRecord]) -> BTreeMap<String, usize> {
    let mut per_key = BTreeMap::new();
    for record in records {
        let key = record
            .header(IDEMPOTENCY_KEY_HEADER)
            .expect("idempotency key header");
        *per_key.entry(key).or_default() += 1;
    }
    per_key
}
