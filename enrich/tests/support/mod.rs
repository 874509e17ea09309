//! A private pipeline for one enrich test: its own topics, schemas and consumer group on the
//! local stack, the real binary, and ways to feed it events and reference data and to read
//! what it wrote.

#![allow(dead_code, unused_imports)] // each test file uses its own subset

use std::time::Duration;

use boomerang_runtime::kafka::{KafkaArgs, TopicSpec, ensure_topics};
use boomerang_runtime::registry::{RegistryArgs, register_all};
use boomerang_runtime::topics::{TopicsArgs, value_subject};
use boomerang_runtime::wire;
use boomerang_schemas::{
    AvroRecord, Customer, EnrichedPostPurchaseEvent, Order, PostPurchaseEvent, TimestampMicros,
    codec,
};
use boomerang_testkit::{ReadRecord, Stack, StageProcess, poll_until, unique_name};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub const BINARY: &str = env!("CARGO_BIN_EXE_boomerang-enrich");
pub const PSEUDONYM_KEY: &str = "integration-test-pseudonym-key";
pub const IDEMPOTENCY_KEY_HEADER: &str = "boomerang.idempotency_key";

pub struct Pipeline {
    pub stack: Stack,
    pub topics: TopicsArgs,
    pub kafka: KafkaArgs,
    pub group: String,
    event_schema_id: u32,
    customer_schema_id: u32,
    order_schema_id: u32,
    producer: FutureProducer,
}

impl Pipeline {
    pub async fn new(event_partitions: i32) -> Self {
        let stack = Stack::from_env();
        let topics = TopicsArgs::with_prefix(&unique_name("it-enr"));
        let kafka = KafkaArgs::for_brokers(&stack.kafka_brokers);
        ensure_topics(
            &kafka,
            &[
                TopicSpec::new(&topics.validated_events, event_partitions),
                TopicSpec::new(&topics.enriched_events, event_partitions),
                TopicSpec::new(&topics.customers, 2).compacted(),
                TopicSpec::new(&topics.orders, 2).compacted(),
                TopicSpec::new(&topics.dead_letter, 1),
            ],
        )
        .await
        .expect("create topics");
        let settings = RegistryArgs::for_url(&stack.schema_registry_url)
            .settings()
            .expect("registry settings");
        let registrations = register_all(&settings, &topics).await.expect("register");
        let id_of = |topic: &str| {
            let subject = value_subject(topic);
            registrations
                .iter()
                .find(|registration| registration.subject == subject && registration.current)
                .map(|registration| registration.schema_id)
                .expect("registered")
        };
        // Room for hostile producers' large records (an order of 100k lines).
        let mut large = kafka.clone();
        large.max_record_bytes = 16 << 20;
        let producer = large.producer_config().create().expect("producer");
        Self {
            event_schema_id: id_of(&topics.validated_events),
            customer_schema_id: id_of(&topics.customers),
            order_schema_id: id_of(&topics.orders),
            group: unique_name("it-enr-group"),
            stack,
            topics,
            kafka,
            producer,
        }
    }

    pub fn arguments(&self, max_reference_wait_ms: u64) -> Vec<String> {
        let wait = max_reference_wait_ms.to_string();
        [
            // A killed instance holds its partitions until its session times out: keep it short.
            ("--kafka-property", "session.timeout.ms=6000"),
            ("--kafka-property", "heartbeat.interval.ms=500"),
            ("--kafka-brokers", self.stack.kafka_brokers.as_str()),
            (
                "--schema-registry-url",
                self.stack.schema_registry_url.as_str(),
            ),
            (
                "--validated-events-topic",
                self.topics.validated_events.as_str(),
            ),
            (
                "--enriched-events-topic",
                self.topics.enriched_events.as_str(),
            ),
            ("--customers-topic", self.topics.customers.as_str()),
            ("--orders-topic", self.topics.orders.as_str()),
            ("--dead-letter-topic", self.topics.dead_letter.as_str()),
            ("--group-id", self.group.as_str()),
            ("--pseudonym-key", PSEUDONYM_KEY),
            ("--max-reference-wait-ms", wait.as_str()),
            ("--batch-max-wait-ms", "50"),
            ("--log-format", "text"),
            ("--log-filter", "info,rdkafka=warn"),
        ]
        .iter()
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect()
    }

    pub fn start(&self, max_reference_wait_ms: u64) -> StageProcess {
        self.start_with(max_reference_wait_ms, &[])
    }

    pub fn start_with(&self, max_reference_wait_ms: u64, extra: &[&str]) -> StageProcess {
        self.start_with_environment(max_reference_wait_ms, extra, &[])
    }

    pub fn start_with_environment(
        &self,
        max_reference_wait_ms: u64,
        extra: &[&str],
        environment: &[(&str, &str)],
    ) -> StageProcess {
        let arguments = self.arguments(max_reference_wait_ms);
        let mut arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        arguments.extend_from_slice(extra);
        StageProcess::start(BINARY, &arguments, environment)
    }

    async fn send(&self, topic: &str, key: &str, value: Option<Vec<u8>>, headers: OwnedHeaders) {
        let mut record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(topic).key(key).headers(headers);
        if let Some(value) = &value {
            record = record.payload(value.as_slice());
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("produce");
    }

    /// A validated event, as ingest publishes it.
    pub async fn produce_event(&self, event: &PostPurchaseEvent) {
        let headers = OwnedHeaders::new().insert(Header {
            key: IDEMPOTENCY_KEY_HEADER,
            value: Some(event.idempotency_key.as_bytes()),
        });
        let value = codec::encode_framed(self.event_schema_id, event).expect("encode");
        self.send(
            &self.topics.validated_events,
            &event.order_id,
            Some(value),
            headers,
        )
        .await;
    }

    /// Bytes that are no validated event at all.
    pub async fn produce_raw_event(&self, key: &str, value: &[u8]) {
        self.send(
            &self.topics.validated_events,
            key,
            Some(value.to_vec()),
            OwnedHeaders::new(),
        )
        .await;
    }

    pub async fn produce_customer(&self, customer: &Customer) {
        let value = codec::encode_framed(self.customer_schema_id, customer).expect("encode");
        self.send(
            &self.topics.customers,
            &customer.customer_id,
            Some(value),
            OwnedHeaders::new(),
        )
        .await;
    }

    pub async fn delete_customer(&self, customer_id: &str) {
        self.send(
            &self.topics.customers,
            customer_id,
            None,
            OwnedHeaders::new(),
        )
        .await;
    }

    pub async fn produce_order(&self, order: &Order) {
        let value = codec::encode_framed(self.order_schema_id, order).expect("encode");
        self.send(
            &self.topics.orders,
            &order.order_id,
            Some(value),
            OwnedHeaders::new(),
        )
        .await;
    }

    pub fn enriched_records(&self) -> Vec<ReadRecord> {
        boomerang_testkit::read_topic_to_end(
            &self.stack.kafka_brokers,
            &self.topics.enriched_events,
        )
    }

    /// Every enriched event so far, decoded.
    pub fn enriched(&self) -> Vec<EnrichedPostPurchaseEvent> {
        self.enriched_records()
            .iter()
            .map(|record| {
                let value = record.value.as_deref().expect("a value");
                let (_schema_id, datum) = wire::parse(value).expect("framed");
                codec::decode::<EnrichedPostPurchaseEvent>(datum).expect("decodes")
            })
            .collect()
    }

    /// Polls until an enriched event with this id is there.
    pub async fn wait_for_enriched(&self, event_id: &str) -> EnrichedPostPurchaseEvent {
        poll_until(
            &format!("enriched event {event_id}"),
            Duration::from_secs(60),
            || async {
                self.enriched()
                    .into_iter()
                    .find(|enriched| enriched.event.event_id == event_id)
            },
        )
        .await
    }

    pub fn dead_letters(&self) -> Vec<ReadRecord> {
        boomerang_testkit::read_topic_to_end(&self.stack.kafka_brokers, &self.topics.dead_letter)
    }
}

/// A RETURN_REQUESTED event for line 1 of `order_id`, by `customer_id`, a day ago.
pub fn event(event_id: &str, order_id: &str, customer_id: &str) -> PostPurchaseEvent {
    let mut event = boomerang_testkit::samples::event();
    event.event_id = event_id.to_string();
    event.idempotency_key = format!("key-{event_id}");
    event.case_id = format!("case-{event_id}");
    event.order_id = order_id.to_string();
    event.order_line_id = format!("{order_id}/1");
    event.customer_id = customer_id.to_string();
    event.reason_text = Some("a note that may name people".into());
    event.occurred_at = TimestampMicros::now().saturating_sub(Duration::from_secs(24 * 3600));
    event
}

/// An order delivered ten days ago.
pub fn order(order_id: &str, customer_id: &str) -> Order {
    let delivered = TimestampMicros::now().saturating_sub(Duration::from_secs(10 * 24 * 3600));
    boomerang_testkit::samples::order(order_id, customer_id, Some(delivered.as_unix_micros()))
}

pub use boomerang_testkit::{metrics, value, wait_ready};

/// Waits until a metric, summed over the label filters, reaches `at_least`.
pub async fn wait_for_metric(process: &StageProcess, name: &str, labels: &[&str], at_least: u64) {
    poll_until(
        &format!("{name}{labels:?} >= {at_least}"),
        Duration::from_secs(60),
        || async { (value(&metrics(process).await, name, labels) >= at_least).then_some(()) },
    )
    .await;
}
