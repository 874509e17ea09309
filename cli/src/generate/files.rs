//! `boomerang gen --out DIR`: the world as a returns platform's export, for
//! `boomerang backfill --from DIR` — `customers`, `orders` and `events` files, each an Avro
//! object container file or JSON lines in Avro's JSON encoding.
//!
//! Faults are drawn as when publishing (retried events written twice, rule-breaking events,
//! missing orders, and in JSON lines malformed lines too), so the ground truth is computed the
//! same way, but for where a retried event is dropped: ingest inside its live window, the sink
//! (against ClickHouse) before it. Late orders do not exist in an export: every order is in
//! `orders`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use boomerang_schemas::{
    AvroRecord, Customer, Order, PostPurchaseEvent, TimestampMicros, avro_json,
};

use super::truth::StageCounts;
use super::world::{Dice, World};
use super::{GenArgs, OutFormat, Sent, invalid_copy};

/// One export file being written.
enum Export {
    Avro(Box<apache_avro::Writer<'static, BufWriter<File>>>, PathBuf),
    Jsonl(BufWriter<File>, PathBuf),
}

impl Export {
    fn create<T: AvroRecord>(dir: &Path, name: &str, format: OutFormat) -> anyhow::Result<Self> {
        let extension = match format {
            OutFormat::Avro => "avro",
            OutFormat::Jsonl => "jsonl",
        };
        let path = dir.join(format!("{name}.{extension}"));
        let file = BufWriter::with_capacity(
            1 << 20,
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?,
        );
        Ok(match format {
            OutFormat::Avro => Self::Avro(
                Box::new(apache_avro::Writer::new(T::KIND.schema(), file)?),
                path,
            ),
            OutFormat::Jsonl => Self::Jsonl(file, path),
        })
    }

    fn write<T: AvroRecord>(&mut self, record: &T) -> anyhow::Result<()> {
        match self {
            Self::Avro(writer, _) => {
                writer.append_ser(record)?;
            }
            Self::Jsonl(writer, _) => {
                writer.write_all(avro_json::encode(record)?.as_bytes())?;
                writer.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    /// A line that is not a record at all; only JSON lines can hold one.
    fn write_malformed(&mut self) -> anyhow::Result<bool> {
        match self {
            Self::Avro(..) => Ok(false),
            Self::Jsonl(writer, _) => {
                writer.write_all(b"{\"not\": \"an event\"\n")?;
                Ok(true)
            }
        }
    }

    fn finish(self) -> anyhow::Result<PathBuf> {
        match self {
            Self::Avro(writer, path) => {
                writer.into_inner()?.flush()?;
                Ok(path)
            }
            Self::Jsonl(mut writer, path) => {
                writer.flush()?;
                Ok(path)
            }
        }
    }
}

/// No retry is drawn closer than this to the live window's edge.
const EDGE_MARGIN_MICROS: i64 = 3_600_000_000;

pub(super) fn write_files<'w>(
    args: &GenArgs,
    dir: &Path,
    now: TimestampMicros,
    world: &'w World,
    missing: &HashSet<String>,
    dice: &mut Dice,
) -> anyhow::Result<Sent<'w>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let format = args.out_format;
    let mut customers = Export::create::<Customer>(dir, "customers", format)?;
    for customer in &world.customers {
        customers.write(customer)?;
    }
    let mut orders = Export::create::<Order>(dir, "orders", format)?;
    let mut published_orders = Vec::with_capacity(world.orders.len());
    for order in &world.orders {
        if !missing.contains(&order.order_id) {
            orders.write(order)?;
            published_orders.push(order);
        }
    }
    let mut events = Export::create::<PostPurchaseEvent>(dir, "events", format)?;
    let mut counts = StageCounts::default();
    let mut published_events = Vec::with_capacity(world.events.len());
    let mut history_duplicates = Vec::new();
    let live_edge = now
        .saturating_sub(Duration::from_secs(args.live_window_secs))
        .as_unix_micros();
    let near_edge = |event: &PostPurchaseEvent| {
        (event.occurred_at.as_unix_micros() - live_edge).abs() < EDGE_MARGIN_MICROS
    };
    for event in &world.events {
        // Drawn as when publishing, so the same seed gives the same faults.
        let _previous_version = dice.chance(args.previous_version_rate);
        events.write(event)?;
        counts.received += 1;
        published_events.push(event);
        if dice.chance(args.retry_rate) && !near_edge(event) {
            events.write(event)?;
            counts.received += 1;
            if event.occurred_at.as_unix_micros() >= live_edge {
                counts.deduplicated += 1;
            } else {
                history_duplicates.push(event);
            }
        }
        if dice.chance(args.malformed_rate) && events.write_malformed()? {
            counts.received += 1;
            counts.dead_lettered += 1;
        }
        if dice.chance(args.invalid_rate) {
            events.write(&invalid_copy(event))?;
            counts.received += 1;
            counts.dead_lettered += 1;
        }
    }
    for path in [customers.finish()?, orders.finish()?, events.finish()?] {
        eprintln!("gen: wrote {}", path.display());
    }
    Ok((
        counts,
        published_events,
        published_orders,
        history_duplicates,
    ))
}
