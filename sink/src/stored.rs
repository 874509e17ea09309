//! What ClickHouse already holds of a partition, read when the partition is assigned: the
//! offsets at or after the group's committed offset that have rows (written by an instance that
//! died, or was cut off, between its insert and its commit). The sink skips those records, so a
//! replay never writes a row twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::stage_loop::Partition;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// Reads committed offsets and stored rows.
pub struct StoredOffsets {
    /// A client of the group, never subscribed: only to read its committed offsets.
    consumer: Arc<BaseConsumer>,
    client: clickhouse::Client,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct StoredRow {
    source_partition: i32,
    source_offset: i64,
}

impl StoredOffsets {
    pub fn new(
        kafka: &KafkaArgs,
        group_id: &str,
        client: clickhouse::Client,
    ) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = kafka.consumer_config(group_id).create()?;
        Ok(Self {
            consumer: Arc::new(consumer),
            client,
        })
    }

    /// The group's committed offset of each partition (0 where nothing is committed yet).
    pub async fn committed(
        &self,
        partitions: &[Partition],
    ) -> anyhow::Result<HashMap<Partition, i64>> {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in partitions {
            list.add_partition(topic, *partition);
        }
        let consumer = self.consumer.clone();
        let committed = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(list, Duration::from_secs(30))
        })
        .await??;
        Ok(committed
            .elements()
            .iter()
            .map(|element| {
                let from = match element.offset() {
                    Offset::Offset(offset) => offset,
                    _ => 0, // nothing committed: anything stored may be replayed
                };
                ((element.topic().into(), element.partition()), from)
            })
            .collect())
    }

    /// The stored offsets, at or after the committed one, of each partition in `partitions`,
    /// whose rows live in `table_of(topic)`.
    pub async fn stored(
        &self,
        committed: &HashMap<Partition, i64>,
        table_of: impl Fn(&str) -> Option<&'static str>,
    ) -> anyhow::Result<HashMap<Partition, HashSet<i64>>> {
        let mut stored: HashMap<Partition, HashSet<i64>> = HashMap::new();
        for ((topic, partition), &from) in committed {
            let partition = *partition;
            let Some(table) = table_of(topic) else {
                continue;
            };
            let rows = self
                .client
                .query(&format!(
                    "SELECT DISTINCT source_partition, source_offset FROM {table} \
                     WHERE source_topic = ? AND source_partition = ? AND source_offset >= ?"
                ))
                .bind(&**topic)
                .bind(partition)
                .bind(from)
                .fetch_all::<StoredRow>()
                .await?;
            if !rows.is_empty() {
                tracing::info!(topic = %topic, partition, from, rows = rows.len(), "records already in ClickHouse will be skipped");
            }
            let offsets = stored.entry((topic.clone(), partition)).or_default();
            offsets.extend(
                rows.into_iter()
                    .filter(|row| row.source_partition == partition)
                    .map(|row| row.source_offset),
            );
        }
        Ok(stored)
    }
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct KeyRow {
    idempotency_key: String,
}

impl StoredOffsets {
    /// The idempotency keys of the events in `table` written from `topic`'s `partition` at
    /// offsets from `from` on, in offset order.
    pub async fn event_keys(
        &self,
        table: &str,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> anyhow::Result<Vec<String>> {
        let rows = self
            .client
            .query(&format!(
                "SELECT idempotency_key FROM {table} \
                 WHERE source_topic = ? AND source_partition = ? AND source_offset >= ? \
                 ORDER BY source_offset"
            ))
            .bind(topic)
            .bind(partition)
            .bind(from)
            .fetch_all::<KeyRow>()
            .await?;
        Ok(rows.into_iter().map(|row| row.idempotency_key).collect())
    }

    /// The return cases of `topic`'s `partitions` that ClickHouse holds as received since
    /// `since` (microseconds) and not refunded, credited or rejected: (partition, case id,
    /// received at). A case's events share one partition (the order id is the key).
    pub async fn open_refund_cases(
        &self,
        table: &str,
        topic: &str,
        partitions: &[i32],
        since: i64,
    ) -> anyhow::Result<Vec<(i32, String, i64)>> {
        let rows = self
            .client
            .query(&format!(
                "SELECT source_partition, case_id, \
                 toUnixTimestamp64Micro(minIf(occurred_at, event_type = 'RETURN_RECEIVED')) AS received \
                 FROM {table} \
                 WHERE source_topic = ? AND source_partition IN ? AND event_type IN \
                 ('RETURN_RECEIVED', 'REFUND_ISSUED', 'STORE_CREDIT_ISSUED', 'RETURN_REJECTED') \
                 GROUP BY source_partition, case_id \
                 HAVING countIf(event_type = 'RETURN_RECEIVED') > 0 \
                 AND countIf(event_type != 'RETURN_RECEIVED') = 0 AND received >= ?"
            ))
            .bind(topic)
            .bind(partitions)
            .bind(since)
            .fetch_all::<OpenCaseRow>()
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.source_partition, row.case_id, row.received))
            .collect())
    }
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct OpenCaseRow {
    source_partition: i32,
    case_id: String,
    received: i64,
}
