//! A private pipeline for one sink test: its own topics, schemas, consumer group and ClickHouse
//! database on the local stack, the real binary, ways to feed it and to query what it wrote.

#![allow(dead_code, unused_imports)] // each test file uses its own subset

use std::time::Duration;

use boomerang_clickhouse::ClickhouseArgs;
use boomerang_clickhouse::analytics_refresh;
use boomerang_clickhouse::migrations;
use boomerang_runtime::kafka::TopicSpec;
use boomerang_runtime::wire;
use boomerang_schemas::{
    AvroRecord, Customer, EnrichedPostPurchaseEvent, EventType, Order, PostPurchaseEvent,
    TimestampMicros, codec,
};
use boomerang_testkit::{ReadRecord, StageProcess, TestPipeline, poll_until, start_stage};

pub const BINARY: &str = env!("CARGO_BIN_EXE_boomerang-sink");
pub const PSEUDONYM_KEY: &str = "integration-test-pseudonym-key";

pub struct Pipeline {
    base: TestPipeline,
    pub clickhouse: ClickhouseArgs,
    enriched_schema_id: u32,
}

boomerang_testkit::extends_test_pipeline!(Pipeline);

impl Pipeline {
    pub async fn new() -> Self {
        let base = TestPipeline::new("it-sink", |topics| {
            vec![
                TopicSpec::new(&topics.enriched_events, 2),
                TopicSpec::new(&topics.customers, 2).compacted(),
                TopicSpec::new(&topics.orders, 2).compacted(),
                TopicSpec::new(&topics.erasure_requests, 1),
                TopicSpec::new(&topics.dead_letter, 1),
            ]
        })
        .await;
        let clickhouse =
            ClickhouseArgs::for_url(&base.stack.clickhouse_url, &base.name.replace('-', "_"));
        migrations::apply(&clickhouse, None).await.expect("migrate");
        Self {
            enriched_schema_id: base.schema_id(&base.topics.enriched_events),
            clickhouse,
            base,
        }
    }

    pub fn arguments(&self) -> Vec<String> {
        let mut arguments = self.common_arguments();
        for (flag, value) in [
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
            ("--clickhouse-url", self.clickhouse.url.as_str()),
            ("--clickhouse-database", self.clickhouse.database.as_str()),
            ("--clickhouse-timeout-secs", "5"),
            ("--pseudonym-key", PSEUDONYM_KEY),
            ("--insert-max-wait-ms", "100"),
            ("--analytics-refresh-ms", "200"),
        ] {
            arguments.extend([flag.to_string(), value.to_string()]);
        }
        arguments
    }

    pub fn start(&self, extra: &[&str], environment: &[(&str, &str)]) -> StageProcess {
        start_stage(BINARY, &self.arguments(), extra, environment)
    }

    pub async fn produce_enriched(&self, enriched: &EnrichedPostPurchaseEvent) {
        let value = codec::encode_framed(self.enriched_schema_id, enriched).expect("encode");
        self.send(
            &self.topics.enriched_events,
            &enriched.event.order_id,
            Some(&value),
            &[],
        )
        .await;
    }

    pub async fn produce_raw_enriched(&self, key: &str, value: &[u8]) {
        self.send(&self.topics.enriched_events, key, Some(value), &[])
            .await;
    }

    /// `count()` of a table or view, without FINAL unless the query says so.
    pub async fn count(&self, from: &str) -> u64 {
        self.clickhouse
            .client()
            .query(&format!("SELECT count() FROM {from}"))
            .fetch_one()
            .await
            .unwrap_or_else(|error| panic!("count {from}: {error}"))
    }

    /// Polls until `from` holds `expected` rows (without FINAL).
    pub async fn wait_for_rows(&self, from: &str, expected: u64) {
        poll_until(
            &format!("{expected} rows in {from}"),
            Duration::from_secs(90),
            || async { (self.count(from).await >= expected).then_some(()) },
        )
        .await;
    }
}

/// An enriched event as enrich emits it: joined, nothing missing.
pub fn enriched(
    event_type: EventType,
    case_id: &str,
    order_id: &str,
    line: u32,
    customer_id: &str,
    occurred_at: TimestampMicros,
) -> EnrichedPostPurchaseEvent {
    let mut event: PostPurchaseEvent = boomerang_testkit::samples::event();
    event.event_type = event_type;
    event.event_id = format!(
        "{case_id}-{}-{}",
        event_type.symbol(),
        occurred_at.as_unix_micros()
    );
    event.idempotency_key = format!("key-{}", event.event_id);
    event.case_id = case_id.to_string();
    event.order_id = order_id.to_string();
    event.order_line_id = format!("{order_id}/{line}");
    event.customer_id = customer_id.to_string();
    event.occurred_at = occurred_at;
    boomerang_testkit::samples::enriched(event)
}

pub use boomerang_testkit::{metrics, value, wait_ready};

/// Polls until the group has committed every partition of `topic` to its end.
pub async fn wait_committed(pipeline: &Pipeline, topic: &str) {
    boomerang_testkit::wait_committed(&pipeline.stack.kafka_brokers, &pipeline.group, topic).await;
}

/// Polls until the group has committed each of the sink's three input topics to its end.
pub async fn wait_all_committed(pipeline: &Pipeline) {
    for topic in [
        &pipeline.topics.enriched_events,
        &pipeline.topics.orders,
        &pipeline.topics.customers,
    ] {
        wait_committed(pipeline, topic).await;
    }
}

/// Polls until a refresh of the analytics stores that started after this call completed:
/// the analytics views then show every row ClickHouse held when it was called.
pub async fn wait_analytics_refreshed(pipeline: &Pipeline) {
    let client = pipeline.clickhouse.client();
    let now = analytics_refresh::clickhouse_now_micros(&client)
        .await
        .expect("ClickHouse's clock");
    poll_until(
        "a refresh of the analytics stores",
        Duration::from_secs(60),
        || async {
            let refreshed = analytics_refresh::refreshed_at_micros(&client).await.ok()?;
            (refreshed >= now).then_some(())
        },
    )
    .await;
}

/// Runs `deploy/local/stack.sh` with `arguments` (to stop and start a part for an outage).
pub fn stack(arguments: &[&str]) {
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/stack.sh");
    let status = std::process::Command::new(script)
        .args(arguments)
        .status()
        .expect("run stack.sh");
    assert!(status.success(), "stack.sh {arguments:?} failed");
}

/// Produces return requests `case-{n}` of orders `o-{n}` for `n` in `from..to`, all now.
pub async fn produce_cases(pipeline: &Pipeline, from: u32, to: u32) {
    let at = TimestampMicros::now();
    for n in from..to {
        pipeline
            .produce_enriched(&enriched(
                EventType::ReturnRequested,
                &format!("case-{n}"),
                &format!("o-{n}"),
                1,
                "cu-1",
                at,
            ))
            .await;
    }
}
