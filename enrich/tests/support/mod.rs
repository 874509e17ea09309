//! A private pipeline for one enrich test: its own topics, schemas and consumer group on the
//! local stack, the real binary, and ways to feed it events and reference data and to read
//! what it wrote.

#![allow(dead_code, unused_imports)] // each test file uses its own subset

use std::time::Duration;

use boomerang_runtime::kafka::TopicSpec;
use boomerang_runtime::wire;
use boomerang_schemas::{
    AvroRecord, Customer, EnrichedPostPurchaseEvent, Order, PostPurchaseEvent, TimestampMicros,
    codec,
};
use boomerang_testkit::{ReadRecord, StageProcess, TestPipeline, poll_until, start_stage};

pub const BINARY: &str = env!("CARGO_BIN_EXE_boomerang-enrich");
pub const PSEUDONYM_KEY: &str = "integration-test-pseudonym-key";
pub const IDEMPOTENCY_KEY_HEADER: &str = "boomerang.idempotency_key";

pub struct Pipeline {
    base: TestPipeline,
    event_schema_id: u32,
}

boomerang_testkit::extends_test_pipeline!(Pipeline);

impl Pipeline {
    pub async fn new(event_partitions: i32) -> Self {
        let base = TestPipeline::new("it-enr", |topics| {
            vec![
                TopicSpec::new(&topics.validated_events, event_partitions),
                TopicSpec::new(&topics.enriched_events, event_partitions),
                TopicSpec::new(&topics.customers, 2).compacted(),
                TopicSpec::new(&topics.orders, 2).compacted(),
                TopicSpec::new(&topics.erasure_requests, 1),
                TopicSpec::new(&topics.dead_letter, 1),
            ]
        })
        .await;
        Self {
            event_schema_id: base.schema_id(&base.topics.validated_events),
            base,
        }
    }

    pub fn arguments(&self, max_reference_wait_ms: u64) -> Vec<String> {
        let wait = max_reference_wait_ms.to_string();
        let mut arguments = self.common_arguments();
        for (flag, value) in [
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
            (
                "--erasure-requests-topic",
                self.topics.erasure_requests.as_str(),
            ),
            ("--pseudonym-key", PSEUDONYM_KEY),
            ("--max-reference-wait-ms", wait.as_str()),
            ("--batch-max-wait-ms", "50"),
        ] {
            arguments.extend([flag.to_string(), value.to_string()]);
        }
        arguments
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
        start_stage(
            BINARY,
            &self.arguments(max_reference_wait_ms),
            extra,
            environment,
        )
    }

    /// A validated event, as ingest publishes it.
    pub async fn produce_event(&self, event: &PostPurchaseEvent) {
        let value = codec::encode_framed(self.event_schema_id, event).expect("encode");
        self.send(
            &self.topics.validated_events,
            &event.order_id,
            Some(&value),
            &[(IDEMPOTENCY_KEY_HEADER, event.idempotency_key.as_bytes())],
        )
        .await;
    }

    /// Bytes that are no validated event at all.
    pub async fn produce_raw_event(&self, key: &str, value: &[u8]) {
        self.send(&self.topics.validated_events, key, Some(value), &[])
            .await;
    }

    pub fn enriched_records(&self) -> Vec<ReadRecord> {
        self.read(&self.topics.enriched_events)
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

/// How many records each reference table holds: (customers, orders).
pub async fn reference_records(process: &StageProcess) -> (u64, u64) {
    let exposition = metrics(process).await;
    let records = |table: &str| {
        value(
            &exposition,
            "boomerang_enrich_reference_records",
            &[&format!("table=\"{table}\"")],
        )
    };
    (records("customers"), records("orders"))
}
