//! `boomerang backfill` through the three real stages on the local stack, with ingest at its
//! live limits (seven days of event age and de-duplication): a 70-day world exported as JSON
//! lines (malformed lines, retried and rule-breaking events included), part of it also sent as
//! live traffic before and after the backfill, the file backfilled a second time and a run
//! resumed from a checkpoint in the middle. ClickHouse must hold every valid event once — the
//! count without `FINAL` equal to the distinct keys this test reads from the file itself — the
//! analytics must equal the generator's truth, and ingest must not have kept history's keys.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use boomerang_runtime::kafka::TopicSpec;
use boomerang_schemas::{Customer, Order, PostPurchaseEvent, TimestampMicros, avro_json};
use boomerang_testkit::{
    StageProcess, TestPipeline, metric_sum, metrics, poll_until, start_stage, unique_name, value,
    wait_ready,
};

const LIVE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The stage binaries of this build (built here if `cargo test` did not build them).
fn stage_binary(stage: &str) -> String {
    let path = target_dir().join(format!("debug/boomerang-{stage}"));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", &format!("boomerang-{stage}")])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cannot build boomerang-{stage}");
    }
    path.display().to_string()
}

struct Backfill {
    pipeline: TestPipeline,
    database: String,
    groups: [String; 3],
}

impl Backfill {
    /// The environment every process of the test shares: the stack, the topics, the database.
    fn environment(&self) -> Vec<(String, String)> {
        let stack = &self.pipeline.stack;
        let topics = &self.pipeline.topics;
        vec![
            ("BOOMERANG_KAFKA_BROKERS", stack.kafka_brokers.clone()),
            (
                "BOOMERANG_SCHEMA_REGISTRY_URL",
                stack.schema_registry_url.clone(),
            ),
            ("BOOMERANG_CLICKHOUSE_URL", stack.clickhouse_url.clone()),
            ("BOOMERANG_CLICKHOUSE_DATABASE", self.database.clone()),
            ("BOOMERANG_RAW_EVENTS_TOPIC", topics.raw_events.clone()),
            (
                "BOOMERANG_VALIDATED_EVENTS_TOPIC",
                topics.validated_events.clone(),
            ),
            (
                "BOOMERANG_ENRICHED_EVENTS_TOPIC",
                topics.enriched_events.clone(),
            ),
            ("BOOMERANG_CUSTOMERS_TOPIC", topics.customers.clone()),
            ("BOOMERANG_ORDERS_TOPIC", topics.orders.clone()),
            (
                "BOOMERANG_ERASURE_REQUESTS_TOPIC",
                topics.erasure_requests.clone(),
            ),
            ("BOOMERANG_DEAD_LETTER_TOPIC", topics.dead_letter.clone()),
            (
                "BOOMERANG_PSEUDONYM_KEY",
                "backfill-test-pseudonym-key-not-a-secret".into(),
            ),
            ("BOOMERANG_BACKFILL_INGEST_GROUP", self.groups[0].clone()),
            ("BOOMERANG_BACKFILL_ENRICH_GROUP", self.groups[1].clone()),
            ("BOOMERANG_BACKFILL_SINK_GROUP", self.groups[2].clone()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
    }

    fn boomerang(&self, arguments: &[&str]) -> Output {
        let output = Command::new(env!("CARGO_BIN_EXE_boomerang"))
            .args(arguments)
            .envs(self.environment())
            .output()
            .expect("run boomerang");
        eprintln!(
            "boomerang {}:\n{}{}",
            arguments.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn start(&self, stage: &str, group: &str, extra: &[&str]) -> StageProcess {
        let environment = self.environment();
        let environment: Vec<(&str, &str)> = environment
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let mut arguments = self.pipeline.common_arguments();
        arguments.extend(["--group-id".to_string(), group.to_string()]);
        start_stage(&stage_binary(stage), &arguments, extra, &environment)
    }

    async fn query(&self, sql: &str) -> String {
        let client = reqwest::Client::new();
        let response = client
            .post(format!(
                "{}/?database={}",
                self.pipeline.stack.clickhouse_url, self.database
            ))
            .body(sql.to_string())
            .send()
            .await
            .expect("query ClickHouse");
        let status = response.status();
        let body = response.text().await.expect("ClickHouse answer");
        assert!(status.is_success(), "{sql}: {body}");
        body.trim().to_string()
    }
}

/// The valid events of an export file, as this test reads it: what must be in ClickHouse once.
fn valid_events(path: &Path) -> Vec<PostPurchaseEvent> {
    std::fs::read_to_string(path)
        .expect("read the export")
        .lines()
        .filter_map(|line| avro_json::decode::<PostPurchaseEvent>(line).ok())
        .filter(|event| event.quantity > 0 && event.idempotency_key != "huge-event")
        .collect()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn history_overlapping_live_traffic_loaded_twice_and_resumed_is_written_once() {
    let pipeline = TestPipeline::new("backfill", |topics| {
        vec![
            TopicSpec::new(&topics.raw_events, 3),
            TopicSpec::new(&topics.validated_events, 3),
            TopicSpec::new(&topics.enriched_events, 3),
            TopicSpec::new(&topics.dead_letter, 1),
            TopicSpec::new(&topics.customers, 2).compacted(),
            TopicSpec::new(&topics.orders, 2).compacted(),
            TopicSpec::new(&topics.erasure_requests, 1),
        ]
    })
    .await;
    let name = pipeline.name.clone();
    let test = Backfill {
        database: unique_name("backfill_db").replace('-', "_"),
        groups: [
            format!("{name}-ingest"),
            format!("{name}-enrich"),
            format!("{name}-sink"),
        ],
        pipeline,
    };
    assert!(test.boomerang(&["migrate"]).status.success(), "migrate");

    let work = std::env::temp_dir().join(unique_name("backfill-test"));
    let world = work.join("world");
    let truth = work.join("truth.json");
    let generated = test.boomerang(&[
        "gen",
        "--orders",
        "400",
        "--customers",
        "120",
        "--seed",
        "7",
        "--out",
        world.to_str().expect("utf-8 path"),
        "--out-format",
        "jsonl",
        "--truth",
        truth.to_str().expect("utf-8 path"),
    ]);
    assert!(generated.status.success(), "gen --out");
    let events_file = world.join("events.jsonl");
    // One event larger than the producer takes (`--max-record-bytes`, 1,000,000): the backfill
    // dead-letters it instead of stopping.
    {
        use std::io::Write as _;
        let mut huge = valid_events(&events_file)[0].clone();
        huge.idempotency_key = "huge-event".into();
        huge.event_id = "huge-event".into();
        huge.attributes = [("blob".to_string(), "x".repeat(1_100_000))].into();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&events_file)
            .expect("open the export");
        writeln!(file, "{}", avro_json::encode(&huge).expect("encode")).expect("append");
    }
    let valid = valid_events(&events_file);
    let distinct: HashSet<&str> = valid
        .iter()
        .map(|event| event.idempotency_key.as_str())
        .collect();
    let horizon = TimestampMicros::now().saturating_sub(LIVE_WINDOW);
    // The last two days' events are also live traffic: producers that kept publishing.
    let two_days_ago = TimestampMicros::now().saturating_sub(Duration::from_secs(2 * 24 * 3600));
    let live: Vec<&PostPurchaseEvent> = valid
        .iter()
        .filter(|event| event.occurred_at >= two_days_ago)
        .collect();
    let in_window: HashSet<&str> = valid
        .iter()
        .filter(|event| event.occurred_at >= horizon)
        .map(|event| event.idempotency_key.as_str())
        .collect();
    assert!(!live.is_empty() && in_window.len() < distinct.len() / 3);

    // Ingest at its live limits; the sink remembering only 20 keys per partition, so that
    // history is de-duplicated against ClickHouse, not by the window of recent keys.
    let [ingest_group, enrich_group, sink_group] = test.groups.clone();
    let ingest = test.start("ingest", &ingest_group, &[]);
    let enrich = test.start(
        "enrich",
        &enrich_group,
        &["--max-reference-wait-ms", "3000"],
    );
    let sink = test.start("sink", &sink_group, &["--dedup-window-events", "20"]);
    for stage in [&ingest, &enrich, &sink] {
        wait_ready(stage).await;
    }

    // Live first: the CRM's and the order system's current records, then the last days'
    // events, whose keys are in ClickHouse before their history comes.
    for line in std::fs::read_to_string(world.join("customers.jsonl"))
        .expect("customers")
        .lines()
    {
        let customer: Customer = avro_json::decode(line).expect("a customer");
        test.pipeline.produce_customer(&customer).await;
    }
    for line in std::fs::read_to_string(world.join("orders.jsonl"))
        .expect("orders")
        .lines()
    {
        let order: Order = avro_json::decode(line).expect("an order");
        test.pipeline.produce_order(&order).await;
    }
    let raw = test.pipeline.topics.raw_events.clone();
    for event in &live {
        test.pipeline.produce(&raw, &event.order_id, *event).await;
    }

    // The backfill, resumed: a checkpoint says a run got a third of the way through the
    // events before it stopped. Its customers and orders are read again, and not published:
    // the topics hold those versions already.
    let lines = std::fs::read_to_string(&events_file)
        .expect("read the export")
        .lines()
        .filter(|line| !line.trim().is_empty())
        .count();
    let checkpoint = work.join("resumed.json");
    let customers = world.join("customers.jsonl").display().to_string();
    let orders = world.join("orders.jsonl").display().to_string();
    let events = events_file.display().to_string();
    std::fs::write(
        &checkpoint,
        serde_json::json!({
            "run_id": "history-resumed",
            "started_at_ms": TimestampMicros::now().as_unix_millis(),
            "files": {events.clone(): lines / 3},
            "customers": {"read": 0, "published": 0, "not_newer": 0, "unreadable": 0},
            "orders": {"read": 0, "published": 0, "not_newer": 0, "unreadable": 0},
            "events": {"read": 0, "published": 0, "not_newer": 0, "unreadable": 0},
            "published": false,
            "complete": false
        })
        .to_string(),
    )
    .expect("write a checkpoint");
    let checkpoint_arg = checkpoint.display().to_string();
    let resumed = test.boomerang(&[
        "backfill",
        "--customer-file",
        &customers,
        "--order-file",
        &orders,
        "--event-file",
        &events,
        "--checkpoint",
        &checkpoint_arg,
        "--progress-secs",
        "1",
    ]);
    assert!(resumed.status.success(), "the resumed run reconciles");
    assert!(
        stdout(&resumed).contains("published            0   not newer"),
        "reference data the topics hold is not published again"
    );
    assert!(
        stdout(&resumed).contains("dead-lettered as record_too_large: 1"),
        "the oversized event is dead-lettered by the backfill"
    );
    assert!(
        String::from_utf8_lossy(&resumed.stderr).contains("resuming run history-resumed"),
        "it says it resumes"
    );
    // Resumed a third in: the first third of the events never came (the stopped run's part,
    // which this test did not publish), so only the rest is read.
    assert!(stdout(&resumed).contains(&format!("read {:>12}", thousands(lines - lines / 3))));

    // The whole export, as a run of its own: the first third comes now; the rest is there.
    let whole = test.boomerang(&[
        "backfill",
        "--from",
        world.to_str().expect("utf-8 path"),
        "--run-id",
        "history-whole",
    ]);
    assert!(whole.status.success(), "the whole run reconciles");
    assert!(stdout(&whole).contains("reconciled"));
    // Each malformed line is its own dead letter, though they all have the same bytes.
    let malformed = std::fs::read_to_string(&events_file)
        .expect("read the export")
        .lines()
        .filter(|line| avro_json::decode::<PostPurchaseEvent>(line).is_err())
        .count();
    assert!(malformed > 1, "the export has malformed lines");
    assert!(
        stdout(&whole).contains(&format!("dead-lettered as bad_magic_byte: {malformed}")),
        "{malformed} malformed lines"
    );

    // Live traffic again after the history: the same keys, dropped by ingest.
    for event in &live {
        test.pipeline.produce(&raw, &event.order_id, *event).await;
    }
    // And the same file backfilled once more: nothing new is written.
    let again = test.boomerang(&[
        "backfill",
        "--event-file",
        &events,
        "--checkpoint",
        &work.join("again.json").display().to_string(),
        "--run-id",
        "history-again",
    ]);
    assert!(again.status.success(), "the repeated run reconciles");
    assert!(
        stdout(&again).contains(&format!("written {:>12}", 0)),
        "a repeated file writes nothing"
    );

    // Every valid event once, by the count without FINAL and by distinct keys.
    let expected = distinct.len().to_string();
    poll_until(
        "every valid event in ClickHouse once",
        Duration::from_secs(60),
        || async {
            let counted = test
                .query("SELECT count(), uniqExact(idempotency_key) FROM post_purchase_events")
                .await;
            (counted == format!("{expected}\t{expected}")).then_some(())
        },
    )
    .await;
    let sink_metrics = metrics(&sink).await;
    assert!(
        value(
            &sink_metrics,
            "boomerang_sink_history_already_stored_total",
            &[]
        ) > 0,
        "history was de-duplicated against ClickHouse"
    );
    // Ingest remembered live-window keys only, not the months of history.
    let ingest_metrics = metrics(&ingest).await;
    let remembered = metric_sum(&ingest_metrics, "boomerang_dedup_keys", &[]) as usize;
    assert!(
        remembered <= in_window.len(),
        "ingest remembers {remembered} keys; {} lie in its window",
        in_window.len()
    );
    assert_eq!(
        value(
            &ingest_metrics,
            "boomerang_dead_lettered_events_total",
            &["error_kind=\"occurred_too_long_ago\""]
        ),
        0,
        "history is not too old for ingest"
    );

    // Every stage accounts for every record it received. A stage counts a record as sent when
    // the broker acknowledges it, which can come after the rows it led to are queryable (and
    // enrich may still hold an event for late reference data), so the equation is polled: it
    // must settle within the deadline, and a stage that lost count fails with both sides shown.
    let settle = Duration::from_secs(60);
    for (stage, process) in [("ingest", &ingest), ("enrich", &enrich), ("sink", &sink)] {
        let started = Instant::now();
        let (received, accounted) = poll_until(
            &format!("{stage}'s counters to be read"),
            settle + Duration::from_secs(30),
            || async {
                let exposition = metrics(process).await;
                let total = |name: &str| value(&exposition, name, &[]);
                let received = total("boomerang_received_events_total");
                let accounted = total("boomerang_sent_events_total")
                    + total("boomerang_deduplicated_events_total")
                    + total("boomerang_dead_lettered_events_total");
                (received == accounted || started.elapsed() > settle)
                    .then_some((received, accounted))
            },
        )
        .await;
        assert_eq!(
            received, accounted,
            "{stage}: received = sent + deduplicated + dead-lettered, within {settle:?}"
        );
    }

    // The analytics equal the generator's truth.
    let report = test.boomerang(&[
        "report",
        "--no-stages",
        "--truth",
        truth.to_str().expect("utf-8 path"),
    ]);
    assert!(report.status.success(), "the report matches the truth");
    std::fs::remove_dir_all(&work).ok();
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
