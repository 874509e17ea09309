//! Reading a whole topic as it is now, for the operator commands that look at one.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use boomerang_runtime::kafka::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

/// Hands every record of `topic`, from the start of each partition to its end as of now, to
/// `visit`, partitions interleaved. Fails if the records stop coming for 60 s.
pub fn read_to_end(
    kafka: &KafkaArgs,
    topic: &str,
    visit: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<()> {
    read_since(kafka, topic, None, visit)
}

/// [`read_to_end`] from the first record written at or after `since_ms` (UTC milliseconds) of
/// each partition, or from the start (`None`).
pub fn read_since(
    kafka: &KafkaArgs,
    topic: &str,
    since_ms: Option<i64>,
    mut visit: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = kafka.consumer_config("boomerang-topic-reader").create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in metadata
        .topics()
        .iter()
        .flat_map(|topic| topic.partitions())
    {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
        let from = match since_ms {
            None => low,
            Some(since_ms) => {
                let mut by_time = TopicPartitionList::new();
                by_time.add_partition_offset(topic, partition.id(), Offset::Offset(since_ms))?;
                match consumer
                    .offsets_for_times(by_time, timeout)?
                    .find_partition(topic, partition.id())
                    .map(|element| element.offset())
                {
                    Some(Offset::Offset(offset)) => offset.max(low),
                    _ => high,
                }
            }
        };
        if high > from {
            assignment.add_partition_offset(topic, partition.id(), Offset::Offset(from))?;
            ends.insert(partition.id(), high);
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    let mut done: HashSet<i32> = HashSet::new();
    let mut last_record = Instant::now();
    while done.len() < ends.len() {
        if last_record.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("reading {topic} stalled: no record for 60 s");
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        last_record = Instant::now();
        if message.offset() + 1 >= ends.get(&message.partition()).copied().unwrap_or(0) {
            done.insert(message.partition());
        }
        visit(&message);
    }
    Ok(())
}
