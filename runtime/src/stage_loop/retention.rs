//! A partition whose next offset is older than the oldest record the topic still holds:
//! retention deleted records the group never read. Never silent: each gap is logged as an
//! error with what was lost, counted, and then either skipped or the stage stops
//! ([`OnRetentionGap`]).
//!
//! librdkafka finds the gap (a fetch answered "offset out of range") and, with
//! `auto.offset.reset=earliest`, moves the partition to the oldest record itself, logging a
//! warning. Its log callback is how the loop learns of it: the gap is recorded before any
//! record past it is handed out, so a `stop` stage processes none of them.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};

use super::OnRetentionGap;
use super::rebalance::LoopContext;
use crate::metrics::StageMetrics;

const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a partition's reading was when librdkafka found the records gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RetentionGap {
    pub(super) topic: String,
    pub(super) partition: i32,
    /// The offset the consumer asked for, no longer retained.
    pub(super) from: i64,
}

/// The gap a librdkafka log line reports, if it reports one: an `OFFSET` warning such as
/// `t [3]: offset reset (at offset 20 (leader epoch -1), broker 1) to offset BEGINNING
/// (leader epoch -1): fetch failed due to requested offset not available on the broker:
/// Broker: Offset out of range`.
pub(super) fn parse_reset(facility: &str, message: &str) -> Option<RetentionGap> {
    if facility != "OFFSET" || !message.contains("Offset out of range") {
        return None;
    }
    // librdkafka prefixes the thread: `[thrd:main]: `.
    let message = match message.strip_prefix("[thrd:") {
        Some(rest) => rest.split_once("]: ")?.1,
        None => message,
    };
    let (topic, rest) = message.split_once(" [")?;
    let (partition, rest) = rest.split_once("]: offset reset (at offset ")?;
    let digits: String = rest
        .chars()
        .take_while(|character| character.is_ascii_digit() || *character == '-')
        .collect();
    Some(RetentionGap {
        topic: topic.to_string(),
        partition: partition.parse().ok()?,
        from: digits.parse().ok()?,
    })
}

/// How many records a gap skipped: from the offset asked for to the oldest one retained.
pub(super) fn records_lost(from: i64, oldest_retained: i64) -> u64 {
    u64::try_from(oldest_retained.saturating_sub(from)).unwrap_or(0)
}

/// Logs and counts each gap, then applies the policy: an error for `stop`.
pub(super) async fn account(
    consumer: &Arc<StreamConsumer<LoopContext>>,
    gaps: Vec<RetentionGap>,
    policy: OnRetentionGap,
    metrics: &StageMetrics,
) -> anyhow::Result<()> {
    for gap in gaps {
        let oldest_retained = {
            let consumer = consumer.clone();
            let (topic, partition) = (gap.topic.clone(), gap.partition);
            tokio::task::spawn_blocking(move || {
                consumer.fetch_watermarks(&topic, partition, WATERMARK_TIMEOUT)
            })
            .await
        };
        let lost = match oldest_retained
            .map_err(anyhow::Error::from)
            .and_then(|watermarks| Ok(watermarks?))
        {
            Ok((low, _high)) => Some(records_lost(gap.from, low)),
            Err(error) => {
                tracing::warn!(error = %error, "cannot read the oldest retained offset");
                None
            }
        };
        if lost == Some(0) {
            // Asked beyond the end (the topic was recreated or truncated): nothing was lost
            // to retention; librdkafka reads from the oldest record again.
            tracing::warn!(
                topic = %gap.topic,
                partition = gap.partition,
                from_offset = gap.from,
                "offset beyond what the topic holds; reading from its oldest record"
            );
            continue;
        }
        metrics
            .retention_gaps
            .with_label_values(&[gap.topic.as_str()])
            .inc();
        if let Some(lost) = lost {
            metrics
                .records_lost_to_retention
                .with_label_values(&[gap.topic.as_str()])
                .inc_by(lost);
        }
        match policy {
            OnRetentionGap::Resume => tracing::error!(
                topic = %gap.topic,
                partition = gap.partition,
                from_offset = gap.from,
                records_lost = lost,
                "records deleted by retention before this group read them; \
                 resuming at the oldest retained record (--on-retention-gap=resume)"
            ),
            OnRetentionGap::Stop => {
                anyhow::bail!(
                    "{}/{}: offset {} is older than the oldest record the topic retains \
                     ({} records deleted by retention before this group read them); \
                     stopping (--on-retention-gap=stop). Start with \
                     --on-retention-gap=resume to skip them.",
                    gap.topic,
                    gap.partition,
                    gap.from,
                    lost.map_or_else(|| "an unknown number of".to_string(), |n| n.to_string()),
                )
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_gap_from_librdkafkas_reset_warning() {
        let line = "[thrd:main]: it.raw [3]: offset reset (at offset 20 (leader epoch -1), broker 1) \
                    to offset BEGINNING (leader epoch -1): fetch failed due to requested \
                    offset not available on the broker: Broker: Offset out of range";
        assert_eq!(
            parse_reset("OFFSET", line),
            Some(RetentionGap {
                topic: "it.raw".into(),
                partition: 3,
                from: 20
            })
        );
    }

    #[test]
    fn ignores_resets_that_lose_nothing() {
        // A group with no committed offset starting at the beginning, debug-logged.
        let line = "it.raw [0]: offset reset (at offset INVALID (leader epoch -1), broker -1) \
                    to offset BEGINNING (leader epoch -1): no previously committed offset \
                    available: Local: No offset stored";
        assert_eq!(parse_reset("OFFSET", line), None);
        assert_eq!(parse_reset("FETCH", "Broker: Offset out of range"), None);
    }

    #[test]
    fn counts_the_records_between_the_offset_and_the_oldest_retained() {
        assert_eq!(records_lost(20, 25), 5);
        assert_eq!(records_lost(25, 25), 0);
        // Asked beyond the end (a topic recreated): nothing lost to retention.
        assert_eq!(records_lost(40, 0), 0);
    }
}
