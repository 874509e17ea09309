//! Rebuilding a partition's de-duplication state from the validated topic, the source of truth:
//! every event ingest ever passed for raw partition P sits in validated partition P,
//! acknowledged before the raw offset was committed. Reading validated P from the start of the
//! window therefore recovers every key a crashed or rebalanced-away instance passed, including
//! those it passed but never committed.
//!
//! Each record's idempotency key and event time are read from its headers where it has them
//! (written `--validated-headers full`, or by an ingest without that option), else from the
//! front of its datum ([`DedupFacts`]), which every version of the event's schema shares.

use std::path::Path;
use std::time::{Duration, Instant};

use boomerang_runtime::kafka::{KafkaArgs, header};
use boomerang_schemas::{DedupFacts, TimestampMicros};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::dedup::{DedupState, key_hash};
use crate::publish::IDEMPOTENCY_KEY_HEADER;
use crate::snapshot::DedupSnapshot;
use boomerang_runtime::snapshot::SnapshotError;
use boomerang_runtime::stage_loop::EVENT_TIME_HEADER;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// Test hook: every restore first waits this many milliseconds, as a long one would take.
pub const RESTORE_DELAY_ENV: &str = "BOOMERANG_TEST_RESTORE_DELAY_MS";
/// How much earlier than the window's start the restore starts reading: more than any event's
/// allowed lead on the clock (`--max-future-skew-secs`, 5 minutes by default).
const FUTURE_SKEW_SLACK: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy)]
pub struct RestoreStats {
    pub records_read: u64,
    pub keys: usize,
    pub elapsed: Duration,
    /// Whether a local snapshot was the starting point.
    pub from_snapshot: bool,
    /// The validated offset the state is complete up to (the high watermark when read).
    pub restored_upto: i64,
}

/// Where a newly assigned partition's de-duplication state comes from. Blocking: the
/// processor calls it on a blocking thread.
pub trait History: Send + Sync + 'static {
    /// `partition`'s state: the keys of the events it passed within `window` (at most
    /// `max_keys`), read back from a usable snapshot in `snapshots` and what was written since.
    fn restore(
        &self,
        partition: i32,
        window: Duration,
        max_keys: usize,
        now: TimestampMicros,
        snapshots: Option<&Path>,
    ) -> anyhow::Result<(DedupState, RestoreStats)>;
}

/// The validated topic itself: what every running ingest restores from.
pub struct ValidatedTopic {
    pub kafka: KafkaArgs,
    pub topic: String,
}

impl History for ValidatedTopic {
    fn restore(
        &self,
        partition: i32,
        window: Duration,
        max_keys: usize,
        now: TimestampMicros,
        snapshots: Option<&Path>,
    ) -> anyhow::Result<(DedupState, RestoreStats)> {
        restore_partition(
            &self.kafka,
            &self.topic,
            partition,
            window,
            max_keys,
            now,
            snapshots,
        )
    }
}

/// No history: every partition starts empty. For benchmarks and unit tests, which have no
/// Kafka to read back from.
pub struct NoHistory;

impl History for NoHistory {
    fn restore(
        &self,
        _partition: i32,
        window: Duration,
        max_keys: usize,
        _now: TimestampMicros,
        _snapshots: Option<&Path>,
    ) -> anyhow::Result<(DedupState, RestoreStats)> {
        let stats = RestoreStats {
            records_read: 0,
            keys: 0,
            elapsed: Duration::ZERO,
            from_snapshot: false,
            restored_upto: 0,
        };
        Ok((DedupState::new(window, max_keys), stats))
    }
}

/// Reads validated `partition` from the records written since `now - window` (and an hour of
/// slack) to its high watermark, keeping the keys whose event time is in the window. With a
/// usable snapshot in `snapshots` (see `snapshot.rs`), starts from it and reads only from
/// where it says. Blocking: run it on a blocking thread.
pub fn restore_partition(
    kafka: &KafkaArgs,
    validated_topic: &str,
    partition: i32,
    window: Duration,
    max_keys: usize,
    now: TimestampMicros,
    snapshots: Option<&Path>,
) -> anyhow::Result<(DedupState, RestoreStats)> {
    let started = Instant::now();
    if let Some(delay_ms) = std::env::var(RESTORE_DELAY_ENV)
        .ok()
        .and_then(|value| value.parse().ok())
    {
        tracing::warn!(delay_ms, "test hook: a slow restore");
        std::thread::sleep(Duration::from_millis(delay_ms));
    }
    let mut state = DedupState::new(window, max_keys);
    let mut config = kafka.consumer_config("boomerang-ingest-restore");
    config.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let (low, high) = consumer.fetch_watermarks(validated_topic, partition, KAFKA_TIMEOUT)?;
    let snapshot = snapshots.and_then(|dir| {
        match DedupSnapshot::load(dir, validated_topic, partition, window) {
            Ok(snapshot) if snapshot.replay_from <= high => Some(snapshot),
            Ok(snapshot) => {
                tracing::warn!(
                    topic = validated_topic,
                    partition,
                    replay_from = snapshot.replay_from,
                    high,
                    "the de-duplication snapshot lies past the topic's end (was the topic \
                     recreated?); reading the whole window instead"
                );
                None
            }
            Err(SnapshotError::Io(error)) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                tracing::warn!(topic = validated_topic, partition, error = %error, "de-duplication snapshot not used; reading the whole window instead");
                None
            }
        }
    });
    let from_snapshot = snapshot.is_some();
    let start_offset = match snapshot {
        Some(snapshot) => {
            for (micros, hash) in snapshot.entries {
                state.remember(hash, TimestampMicros::from_unix_micros(micros));
            }
            snapshot.replay_from.max(low)
        }
        // Records are timestamped when validated: one validated before the window started
        // happened before it too, unless it came from up to `--max-future-skew-secs` ahead.
        None => first_offset_since(
            &consumer,
            validated_topic,
            partition,
            now.saturating_sub(window)
                .saturating_sub(FUTURE_SKEW_SLACK)
                .as_unix_millis(),
            high,
        )?,
    };
    let records_read = read_keys(
        &consumer,
        validated_topic,
        partition,
        (start_offset, high),
        now.saturating_sub(window).as_unix_millis(),
        &mut state,
    )?;
    state.expire(now);
    let stats = RestoreStats {
        records_read,
        keys: state.len(),
        elapsed: started.elapsed(),
        from_snapshot,
        restored_upto: high,
    };
    Ok((state, stats))
}

/// The first offset of `topic`/`partition` written at or after `since_ms`; `high` (the end,
/// read before) when none is.
pub(crate) fn first_offset_since(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    since_ms: i64,
    high: i64,
) -> anyhow::Result<i64> {
    let mut by_time = TopicPartitionList::new();
    by_time.add_partition_offset(topic, partition, Offset::Offset(since_ms))?;
    let found = consumer
        .offsets_for_times(by_time, KAFKA_TIMEOUT)?
        .find_partition(topic, partition)
        .map(|element| element.offset());
    Ok(match found {
        Some(Offset::Offset(offset)) => offset.min(high),
        _ => high,
    })
}

/// Reads validated `partition` from `start_offset` to `high`, remembering every key whose event
/// time is at or after `horizon_ms`: a backfilled event written lately but older than the
/// window is not kept (the sink de-duplicates those), so a backfill does not fill the memory.
fn read_keys(
    consumer: &BaseConsumer,
    validated_topic: &str,
    partition: i32,
    (start_offset, high): (i64, i64),
    horizon_ms: i64,
    state: &mut DedupState,
) -> anyhow::Result<u64> {
    let mut records_read = 0u64;
    if start_offset < high {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(
            validated_topic,
            partition,
            Offset::Offset(start_offset),
        )?;
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut next_offset = start_offset;
        while next_offset < high {
            if Instant::now() > deadline {
                anyhow::bail!(
                    "restoring {validated_topic}/{partition} stalled at offset {next_offset} of {high}"
                );
            }
            let Some(message) = consumer.poll(Duration::from_secs(1)) else {
                continue;
            };
            let message = message?;
            next_offset = message.offset() + 1;
            records_read += 1;
            let Some((key_hash, occurred_at)) = dedup_facts(&message) else {
                tracing::warn!(
                    topic = validated_topic,
                    partition,
                    offset = message.offset(),
                    "validated record whose idempotency key cannot be read; skipped"
                );
                continue;
            };
            if occurred_at.as_unix_millis() < horizon_ms {
                continue;
            }
            state.remember(key_hash, occurred_at);
        }
    }
    Ok(records_read)
}

/// A validated record's key hash and event time: from its headers where it has the key's
/// (`--validated-headers full`), else from its datum.
fn dedup_facts(message: &impl Message) -> Option<(u128, TimestampMicros)> {
    if let Some(key) = header(message, IDEMPOTENCY_KEY_HEADER) {
        // Records written before the event time had a header were timestamped with it.
        let event_time_ms = header(message, EVENT_TIME_HEADER)
            .and_then(|value| std::str::from_utf8(value).ok()?.parse::<i64>().ok())
            .or_else(|| message.timestamp().to_millis())?;
        return Some((
            key_hash_bytes(key),
            TimestampMicros::from_unix_millis(event_time_ms),
        ));
    }
    let facts = DedupFacts::of_framed(message.payload()?)?;
    Some((key_hash(facts.idempotency_key), facts.occurred_at))
}

fn key_hash_bytes(key: &[u8]) -> u128 {
    match std::str::from_utf8(key) {
        Ok(text) => key_hash(text),
        // Keys were written from Rust strings, so this cannot happen; hash the bytes anyway.
        Err(_) => xxhash_rust::xxh3::xxh3_128(key),
    }
}

#[cfg(test)]
mod tests {
    use boomerang_schemas::{codec, wire};
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

    use super::*;

    fn validated(datum: &[u8], headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            Some(wire::frame(7, datum)),
            Some(b"ord-1".to_vec()),
            "validated".into(),
            Timestamp::CreateTime(1_700_000_000_000),
            0,
            5,
            headers,
        )
    }

    #[test]
    fn key_and_time_come_from_the_headers_where_there_are_some_else_from_the_datum() {
        let event = boomerang_testkit::samples::event();
        let datum = codec::encode(&event).expect("encodes");
        let from_datum = dedup_facts(&validated(&datum, None)).expect("reads the datum");
        assert_eq!(
            from_datum,
            (key_hash(&event.idempotency_key), event.occurred_at)
        );
        // A record of `--validated-headers full`, or of before: its headers say it, in ms.
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: IDEMPOTENCY_KEY_HEADER,
                value: Some("header-key"),
            })
            .insert(Header {
                key: EVENT_TIME_HEADER,
                value: Some("1763000000123"),
            });
        assert_eq!(
            dedup_facts(&validated(&datum, Some(headers))),
            Some((
                key_hash("header-key"),
                TimestampMicros::from_unix_millis(1_763_000_000_123)
            ))
        );
        // Older still: a key header and no time header, timestamped with the event time.
        let key_only = OwnedHeaders::new().insert(Header {
            key: IDEMPOTENCY_KEY_HEADER,
            value: Some("header-key"),
        });
        assert_eq!(
            dedup_facts(&validated(&datum, Some(key_only))),
            Some((
                key_hash("header-key"),
                TimestampMicros::from_unix_millis(1_700_000_000_000)
            ))
        );
        assert_eq!(dedup_facts(&validated(&datum[..3], None)), None);
    }
}
