//! Knowing when the pipeline has taken a backfill in, and what became of it.
//!
//! The end is read from the stages' own commits, which each makes only once its outputs are
//! durable: when ingest's group has committed past the raw topic's end as of the last published
//! record, every backfilled event is on the validated topic or dead-lettered; then enrich's past
//! the validated topic's end as of that moment; then the sink's past the enriched topic's, when
//! ClickHouse holds the rows. Live traffic keeps flowing meanwhile: each end is read once, so
//! the wait converges.

use std::collections::HashMap;
use std::time::Duration;

use boomerang_runtime::kafka::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The consumer groups of the three stages.
#[derive(Debug, Clone, clap::Args)]
pub struct Groups {
    /// Ingest's consumer group.
    #[arg(
        long,
        env = "BOOMERANG_BACKFILL_INGEST_GROUP",
        default_value = "boomerang-ingest"
    )]
    pub ingest_group: String,
    /// Enrich's consumer group.
    #[arg(
        long,
        env = "BOOMERANG_BACKFILL_ENRICH_GROUP",
        default_value = "boomerang-enrich"
    )]
    pub enrich_group: String,
    /// The sink's consumer group.
    #[arg(
        long,
        env = "BOOMERANG_BACKFILL_SINK_GROUP",
        default_value = "boomerang-sink"
    )]
    pub sink_group: String,
}

/// Each partition's end (high watermark) of `topic`, now.
pub fn ends(kafka: &KafkaArgs, topic: &str) -> anyhow::Result<HashMap<i32, i64>> {
    let consumer: BaseConsumer = kafka.consumer_config("boomerang-backfill-ends").create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let mut ends = HashMap::new();
    for partition in metadata
        .topics()
        .iter()
        .flat_map(|topic| topic.partitions())
    {
        let (_, high) = consumer.fetch_watermarks(topic, partition.id(), TIMEOUT)?;
        ends.insert(partition.id(), high);
    }
    anyhow::ensure!(!ends.is_empty(), "topic {topic} has no partitions");
    Ok(ends)
}

/// How many records of `topic` before `ends` the group of `consumer` has not committed yet.
fn behind(consumer: &BaseConsumer, topic: &str, ends: &HashMap<i32, i64>) -> anyhow::Result<i64> {
    let mut list = TopicPartitionList::new();
    for partition in ends.keys() {
        list.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(list, TIMEOUT)?;
    let mut behind = 0;
    for (partition, end) in ends {
        let at = committed
            .find_partition(topic, *partition)
            .and_then(|element| match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            })
            .unwrap_or(0);
        behind += (end - at).max(0);
    }
    Ok(behind)
}

/// The backfill's view of one hop: the group that reads `topic`, and the ends it must pass.
pub struct Hop {
    pub stage: &'static str,
    pub group: String,
    pub topic: String,
    pub ends: Option<HashMap<i32, i64>>,
    /// A client of the group (never subscribed: it only reads the group's commits).
    pub consumer: Option<BaseConsumer>,
}

impl Hop {
    pub fn new(stage: &'static str, group: &str, topic: &str) -> Self {
        Self {
            stage,
            group: group.to_string(),
            topic: topic.to_string(),
            ends: None,
            consumer: None,
        }
    }

    /// Records still ahead of the stage; the ends are read the first time.
    pub fn behind(&mut self, kafka: &KafkaArgs) -> anyhow::Result<i64> {
        let ends = match &self.ends {
            Some(ends) => ends,
            None => self.ends.insert(ends(kafka, &self.topic)?),
        };
        let consumer = match &self.consumer {
            Some(consumer) => consumer,
            None => self
                .consumer
                .insert(kafka.consumer_config(&self.group).create()?),
        };
        behind(consumer, &self.topic, ends)
    }
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
pub struct RunRows {
    pub rows: u64,
    pub keys: u64,
}

/// The rows the run wrote to the events table: all of them, and their distinct keys (equal
/// unless a key was written twice).
pub async fn written(client: &clickhouse::Client, run_id: &str) -> anyhow::Result<RunRows> {
    Ok(client
        .query(
            "SELECT count() AS rows, uniqExact(idempotency_key) AS keys \
             FROM post_purchase_events WHERE backfill_run = ?",
        )
        .bind(run_id)
        .fetch_one::<RunRows>()
        .await?)
}

/// The rows the run wrote so far, for progress (no distinct count: cheaper).
pub async fn written_so_far(client: &clickhouse::Client, run_id: &str) -> anyhow::Result<u64> {
    Ok(client
        .query("SELECT count() FROM post_purchase_events WHERE backfill_run = ?")
        .bind(run_id)
        .fetch_one::<u64>()
        .await?)
}
