//! A private pipeline for one ingest test: its own topics, schemas and consumer group on the
//! local stack, the real binary, and ways to feed it and read what it wrote.

#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::time::Duration;

use apache_avro::Schema;
use boomerang_runtime::kafka::TopicSpec;
use boomerang_runtime::wire;
use boomerang_schemas::codec;
use boomerang_schemas::{PostPurchaseEvent, SchemaKind};
use boomerang_testkit::{ReadRecord, StageProcess, TestPipeline, poll_until, start_stage};

pub const BINARY: &str = env!("CARGO_BIN_EXE_boomerang-ingest");

pub struct Pipeline {
    base: TestPipeline,
    pub current_schema_id: u32,
    pub v1_schema_id: u32,
    pub customer_schema_id: u32,
}

boomerang_testkit::extends_test_pipeline!(Pipeline);

/// A record to produce to the raw topic.
pub struct Raw {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Pipeline {
    pub async fn new(partitions: i32) -> Self {
        let base = TestPipeline::new("it-ingest", |topics| {
            vec![
                TopicSpec::new(&topics.raw_events, partitions),
                TopicSpec::new(&topics.validated_events, partitions),
                TopicSpec::new(&topics.dead_letter, 1),
            ]
        })
        .await;
        Self {
            current_schema_id: base.schema_id(&base.topics.raw_events),
            v1_schema_id: base.earlier_schema_id(&base.topics.raw_events),
            customer_schema_id: base.schema_id(&base.topics.customers),
            base,
        }
    }

    pub fn arguments(&self) -> Vec<String> {
        let mut arguments = self.common_arguments();
        for (flag, value) in [
            ("--raw-events-topic", self.topics.raw_events.as_str()),
            (
                "--validated-events-topic",
                self.topics.validated_events.as_str(),
            ),
            ("--batch-max-wait-ms", "50"),
        ] {
            arguments.extend([flag.to_string(), value.to_string()]);
        }
        arguments
    }

    pub fn start(&self, environment: &[(&str, &str)]) -> StageProcess {
        self.start_with(&[], environment)
    }

    /// Starts ingest with `extra` arguments after the usual ones (a later one wins).
    pub fn start_with(&self, extra: &[&str], environment: &[(&str, &str)]) -> StageProcess {
        start_stage(BINARY, &self.arguments(), extra, environment)
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
            let headers: Vec<(&str, &[u8])> = record
                .headers
                .iter()
                .map(|(name, value)| (*name, value.as_bytes()))
                .collect();
            self.send(
                &self.topics.raw_events,
                &record.key,
                record.value.as_deref(),
                &headers,
            )
            .await;
        }
    }

    pub fn validated(&self) -> Vec<ReadRecord> {
        self.read(&self.topics.validated_events)
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
        let key = validated_key(record).expect("an idempotency key");
        *per_key.entry(key).or_default() += 1;
    }
    per_key
}

/// A validated record's idempotency key, read from its datum as ingest's restore reads it.
pub fn validated_key(record: &ReadRecord) -> Option<String> {
    let facts = boomerang_schemas::DedupFacts::of_framed(record.value.as_deref()?)?;
    Some(facts.idempotency_key.to_string())
}
