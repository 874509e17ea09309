//! `boomerang verify`: after a run, per idempotency key, what the generator published against
//! what each seam holds, Jepsen-style. A key the generator published as a valid event is
//! *lost* if ClickHouse lacks it, *duplicated* if `post_purchase_events` has more than one row
//! of it (`count()` without FINAL), and a key ClickHouse has that was never published is
//! *unexpected*. The validated and enriched topics are checked the same way (a key emitted
//! twice there is a stage's re-emission: not a failure while the sink writes it once, but
//! counted), and the dead-letter topic must hold exactly the records the generator made
//! malformed or invalid, none of them twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use anyhow::Context;
use boomerang_clickhouse::ClickhouseArgs;
use boomerang_runtime::dead_letter;
use boomerang_runtime::kafka::{KafkaArgs, header};
use boomerang_runtime::stage_loop::IDEMPOTENCY_KEY_HEADER;
use boomerang_runtime::topics::TopicsArgs;
use boomerang_schemas::DedupFacts;
use rdkafka::Message;

use crate::generate::truth::Truth;
use crate::topic::read_to_end;

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicsArgs,
    #[command(flatten)]
    pub clickhouse: ClickhouseArgs,
    /// The ground truth `boomerang gen` wrote.
    #[arg(long)]
    pub truth: PathBuf,
    /// The valid events' idempotency keys `boomerang gen --keys` wrote.
    #[arg(long)]
    pub keys: PathBuf,
    /// Where to write the verdict as JSON.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// First wait until the stages' groups (`<prefix>-ingest`, `-enrich`, `-sink`, see
    /// `--group-prefix`) have committed every partition of their input topics to its end.
    #[arg(long, requires = "group_prefix")]
    pub wait_drained: bool,
    #[arg(long)]
    pub group_prefix: Option<String>,
    /// How long to wait for that.
    #[arg(long, default_value_t = 1800)]
    pub wait_timeout_secs: u64,
}

/// One seam's verdict.
#[derive(Debug, Default, serde::Serialize)]
pub struct Seam {
    pub records: u64,
    pub distinct_keys: u64,
    pub lost: u64,
    /// Keys with more than one record (rows, for ClickHouse).
    pub duplicated: u64,
    pub unexpected: u64,
    /// A few of the keys behind each count, for a look.
    pub examples: BTreeMap<&'static str, Vec<String>>,
}

#[derive(Debug, serde::Serialize)]
pub struct Verdict {
    pub expected_keys: u64,
    pub validated: Seam,
    pub enriched: Seam,
    pub clickhouse: Seam,
    pub dead_letters: u64,
    pub dead_letters_expected: u64,
    /// Dead letters of one source record written more than once (after a crash).
    pub dead_letters_twice: u64,
    pub dead_letters_by_kind: BTreeMap<String, u64>,
    /// What fails the run: a loss, a duplicate row, an unexpected row, or dead letters other
    /// than the generator's.
    pub failures: Vec<String>,
}

fn seam(counts: HashMap<String, u64>, expected: &HashSet<String>) -> Seam {
    let mut seam = Seam {
        records: counts.values().sum(),
        distinct_keys: counts.len() as u64,
        ..Seam::default()
    };
    let mut note = |what: &'static str, key: &str| {
        let examples = seam.examples.entry(what).or_default();
        if examples.len() < 5 {
            examples.push(key.to_string());
        }
    };
    for key in expected {
        if !counts.contains_key(key) {
            seam.lost += 1;
            note("lost", key);
        }
    }
    for (key, count) in &counts {
        if *count > 1 {
            seam.duplicated += 1;
            note("duplicated", key);
        }
        if !expected.contains(key) {
            seam.unexpected += 1;
            note("unexpected", key);
        }
    }
    seam
}

/// The idempotency key in a validated or enriched record's value: a Confluent frame around a
/// datum that starts with the event's fields (`DedupFacts`), whichever schema version wrote it.
fn key_in_value(value: &[u8]) -> Option<String> {
    Some(DedupFacts::of_framed(value)?.idempotency_key.to_string())
}

/// Each record's idempotency key is its header's where it has one (`--validated-headers full`,
/// `--enriched-headers full`, or written before those options), else its datum's.
fn keys_in_topic(kafka: &KafkaArgs, topic: &str) -> anyhow::Result<HashMap<String, u64>> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    read_to_end(kafka, topic, |message| {
        let key = header(message, IDEMPOTENCY_KEY_HEADER)
            .map(|key| String::from_utf8_lossy(key).into_owned())
            .or_else(|| message.payload().and_then(key_in_value))
            .unwrap_or_else(|| format!("<no key at {}/{}>", message.partition(), message.offset()));
        *counts.entry(key).or_default() += 1;
    })
    .with_context(|| format!("reading {topic}"))?;
    Ok(counts)
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct KeyCount {
    idempotency_key: String,
    rows: u64,
}

/// `None` if `group` has committed every partition of `topic` up to its end; else the first
/// partition behind, as "topic/partition committed C of E".
fn behind(kafka: &KafkaArgs, group: &str, topic: &str) -> anyhow::Result<Option<String>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let timeout = std::time::Duration::from_secs(10);
    let consumer: BaseConsumer = kafka.consumer_config(group).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut list = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in metadata
        .topics()
        .iter()
        .flat_map(|topic| topic.partitions())
    {
        let (_, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
        list.add_partition(topic, partition.id());
        ends.insert(partition.id(), high);
    }
    let committed = consumer.committed_offsets(list, timeout)?;
    Ok(committed.elements().iter().find_map(|element| {
        let end = ends.get(&element.partition()).copied().unwrap_or(0);
        let done = match element.offset() {
            Offset::Offset(offset) => offset >= end,
            _ => end == 0,
        };
        (!done).then(|| {
            format!(
                "{topic}/{} committed {:?} of {end}",
                element.partition(),
                element.offset()
            )
        })
    }))
}

/// Waits until every stage's group has committed its input topics to their ends, twice in a
/// row two seconds apart (a held record keeps enrich's commit behind until it is decided).
async fn wait_drained(args: &VerifyArgs, prefix: &str) -> anyhow::Result<()> {
    let topics = &args.topics;
    let groups: [(String, Vec<&str>); 3] = [
        (format!("{prefix}-ingest"), vec![topics.raw_events.as_str()]),
        (
            format!("{prefix}-enrich"),
            vec![topics.validated_events.as_str()],
        ),
        (
            format!("{prefix}-sink"),
            vec![
                topics.enriched_events.as_str(),
                topics.orders.as_str(),
                topics.customers.as_str(),
            ],
        ),
    ];
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs(args.wait_timeout_secs);
    let mut in_a_row = 0;
    let mut last_said = std::time::Instant::now();
    while in_a_row < 2 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the pipeline did not drain in {} s",
            args.wait_timeout_secs
        );
        let mut waiting_for = None;
        for (group, inputs) in &groups {
            for topic in inputs {
                if waiting_for.is_none() {
                    waiting_for = match behind(&args.kafka, group, topic) {
                        Ok(None) => None,
                        Ok(Some(partition)) => Some(format!("{group}: {partition}")),
                        Err(error) => Some(format!("{group} on {topic}: {error}")),
                    };
                }
            }
        }
        if let Some(waiting_for) = &waiting_for
            && last_said.elapsed() > std::time::Duration::from_secs(30)
        {
            eprintln!("verify: waiting for {waiting_for}");
            last_said = std::time::Instant::now();
        }
        in_a_row = if waiting_for.is_none() {
            in_a_row + 1
        } else {
            0
        };
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    Ok(())
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<Verdict> {
    if let (true, Some(prefix)) = (args.wait_drained, &args.group_prefix) {
        wait_drained(&args, prefix).await?;
    }
    let truth: Truth = serde_json::from_slice(
        &std::fs::read(&args.truth).with_context(|| format!("reading {}", args.truth.display()))?,
    )?;
    let expected: HashSet<String> = std::fs::read_to_string(&args.keys)
        .with_context(|| format!("reading {}", args.keys.display()))?
        .lines()
        .map(str::to_string)
        .collect();
    let validated = seam(
        keys_in_topic(&args.kafka, &args.topics.validated_events)?,
        &expected,
    );
    let enriched = seam(
        keys_in_topic(&args.kafka, &args.topics.enriched_events)?,
        &expected,
    );
    let rows: Vec<KeyCount> = args
        .clickhouse
        .client()
        .query(
            "SELECT idempotency_key, count() AS rows FROM post_purchase_events \
             GROUP BY idempotency_key",
        )
        .fetch_all()
        .await
        .context("counting rows per idempotency key")?;
    let clickhouse = seam(
        rows.into_iter()
            .map(|row| (row.idempotency_key, row.rows))
            .collect(),
        &expected,
    );

    let mut dead_letters = 0u64;
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut sources: HashMap<(String, String, String), u64> = HashMap::new();
    read_to_end(&args.kafka, &args.topics.dead_letter, |message| {
        dead_letters += 1;
        let text = |name| {
            header(message, name)
                .map(|value| String::from_utf8_lossy(value).into_owned())
                .unwrap_or_default()
        };
        *by_kind.entry(text(dead_letter::ERROR_KIND)).or_default() += 1;
        *sources
            .entry((
                text(dead_letter::SOURCE_TOPIC),
                text(dead_letter::SOURCE_PARTITION),
                text(dead_letter::SOURCE_OFFSET),
            ))
            .or_default() += 1;
    })
    .context("reading the dead-letter topic")?;
    let dead_letters_twice = sources.values().filter(|count| **count > 1).count() as u64;

    let mut failures = Vec::new();
    if clickhouse.lost > 0 {
        failures.push(format!("{} valid events lost", clickhouse.lost));
    }
    if clickhouse.duplicated > 0 {
        failures.push(format!(
            "{} idempotency keys with more than one row",
            clickhouse.duplicated
        ));
    }
    if clickhouse.unexpected > 0 {
        failures.push(format!("{} rows never published", clickhouse.unexpected));
    }
    let distinct_dead_letters = sources.len() as u64;
    // Ingest's conservation over all its instances and restarts, from what the topics hold:
    // every raw record published is one validated key, a producer retry, or a dead letter.
    let accounted = validated.distinct_keys + truth.ingest.deduplicated + distinct_dead_letters;
    if accounted != truth.ingest.received {
        failures.push(format!(
            "ingest: {} raw records published, {accounted} accounted for (validated keys + \
             retries + dead-lettered records)",
            truth.ingest.received
        ));
    }
    if distinct_dead_letters != truth.ingest.dead_lettered {
        failures.push(format!(
            "{distinct_dead_letters} records dead-lettered, {} expected",
            truth.ingest.dead_lettered
        ));
    }
    Ok(Verdict {
        expected_keys: expected.len() as u64,
        validated,
        enriched,
        clickhouse,
        dead_letters,
        dead_letters_expected: truth.ingest.dead_lettered,
        dead_letters_twice,
        dead_letters_by_kind: by_kind,
        failures,
    })
}

/// The verdict as a table, and as JSON if asked; `Ok(failures)`.
pub fn print(verdict: &Verdict, summary: Option<&PathBuf>) -> anyhow::Result<usize> {
    println!(
        "{:<34} {:>10} {:>10} {:>8} {:>11} {:>11}",
        "seam", "records", "keys", "lost", "duplicated", "unexpected"
    );
    for (name, seam) in [
        ("validated topic (ingest)", &verdict.validated),
        ("enriched topic (enrich)", &verdict.enriched),
        ("post_purchase_events (sink)", &verdict.clickhouse),
    ] {
        println!(
            "{name:<34} {:>10} {:>10} {:>8} {:>11} {:>11}",
            seam.records, seam.distinct_keys, seam.lost, seam.duplicated, seam.unexpected
        );
    }
    println!(
        "dead letters: {} ({} expected), {} written twice; by kind: {:?}",
        verdict.dead_letters,
        verdict.dead_letters_expected,
        verdict.dead_letters_twice,
        verdict.dead_letters_by_kind
    );
    println!("valid events published: {}", verdict.expected_keys);
    if verdict.failures.is_empty() {
        println!("verdict: every valid event exactly once in ClickHouse; nothing unexpected");
    } else {
        for failure in &verdict.failures {
            println!("FAILED: {failure}");
        }
    }
    if let Some(path) = summary {
        std::fs::write(path, serde_json::to_vec_pretty(verdict)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(verdict.failures.len())
}

#[cfg(test)]
mod tests {
    use boomerang_schemas::{codec, wire};

    use super::*;

    #[test]
    fn a_record_without_the_header_is_known_by_the_key_in_its_datum() {
        let event = boomerang_testkit::samples::event();
        let enriched = boomerang_testkit::samples::enriched(event.clone());
        for datum in [
            codec::encode(&event).expect("encodes"),
            codec::encode(&enriched).expect("encodes"),
        ] {
            let value = wire::frame(9, &datum);
            assert_eq!(
                key_in_value(&value).as_deref(),
                Some(event.idempotency_key.as_str())
            );
        }
        assert_eq!(key_in_value(&wire::frame(9, &[2, b'e'])), None);
        assert_eq!(key_in_value(b"not a frame"), None);
    }
}
