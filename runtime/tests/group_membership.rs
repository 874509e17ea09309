//! The consumer group settings every stage uses keep every partition owned when a static
//! member stops in the middle of a rebalance and comes straight back (a rolling restart, a
//! supervisor's restart); and a static member that takes longer than its session timeout to
//! prepare after a restart still moves no partition, because it joins before it prepares.
//!
//! Regression test for the chaos soak's stall. Under incremental (cooperative) rebalancing, a
//! member first gives partitions up and only then rejoins so that they are handed over; a
//! static member that stopped in between does not rejoin, and when it came back under the
//! same `group.instance.id` the coordinator gave it its old assignment without a rebalance.
//! The partitions it had given up had no owner, for good. Under eager rebalancing, every
//! generation's assignment names every partition.

mod support;

use support::PassesEverything;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use boomerang_runtime::http::Readiness;
use boomerang_runtime::kafka::{KafkaArgs, TopicSpec, ensure_topics};
use boomerang_runtime::metrics::{Metrics, StageMetrics};
use boomerang_runtime::service::StageContext;
use boomerang_runtime::stage_loop::{self, BatchWait, LoopSettings, OnRetentionGap};
use boomerang_testkit::{Stack, unique_name};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;

/// Counts rebalance callbacks, so the test can stop a member right after one.
#[derive(Clone, Default)]
struct Callbacks(Arc<AtomicUsize>);

impl ClientContext for Callbacks {}

impl ConsumerContext for Callbacks {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn member(kafka: &KafkaArgs, group: &str, topic: &str, instance: &str) -> BaseConsumer<Callbacks> {
    let mut kafka = kafka.clone();
    kafka.instance_id = Some(instance.to_string());
    kafka
        .properties
        .push(("session.timeout.ms".into(), "6000".into()));
    let consumer: BaseConsumer<Callbacks> = kafka
        .group_member_config(group)
        .create_with_context(Callbacks::default())
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

fn owned(consumer: &BaseConsumer<Callbacks>) -> BTreeSet<i32> {
    consumer
        .assignment()
        .expect("assignment")
        .elements()
        .iter()
        .map(|element| element.partition())
        .collect()
}

fn poll_for(consumers: &[&BaseConsumer<Callbacks>], duration: Duration) {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        for consumer in consumers {
            let _ = consumer.poll(Duration::from_millis(20));
        }
    }
}

#[tokio::test]
async fn a_static_member_stopped_inside_a_rebalance_and_restarted_leaves_no_partition_unowned() {
    let stack = Stack::from_env();
    let kafka = KafkaArgs::for_brokers(&stack.kafka_brokers);
    let topic = unique_name("it-membership");
    let group = unique_name("it-membership-group");
    ensure_topics(&kafka, &[TopicSpec::new(&topic, PARTITIONS)])
        .await
        .expect("create topic");

    tokio::task::spawn_blocking(move || {
        let all: BTreeSet<i32> = (0..PARTITIONS).collect();
        let first = member(&kafka, &group, &topic, "member-a");
        let deadline = Instant::now() + Duration::from_secs(30);
        while owned(&first) != all {
            assert!(
                Instant::now() < deadline,
                "the first member never owned all"
            );
            let _ = first.poll(Duration::from_millis(50));
        }

        // A second member joins; the first stops right after its next rebalance callback,
        // before it can take any further step of the rebalance.
        let second = member(&kafka, &group, &topic, "member-b");
        let seen = first.context().0.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while first.context().0.load(Ordering::SeqCst) == seen {
            assert!(
                Instant::now() < deadline,
                "no rebalance reached the first member"
            );
            let _ = first.poll(Duration::from_millis(20));
            let _ = second.poll(Duration::from_millis(20));
        }
        // As a stage stops: its close runs on a thread of its own, and nothing waits for it
        // (a close interrupted by a rebalance can hang: confluentinc/librdkafka#4884).
        std::thread::spawn(move || drop(first));

        // It comes straight back under the same id; both poll. Every partition must have an
        // owner again well within a session timeout.
        let restarted = member(&kafka, &group, &topic, "member-a");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            poll_for(&[&restarted, &second], Duration::from_millis(200));
            let (a, b) = (owned(&restarted), owned(&second));
            if a.is_disjoint(&b) && a.union(&b).copied().collect::<BTreeSet<_>>() == all {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "partitions left without an owner: restarted member owns {a:?}, the other {b:?}"
            );
        }
    })
    .await
    .expect("test thread");
}

/// Loop settings for a new group consuming a new topic of [`PARTITIONS`] partitions.
async fn loop_settings(kafka: &KafkaArgs, name: &str) -> LoopSettings {
    let topic = unique_name(name);
    let dead_letters = unique_name(&format!("{name}-dlq"));
    ensure_topics(
        kafka,
        &[
            TopicSpec::new(&topic, PARTITIONS),
            TopicSpec::new(&dead_letters, 1),
        ],
    )
    .await
    .expect("topics");
    LoopSettings {
        stage: "membership-test",
        group_id: unique_name(&format!("{name}-group")),
        input_topics: vec![topic],
        output_topics: Vec::new(),
        dead_letter_topic: dead_letters,
        batch_max_records: 100,
        batch_wait: BatchWait::from_millis(20, 50),
        on_retention_gap: OnRetentionGap::Resume,
    }
}

/// One stage instance: its stage metrics and the context that stops it.
struct Instance {
    metrics: StageMetrics,
    context: StageContext,
}

impl Instance {
    fn new() -> Self {
        let metrics = Metrics::for_stage("membership-test").expect("metrics");
        Self {
            metrics: StageMetrics::register(&metrics).expect("stage metrics"),
            context: StageContext {
                stage: "membership-test",
                metrics,
                readiness: Readiness::new("starting"),
                shutdown: CancellationToken::new(),
            },
        }
    }

    fn owned(&self) -> i64 {
        self.metrics.owned_partitions.get()
    }

    fn revoked(&self) -> u64 {
        self.metrics
            .partition_changes
            .with_label_values(&["revoked"])
            .get()
    }
}

/// A restarted stage joins its group before it prepares (registry, snapshots, reference
/// tables), not when its loop starts: a static member that takes longer than its session
/// timeout to prepare still comes back under its id in time, and its partner gives nothing up
/// (the chaos soak's rolling restart found partners rebalanced when a restart took 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_preparing_longer_than_its_session_timeout_moves_no_partition() {
    const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
    let stack = Stack::from_env();
    let mut kafka = KafkaArgs::for_brokers(&stack.kafka_brokers);
    kafka.properties.push((
        "session.timeout.ms".into(),
        SESSION_TIMEOUT.as_millis().to_string(),
    ));
    let settings = loop_settings(&kafka, "it-prepare").await;
    let start = |name: &str, instance: &Instance| {
        let mut kafka = kafka.clone();
        kafka.instance_id = Some(name.to_string());
        let member =
            stage_loop::join(settings.clone(), &kafka, instance.metrics.clone()).expect("join");
        (member, kafka)
    };
    let spawn = |member: stage_loop::Member, kafka: KafkaArgs, instance: &Instance| {
        let context = instance.context.clone();
        tokio::spawn(async move { member.run(&kafka, PassesEverything, &context).await })
    };

    let (first, second) = (Instance::new(), Instance::new());
    let (member, first_kafka) = start("member-a", &first);
    let first_running = spawn(member, first_kafka, &first);
    let (member, second_kafka) = start("member-b", &second);
    let second_running = spawn(member, second_kafka, &second);
    poll_until("both members own partitions", || {
        first.owned() > 0
            && second.owned() > 0
            && first.owned() + second.owned() == i64::from(PARTITIONS)
    })
    .await;
    let revoked_before = second.revoked();

    // The first stops as a stage does on SIGTERM (a static member does not leave) and comes
    // straight back: it joins, then prepares for longer than its session timeout.
    first.context.shutdown.cancel();
    first_running
        .await
        .expect("first")
        .expect("first stops cleanly");
    let restarted = Instance::new();
    let (member, restarted_kafka) = start("member-a", &restarted);
    // The preparation this test is about, not a synchronisation: its length is the point.
    tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(3)).await;
    let restarted_running = spawn(member, restarted_kafka, &restarted);
    poll_until("the restarted member owns partitions", || {
        restarted.owned() > 0
    })
    .await;
    assert_eq!(
        second.revoked(),
        revoked_before,
        "the partner gave partitions up while the restarted member prepared"
    );
    assert_eq!(restarted.owned() + second.owned(), i64::from(PARTITIONS));

    restarted.context.shutdown.cancel();
    second.context.shutdown.cancel();
    restarted_running.await.expect("restarted").expect("stops");
    second_running.await.expect("second").expect("stops");
}

/// A preparation that outlasts the consumer's `max.poll.interval.ms` (a schema registry down
/// for minutes at start-up) costs a rejoin, not the stage: librdkafka gives the membership up
/// and the loop's first poll joins again, static member or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_preparing_longer_than_its_max_poll_interval_consumes_once_it_runs() {
    const MAX_POLL_INTERVAL: Duration = Duration::from_secs(6);
    let stack = Stack::from_env();
    let mut kafka = KafkaArgs::for_brokers(&stack.kafka_brokers);
    for (key, value) in [
        ("session.timeout.ms", MAX_POLL_INTERVAL),
        ("max.poll.interval.ms", MAX_POLL_INTERVAL),
    ] {
        kafka
            .properties
            .push((key.into(), value.as_millis().to_string()));
    }
    for instance_id in [Some("member-a"), None] {
        let mut kafka = kafka.clone();
        kafka.instance_id = instance_id.map(str::to_string);
        let settings = loop_settings(&kafka, "it-max-poll").await;
        let instance = Instance::new();
        let member = stage_loop::join(settings, &kafka, instance.metrics.clone()).expect("join");
        // The preparation this test is about, not a synchronisation: its length is the point.
        tokio::time::sleep(MAX_POLL_INTERVAL + Duration::from_secs(2)).await;
        let context = instance.context.clone();
        let running =
            tokio::spawn(async move { member.run(&kafka, PassesEverything, &context).await });
        poll_until(
            &format!("the member ({instance_id:?}) owning every partition"),
            || instance.owned() == i64::from(PARTITIONS),
        )
        .await;
        instance.context.shutdown.cancel();
        running.await.expect("member").expect("stops cleanly");
    }
}

async fn poll_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await; // polling, with the deadline above
    }
}
