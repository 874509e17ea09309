//! boomerang-sink: writes enriched events, orders and customers to ClickHouse in batches,
//! idempotently, committing Kafka offsets only after ClickHouse has the rows. See `lib.rs` for
//! the way of a record.

use std::process::ExitCode;

use boomerang_clickhouse::ClickhouseArgs;
use boomerang_clickhouse::migrations;
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::metrics::StageMetrics;
use boomerang_runtime::pseudonym::{PseudonymArgs, Pseudonymiser};
use boomerang_runtime::registry::{RegistryArgs, WriterSchemas};
use boomerang_runtime::service::{self, ServiceArgs, StageContext};
use boomerang_runtime::stage_loop::{self, BatchWait, GroupArgs, LoopSettings};
use boomerang_runtime::topics::TopicsArgs;
use boomerang_sink::erase::{Applier, Eraser, ErasureArgs};
use boomerang_sink::metrics::SinkMetrics;
use boomerang_sink::processor::{SinkProcessor, SinkTopics};
use boomerang_sink::stored::StoredOffsets;
use boomerang_sink::write::Writer;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STAGE: &str = "sink";
/// The stage's own port for /metrics, /healthz and /readyz, so the three stages can share a host.
const DEFAULT_HTTP_PORT: u16 = 9603;

#[derive(Debug, clap::Parser)]
#[command(name = "boomerang-sink", version, about)]
struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    topics: TopicsArgs,
    #[command(flatten)]
    clickhouse: ClickhouseArgs,
    #[command(flatten)]
    group: GroupArgs,
    #[command(flatten)]
    sink: SinkArgs,
    #[command(flatten)]
    erasure: ErasureArgs,
    #[command(flatten)]
    pseudonym: PseudonymArgs,
    #[command(flatten)]
    service: ServiceArgs,
}

#[derive(Debug, Clone, clap::Args)]
struct SinkArgs {
    /// Most records in one insert batch.
    #[arg(
        long = "insert-max-rows",
        env = "BOOMERANG_INSERT_MAX_ROWS",
        default_value_t = 50_000
    )]
    insert_max_rows: usize,

    /// Longest a batch waits to fill once its first record is in, in milliseconds: most of an
    /// event's time to queryable at low rates.
    #[arg(
        long = "insert-max-wait-ms",
        env = "BOOMERANG_INSERT_MAX_WAIT_MS",
        default_value_t = 500
    )]
    insert_max_wait_ms: u64,

    /// Shortest a batch waits once its first record is in, in milliseconds; after that a small
    /// batch (under a tenth of --insert-max-rows) is inserted as soon as the sink has caught
    /// up with its topics, instead of waiting out --insert-max-wait-ms. Under load batches are
    /// large by then and fill as before. This bounds how many inserts a second a trickle of
    /// events makes.
    #[arg(
        long = "insert-min-wait-ms",
        env = "BOOMERANG_INSERT_MIN_WAIT_MS",
        default_value_t = 100
    )]
    insert_min_wait_ms: u64,

    /// How many of each enriched partition's latest events' idempotency keys the sink
    /// remembers (about 50 bytes each), to write an event an upstream stage emitted twice only
    /// once. Must cover what enrich can re-emit after a crash: its batches in flight plus its
    /// longest wait for late reference data, at the partition's peak rate.
    #[arg(
        long = "dedup-window-events",
        env = "BOOMERANG_SINK_DEDUP_WINDOW_EVENTS",
        default_value_t = 200_000
    )]
    dedup_window_events: usize,
}

fn main() -> ExitCode {
    service::run_binary(STAGE, DEFAULT_HTTP_PORT, |args: &Args| &args.service, run)
}

async fn run(args: Args, context: StageContext) -> anyhow::Result<()> {
    let pseudonymiser = Pseudonymiser::from_args(&args.pseudonym)?;
    if !service::wait_for_brokers(&args.kafka, &context).await
        || !migrations::wait_until_applied(&args.clickhouse, &context).await?
    {
        return Ok(());
    }
    let stage_metrics = StageMetrics::register(&context.metrics)?;
    let sink_metrics = SinkMetrics::register(&context.metrics)?;
    let group_id = args.group.group_id(STAGE);
    let client = args.clickhouse.client();
    let writer = Writer {
        // Without the client's per-value check of each row against the table's column types
        // (RowBinary, not RowBinaryWithNamesAndTypes): the migrations the sink waited for
        // above define those columns, and the row types are theirs (tests/analytics.rs writes
        // every row type through this sink and checks the analytics exactly). The check was
        // about a twentieth of the sink's CPU (perf, pipeline_e2e).
        client: client.clone().with_validation(false),
        metrics: sink_metrics.clone(),
        readiness: context.readiness.clone(),
        shutdown: context.shutdown.clone(),
        timeout: args.clickhouse.timeout(),
    };
    let topics = SinkTopics {
        enriched_events: args.topics.enriched_events.clone(),
        orders: args.topics.orders.clone(),
        customers: args.topics.customers.clone(),
    };
    let eraser = Eraser::new(
        &args.kafka,
        &group_id,
        &args.topics.erasure_requests,
        &args.topics.dead_letter,
        WriterSchemas::new(&args.registry)?,
        Applier::new(client.clone(), pseudonymiser.clone()),
        sink_metrics.clone(),
        &args.erasure,
    )?;
    let erasing = tokio::spawn(eraser.run(context.clone()));
    let processor = SinkProcessor::new(
        WriterSchemas::new(&args.registry)?,
        topics.clone(),
        pseudonymiser,
        writer,
        StoredOffsets::new(&args.kafka, &group_id, client)?,
        args.sink.dedup_window_events,
        sink_metrics,
    );
    let settings = LoopSettings::for_group(
        STAGE,
        &args.group,
        vec![topics.enriched_events, topics.orders, topics.customers],
        args.topics.dead_letter.clone(),
        args.sink.insert_max_rows,
        BatchWait::from_millis(args.sink.insert_min_wait_ms, args.sink.insert_max_wait_ms),
    );
    let result = stage_loop::run(settings, &args.kafka, processor, stage_metrics, &context).await;
    // The eraser stops with the stage: what it had not committed is applied again next time.
    context.shutdown.cancel();
    match erasing.await {
        Ok(Err(error)) => tracing::error!(error = %error, "the erasure task failed"),
        Err(error) => tracing::error!(error = %error, "the erasure task panicked"),
        Ok(Ok(())) => {}
    }
    result
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Clap checks its definitions only in debug builds, at parse time: check them here.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Args::command().debug_assert();
    }
}
