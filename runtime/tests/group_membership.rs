//! The consumer group settings every stage uses keep every partition owned when a static
//! member stops in the middle of a rebalance and comes straight back (a rolling restart, a
//! supervisor's restart).
//!
//! Regression test for the chaos soak's stall. Under incremental (cooperative) rebalancing, a
//! member first gives partitions up and only then rejoins so that they are handed over; a
//! static member that stopped in between does not rejoin, and when it came back under the
//! same `group.instance.id` the coordinator gave it its old assignment without a rebalance.
//! The partitions it had given up had no owner, for good. Under eager rebalancing, every
//! generation's assignment names every partition.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use boomerang_runtime::kafka::{KafkaArgs, TopicSpec, ensure_topics};
use boomerang_testkit::{Stack, unique_name};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};

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
