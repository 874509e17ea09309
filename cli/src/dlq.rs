//! `boomerang dlq inspect | replay`: the dead-letter topic for operators. `inspect` lists dead
//! letters with their headers, filtered by stage, error kind and time; `replay` re-publishes the
//! selected ones — original key, value and headers, less the `boomerang.dlq.*` ones — to the
//! topic each came from, once the cause is fixed. A dead letter that had to leave part of its
//! original out to fit (`boomerang.dlq.*_omitted*` headers) is not replayed: the original is
//! still at its source offset until retention removes it.

use std::time::Duration;

use boomerang_runtime::dead_letter;
use boomerang_runtime::kafka::{self, KafkaArgs};
use boomerang_runtime::topics::TopicsArgs;
use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    /// Only dead letters of this stage (ingest, enrich, sink).
    #[arg(long)]
    pub stage: Option<String>,
    /// Only dead letters of this error kind (e.g. non_positive_quantity).
    #[arg(long)]
    pub error_kind: Option<String>,
    /// Only dead letters that failed at or after this time, milliseconds since the epoch (UTC).
    #[arg(long)]
    pub since_ms: Option<i64>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicsArgs,
    #[command(flatten)]
    pub selection: Selection,
}

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }

    /// What the dead letter left out of the original record to fit, if anything.
    pub fn omitted(&self) -> Option<String> {
        let parts: Vec<String> = [
            (dead_letter::KEY_OMITTED_BYTES, "key"),
            (dead_letter::VALUE_OMITTED_BYTES, "value"),
            (dead_letter::HEADERS_OMITTED, "headers"),
        ]
        .iter()
        .filter_map(|(header, part)| {
            self.header(header).map(|count| match *part {
                "headers" => format!("{count} header(s)"),
                part => format!("{part} ({count} bytes)"),
            })
        })
        .collect();
        (!parts.is_empty()).then(|| parts.join(" and "))
    }

    fn selected(&self, selection: &Selection) -> bool {
        let matches = |wanted: &Option<String>, header: &str| {
            wanted
                .as_ref()
                .is_none_or(|wanted| self.header(header).as_deref() == Some(wanted.as_str()))
        };
        let since = selection.since_ms.is_none_or(|since| {
            self.header("boomerang.dlq.failed_at_ms")
                .and_then(|at| at.parse::<i64>().ok())
                .is_some_and(|at| at >= since)
        });
        matches(&selection.stage, "boomerang.dlq.stage")
            && matches(&selection.error_kind, "boomerang.dlq.error_kind")
            && since
    }
}

/// Reads the dead-letter topic from its beginning to its current end.
pub fn read(
    kafka: &KafkaArgs,
    topic: &str,
    selection: &Selection,
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    crate::topic::read_to_end(kafka, topic, |message| {
        let letter = DeadLetter {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: kafka::owned_headers(message),
        };
        if letter.selected(selection) && letters.len() < selection.limit {
            letters.push(letter);
        }
    })?;
    Ok(letters)
}

pub fn inspect(args: &DlqArgs) -> anyhow::Result<()> {
    let letters = read(&args.kafka, &args.topics.dead_letter, &args.selection)?;
    println!(
        "{:<9} {:<7} {:<26} {:<48} {:>9}  message",
        "offset", "stage", "error_kind", "source (topic/partition/offset)", "bytes"
    );
    for letter in &letters {
        let source = format!(
            "{}/{}/{}",
            letter
                .header("boomerang.dlq.source_topic")
                .unwrap_or_default(),
            letter
                .header("boomerang.dlq.source_partition")
                .unwrap_or_default(),
            letter
                .header("boomerang.dlq.source_offset")
                .unwrap_or_default()
        );
        println!(
            "{:<9} {:<7} {:<26} {:<48} {:>9}  {}",
            format!("{}:{}", letter.partition, letter.offset),
            letter.header("boomerang.dlq.stage").unwrap_or_default(),
            letter
                .header("boomerang.dlq.error_kind")
                .unwrap_or_default(),
            source,
            letter
                .header(dead_letter::VALUE_OMITTED_BYTES)
                .map(|bytes| format!("{bytes}*"))
                .unwrap_or_else(|| letter.value.as_ref().map_or(0, Vec::len).to_string()),
            letter
                .header("boomerang.dlq.error_message")
                .unwrap_or_default()
        );
    }
    println!("{} dead letter(s) selected", letters.len());
    Ok(())
}

pub async fn replay(args: &DlqArgs, dry_run: bool) -> anyhow::Result<()> {
    let letters = read(&args.kafka, &args.topics.dead_letter, &args.selection)?;
    let producer: FutureProducer = args.kafka.producer_config().create()?;
    let mut replayed = 0;
    for letter in &letters {
        let Some(topic) = letter.header("boomerang.dlq.source_topic") else {
            eprintln!(
                "{}:{} has no source topic; skipped",
                letter.partition, letter.offset
            );
            continue;
        };
        if let Some(omitted) = letter.omitted() {
            eprintln!(
                "{}:{} left out its original {omitted} to fit the dead-letter topic; not replayed \
                 (the original is still at {topic}/{}/{} until retention removes it)",
                letter.partition,
                letter.offset,
                letter
                    .header(dead_letter::SOURCE_PARTITION)
                    .unwrap_or_default(),
                letter
                    .header(dead_letter::SOURCE_OFFSET)
                    .unwrap_or_default(),
            );
            continue;
        }
        if dry_run {
            println!(
                "would replay {}:{} to {topic}",
                letter.partition, letter.offset
            );
            continue;
        }
        let mut headers = OwnedHeaders::new();
        for (name, value) in letter
            .headers
            .iter()
            .filter(|(name, _)| !name.starts_with("boomerang.dlq."))
        {
            headers = headers.insert(Header {
                key: name.as_str(),
                value: value.as_deref(),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &letter.value {
            record = record.payload(value.as_slice());
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| {
                anyhow::anyhow!(
                    "cannot replay {}:{}: {error}",
                    letter.partition,
                    letter.offset
                )
            })?;
        replayed += 1;
    }
    if !dry_run {
        println!("{replayed} dead letter(s) replayed to their source topics");
    }
    Ok(())
}
