//! `boomerang gen`: publishes a seeded world (`world.rs`) — customers, orders and the events of
//! their return, exchange and warranty cases — with the faults real producers have: retried
//! publishes (same idempotency key), malformed and rule-breaking records, orders that arrive
//! late or never, producers still on the previous schema version. Writes the ground truth
//! (`truth.rs`) to a JSON file.

mod files;
pub mod truth;
pub mod world;

use self::files::write_files;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::registry::{self, RegistryArgs};
use boomerang_runtime::topics::{TopicsArgs, value_subject};
use boomerang_runtime::wire;
use boomerang_schemas::{Order, PostPurchaseEvent, SchemaKind, TimestampMicros, codec};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use self::truth::{StageCounts, Truth};
use self::world::{Dice, WorldShape};

#[derive(Debug, Clone, clap::Args)]
pub struct GenArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub topics: TopicsArgs,
    /// The world's seed: the same seed and sizes give the same world.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// How many customers (the id is apart from the customers topic's).
    #[arg(long = "customers", id = "customer-count", default_value_t = 4_000)]
    pub customers: usize,
    #[arg(long = "orders", id = "order-count", default_value_t = 20_000)]
    pub orders: usize,
    /// Share of events a producer publishes twice (the same idempotency key and bytes).
    #[arg(long, default_value_t = 0.05)]
    pub retry_rate: f64,
    /// Share of extra records that are not Avro at all.
    #[arg(long, default_value_t = 0.005)]
    pub malformed_rate: f64,
    /// Share of extra events that break a business rule (a quantity of 0).
    #[arg(long, default_value_t = 0.005)]
    pub invalid_rate: f64,
    /// Share of orders published only after their first events (enrich waits for them).
    #[arg(long, default_value_t = 0.03)]
    pub late_order_rate: f64,
    /// Share of orders never published (their events are flagged order_missing).
    #[arg(long, default_value_t = 0.01)]
    pub missing_order_rate: f64,
    /// Share of events from producers still on the previous schema version.
    #[arg(long, default_value_t = 0.1)]
    pub previous_version_rate: f64,
    /// Where the ground truth goes.
    #[arg(long, default_value = "target/run/truth.json")]
    pub truth: PathBuf,
    /// A label for the truth file (the run's topic prefix, say).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Records per second to publish at (0: as fast as the producer takes them), with a
    /// burst at three times the rate one second in ten.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Where to write the idempotency key of every valid event, one per line: what a per-key
    /// verifier expects to find once in ClickHouse (`boomerang verify`).
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// Write the world to export files in this folder instead of publishing it —
    /// `customers`, `orders` and `events`, for `boomerang backfill --from DIR` — with the same
    /// faults but for those only a live producer has (late orders, earlier schema versions).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The export files' format: `avro` (object container files) or `jsonl` (JSON lines in
    /// Avro's JSON encoding, malformed lines included).
    #[arg(long, value_enum, default_value_t = OutFormat::Avro)]
    pub out_format: OutFormat,
    /// Ingest's de-duplication window (`--dedup-window-secs`), for the ground truth of `--out`:
    /// a retried event inside it is dropped by ingest, an older one by the sink. No retry is
    /// drawn within an hour of its edge, so the time between `gen` and the backfill does not
    /// move one across.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub live_window_secs: u64,
    /// Build the world as of this moment (microseconds since the epoch, UTC) instead of now:
    /// the same seed, sizes and moment give the same events, times included — to export the
    /// world a live run published (its truth's `as_of_micros`).
    #[arg(long)]
    pub as_of_micros: Option<i64>,
    /// Enrich's return window (`--return-window-days`), for the truth's risk flags.
    #[arg(long, env = "BOOMERANG_RETURN_WINDOW_DAYS", default_value_t = 30)]
    pub return_window_days: i64,
    /// The sink's refund SLA (`--refund-sla-hours`), for the truth's breaches.
    #[arg(long, env = "BOOMERANG_REFUND_SLA_HOURS", default_value_t = 72)]
    pub refund_sla_hours: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    Avro,
    Jsonl,
}

/// Events published after the first event of a late order, before the order itself.
const LATE_BY_EVENTS: usize = 200;

struct Publisher {
    producer: ThreadedProducer<DefaultProducerContext>,
    published: u64,
    started: Instant,
    pace: Option<Pace>,
}

/// Publishing at a steady rate with bursts: credit accrues at the rate (three times it one
/// second in ten), and each record spends one.
struct Pace {
    rate: f64,
    credit: f64,
    last: Instant,
}

impl Pace {
    fn wait_for_credit(&mut self, started: Instant) {
        loop {
            let now = Instant::now();
            let burst = started.elapsed().as_secs() % 10 == 9;
            let rate = if burst { self.rate * 3.0 } else { self.rate };
            // At most a second's worth banked: a pause is not made up for in one burst.
            self.credit =
                (self.credit + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
            self.last = now;
            if self.credit >= 1.0 {
                self.credit -= 1.0;
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Publisher {
    fn send(&mut self, topic: &str, key: &str, value: &[u8]) {
        if let Some(pace) = &mut self.pace {
            pace.wait_for_credit(self.started);
        }
        loop {
            match self
                .producer
                .send(BaseRecord::<str, [u8]>::to(topic).key(key).payload(value))
            {
                Ok(()) => break,
                Err((_, _record)) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        self.published += 1;
        if self.published.is_multiple_of(25_000) {
            eprintln!(
                "gen: {} records published ({:.0}/s)",
                self.published,
                self.published as f64 / self.started.elapsed().as_secs_f64()
            );
        }
    }
}

pub async fn run(args: GenArgs) -> anyhow::Result<Truth> {
    let shape = WorldShape {
        seed: args.seed,
        customers: args.customers.max(1),
        orders: args.orders,
        rejection_rate: 0.08,
        exchange_rate: 0.15,
        exchange_cancel_rate: 0.1,
        warranty_approval_rate: 0.7,
        anomalies: world::Anomalies::default(),
    };
    let started = Instant::now();
    let now = args
        .as_of_micros
        .map_or_else(TimestampMicros::now, TimestampMicros::from_unix_micros);
    let world = world::build(&shape, now);
    eprintln!(
        "gen: a world of {} customers, {} orders and {} events (seed {}) built in {:.1?}",
        world.customers.len(),
        world.orders.len(),
        world.events.len(),
        args.seed,
        started.elapsed()
    );

    // Faults are drawn from their own dice, so the world stays the same whatever the rates.
    let mut dice = Dice::new(args.seed ^ 0x5EED_FA17);
    let mut late = HashSet::new();
    let mut missing = HashSet::new();
    for order in &world.orders {
        if dice.chance(args.missing_order_rate) {
            missing.insert(order.order_id.clone());
        } else if dice.chance(args.late_order_rate) {
            late.insert(order.order_id.clone());
        }
    }

    let (mut counts, published_events, published_orders, history_duplicates) = match &args.out {
        Some(dir) => write_files(&args, dir, now, &world, &missing, &mut dice)?,
        None => publish(&args, &world, &late, &missing, &mut dice).await?,
    };

    anyhow::ensure!(
        truth::distinct_keys(&published_events) == published_events.len(),
        "the world repeats an idempotency key"
    );
    counts.sent = (published_events.len() + history_duplicates.len()) as u64;
    if let Some(path) = &args.keys {
        let mut keys = String::with_capacity(published_events.len() * 40);
        for event in &published_events {
            keys.push_str(&event.idempotency_key);
            keys.push('\n');
        }
        std::fs::write(path, keys).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // Enrich joins every event ingest passes: a history duplicate too.
    let order_missing = published_events
        .iter()
        .chain(&history_duplicates)
        .filter(|event| missing.contains(&event.order_id))
        .count() as u64;
    let reference_records = published_orders.len() as u64 + world.customers.len() as u64;
    let mut truth = Truth {
        seed: args.seed,
        as_of_micros: now.as_unix_micros(),
        topics_prefix: args.label.clone(),
        enrich: StageCounts {
            received: counts.sent,
            sent: counts.sent,
            ..StageCounts::default()
        },
        enrich_order_missing: order_missing,
        sink: StageCounts {
            received: counts.sent + reference_records,
            sent: counts.sent + reference_records - history_duplicates.len() as u64,
            deduplicated: history_duplicates.len() as u64,
            ..StageCounts::default()
        },
        ingest: counts,
        ..Truth::default()
    };
    truth::analytics(&mut truth, &published_events, &published_orders);
    truth.intelligence = truth::cases::intelligence(
        &published_events,
        &published_orders,
        truth::cases::Thresholds {
            return_window_days: args.return_window_days,
            refund_sla_hours: args.refund_sla_hours,
            ..truth::cases::Thresholds::default()
        },
    );
    if let Some(folder) = args.truth.parent() {
        std::fs::create_dir_all(folder)?;
    }
    std::fs::write(&args.truth, serde_json::to_vec_pretty(&truth)?)
        .with_context(|| format!("cannot write {}", args.truth.display()))?;
    eprintln!("gen: ground truth in {}", args.truth.display());
    Ok(truth)
}

/// A copy of `event` that breaks a business rule (a quantity of 0), under a key of its own.
fn invalid_copy(event: &PostPurchaseEvent) -> PostPurchaseEvent {
    PostPurchaseEvent {
        quantity: 0,
        idempotency_key: format!("{}:invalid", event.idempotency_key),
        event_id: format!("{}-invalid", event.event_id),
        ..event.clone()
    }
}

/// What a world's publishing (or writing) amounted to: the stage counts ingest will see, the
/// events and orders that reached the pipeline, and the retried events that pass ingest
/// because they lie outside its live window (backfilled history: the sink drops them).
type Sent<'w> = (
    StageCounts,
    Vec<&'w PostPurchaseEvent>,
    Vec<&'w Order>,
    Vec<&'w PostPurchaseEvent>,
);

/// Publishes the world to the topics as live producers would.
async fn publish<'w>(
    args: &GenArgs,
    world: &'w world::World,
    late: &HashSet<String>,
    missing: &HashSet<String>,
    dice: &mut Dice,
) -> anyhow::Result<Sent<'w>> {
    let settings = args.registry.settings()?;
    let registrations = registry::register_all(&settings, &args.topics).await?;
    let id_of = |topic: &str, current: bool| {
        registrations
            .iter()
            .find(|registration| {
                registration.subject == value_subject(topic) && registration.current == current
            })
            .map(|registration| registration.schema_id)
            .with_context(|| format!("no schema registered for {topic}"))
    };
    let event_id = id_of(&args.topics.raw_events, true)?;
    let previous_event_id = id_of(&args.topics.raw_events, false)?;
    let customer_id = id_of(&args.topics.customers, true)?;
    let order_id = id_of(&args.topics.orders, true)?;
    let previous_schema =
        apache_avro::Schema::parse_str(SchemaKind::PostPurchaseEvent.history()[0])?;

    let mut config = args.kafka.producer_config();
    config.set("queue.buffering.max.messages", "1000000");
    config.set("linger.ms", "20");
    let mut publisher = Publisher {
        producer: config.create()?,
        published: 0,
        started: Instant::now(),
        pace: (args.rate > 0).then(|| Pace {
            rate: args.rate as f64,
            credit: 0.0,
            last: Instant::now(),
        }),
    };
    let topics = &args.topics;
    for customer in &world.customers {
        publisher.send(
            &topics.customers,
            &customer.customer_id,
            &codec::encode_framed(customer_id, customer)?,
        );
    }
    let orders_by_id: BTreeMap<&str, &Order> = world
        .orders
        .iter()
        .map(|order| (order.order_id.as_str(), order))
        .collect();
    let mut published_orders: Vec<&Order> = Vec::new();
    for order in &world.orders {
        if !late.contains(&order.order_id) && !missing.contains(&order.order_id) {
            publisher.send(
                &topics.orders,
                &order.order_id,
                &codec::encode_framed(order_id, order)?,
            );
            published_orders.push(order);
        }
    }

    let mut counts = StageCounts::default();
    let mut published_events: Vec<&PostPurchaseEvent> = Vec::with_capacity(world.events.len());
    // Late orders due after this many more events.
    let mut due: Vec<(usize, &str)> = Vec::new();
    let mut scheduled: HashSet<&str> = HashSet::new();
    for (index, event) in world.events.iter().enumerate() {
        // Version 1 has no disposition: the warehouse, which sends one, is on version 2.
        let previous_version = dice.chance(args.previous_version_rate);
        let value = if previous_version && event.disposition.is_none() {
            let mut value = Vec::with_capacity(256);
            wire::start_frame(previous_event_id, &mut value);
            value.extend(codec::encode_for_writer_schema(event, &previous_schema)?);
            value
        } else {
            codec::encode_framed(event_id, event)?
        };
        publisher.send(&topics.raw_events, &event.order_id, &value);
        counts.received += 1;
        published_events.push(event);
        if dice.chance(args.retry_rate) {
            publisher.send(&topics.raw_events, &event.order_id, &value);
            counts.received += 1;
            counts.deduplicated += 1;
        }
        if dice.chance(args.malformed_rate) {
            publisher.send(&topics.raw_events, &event.order_id, b"{\"not\": \"avro\"}");
            counts.received += 1;
            counts.dead_lettered += 1;
        }
        if dice.chance(args.invalid_rate) {
            let invalid = invalid_copy(event);
            publisher.send(
                &topics.raw_events,
                &event.order_id,
                &codec::encode_framed(event_id, &invalid)?,
            );
            counts.received += 1;
            counts.dead_lettered += 1;
        }
        if late.contains(&event.order_id) && scheduled.insert(event.order_id.as_str()) {
            due.push((index + LATE_BY_EVENTS, event.order_id.as_str()));
        }
        while let Some(position) = due.iter().position(|(at, _)| *at <= index) {
            let (_, id) = due.swap_remove(position);
            let order = orders_by_id[id];
            publisher.send(&topics.orders, id, &codec::encode_framed(order_id, order)?);
            published_orders.push(order);
        }
    }
    for (_, id) in due {
        let order = orders_by_id[id];
        publisher.send(&topics.orders, id, &codec::encode_framed(order_id, order)?);
        published_orders.push(order);
    }
    // Late orders whose events all lie in the future are published too.
    for id in late {
        if !scheduled.contains(id.as_str()) {
            let order = orders_by_id[id.as_str()];
            publisher.send(&topics.orders, id, &codec::encode_framed(order_id, order)?);
            published_orders.push(order);
        }
    }
    publisher
        .producer
        .flush(Duration::from_secs(120))
        .context("flushing the producer")?;
    eprintln!(
        "gen: {} records published in {:.1?}",
        publisher.published,
        publisher.started.elapsed()
    );
    Ok((counts, published_events, published_orders, Vec::new()))
}
