//! boomerang-sink: writes enriched events, orders and customers to ClickHouse in batches,
//! idempotently, committing Kafka offsets only after ClickHouse has the rows. See `lib.rs` for
//! the way of a record.

use std::process::ExitCode;
use std::time::Duration;

use boomerang_runtime::clickhouse::ClickhouseArgs;
use boomerang_runtime::config;
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::metrics::StageMetrics;
use boomerang_runtime::migrations::{self, MigrationError};
use boomerang_runtime::pseudonym::{PseudonymArgs, Pseudonymiser};
use boomerang_runtime::registry::{RegistryArgs, WriterSchemas};
use boomerang_runtime::service::{self, ServiceArgs, StageContext};
use boomerang_runtime::stage_loop::{self, LoopSettings, OnRetentionGap};
use boomerang_runtime::topics::TopicsArgs;
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
    sink: SinkArgs,
    #[command(flatten)]
    pseudonym: PseudonymArgs,
    #[command(flatten)]
    service: ServiceArgs,
}

#[derive(Debug, Clone, clap::Args)]
struct SinkArgs {
    /// Consumer group id; every sink instance shares one.
    #[arg(long = "group-id", env = "BOOMERANG_GROUP_ID")]
    group_id: Option<String>,

    /// What to do when a partition's committed offset is older than the oldest record the
    /// topic still holds: `resume` at the oldest record, counting what was lost in
    /// `boomerang_records_lost_to_retention_total`, or `stop` the sink with an error.
    #[arg(
        long = "on-retention-gap",
        env = "BOOMERANG_ON_RETENTION_GAP",
        value_enum,
        default_value_t = OnRetentionGap::Resume
    )]
    on_retention_gap: OnRetentionGap,

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
    let args: Args = config::load();
    let service_args = args.service.clone();
    service::run_to_exit(service::main(
        STAGE,
        DEFAULT_HTTP_PORT,
        &service_args,
        |context| run(args, context),
    ))
}

async fn run(args: Args, context: StageContext) -> anyhow::Result<()> {
    let pseudonymiser = Pseudonymiser::from_args(&args.pseudonym)?;
    service::wait_for_brokers(&args.kafka, &context).await;
    if context.shutdown.is_cancelled() || !wait_for_migrations(&args.clickhouse, &context).await? {
        return Ok(());
    }
    let stage_metrics = StageMetrics::register(&context.metrics)?;
    let sink_metrics = SinkMetrics::register(context.metrics.registry())?;
    let group_id = args
        .sink
        .group_id
        .clone()
        .unwrap_or_else(|| format!("boomerang-{STAGE}"));
    let client = args.clickhouse.client();
    let writer = Writer {
        client: client.clone(),
        metrics: Some(sink_metrics.clone()),
        readiness: Some(context.readiness.clone()),
        shutdown: context.shutdown.clone(),
        timeout: args.clickhouse.timeout(),
    };
    let topics = SinkTopics {
        enriched_events: args.topics.enriched_events.clone(),
        orders: args.topics.orders.clone(),
        customers: args.topics.customers.clone(),
    };
    let processor = SinkProcessor::new(
        WriterSchemas::new(&args.registry)?,
        topics.clone(),
        pseudonymiser,
        writer,
        Some(StoredOffsets::new(&args.kafka, &group_id, client)?),
        args.sink.dedup_window_events,
        Some(sink_metrics),
    );
    let settings = LoopSettings {
        stage: STAGE,
        group_id,
        input_topics: vec![topics.enriched_events, topics.orders, topics.customers],
        output_topics: Vec::new(),
        dead_letter_topic: args.topics.dead_letter.clone(),
        batch_max_records: args.sink.insert_max_rows.max(1),
        batch_max_wait: Duration::from_millis(args.sink.insert_max_wait_ms),
        on_retention_gap: args.sink.on_retention_gap,
    };
    stage_loop::run(settings, &args.kafka, processor, stage_metrics, &context).await
}

/// Waits until ClickHouse answers with every migration applied, `/readyz` saying why not yet.
/// `false` if shutdown came first; an error if a migration was changed after it was applied.
async fn wait_for_migrations(
    clickhouse: &ClickhouseArgs,
    context: &StageContext,
) -> anyhow::Result<bool> {
    loop {
        let reason = match migrations::check(clickhouse).await {
            Ok(()) => return Ok(true),
            Err(error @ MigrationError::Changed { .. }) => return Err(error.into()),
            Err(error) => config::error_chain(&error),
        };
        tracing::warn!(reason = %reason, "ClickHouse is not ready for the sink; checking again");
        context
            .readiness
            .set_not_ready(format!("clickhouse: {reason}"));
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = context.shutdown.cancelled() => return Ok(false),
        }
    }
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
