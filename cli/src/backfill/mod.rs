//! `boomerang backfill`: loads history — customers, orders and post-purchase events exported
//! from a returns platform or an order system — through the live pipeline, exactly once.
//!
//! The way, by file:
//! - [`input`]: Avro object container files or JSON lines in Avro's JSON encoding;
//! - reference data first: customers, then orders, each to its compacted topic, leaving out a
//!   version the topic already holds or holds a newer one of (by `updated_at`), so a backfill
//!   never rolls live data back and enrich finds an event's order when the event comes;
//! - then the events, to the raw topic, marked `boomerang.history: <run id>`: ingest validates
//!   them like live ones but for the event-age limit, and de-duplicates in memory only those
//!   inside its live window; the sink checks the rest against the keys ClickHouse holds
//!   (`sink/src/history.rs`), so an overlap with live traffic, a file loaded twice or a resumed
//!   run writes each event once, with no year of keys in any stage's memory;
//! - [`checkpoint`]: after every confirmed chunk, so a crash or Ctrl-C resumes;
//! - [`drain`]: waits until every stage has committed past what the run published, printing
//!   progress, then reconciles: read = written + de-duplicated + dead-lettered.

mod checkpoint;
mod container;
mod drain;
pub mod input;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use boomerang_clickhouse::ClickhouseArgs;
use boomerang_runtime::dead_letter::{self, Rejection};
use boomerang_runtime::error_kind::DeadLetterKind;
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::record_size;
use boomerang_runtime::registry::{self, RegistryArgs};
use boomerang_runtime::stage_loop::{HISTORY_HEADER, InputRecord};
use boomerang_runtime::topics::{TopicsArgs, value_subject};
use boomerang_runtime::wire;
use boomerang_schemas::{AvroRecord, Customer, Order, PostPurchaseEvent, TimestampMicros, codec};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use self::checkpoint::{Checkpoint, Counts};
use self::drain::{Groups, Hop};
use self::input::Item;

/// The stage the backfill's own dead letters name.
const STAGE: &str = "backfill";

/// On a dead letter the backfill makes itself: the file and record it came from, which tells
/// one such record from another when their bytes are the same or were left out.
const PLACE_HEADER: &str = "boomerang.backfill.record";

/// On an event line the backfill could not read, published as it is: why not (the dead letter
/// ingest makes of it keeps the header).
const UNREADABLE_HEADER: &str = "boomerang.backfill.unreadable";

#[derive(Debug, Clone, clap::Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub topics: TopicsArgs,
    #[command(flatten)]
    pub clickhouse: ClickhouseArgs,
    #[command(flatten)]
    pub groups: Groups,
    /// A folder of export files: `customers.*`, `orders.*` and `events.*`, each `.avro` or
    /// `.jsonl` (any may be missing).
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// A file of customers (repeatable), beside or instead of `--from`.
    #[arg(long = "customer-file", value_name = "FILE")]
    pub customer_files: Vec<PathBuf>,
    /// A file of orders (repeatable).
    #[arg(long = "order-file", value_name = "FILE")]
    pub order_files: Vec<PathBuf>,
    /// A file of post-purchase events (repeatable).
    #[arg(long = "event-file", value_name = "FILE")]
    pub event_files: Vec<PathBuf>,
    /// Where the run's progress is kept, to resume after a crash or Ctrl-C (default:
    /// `.boomerang-backfill.json` in `--from`, or beside the first file).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// The run's name, on every event (`boomerang.history`) and row (`backfill_run`); default
    /// `backfill-<UTC time>`. A resumed run keeps its own.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Records between checkpoints: each waits for the brokers to confirm what was sent.
    #[arg(long, default_value_t = 100_000)]
    pub checkpoint_every: u64,
    /// Publish, then exit without waiting for the pipeline (no summary).
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    pub progress_secs: u64,
    /// Events per second at most (0: as fast as the brokers take them). History shares the raw
    /// topic's partitions with live traffic, which waits behind it: cap the rate to keep live
    /// latency low while a large backfill runs.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// How long to wait for the pipeline to take the run in before giving up (exit 1; run the
    /// same command again to go on waiting).
    #[arg(long, default_value_t = 3600)]
    pub wait_timeout_secs: u64,
}

/// The files of each kind, in the order they are loaded.
struct Inputs {
    customers: Vec<PathBuf>,
    orders: Vec<PathBuf>,
    events: Vec<PathBuf>,
}

impl Inputs {
    fn of(args: &BackfillArgs) -> anyhow::Result<Self> {
        let mut inputs = Self {
            customers: args.customer_files.clone(),
            orders: args.order_files.clone(),
            events: args.event_files.clone(),
        };
        if let Some(dir) = &args.from {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .collect();
            entries.sort();
            for path in entries {
                let Some(stem) = path.file_stem().and_then(|stem| stem.to_str()) else {
                    continue;
                };
                if input::Format::of(&path).is_err() {
                    continue;
                }
                match stem {
                    "customers" => inputs.customers.push(path),
                    "orders" => inputs.orders.push(path),
                    "events" => inputs.events.push(path),
                    _ => {}
                }
            }
        }
        for path in inputs.all() {
            input::Format::of(path)?;
            anyhow::ensure!(path.is_file(), "{} is not a file", path.display());
        }
        anyhow::ensure!(
            inputs.all().next().is_some(),
            "nothing to backfill: give --from DIR (customers.*, orders.*, events.*) or \
             --customer-file / --order-file / --event-file"
        );
        Ok(inputs)
    }

    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        self.customers
            .iter()
            .chain(&self.orders)
            .chain(&self.events)
    }
}

fn default_checkpoint(args: &BackfillArgs, inputs: &Inputs) -> PathBuf {
    let folder = args.from.clone().unwrap_or_else(|| {
        inputs
            .all()
            .next()
            .and_then(|path| path.parent())
            .map(Path::to_path_buf)
            .unwrap_or_default()
    });
    folder.join(".boomerang-backfill.json")
}

/// Counts what the brokers refused: a checkpoint is written only when nothing was.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        boomerang_runtime::kafka::log_librdkafka(level, facility, message);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = self.first_error.lock() {
                first.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// What the progress lines read while the files are published.
struct Progress {
    events_read: AtomicU64,
    event_bytes_read: Arc<AtomicU64>,
    event_bytes_total: u64,
}

/// Paces events to a rate: each waits for its slot.
struct Pace {
    interval: Duration,
    next: Instant,
}

impl Pace {
    fn new(rate: u64) -> Option<Self> {
        (rate > 0).then(|| Self {
            interval: Duration::from_secs_f64(1.0 / rate as f64),
            next: Instant::now(),
        })
    }

    fn wait(&mut self) {
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        } else if now - self.next > Duration::from_secs(1) {
            // Behind by more than a second (a slow disk, a flush): no burst to catch up.
            self.next = now;
        }
        self.next += self.interval;
    }
}

struct Publisher<'a> {
    producer: ThreadedProducer<Deliveries>,
    pace: Option<Pace>,
    interrupted: &'a AtomicBool,
    checkpoint: Checkpoint,
    checkpoint_path: PathBuf,
    since_checkpoint: u64,
    checkpoint_every: u64,
    /// What the producer takes (`--max-record-bytes`): a larger record is dead-lettered.
    max_record_bytes: usize,
    topics: &'a TopicsArgs,
}

enum Published {
    Done,
    Interrupted,
}

/// One kind of input's publishing: customers, orders, events.
type PublishStep<'a> = dyn Fn(&mut Publisher<'_>) -> anyhow::Result<Published> + 'a;

impl Publisher<'_> {
    /// Hands a record to the producer, waiting while its queue is full. Any other refusal
    /// (an unknown topic, a broker-side limit) stops the run: the checkpoint keeps what was
    /// confirmed. A record's size is checked before, by [`Self::publish`].
    fn send(&mut self, record: BaseRecord<'_, [u8], [u8]>) -> anyhow::Result<()> {
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => anyhow::bail!("the producer refused a record: {error}"),
            }
        }
    }

    /// Publishes a record of `file` (its `record`th) to `topic` with `headers`, or, when it is
    /// larger than the producer takes, dead-letters it (`record_too_large`, as ingest and enrich
    /// do) instead of refusing it for ever; `false` then.
    fn publish(
        &mut self,
        topic: &str,
        (file, record): (&str, u64),
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> anyhow::Result<bool> {
        let size = record_size::wire_size(
            key,
            Some(value),
            headers.iter().map(|(name, value)| (*name, Some(*value))),
        );
        if size > self.max_record_bytes {
            let why = format!(
                "{size} bytes, more than the {} the producer takes",
                self.max_record_bytes
            );
            self.dead_letter(
                topic,
                (file, record),
                (key, value),
                Rejection::new(DeadLetterKind::RecordTooLarge, why),
            )?;
            return Ok(false);
        }
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        let mut base = BaseRecord::to(topic).payload(value).headers(owned);
        if let Some(key) = key {
            base = base.key(key);
        }
        self.send(base)?;
        Ok(true)
    }

    /// Dead-letters a record of `file` bound for `topic`, as a stage would
    /// (`dead_letter::record`: within the producer's limit, what does not fit left out and
    /// marked), naming the run and the record's place in headers of its own.
    fn dead_letter(
        &mut self,
        topic: &str,
        (file, record): (&str, u64),
        (key, value): (Option<&[u8]>, &[u8]),
        rejection: Rejection,
    ) -> anyhow::Result<()> {
        let place = format!("{file}, record {record}");
        let mut headers = boomerang_runtime::stage_loop::Headers::with_capacity(2, 64, 64);
        headers.push(HISTORY_HEADER, Some(self.checkpoint.run_id.as_bytes()));
        headers.push(PLACE_HEADER, Some(place.as_bytes()));
        let original = InputRecord::new(Arc::from(topic), -1, record as i64, key, Some(value))
            .with_headers(headers);
        let rejection = Rejection {
            message: format!("{place}: {}", rejection.message),
            ..rejection
        };
        let dead_letter = dead_letter::record(
            STAGE,
            &self.topics.dead_letter,
            &original,
            &rejection,
            TimestampMicros::now().as_unix_millis(),
            self.max_record_bytes,
        );
        let mut owned = OwnedHeaders::new_with_capacity(dead_letter.headers.len());
        for (name, value) in dead_letter.headers.iter() {
            owned = owned.insert(Header { key: name, value });
        }
        let mut base = BaseRecord::to(&dead_letter.topic).headers(owned);
        if let Some(key) = &dead_letter.key {
            base = base.key(key.as_slice());
        }
        if let Some(value) = &dead_letter.value {
            base = base.payload(value.as_slice());
        }
        self.send(base)
    }

    /// Waits for every record handed over; fails if the brokers refused any.
    fn confirm(&self) -> anyhow::Result<()> {
        self.producer
            .flush(Duration::from_secs(300))
            .context("the brokers did not confirm the records in 300 s")?;
        let context = self.producer.context();
        let failed = context.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = context
                .first_error
                .lock()
                .ok()
                .and_then(|first| first.clone())
                .unwrap_or_default();
            anyhow::bail!(
                "the brokers refused {failed} records ({first}); the checkpoint holds what was \
                 confirmed: run the same command again to resume"
            );
        }
        Ok(())
    }

    /// Confirms what was sent and records it, every `--checkpoint-every` records and at each
    /// file's end.
    fn checkpoint(&mut self, file: &str, done: u64, force: bool) -> anyhow::Result<()> {
        self.since_checkpoint += 1;
        if !force && self.since_checkpoint < self.checkpoint_every {
            return Ok(());
        }
        self.confirm()?;
        self.checkpoint.files.insert(file.to_string(), done);
        self.checkpoint.save(&self.checkpoint_path)?;
        self.since_checkpoint = 0;
        Ok(())
    }
}

/// A reference record: keyed by its id, versioned by `updated_at`.
trait Reference: AvroRecord + Send + 'static {
    fn id(&self) -> &str;
    fn updated_at(&self) -> TimestampMicros;
}

impl Reference for Customer {
    fn id(&self) -> &str {
        &self.customer_id
    }
    fn updated_at(&self) -> TimestampMicros {
        self.updated_at
    }
}

impl Reference for Order {
    fn id(&self) -> &str {
        &self.order_id
    }
    fn updated_at(&self) -> TimestampMicros {
        self.updated_at
    }
}

/// The version a compacted topic holds of each id: its `updated_at`, or `None` after a
/// tombstone (a deletion the backfill must not undo).
type Versions = HashMap<String, Option<i64>>;

/// Reads what `topic` holds now. Values framed with an id other than `current_id` (written
/// with an earlier schema) are decoded through the registry.
async fn versions<R: Reference>(
    kafka: &KafkaArgs,
    registry: &RegistryArgs,
    topic: &str,
    current_id: u32,
) -> anyhow::Result<Versions> {
    let mut versions = Versions::new();
    let mut other_schema = Vec::new();
    crate::topic::read_to_end(kafka, topic, |message| {
        use rdkafka::Message;
        let Some(key) = message
            .key()
            .map(|key| String::from_utf8_lossy(key).into_owned())
        else {
            return;
        };
        let Some(value) = message.payload() else {
            versions.insert(key, None);
            return;
        };
        match wire::parse(value) {
            Ok((id, datum)) if id == current_id => {
                if let Ok(record) = codec::decode::<R>(datum) {
                    versions.insert(key, Some(record.updated_at().as_unix_micros()));
                }
            }
            Ok(_) => other_schema.push((key, value.to_vec())),
            // Unreadable values were the stages' to dead-letter: they hold no version.
            Err(_) => {}
        }
    })?;
    if !other_schema.is_empty() {
        let mut decoder = boomerang_runtime::decode::RecordDecoder::<R, _>::new(
            registry::WriterSchemas::new(registry)?,
        );
        for (key, value) in other_schema {
            if let Ok(decoded) = decoder.decode(Some(&value)).await {
                versions.insert(key, Some(decoded.value.updated_at().as_unix_micros()));
            }
        }
    }
    Ok(versions)
}

/// Hands each record of `files` not yet done (by the checkpoint) to `publish` with its file and
/// place (1-based), checkpointing as it goes; stops at an interruption, after a checkpoint.
fn each_record<T: AvroRecord + Send + 'static>(
    publisher: &mut Publisher<'_>,
    files: &[PathBuf],
    bytes_read: &Arc<AtomicU64>,
    mut publish: impl FnMut(&mut Publisher<'_>, &str, u64, Item<T>) -> anyhow::Result<()>,
) -> anyhow::Result<Published> {
    for path in files {
        let file = path.display().to_string();
        let done = publisher.checkpoint.done(&file);
        let mut position = 0u64;
        for item in input::open::<T>(path, bytes_read.clone())? {
            let item = item?;
            position += 1;
            if position <= done {
                continue;
            }
            if publisher.interrupted.load(Ordering::Relaxed) {
                publisher.checkpoint(&file, position - 1, true)?;
                return Ok(Published::Interrupted);
            }
            publish(publisher, &file, position, item)?;
            publisher.checkpoint(&file, position, false)?;
        }
        publisher.checkpoint(&file, position.max(done), true)?;
    }
    Ok(Published::Done)
}

fn publish_reference<R: Reference>(
    publisher: &mut Publisher<'_>,
    files: &[PathBuf],
    topic: &str,
    schema_id: u32,
    versions: &Versions,
    counts: fn(&mut Checkpoint) -> &mut Counts,
) -> anyhow::Result<Published> {
    let bytes_read = Arc::new(AtomicU64::new(0));
    each_record::<R>(
        publisher,
        files,
        &bytes_read,
        |publisher, file, position, item| {
            counts(&mut publisher.checkpoint).read += 1;
            match item {
                Item::Record(record) => {
                    let newer = match versions.get(record.id()) {
                        None => true,
                        Some(None) => false,
                        Some(Some(held)) => record.updated_at().as_unix_micros() > *held,
                    };
                    if !newer {
                        counts(&mut publisher.checkpoint).not_newer += 1;
                    } else {
                        let value = codec::encode_framed(schema_id, &record)?;
                        let key = Some(record.id().as_bytes());
                        if publisher.publish(topic, (file, position), key, &value, &[])? {
                            counts(&mut publisher.checkpoint).published += 1;
                        }
                    }
                }
                Item::Unreadable { bytes, why } => {
                    let rejection = Rejection::new(DeadLetterKind::UnreadableBackfillRecord, why);
                    publisher.dead_letter(topic, (file, position), (None, &bytes), rejection)?;
                    counts(&mut publisher.checkpoint).unreadable += 1;
                }
            }
            Ok(())
        },
    )
}

fn publish_events(
    publisher: &mut Publisher<'_>,
    files: &[PathBuf],
    schema_id: u32,
    progress: &Progress,
) -> anyhow::Result<Published> {
    let topic = publisher.topics.raw_events.clone();
    let run_id = publisher.checkpoint.run_id.clone();
    let mut value = Vec::with_capacity(512);
    let bytes_read = progress.event_bytes_read.clone();
    each_record::<PostPurchaseEvent>(
        publisher,
        files,
        &bytes_read,
        |publisher, file, position, item| {
            publisher.checkpoint.events.read += 1;
            progress.events_read.fetch_add(1, Ordering::Relaxed);
            if let Some(pace) = &mut publisher.pace {
                pace.wait();
            }
            let run = (HISTORY_HEADER, run_id.as_bytes());
            let published = match item {
                Item::Record(event) => {
                    value.clear();
                    wire::start_frame(schema_id, &mut value);
                    codec::encode_into(&event, &mut value)?;
                    let key = Some(event.order_id.as_bytes());
                    publisher.publish(&topic, (file, position), key, &value, &[run])?
                }
                Item::Unreadable { bytes, why } => {
                    // As it is: ingest dead-letters it with its bytes, like any bad input, and
                    // the dead letter keeps why the backfill could not read it.
                    publisher.checkpoint.events.unreadable += 1;
                    let why = format!("{file}, record {position}: {why}");
                    let headers = [run, (UNREADABLE_HEADER, why.as_bytes())];
                    publisher.publish(&topic, (file, position), None, &bytes, &headers)?
                }
            };
            if published {
                publisher.checkpoint.events.published += 1;
            }
            Ok(())
        },
    )
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0).round() as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, (seconds % 3600) / 60),
    }
}

/// The summary's figures.
struct Reconciliation {
    read: u64,
    written: u64,
    dead_lettered: u64,
    distinct_written: u64,
}

impl Reconciliation {
    fn deduplicated(&self) -> Option<u64> {
        self.read.checked_sub(self.written + self.dead_lettered)
    }
    fn holds(&self) -> bool {
        self.deduplicated().is_some() && self.written == self.distinct_written
    }
}

fn print_counts(what: &str, counts: &Counts) {
    if counts.read == 0 {
        return;
    }
    println!(
        "  {what:<10} read {:>12}   published {:>12}   not newer than the topic's {:>10}   unreadable (dead-lettered) {:>8}",
        thousands(counts.read),
        thousands(counts.published),
        thousands(counts.not_newer),
        thousands(counts.unreadable)
    );
}

pub async fn run(args: BackfillArgs) -> anyhow::Result<Option<usize>> {
    let command_started = Instant::now();
    let inputs = Inputs::of(&args)?;
    let checkpoint_path = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| default_checkpoint(&args, &inputs));
    // One run per checkpoint at a time: a second command on the same files would publish
    // everything twice and count the run's dead letters twice.
    let _lock = checkpoint::Lock::take(&checkpoint_path)?;
    let checkpoint = open_run(&args, &checkpoint_path)?;
    eprintln!(
        "backfill: run {}: {} customer, {} order and {} event files; checkpoint {}",
        checkpoint.run_id,
        inputs.customers.len(),
        inputs.orders.len(),
        inputs.events.len(),
        checkpoint_path.display()
    );
    let interrupted = interrupted_by_ctrl_c();
    let client = args.clickhouse.client();
    let checkpoint = if checkpoint.published {
        checkpoint
    } else {
        let (published, checkpoint) = publish_all(
            &args,
            inputs,
            checkpoint,
            &checkpoint_path,
            &interrupted,
            &client,
        )
        .await?;
        if let Published::Interrupted = published {
            eprintln!(
                "backfill: stopped after {} events; run the same command to resume (checkpoint {})",
                thousands(checkpoint.events.published),
                checkpoint_path.display()
            );
            return Ok(Some(1));
        }
        eprintln!(
            "backfill: published {} customers, {} orders and {} events",
            thousands(checkpoint.customers.published),
            thousands(checkpoint.orders.published),
            thousands(checkpoint.events.published)
        );
        checkpoint
    };
    if args.no_wait {
        eprintln!(
            "backfill: not waiting for the pipeline (--no-wait); run the same command again for the summary"
        );
        return Ok(None);
    }
    let published = Instant::now();
    if !wait_for_pipeline(&args, &client, &checkpoint, &interrupted).await? {
        return Ok(Some(1));
    }
    println!(
        "backfill {}: in ClickHouse {} after this command started ({} after its last event was published)",
        checkpoint.run_id,
        duration(command_started.elapsed().as_secs_f64()),
        duration(published.elapsed().as_secs_f64())
    );
    let reconciled = summarise(&args, &client, &checkpoint).await?;
    let mut done = checkpoint;
    done.complete = true;
    done.save(&checkpoint_path)?;
    Ok(Some(usize::from(!reconciled)))
}

/// The run a checkpoint holds and did not finish, or a new one.
fn open_run(args: &BackfillArgs, checkpoint_path: &Path) -> anyhow::Result<Checkpoint> {
    Ok(match Checkpoint::load(checkpoint_path)? {
        Some(checkpoint) if !checkpoint.complete => {
            eprintln!(
                "backfill: resuming run {} from {} ({} events published before)",
                checkpoint.run_id,
                checkpoint_path.display(),
                thousands(checkpoint.events.published)
            );
            checkpoint
        }
        _ => {
            let now = TimestampMicros::now();
            let run_id = args.run_id.clone().unwrap_or_else(|| {
                let digits: String = now
                    .to_string()
                    .chars()
                    .filter(char::is_ascii_digit)
                    .take(14)
                    .collect();
                format!("backfill-{digits}")
            });
            Checkpoint::new(run_id, now.as_unix_millis())
        }
    })
}

/// Set once Ctrl-C is pressed: publishing stops after its chunk in flight, waiting at once.
fn interrupted_by_ctrl_c() -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("backfill: interrupted; finishing the chunk in flight");
            flag.store(true, Ordering::Relaxed);
        }
    });
    interrupted
}

/// Publishes what the checkpoint has not: customers, orders, then events, with progress lines.
async fn publish_all(
    args: &BackfillArgs,
    inputs: Inputs,
    checkpoint: Checkpoint,
    checkpoint_path: &Path,
    interrupted: &Arc<AtomicBool>,
    client: &clickhouse::Client,
) -> anyhow::Result<(Published, Checkpoint)> {
    let registrations = registry::register_all(&args.registry.settings()?, &args.topics).await?;
    let id_of = |topic: &str| {
        registrations
            .iter()
            .find(|registration| {
                registration.subject == value_subject(topic) && registration.current
            })
            .map(|registration| registration.schema_id)
            .with_context(|| format!("no schema registered for {topic}"))
    };
    let ids = (
        id_of(&args.topics.customers)?,
        id_of(&args.topics.orders)?,
        id_of(&args.topics.raw_events)?,
    );
    let customer_versions = if inputs.customers.is_empty() {
        Versions::new()
    } else {
        versions::<Customer>(&args.kafka, &args.registry, &args.topics.customers, ids.0).await?
    };
    let order_versions = if inputs.orders.is_empty() {
        Versions::new()
    } else {
        versions::<Order>(&args.kafka, &args.registry, &args.topics.orders, ids.1).await?
    };
    let progress = Arc::new(Progress {
        events_read: AtomicU64::new(0),
        event_bytes_read: Arc::new(AtomicU64::new(0)),
        event_bytes_total: inputs
            .events
            .iter()
            .filter_map(|path| std::fs::metadata(path).ok())
            .map(|metadata| metadata.len())
            .sum(),
    });
    let reporter = tokio::spawn(report_publishing(
        progress.clone(),
        client.clone(),
        checkpoint.run_id.clone(),
        Duration::from_secs(args.progress_secs.max(1)),
    ));
    let mut config = args.kafka.producer_config();
    config.set("queue.buffering.max.messages", "500000");
    config.set("linger.ms", "20");
    let producer: ThreadedProducer<Deliveries> =
        config.create_with_context(Deliveries::default())?;
    let topics = args.topics.clone();
    let (rate, checkpoint_every) = (args.rate, args.checkpoint_every);
    let max_record_bytes = args.kafka.max_record_bytes;
    let interrupted = interrupted.clone();
    let checkpoint_path = checkpoint_path.to_path_buf();
    let publishing = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut publisher = Publisher {
            producer,
            pace: Pace::new(rate),
            interrupted: &interrupted,
            checkpoint,
            checkpoint_path,
            since_checkpoint: 0,
            checkpoint_every: checkpoint_every.max(1),
            max_record_bytes,
            topics: &topics,
        };
        let steps: [&PublishStep<'_>; 3] = [
            &|publisher| {
                publish_reference::<Customer>(
                    publisher,
                    &inputs.customers,
                    &topics.customers,
                    ids.0,
                    &customer_versions,
                    |checkpoint| &mut checkpoint.customers,
                )
            },
            &|publisher| {
                publish_reference::<Order>(
                    publisher,
                    &inputs.orders,
                    &topics.orders,
                    ids.1,
                    &order_versions,
                    |checkpoint| &mut checkpoint.orders,
                )
            },
            &|publisher| publish_events(publisher, &inputs.events, ids.2, &progress),
        ];
        for step in steps {
            if let Published::Interrupted = step(&mut publisher)? {
                return Ok((Published::Interrupted, publisher.checkpoint));
            }
        }
        publisher.confirm()?;
        publisher.checkpoint.published = true;
        publisher.checkpoint.save(&publisher.checkpoint_path)?;
        Ok((Published::Done, publisher.checkpoint))
    });
    let outcome = publishing.await;
    reporter.abort();
    outcome?
}

/// Waits until every stage has committed past what the run published (the pipeline's commits
/// say when the run is in), with progress lines; `false` if interrupted or out of time.
async fn wait_for_pipeline(
    args: &BackfillArgs,
    client: &clickhouse::Client,
    checkpoint: &Checkpoint,
    interrupted: &AtomicBool,
) -> anyhow::Result<bool> {
    let run_id = &checkpoint.run_id;
    let deadline = Instant::now() + Duration::from_secs(args.wait_timeout_secs);
    let mut hops = [
        Hop::new("ingest", &args.groups.ingest_group, &args.topics.raw_events),
        Hop::new(
            "enrich",
            &args.groups.enrich_group,
            &args.topics.validated_events,
        ),
        Hop::new(
            "sink",
            &args.groups.sink_group,
            &args.topics.enriched_events,
        ),
    ];
    let interval = Duration::from_secs(args.progress_secs.max(1));
    let mut last_line = Instant::now();
    let mut last_written = (
        Instant::now(),
        drain::written_so_far(client, run_id).await.unwrap_or(0),
    );
    let mut hop = 0;
    while hop < hops.len() {
        let behind = hops[hop].behind(&args.kafka)?;
        if behind == 0 {
            hop += 1;
            continue;
        }
        if interrupted.load(Ordering::Relaxed) {
            eprintln!("backfill: interrupted while waiting; run the same command to wait again");
            return Ok(false);
        }
        if Instant::now() > deadline {
            eprintln!(
                "backfill: the pipeline has not taken the run in after {} s ({} is {} records behind); \
                 run the same command to wait again",
                args.wait_timeout_secs,
                hops[hop].stage,
                thousands(behind as u64)
            );
            return Ok(false);
        }
        if last_line.elapsed() >= interval {
            last_line = Instant::now();
            // Progress only: a failed count shows as none written, the wait goes on.
            let written = drain::written_so_far(client, run_id).await.unwrap_or(0);
            let rate = (written.saturating_sub(last_written.1)) as f64
                / last_written.0.elapsed().as_secs_f64().max(0.001);
            last_written = (Instant::now(), written);
            let left = checkpoint.events.published.saturating_sub(written);
            let eta = if rate > 0.0 {
                format!("ETA {}", duration(left as f64 / rate))
            } else {
                "ETA unknown".to_string()
            };
            eprintln!(
                "backfill: waiting for {}: {} records behind; {} of {} events written, {:.0}/s, {eta}",
                hops[hop].stage,
                thousands(behind as u64),
                thousands(written),
                thousands(checkpoint.events.published),
                rate
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(true)
}

/// Prints the run's summary; whether it reconciles.
async fn summarise(
    args: &BackfillArgs,
    client: &clickhouse::Client,
    checkpoint: &Checkpoint,
) -> anyhow::Result<bool> {
    let rows = drain::written(client, &checkpoint.run_id).await?;
    let dead_lettered = count_dead_letters(
        &args.kafka,
        &args.topics,
        &checkpoint.run_id,
        checkpoint.started_at_ms,
    )?;
    let reconciliation = Reconciliation {
        read: checkpoint.events.read,
        written: rows.rows,
        dead_lettered: dead_lettered.events,
        distinct_written: rows.keys,
    };
    print_counts("customers", &checkpoint.customers);
    print_counts("orders", &checkpoint.orders);
    println!(
        "  events     read {:>12} = written {:>12} + de-duplicated {:>10} + dead-lettered {:>8}",
        thousands(reconciliation.read),
        thousands(reconciliation.written),
        reconciliation
            .deduplicated()
            .map(thousands)
            .unwrap_or_else(|| "(negative)".to_string()),
        thousands(reconciliation.dead_lettered)
    );
    let mut kinds: Vec<_> = dead_lettered.by_kind.iter().collect();
    kinds.sort();
    for (kind, count) in kinds {
        println!(
            "             dead-lettered as {kind}: {}",
            thousands(*count)
        );
    }
    println!(
        "  rows of this run: {} for {} distinct idempotency keys",
        thousands(rows.rows),
        thousands(rows.keys)
    );
    if reconciliation.holds() {
        println!("  reconciled: every event read is written once, de-duplicated or dead-lettered");
    } else {
        println!(
            "  NOT reconciled: more written or dead-lettered than read, or a key written twice"
        );
    }
    Ok(reconciliation.holds())
}

/// The run's dead letters, from the dead-letter topic since the run started: events (by the
/// stages) and unreadable reference records (by the backfill itself), by error kind. A record
/// published again after a resume is dead-lettered again: dead letters of the same original
/// count once — the same file and record for a line the backfill could not read (many such
/// lines have the same bytes), else the same key and value (an event carries its own key).
struct DeadLettered {
    events: u64,
    by_kind: HashMap<String, u64>,
}

fn original_hash(message: &impl rdkafka::Message) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let place = boomerang_runtime::kafka::header(message, PLACE_HEADER)
        .or_else(|| boomerang_runtime::kafka::header(message, UNREADABLE_HEADER));
    match place {
        Some(place) => place.hash(&mut hasher),
        None => {
            message.key().hash(&mut hasher);
            message.payload().hash(&mut hasher);
        }
    }
    hasher.finish()
}

fn count_dead_letters(
    kafka: &KafkaArgs,
    topics: &TopicsArgs,
    run_id: &str,
    since_ms: i64,
) -> anyhow::Result<DeadLettered> {
    let topic = &topics.dead_letter;
    let mut counted = DeadLettered {
        events: 0,
        by_kind: HashMap::new(),
    };
    let mut seen = std::collections::HashSet::new();
    // A minute early: the brokers' clocks and ours may differ a little.
    crate::topic::read_since(kafka, topic, Some(since_ms - 60_000), |message| {
        let run = boomerang_runtime::kafka::header(message, HISTORY_HEADER);
        if run != Some(run_id.as_bytes()) || !seen.insert(original_hash(message)) {
            return;
        }
        // The backfill's own dead letters of customers and orders are not events'.
        let stage = boomerang_runtime::kafka::header(message, dead_letter::STAGE);
        let source = boomerang_runtime::kafka::header(message, dead_letter::SOURCE_TOPIC);
        if stage != Some(STAGE.as_bytes()) || source == Some(topics.raw_events.as_bytes()) {
            counted.events += 1;
        }
        let kind = boomerang_runtime::kafka::header(message, dead_letter::ERROR_KIND)
            .map(|kind| String::from_utf8_lossy(kind).into_owned())
            .unwrap_or_default();
        *counted.by_kind.entry(kind).or_default() += 1;
    })?;
    Ok(counted)
}

/// Progress lines while the files are published.
async fn report_publishing(
    progress: Arc<Progress>,
    client: clickhouse::Client,
    run_id: String,
    interval: Duration,
) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let read = progress.events_read.load(Ordering::Relaxed);
        if read == 0 {
            continue;
        }
        let bytes = progress.event_bytes_read.load(Ordering::Relaxed);
        let total = progress.event_bytes_total.max(1);
        let fraction = (bytes as f64 / total as f64).clamp(0.0, 1.0);
        let elapsed = started.elapsed().as_secs_f64();
        let rate = read as f64 / elapsed.max(0.001);
        let estimate = if fraction > 0.0 {
            (read as f64 / fraction) as u64
        } else {
            read
        };
        let written = drain::written_so_far(&client, &run_id).await.unwrap_or(0);
        let eta = if fraction > 0.0 {
            duration(elapsed / fraction - elapsed)
        } else {
            "unknown".to_string()
        };
        eprintln!(
            "backfill: {} of ~{} events read ({:.0}%), {:.0}/s; {} written; publishing ETA {eta}",
            thousands(read),
            thousands(estimate),
            fraction * 100.0,
            rate,
            thousands(written)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(10_000_000), "10,000,000");
        assert_eq!(duration(59.4), "59s");
        assert_eq!(duration(61.0), "1m01s");
        assert_eq!(duration(3_700.0), "1h01m");
    }

    #[test]
    fn reconciliation_fails_on_a_key_written_twice_or_more_out_than_in() {
        let fine = Reconciliation {
            read: 10,
            written: 7,
            dead_lettered: 1,
            distinct_written: 7,
        };
        assert_eq!(fine.deduplicated(), Some(2));
        assert!(fine.holds());
        let twice = Reconciliation {
            distinct_written: 6,
            ..fine
        };
        assert!(!twice.holds());
        let more_out = Reconciliation {
            read: 10,
            written: 10,
            dead_lettered: 1,
            distinct_written: 10,
        };
        assert!(!more_out.holds());
    }
}
