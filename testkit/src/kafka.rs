//! Reading topics and committed offsets as a test checks them.

use std::time::{Duration, Instant};

use crate::{poll_until, unique_name};

/// One consumed record, as a test inspects it.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl ReadRecord {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_ref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }
}

/// Every record of `topic` from the start of each partition to its high watermark as of now.
pub fn read_topic_to_end(brokers: &str, topic: &str) -> Vec<ReadRecord> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("testkit-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("topic metadata");
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|topic| {
            topic
                .partitions()
                .iter()
                .map(|partition| partition.id())
                .collect()
        })
        .unwrap_or_default();
    let mut records = Vec::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .expect("watermarks");
        if high <= low {
            continue;
        }
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(low))
            .expect("assignment");
        consumer.assign(&assignment).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = low;
        while next < high {
            assert!(
                Instant::now() < deadline,
                "reading {topic}/{partition} stalled at {next} of {high}"
            );
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = message.expect("consume");
            next = message.offset() + 1;
            records.push(ReadRecord {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                timestamp_ms: message.timestamp().to_millis(),
                headers: boomerang_runtime::kafka::owned_headers(&message),
            });
        }
    }
    records
}

/// For each partition of `topic`: the offset `group` committed (-1 if none) and the high
/// watermark.
pub fn committed_and_high_watermarks(
    brokers: &str,
    group: &str,
    topic: &str,
) -> Vec<(i32, i64, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offsets consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("metadata");
    let mut partitions = TopicPartitionList::new();
    for partition in metadata
        .topics()
        .iter()
        .flat_map(|topic| topic.partitions())
    {
        partitions.add_partition(topic, partition.id());
    }
    let committed = consumer
        .committed_offsets(partitions, timeout)
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|element| {
            let (_, high) = consumer
                .fetch_watermarks(topic, element.partition(), timeout)
                .expect("watermarks");
            let offset = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => -1,
            };
            (element.partition(), offset, high)
        })
        .collect()
}

/// Waits until `group` has committed every partition of `topic` to its end (an empty
/// partition has nothing to commit).
pub async fn wait_committed(brokers: &str, group: &str, topic: &str) {
    poll_until(
        "offsets committed to the end",
        Duration::from_secs(60),
        || async {
            committed_and_high_watermarks(brokers, group, topic)
                .iter()
                .all(|(_, committed, high)| committed == high || *high == 0)
                .then_some(())
        },
    )
    .await;
}
