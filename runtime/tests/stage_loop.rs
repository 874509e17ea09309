//! The stage loop against the real broker, with a processor of the test's own: what happens
//! to a record whose dead letter is larger than the producer takes, and what the loop shows a
//! processor before it processes a batch.

mod support;

use support::PassesEverything;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boomerang_runtime::dead_letter::{self, Rejection};
use boomerang_runtime::error_kind::DeadLetterKind;
use boomerang_runtime::http::Readiness;
use boomerang_runtime::kafka::{KafkaArgs, TopicSpec, ensure_topics};
use boomerang_runtime::metrics::{Metrics, StageMetrics};
use boomerang_runtime::service::StageContext;
use boomerang_runtime::stage_loop::{
    self, BatchWait, Fence, FlushFuture, FlushResult, InputRecord, LoopSettings, OnRetentionGap,
    Outcome, Partition, Processor, RetryableError, WARM_AHEAD, WriteIndex, Writes,
};
use boomerang_testkit::{Stack, committed_and_high_watermarks, read_topic_to_end, unique_name};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

/// Keeps every record for its write, then reports the write as having refused them all, so
/// the loop dead-letters them.
#[derive(Default)]
struct RefusingWriter {
    writes: Writes,
    kept: Vec<WriteIndex>,
}

impl Processor for RefusingWriter {
    async fn assign(&mut self, _partitions: &[Partition]) -> anyhow::Result<()> {
        Ok(())
    }

    fn revoke(&mut self, _partitions: &[Partition]) {}

    async fn process(&mut self, _record: &InputRecord) -> Result<Outcome, RetryableError> {
        let (outcome, write) = self.writes.write();
        self.kept.push(write);
        Ok(outcome)
    }

    fn flush(&mut self, _fence: &Fence) -> FlushFuture {
        self.writes.seal();
        let rejected = std::mem::take(&mut self.kept)
            .into_iter()
            .map(|write| {
                (
                    write,
                    Rejection::new(DeadLetterKind::RejectedByClickhouse, "refused for the test"),
                )
            })
            .collect();
        Box::pin(async move {
            FlushResult::Written {
                rejected,
                already_stored: 0,
            }
        })
    }
}

/// A dead letter larger than the producer takes (`message.max.bytes`) would be refused outright,
/// and a stage that stopped on it would meet the same record after every restart. The loop
/// makes it fit instead: the original value is left out and its size named in a header, and
/// the stage goes on and commits past it. (The stage runs on its own thread, so that a stage
/// stuck on the record fails the test instead of hanging it.)
#[test]
fn a_dead_letter_too_large_for_the_producer_is_trimmed_and_the_stage_goes_on() {
    let stack = Stack::from_env();
    let (input, dead_letters, mut stage_kafka) = topics_holding(
        &stack,
        &[("large", vec![7u8; 5_000]), ("small", vec![7u8; 100])],
    );

    // The stage's producer takes records up to 4,096 bytes: the 5,000-byte input's dead letter
    // cannot carry its value; the 100-byte one's can.
    stage_kafka
        .properties
        .push(("message.max.bytes".into(), "4096".into()));
    let group = unique_name("it-loop");
    let (shutdown, ended) = start_loop(
        stage_kafka,
        &group,
        &input,
        &dead_letters,
        BatchWait::from_millis(50, 50),
        RefusingWriter::default(),
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let letters = loop {
        let letters = read_topic_to_end(&stack.kafka_brokers, &dead_letters);
        if letters.len() >= 2 {
            break letters;
        }
        if let Ok(result) = ended.try_recv() {
            panic!("the stage stopped: {result:?}");
        }
        assert!(Instant::now() < deadline, "no dead letters after 60 s");
        std::thread::sleep(Duration::from_millis(100)); // polling, with the deadline above
    };
    assert_eq!(letters.len(), 2, "one dead letter per record");
    let large = letters
        .iter()
        .find(|letter| letter.key.as_deref() == Some(b"large".as_slice()))
        .expect("the large record's dead letter");
    assert_eq!(large.value, None, "the value did not fit");
    assert_eq!(
        large.header(dead_letter::VALUE_OMITTED_BYTES).as_deref(),
        Some("5000")
    );
    assert_eq!(
        large.header(dead_letter::SOURCE_OFFSET).as_deref(),
        Some("0"),
        "where the original still is"
    );
    let small = letters
        .iter()
        .find(|letter| letter.key.as_deref() == Some(b"small".as_slice()))
        .expect("the small record's dead letter");
    assert_eq!(small.value.as_deref(), Some(&[7u8; 100][..]));
    assert_eq!(small.header(dead_letter::VALUE_OMITTED_BYTES), None);

    // The stage commits past both and stops cleanly when asked.
    commits_all_then_stops(
        &stack,
        &group,
        &input,
        "offsets committed past both records",
        shutdown,
        &ended,
    );
}

/// A fresh input topic holding `records` (key, value) and a dead-letter topic, and the
/// broker's arguments.
fn topics_holding(stack: &Stack, records: &[(&str, Vec<u8>)]) -> (String, String, KafkaArgs) {
    let input = unique_name("it-loop-in");
    let dead_letters = unique_name("it-loop-dlq");
    let broker = KafkaArgs::for_brokers(&stack.kafka_brokers);
    let setup = tokio::runtime::Runtime::new().expect("runtime");
    setup.block_on(async {
        ensure_topics(
            &broker,
            &[TopicSpec::new(&input, 1), TopicSpec::new(&dead_letters, 1)],
        )
        .await
        .expect("topics");
        let producer: FutureProducer = broker.producer_config().create().expect("producer");
        for (key, value) in records {
            producer
                .send(
                    FutureRecord::<str, [u8]>::to(&input)
                        .key(key)
                        .payload(value.as_slice()),
                    Duration::from_secs(10),
                )
                .await
                .expect("input record");
        }
    });
    (input, dead_letters, broker)
}

/// Runs the loop with `processor` on its own thread and runtime; answers a token that stops
/// it and the channel its result comes on.
fn start_loop<P: Processor + 'static>(
    kafka: KafkaArgs,
    group: &str,
    input: &str,
    dead_letters: &str,
    batch_wait: BatchWait,
    processor: P,
) -> (
    CancellationToken,
    std::sync::mpsc::Receiver<Result<(), String>>,
) {
    let metrics = Metrics::for_stage("loop-test").expect("metrics");
    let stage_metrics = StageMetrics::register(&metrics).expect("stage metrics");
    let shutdown = CancellationToken::new();
    let context = StageContext {
        stage: "loop-test",
        metrics,
        readiness: Readiness::new("starting"),
        shutdown: shutdown.clone(),
    };
    let settings = LoopSettings {
        stage: "loop-test",
        group_id: group.to_string(),
        input_topics: vec![input.to_string()],
        output_topics: Vec::new(),
        dead_letter_topic: dead_letters.to_string(),
        batch_max_records: 100,
        batch_wait,
        on_retention_gap: OnRetentionGap::Resume,
    };
    let (ended_sender, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("stage runtime");
        let result = runtime.block_on(stage_loop::run(
            settings,
            &kafka,
            processor,
            stage_metrics,
            &context,
        ));
        let _ = ended_sender.send(result.map_err(|error| error.to_string()));
    });
    (shutdown, ended)
}

/// Answers `Write` for every record, and has no flush: a processor written against the
/// contract's grain.
#[derive(Default)]
struct ForgetsToWrite(Writes);

impl Processor for ForgetsToWrite {
    async fn assign(&mut self, _partitions: &[Partition]) -> anyhow::Result<()> {
        Ok(())
    }

    fn revoke(&mut self, _partitions: &[Partition]) {}

    async fn process(&mut self, _record: &InputRecord) -> Result<Outcome, RetryableError> {
        Ok(self.0.write().0)
    }
}

/// Records kept for a write that never comes are not counted as sent and committed (they
/// were, silently): the batch fails, the stage stops with an error, and nothing is committed.
#[test]
fn a_processor_that_keeps_records_but_never_writes_stops_the_stage_uncommitted() {
    let stack = Stack::from_env();
    let (input, dead_letters, broker) = topics_holding(&stack, &[("kept", b"value".to_vec())]);
    let group = unique_name("it-loop");
    let (_shutdown, ended) = start_loop(
        broker,
        &group,
        &input,
        &dead_letters,
        BatchWait::from_millis(50, 50),
        ForgetsToWrite::default(),
    );
    let result = ended
        .recv_timeout(Duration::from_secs(60))
        .expect("the stage stops by itself");
    let error = result.expect_err("with an error");
    assert!(error.contains("does not write"), "{error}");
    let committed = committed_and_high_watermarks(&stack.kafka_brokers, &group, &input);
    assert!(
        committed.iter().all(|(_, committed, _)| *committed <= 0),
        "nothing committed: {committed:?}"
    );
}

/// A trickle of records is not held for the batch's maximum wait: once the consumer has
/// nothing more fetched, a small batch goes after its minimum wait. Here the maximum is
/// 10 minutes, so a commit within the 30 s deadline can only come from the early flush.
#[test]
fn a_small_batch_goes_once_the_consumer_has_caught_up_not_at_its_maximum_wait() {
    let stack = Stack::from_env();
    let (input, dead_letters, broker) = topics_holding(&stack, &[("one", b"value".to_vec())]);
    let group = unique_name("it-loop");
    let (shutdown, ended) = start_loop(
        broker,
        &group,
        &input,
        &dead_letters,
        BatchWait::from_millis(20, 600_000),
        PassesEverything,
    );
    commits_all_then_stops(
        &stack,
        &group,
        &input,
        "the one record committed",
        shutdown,
        &ended,
    );
}

/// What the loop showed a processor, in the order it did: `Warmed` for each run of records
/// shown to `warm`, `Processed` for each record decided.
#[derive(Debug, Clone)]
enum Seen {
    Warmed(Vec<i64>),
    Processed(i64),
}

struct RecordsWhatItSees(Arc<Mutex<Vec<Seen>>>);

impl Processor for RecordsWhatItSees {
    async fn assign(&mut self, _partitions: &[Partition]) -> anyhow::Result<()> {
        Ok(())
    }

    fn revoke(&mut self, _partitions: &[Partition]) {}

    fn warm(&self, upcoming: &[InputRecord]) {
        let offsets = upcoming.iter().map(|record| record.offset).collect();
        self.0.lock().expect("lock").push(Seen::Warmed(offsets));
    }

    async fn process(&mut self, record: &InputRecord) -> Result<Outcome, RetryableError> {
        self.0
            .lock()
            .expect("lock")
            .push(Seen::Processed(record.offset));
        Ok(Outcome::Emit(Default::default()))
    }
}

/// `warm` is a hint, but one that has to come at the right time to be worth its cost: every
/// record is shown to it once, in runs of at most `WARM_AHEAD`, before the record is
/// processed, and the records are processed in the order they were shown.
#[test]
fn every_record_is_warmed_once_just_before_its_run_is_processed() {
    let stack = Stack::from_env();
    let records: Vec<(&str, Vec<u8>)> = (0..3 * WARM_AHEAD + 5)
        .map(|n| ("key", n.to_string().into_bytes()))
        .collect();
    let (input, dead_letters, broker) = topics_holding(&stack, &records);
    let group = unique_name("it-loop");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (shutdown, ended) = start_loop(
        broker,
        &group,
        &input,
        &dead_letters,
        BatchWait::from_millis(20, 200),
        RecordsWhatItSees(seen.clone()),
    );
    commits_all_then_stops(
        &stack,
        &group,
        &input,
        "every record committed",
        shutdown,
        &ended,
    );

    let seen = seen.lock().expect("lock").clone();
    let mut warmed_not_processed: std::collections::VecDeque<i64> = Default::default();
    let mut processed = Vec::new();
    for step in &seen {
        match step {
            Seen::Warmed(run) => {
                assert!(
                    warmed_not_processed.is_empty(),
                    "a run was shown before the last one was processed: {seen:?}"
                );
                assert!(
                    !run.is_empty() && run.len() <= WARM_AHEAD,
                    "a run of {}",
                    run.len()
                );
                warmed_not_processed.extend(run);
            }
            Seen::Processed(offset) => {
                assert_eq!(
                    warmed_not_processed.pop_front(),
                    Some(*offset),
                    "offset {offset} processed without being shown first: {seen:?}"
                );
                processed.push(*offset);
            }
        }
    }
    assert!(warmed_not_processed.is_empty(), "shown, never processed");
    let expected: Vec<i64> = (0..records.len() as i64).collect();
    assert_eq!(processed, expected, "every record once, in order");
}

/// Waits until the loop has committed everything `input` holds (`what`, for the failure
/// message), then stops it and checks it stopped cleanly.
fn commits_all_then_stops(
    stack: &Stack,
    group: &str,
    input: &str,
    what: &str,
    shutdown: CancellationToken,
    ended: &std::sync::mpsc::Receiver<Result<(), String>>,
) {
    poll_until_blocking(what, || {
        committed_and_high_watermarks(&stack.kafka_brokers, group, input)
            .iter()
            .all(|(_, committed, high)| committed == high)
    });
    shutdown.cancel();
    let result = ended
        .recv_timeout(Duration::from_secs(30))
        .expect("the stage stops when asked");
    assert_eq!(result, Ok(()));
}

fn poll_until_blocking(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100)); // polling, with the deadline above
    }
}
