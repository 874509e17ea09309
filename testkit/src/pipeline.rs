//! A private pipeline for one test on the local stack: its own topics (named after a unique
//! prefix), every schema registered for them, its own consumer group, a producer, and the
//! arguments every stage binary takes in a test. Each stage's `tests/support` adds only what
//! is its own (its topics, its records, its flags).

use std::time::Duration;

use boomerang_runtime::kafka::{KafkaArgs, TopicSpec, ensure_topics};
use boomerang_runtime::registry::{Registration, RegistryArgs, register_all};
use boomerang_runtime::topics::{TopicsArgs, value_subject};
use boomerang_schemas::{AvroRecord, Customer, Order, codec};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{ReadRecord, Stack, StageProcess, read_topic_to_end, unique_name};

/// Records a test producer may send: room for hostile producers' large records (an order of
/// 100k lines).
const PRODUCER_MAX_RECORD_BYTES: usize = 16 << 20;

pub struct TestPipeline {
    pub stack: Stack,
    /// The unique name topics are prefixed with.
    pub name: String,
    pub topics: TopicsArgs,
    pub kafka: KafkaArgs,
    pub group: String,
    registrations: Vec<Registration>,
    producer: FutureProducer,
}

impl TestPipeline {
    /// Topics named after a unique `prefix-…`; creates those `create` lists and registers every
    /// topic's schemas (the earlier versions too).
    pub async fn new(prefix: &str, create: impl FnOnce(&TopicsArgs) -> Vec<TopicSpec>) -> Self {
        let stack = Stack::from_env();
        let name = unique_name(prefix);
        let topics = TopicsArgs::with_prefix(&name);
        let kafka = KafkaArgs::for_brokers(&stack.kafka_brokers);
        ensure_topics(&kafka, &create(&topics))
            .await
            .expect("create topics");
        let settings = RegistryArgs::for_url(&stack.schema_registry_url)
            .settings()
            .expect("registry settings");
        let registrations = register_all(&settings, &topics).await.expect("register");
        let mut large = kafka.clone();
        large.max_record_bytes = PRODUCER_MAX_RECORD_BYTES;
        let producer = large.producer_config().create().expect("producer");
        Self {
            group: unique_name(&format!("{prefix}-group")),
            stack,
            name,
            topics,
            kafka,
            registrations,
            producer,
        }
    }

    /// The registry id of `topic`'s current value schema.
    pub fn schema_id(&self, topic: &str) -> u32 {
        self.registered(topic, true)
    }

    /// The registry id of `topic`'s earlier value schema (version 1).
    pub fn earlier_schema_id(&self, topic: &str) -> u32 {
        self.registered(topic, false)
    }

    fn registered(&self, topic: &str, current: bool) -> u32 {
        let subject = value_subject(topic);
        self.registrations
            .iter()
            .find(|registration| registration.subject == subject && registration.current == current)
            .map(|registration| registration.schema_id)
            .unwrap_or_else(|| panic!("no schema registered for {subject} (current: {current})"))
    }

    /// What every stage takes in a test, before its own flags: the stack, the dead-letter
    /// topic, the group, sessions short enough that a killed instance's partitions move on
    /// soon, and text logs.
    pub fn common_arguments(&self) -> Vec<String> {
        [
            ("--kafka-property", "session.timeout.ms=6000"),
            ("--kafka-property", "heartbeat.interval.ms=500"),
            ("--kafka-brokers", self.stack.kafka_brokers.as_str()),
            (
                "--schema-registry-url",
                self.stack.schema_registry_url.as_str(),
            ),
            ("--dead-letter-topic", self.topics.dead_letter.as_str()),
            ("--group-id", self.group.as_str()),
            ("--log-format", "text"),
            ("--log-filter", "info,rdkafka=warn"),
        ]
        .iter()
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect()
    }

    /// Produces one record and waits for its acknowledgement.
    ///
    /// Sent again, up to twice, when the broker refuses it as out of sequence. The local broker
    /// (nisshi 0.8.1) has once answered OUT_OF_ORDER_SEQUENCE_NUMBER to a producer sending one
    /// record at a time, its remembered next sequence one behind a batch it had acknowledged.
    /// The broker refuses such a batch before it stores it, so sending the record again cannot
    /// double it; if librdkafka had given the producer up instead, the next attempt fails the
    /// test with its error. Every other failure fails the test.
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let mut owned = OwnedHeaders::new();
            for (name, value) in headers {
                owned = owned.insert(Header {
                    key: name,
                    value: Some(*value),
                });
            }
            let mut record: FutureRecord<'_, str, [u8]> =
                FutureRecord::to(topic).key(key).headers(owned);
            if let Some(value) = value {
                record = record.payload(value);
            }
            match self.producer.send(record, Duration::from_secs(10)).await {
                Ok(_) => return,
                Err((
                    KafkaError::MessageProduction(RDKafkaErrorCode::OutOfOrderSequenceNumber),
                    _,
                )) if attempt < ATTEMPTS => {
                    eprintln!(
                        "{topic}: the broker refused a record as out of sequence (attempt {attempt}); sending it again"
                    );
                }
                Err(error) => panic!("produce: {error:?}"),
            }
        }
    }

    /// `record`, framed with `topic`'s current schema, keyed `key`.
    pub async fn produce<T: AvroRecord>(&self, topic: &str, key: &str, record: &T) {
        let value = codec::encode_framed(self.schema_id(topic), record).expect("encode");
        self.send(topic, key, Some(&value), &[]).await;
    }

    /// Reference data, as the CRM publishes it (enrich joins it, the sink stores it).
    pub async fn produce_customer(&self, customer: &Customer) {
        self.produce(&self.topics.customers, &customer.customer_id, customer)
            .await;
    }

    pub async fn delete_customer(&self, customer_id: &str) {
        self.send(&self.topics.customers, customer_id, None, &[])
            .await;
    }

    /// Reference data, as the shop publishes it.
    pub async fn produce_order(&self, order: &Order) {
        self.produce(&self.topics.orders, &order.order_id, order)
            .await;
    }

    pub async fn delete_order(&self, order_id: &str) {
        self.send(&self.topics.orders, order_id, None, &[]).await;
    }

    /// Every record of `topic` so far.
    pub fn read(&self, topic: &str) -> Vec<ReadRecord> {
        read_topic_to_end(&self.stack.kafka_brokers, topic)
    }

    pub fn dead_letters(&self) -> Vec<ReadRecord> {
        self.read(&self.topics.dead_letter)
    }
}

/// Starts `binary` with `arguments`, then `extra` (a later flag wins), in `environment`.
pub fn start_stage(
    binary: &str,
    arguments: &[String],
    extra: &[&str],
    environment: &[(&str, &str)],
) -> StageProcess {
    let mut all: Vec<&str> = arguments.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    StageProcess::start(binary, &all, environment)
}

/// Lets a stage's test pipeline, a struct whose field `base` is its [`TestPipeline`], be used
/// as one (`pipeline.topics`, `pipeline.send(…)`).
#[macro_export]
macro_rules! extends_test_pipeline {
    ($pipeline:ty) => {
        impl std::ops::Deref for $pipeline {
            type Target = $crate::TestPipeline;
            fn deref(&self) -> &$crate::TestPipeline {
                &self.base
            }
        }
    };
}
