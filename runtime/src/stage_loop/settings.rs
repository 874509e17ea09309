//! The loop's settings: its command-line arguments and what a stage passes in.

use std::time::Duration;

/// The batching stage loop's arguments (the sink sizes its batches with its own).
#[derive(Debug, Clone, clap::Args)]
pub struct LoopArgs {
    #[command(flatten)]
    pub group: GroupArgs,

    /// Most records in one batch.
    #[arg(
        long = "batch-max-records",
        env = "BOOMERANG_BATCH_MAX_RECORDS",
        default_value_t = 10_000
    )]
    pub batch_max_records: usize,

    /// Longest a batch waits to fill once its first record is in, in milliseconds.
    #[arg(
        long = "batch-max-wait-ms",
        env = "BOOMERANG_BATCH_MAX_WAIT_MS",
        default_value_t = 100
    )]
    pub batch_max_wait_ms: u64,

    /// Shortest a batch waits once its first record is in, in milliseconds; after that a
    /// small batch (under a tenth of --batch-max-records) goes as soon as the consumer has
    /// nothing more fetched (it has caught up), instead of waiting out --batch-max-wait-ms.
    /// Under load batches are large by then and fill as before.
    #[arg(
        long = "batch-min-wait-ms",
        env = "BOOMERANG_BATCH_MIN_WAIT_MS",
        default_value_t = 20
    )]
    pub batch_min_wait_ms: u64,
}

/// How long a batch waits to fill: at least `min`, then only while the consumer has more
/// fetched, and never past `max`.
#[derive(Debug, Clone, Copy)]
pub struct BatchWait {
    pub min: Duration,
    pub max: Duration,
}

/// A batch under this fraction of its maximum size is small: it goes as soon as the consumer
/// has caught up (after its minimum wait).
const SMALL_BATCH_FRACTION: usize = 10;

impl BatchWait {
    pub fn from_millis(min_ms: u64, max_ms: u64) -> Self {
        let max = Duration::from_millis(max_ms);
        Self {
            min: Duration::from_millis(min_ms).min(max),
            max,
        }
    }

    /// When a batch whose first record came in at `first_in`, holding `records` of at most
    /// `max_records`, goes once the consumer has nothing more fetched. A small batch goes after
    /// the minimum wait, rather than waiting out the maximum for records that may not come: at
    /// low rates that wait was most of an event's time to queryable. A large one is under
    /// load and the next fetch is near: it fills until the maximum, so that load never means
    /// more, smaller batches (inserts, commits).
    pub(super) fn caught_up_flush_at(
        &self,
        first_in: tokio::time::Instant,
        records: usize,
        max_records: usize,
    ) -> tokio::time::Instant {
        let small = records < (max_records / SMALL_BATCH_FRACTION).max(1);
        if small {
            first_in + self.min.min(self.max)
        } else {
            first_in + self.max
        }
    }
}

/// How a stage consumes as a member of its group: every stage has these.
#[derive(Debug, Clone, clap::Args)]
pub struct GroupArgs {
    /// Consumer group id; every instance of a stage shares one (default: boomerang-STAGE).
    #[arg(long = "group-id", env = "BOOMERANG_GROUP_ID")]
    pub group_id: Option<String>,

    /// What to do when a partition's committed offset is older than the oldest record the
    /// topic still holds (retention deleted records the group never read): `resume` at the
    /// oldest record, counting what was lost in `boomerang_records_lost_to_retention_total`
    /// with an error log line, or `stop` the stage with an error, for an operator to decide.
    #[arg(
        long = "on-retention-gap",
        env = "BOOMERANG_ON_RETENTION_GAP",
        value_enum,
        default_value_t = OnRetentionGap::Resume
    )]
    pub on_retention_gap: OnRetentionGap,
}

impl GroupArgs {
    /// The group id, `boomerang-STAGE` unless one was given.
    pub fn group_id(&self, stage: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("boomerang-{stage}"))
    }
}

/// See [`GroupArgs::on_retention_gap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnRetentionGap {
    Resume,
    Stop,
}

/// What the loop needs besides the processor.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    pub stage: &'static str,
    pub group_id: String,
    pub input_topics: Vec<String>,
    /// The topics the processor produces to (besides the dead-letter topic), for the start-up
    /// check that they take the stage's largest record.
    pub output_topics: Vec<String>,
    pub dead_letter_topic: String,
    pub batch_max_records: usize,
    pub batch_wait: BatchWait,
    pub on_retention_gap: OnRetentionGap,
}

impl LoopSettings {
    /// The topics the processor produces to.
    pub fn producing_to(mut self, output_topics: Vec<String>) -> Self {
        self.output_topics = output_topics;
        self
    }

    pub fn new(
        stage: &'static str,
        args: &LoopArgs,
        input_topics: Vec<String>,
        dead_letter_topic: String,
    ) -> Self {
        Self::for_group(
            stage,
            &args.group,
            input_topics,
            dead_letter_topic,
            args.batch_max_records,
            BatchWait::from_millis(args.batch_min_wait_ms, args.batch_max_wait_ms),
        )
    }

    /// For a stage that sizes its batches with arguments of its own.
    pub fn for_group(
        stage: &'static str,
        group: &GroupArgs,
        input_topics: Vec<String>,
        dead_letter_topic: String,
        batch_max_records: usize,
        batch_wait: BatchWait,
    ) -> Self {
        Self {
            stage,
            group_id: group.group_id(stage),
            input_topics,
            output_topics: Vec::new(),
            dead_letter_topic,
            batch_max_records: batch_max_records.max(1),
            batch_wait,
            on_retention_gap: group.on_retention_gap,
        }
    }
}

/// Test hook: abort the process (as `kill -9` would) after this many batches have had their
/// outputs acknowledged but before their offsets are committed.
pub const CRASH_AFTER_PRODUCE_ENV: &str = "BOOMERANG_TEST_CRASH_AFTER_PRODUCED_BATCHES";

/// Test hook: the first N commits after a completed batch are not made, as if the group had
/// refused them (a commit refused during a rebalance), so that the retry can be tested.
pub const DROP_COMMITS_ENV: &str = "BOOMERANG_TEST_DROP_COMMITS";

/// Whether the [`DROP_COMMITS_ENV`] hook drops this commit.
pub(super) fn drop_this_commit() -> bool {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static REMAINING: OnceLock<AtomicU64> = OnceLock::new();
    let remaining = REMAINING.get_or_init(|| {
        AtomicU64::new(
            std::env::var(DROP_COMMITS_ENV)
                .ok()
                .and_then(|value| value.parse().ok())
                .unwrap_or(0),
        )
    });
    remaining
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
            left.checked_sub(1)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_caught_up_batch_goes_after_its_minimum_a_large_one_at_its_maximum() {
        let wait = BatchWait::from_millis(20, 500);
        let first_in = tokio::time::Instant::now();
        let at = |records| wait.caught_up_flush_at(first_in, records, 10_000) - first_in;
        assert_eq!(at(1), Duration::from_millis(20));
        assert_eq!(at(999), Duration::from_millis(20));
        assert_eq!(
            at(1_000),
            Duration::from_millis(500),
            "a tenth of the maximum is large"
        );
        assert_eq!(at(9_999), Duration::from_millis(500));
    }

    #[test]
    fn the_minimum_never_exceeds_the_maximum() {
        let wait = BatchWait::from_millis(900, 100);
        assert_eq!(wait.min, Duration::from_millis(100));
        let first_in = tokio::time::Instant::now();
        assert_eq!(
            wait.caught_up_flush_at(first_in, 1, 10) - first_in,
            Duration::from_millis(100)
        );
    }
}
