//! The stage loop against the real broker, with a processor of the test's own: what happens
//! when the producer refuses an output outright.

use std::time::Duration;

use boomerang_runtime::dead_letter::Rejection;
use boomerang_runtime::http::Readiness;
use boomerang_runtime::kafka::{KafkaArgs, TopicSpec, ensure_topics};
use boomerang_runtime::metrics::{Metrics, StageMetrics};
use boomerang_runtime::service::StageContext;
use boomerang_runtime::stage_loop::{
    self, FlushFuture, FlushResult, InputRecord, LoopSettings, Outcome, Partition, Processor,
    RetryableError,
};
use boomerang_testkit::{Stack, unique_name};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

/// Keeps every record for its write, then reports the write as having refused them all, so
/// the loop dead-letters them.
#[derive(Default)]
struct RefusingWriter {
    kept: Vec<(Partition, i64)>,
}

impl Processor for RefusingWriter {
    async fn assign(&mut self, _partitions: &[Partition]) -> anyhow::Result<()> {
        Ok(())
    }

    fn revoke(&mut self, _partitions: &[Partition]) {}

    async fn process(&mut self, record: &InputRecord) -> Result<Outcome, RetryableError> {
        self.kept
            .push(((record.topic.clone(), record.partition), record.offset));
        Ok(Outcome::Write)
    }

    fn flush(&mut self) -> Option<FlushFuture> {
        let rejected = std::mem::take(&mut self.kept)
            .into_iter()
            .map(|(partition, offset)| {
                (
                    partition,
                    offset,
                    Rejection::new("rejected_by_test", "refused for the test"),
                )
            })
            .collect();
        Some(Box::pin(async move { FlushResult::Written { rejected } }))
    }
}

/// A dead letter the producer refuses outright (larger than `message.max.bytes`) gets no
/// delivery report. The batch must fail, and the stage stop with an error, instead of waiting
/// for that report forever. (The stage runs on its own thread: a stage stuck that way also
/// blocks dropping it, and the test should fail, not hang.)
#[test]
fn a_dead_letter_the_producer_refuses_stops_the_stage_instead_of_hanging() {
    let stack = Stack::from_env();
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
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&input)
                    .key("k")
                    .payload(&[7u8; 5_000][..]),
                Duration::from_secs(10),
            )
            .await
            .expect("input record");
    });

    // The stage's producer takes records up to 2,000 bytes: the 5,000-byte input's dead letter
    // is refused before it reaches the broker.
    let mut stage_kafka = KafkaArgs::for_brokers(&stack.kafka_brokers);
    stage_kafka
        .properties
        .push(("message.max.bytes".into(), "2000".into()));
    let metrics = Metrics::for_stage("loop-test").expect("metrics");
    let stage_metrics = StageMetrics::register(&metrics).expect("stage metrics");
    let context = StageContext {
        stage: "loop-test",
        metrics,
        readiness: Readiness::new("starting"),
        shutdown: CancellationToken::new(),
    };
    let settings = LoopSettings {
        stage: "loop-test",
        group_id: unique_name("it-loop"),
        input_topics: vec![input],
        dead_letter_topic: dead_letters,
        batch_max_records: 100,
        batch_max_wait: Duration::from_millis(50),
    };
    let (ended_sender, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("stage runtime");
        let result = runtime.block_on(stage_loop::run(
            settings,
            &stage_kafka,
            RefusingWriter::default(),
            stage_metrics,
            &context,
        ));
        let _ = ended_sender.send(result.map_err(|error| error.to_string()));
    });
    let result = ended
        .recv_timeout(Duration::from_secs(60))
        .expect("the stage stops on its own instead of waiting for a report that never comes");
    let error = result.expect_err("a dead letter that cannot be produced fails the stage");
    assert!(
        error.contains("cannot hand a dead letter to the producer"),
        "unexpected error: {error}"
    );
}
