//! Against the local stack: schemas registered with `register_all`, an event encoded in the
//! Confluent wire format with schema_registry_converter, produced to the broker, consumed and
//! decoded back.

use std::collections::BTreeMap;
use std::time::Duration;

use boomerang_runtime::kafka::{KafkaArgs, TopicSpec, ensure_topics};
use boomerang_runtime::registry::{RegistryArgs, register_all};
use boomerang_runtime::topics::{TopicsArgs, value_subject};
use boomerang_schemas::{
    Channel, EventType, Money, Outcome, PostPurchaseEvent, ReasonCode, ReturnMethod, SchemaKind,
    TimestampMicros,
};
use boomerang_testkit::{Stack, unique_name};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schema_registry_converter::async_impl::easy_avro::{EasyAvroDecoder, EasyAvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{get_all_versions, post_schema};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

fn event() -> PostPurchaseEvent {
    PostPurchaseEvent {
        event_id: "evt-1".into(),
        idempotency_key: "portal:rma-1:requested".into(),
        event_type: EventType::ReturnRequested,
        case_id: "rma-1".into(),
        order_id: "ord-1".into(),
        order_line_id: "ord-1/1".into(),
        customer_id: "cus-1".into(),
        sku: "SKU-1".into(),
        quantity: 1,
        reason: Some(ReasonCode::TooSmall),
        reason_text: None,
        amount: Some(Money::new(1_999, "EUR")),
        method: Some(ReturnMethod::Mail),
        channel: Channel::Web,
        outcome: Outcome::Pending,
        occurred_at: TimestampMicros::from_unix_micros(1_763_000_000_000_000),
        source_system: "returns-portal".into(),
        replacement_sku: None,
        warranty_resolution: None,
        disposition: None,
        attributes: BTreeMap::from([("portal".into(), "v4".into())]),
    }
}

#[tokio::test]
async fn a_registered_event_round_trips_through_the_broker_in_confluent_framing() {
    let stack = Stack::from_env();
    let topics = TopicsArgs::with_prefix(&unique_name("it-roundtrip"));
    let kafka = KafkaArgs::for_brokers(&stack.kafka_brokers);
    let settings = RegistryArgs::for_url(&stack.schema_registry_url)
        .settings()
        .expect("registry settings");

    let registrations = register_all(&settings, &topics)
        .await
        .expect("register schemas");
    let raw_subject = value_subject(&topics.raw_events);
    let raw: Vec<_> = registrations
        .iter()
        .filter(|registration| registration.subject == raw_subject)
        .collect();
    assert_eq!(raw.len(), 2, "version 1, then the current version");
    assert!(!raw[0].current && raw[1].current);
    assert_ne!(raw[0].schema_id, raw[1].schema_id);
    let versions = get_all_versions(&settings, raw_subject.clone())
        .await
        .expect("versions");
    assert_eq!(versions, vec![1, 2]);

    ensure_topics(&kafka, &[TopicSpec::new(&topics.raw_events, 3)])
        .await
        .expect("create topic");

    let event = event();
    let encoder = EasyAvroEncoder::new(settings.clone());
    let payload = encoder
        .encode_struct(
            &event,
            &SubjectNameStrategy::TopicNameStrategy(topics.raw_events.clone(), false),
        )
        .await
        .expect("encode with the registry");
    assert_eq!(payload[0], 0, "Confluent magic byte");
    assert_eq!(
        u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]),
        raw[1].schema_id,
        "framed with the current version's id"
    );

    let producer: FutureProducer = kafka.producer_config().create().expect("producer");
    producer
        .send(
            FutureRecord::to(&topics.raw_events)
                .key(&event.order_id)
                .payload(&payload)
                .timestamp(event.occurred_at.as_unix_millis())
                .headers(OwnedHeaders::new().insert(Header {
                    key: "source",
                    value: Some("it"),
                })),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");

    let consumer: StreamConsumer = kafka
        .consumer_config(&unique_name("it-group"))
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[&topics.raw_events])
        .expect("subscribe");
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record within 30 s")
        .expect("consume");
    assert_eq!(message.key(), Some(event.order_id.as_bytes()));
    assert_eq!(
        message.timestamp().to_millis(),
        Some(event.occurred_at.as_unix_millis())
    );
    let header = message.headers().expect("headers").get(0);
    assert_eq!((header.key, header.value), ("source", Some(&b"it"[..])));

    let decoder = EasyAvroDecoder::new(settings);
    let decoded = decoder
        .decode(message.payload())
        .await
        .expect("decode with the registry");
    let decoded: PostPurchaseEvent =
        apache_avro::from_value(&decoded.value).expect("value into the model");
    assert_eq!(decoded, event);
}

#[tokio::test]
async fn the_registry_accepts_an_optional_field_and_refuses_a_breaking_change() {
    let stack = Stack::from_env();
    let settings = RegistryArgs::for_url(&stack.schema_registry_url)
        .settings()
        .expect("registry settings");
    let subject = value_subject(&unique_name("it-evolution"));
    let kind = SchemaKind::PostPurchaseEvent;
    let supplied =
        |avsc: String| SuppliedSchema::new(Some(kind.full_name().into()), SchemaType::Avro, avsc);
    let current = post_schema(&settings, subject.clone(), supplied(kind.avsc().into()))
        .await
        .expect("register current");
    let again = post_schema(&settings, subject.clone(), supplied(kind.avsc().into()))
        .await
        .expect("register current again");
    assert_eq!(current.id, again.id, "registering twice is harmless");

    let mut schema: serde_json::Value = serde_json::from_str(kind.avsc()).expect("json");
    let fields = schema["fields"].as_array_mut().expect("fields");
    fields
        .push(serde_json::json!({"name": "carrier", "type": ["null", "string"], "default": null}));
    post_schema(&settings, subject.clone(), supplied(schema.to_string()))
        .await
        .expect("an added optional field is accepted");

    let mut breaking: serde_json::Value = serde_json::from_str(kind.avsc()).expect("json");
    let fields = breaking["fields"].as_array_mut().expect("fields");
    fields.push(serde_json::json!({"name": "warehouse", "type": "string"}));
    let refused = post_schema(&settings, subject.clone(), supplied(breaking.to_string())).await;
    assert!(
        refused.is_err(),
        "a required field without default must be refused"
    );
}

/// A stage refuses to start when a topic it produces to takes smaller records than the stage
/// may produce: otherwise the broker would refuse a record the stage let through, and the stage
/// would stop on it.
#[tokio::test]
async fn a_topic_that_takes_smaller_records_than_the_stage_produces_is_refused_at_start_up() {
    let stack = Stack::from_env();
    let small = unique_name("it-small-records");
    let mut kafka = KafkaArgs::for_brokers(&stack.kafka_brokers);
    let mut spec = TopicSpec::new(&small, 1);
    spec.configs
        .push(("max.message.bytes".to_string(), "50000".to_string()));
    ensure_topics(&kafka, &[spec]).await.expect("topic");

    kafka.max_record_bytes = 50_000;
    boomerang_runtime::kafka::check_record_limit(&kafka, &[&small], Duration::from_secs(10))
        .await
        .expect("records up to the topic's own limit are fine");
    kafka.max_record_bytes = 100_000;
    let error =
        boomerang_runtime::kafka::check_record_limit(&kafka, &[&small], Duration::from_secs(10))
            .await
            .expect_err("records larger than the topic takes");
    let message = error.to_string();
    assert!(
        message.contains(&small)
            && message.contains("50000")
            && message.contains("--max-record-bytes"),
        "{message}"
    );
}
