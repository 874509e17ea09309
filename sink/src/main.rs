//! boomerang-sink: writes enriched events, orders and customers to ClickHouse in batches,
//! idempotently, committing Kafka offsets only after ClickHouse has the rows. See `lib.rs` for
//! the way of a record.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use boomerang_clickhouse::ClickhouseArgs;
use boomerang_clickhouse::analytics_refresh::{InsertLoad, Refresher};
use boomerang_clickhouse::migrations;
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::metrics::StageMetrics;
use boomerang_runtime::pseudonym::{PseudonymArgs, Pseudonymiser};
use boomerang_runtime::registry::{RegistryArgs, WriterSchemas};
use boomerang_runtime::service::{self, ServiceArgs, StageContext};
use boomerang_runtime::stage_loop::{self, BatchWait, GroupArgs, LoopSettings};
use boomerang_runtime::topics::TopicsArgs;
use boomerang_schemas::TimestampMicros;
use boomerang_sink::analytics_gauges;
use boomerang_sink::erase::{Applier, Eraser, ErasureArgs};
use boomerang_sink::metrics::SinkMetrics;
use boomerang_sink::processor::{SinkProcessor, SinkTopics, lock};
use boomerang_sink::refund_sla::RefundSla;
use boomerang_sink::stored::StoredOffsets;
use boomerang_sink::write::{InsertFormat, Writer};

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

    /// How the events are encoded for ClickHouse: `native`, one block of columns per insert
    /// (ClickHouse's own layout: the least server CPU per row), or `rowbinary`, a row at a
    /// time. Orders and customers always go as RowBinary. Either way they are compressed as
    /// --clickhouse-compression says.
    #[arg(
        long = "clickhouse-insert-format",
        env = "BOOMERANG_CLICKHOUSE_INSERT_FORMAT",
        value_enum,
        default_value_t = InsertFormat::Native
    )]
    insert_format: InsertFormat,

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

    /// The refund SLA's target: hours from a return's receipt to its refund or store credit.
    /// The sink shows open cases past it (`boomerang_sink_refund_sla_breached_open_cases`)
    /// and records it in ClickHouse's `analytics_settings`, so `refund_sla` uses the same.
    #[arg(
        long = "refund-sla-hours",
        env = "BOOMERANG_REFUND_SLA_HOURS",
        default_value_t = 72
    )]
    refund_sla_hours: u32,

    /// Cases received longer ago than this many days are no longer followed for the refund
    /// SLA's gauges (bounds the memory a case never refunded holds).
    #[arg(
        long = "refund-sla-horizon-days",
        env = "BOOMERANG_REFUND_SLA_HORIZON_DAYS",
        default_value_t = 90
    )]
    refund_sla_horizon_days: u32,

    /// How often the sink reads ClickHouse's data_quality and risk_flags objects into the
    /// boomerang_data_quality_cases and boomerang_risk_flagged_cases gauges, in seconds (0:
    /// never). Each read runs both objects' queries over the whole history.
    #[arg(
        long = "analytics-gauges-secs",
        env = "BOOMERANG_ANALYTICS_GAUGES_SECS",
        default_value_t = 300
    )]
    analytics_gauges_secs: u64,

    /// How often the sink refreshes the analytics stores the analytics views read, in
    /// milliseconds (0: never; then another sink instance must). Each refresh recomputes the
    /// store rows of the customers whose data changed since the last.
    #[arg(
        long = "analytics-refresh-ms",
        env = "BOOMERANG_ANALYTICS_REFRESH_MS",
        default_value_t = 2_000
    )]
    analytics_refresh_ms: u64,

    /// While the sink is catching up (its inserts at least half of --insert-max-rows), how
    /// often it refreshes the analytics stores instead, in milliseconds: each refresh then
    /// reads most of the events table, and ClickHouse's CPU goes to the inserts first.
    #[arg(
        long = "analytics-refresh-under-load-ms",
        env = "BOOMERANG_ANALYTICS_REFRESH_UNDER_LOAD_MS",
        default_value_t = 300_000
    )]
    analytics_refresh_under_load_ms: u64,

    /// ClickHouse threads a refresh of the analytics stores may use (its `max_threads`; 0:
    /// the server's setting). A refresh is background work: capped, it leaves the server's
    /// other cores to the inserts, whose latency it otherwise adds to (on two cores, p99
    /// event-to-queryable at 2,000 events/s went from 0.9 s with one thread to 2.5 s with the
    /// server's default). Raise it on a large server for faster refreshes of big catch-ups.
    #[arg(
        long = "analytics-refresh-max-threads",
        env = "BOOMERANG_ANALYTICS_REFRESH_MAX_THREADS",
        default_value_t = 1
    )]
    analytics_refresh_max_threads: u32,

    /// The Linux nice value of a refresh's ClickHouse threads (its `os_thread_priority`, 0 to
    /// 19; 0: not sent). A refresh is background work: at 19 it takes only the CPU that the
    /// inserts, and on a shared machine the stages, leave (on two cores with everything on
    /// them, a refresh at the same priority held p99 event-to-queryable at 2,000 events/s over
    /// 3 s). The server applies it only with CAP_SYS_NICE; without, it is a no-op.
    #[arg(
        long = "analytics-refresh-nice",
        env = "BOOMERANG_ANALYTICS_REFRESH_NICE",
        default_value_t = 19,
        value_parser = clap::value_parser!(u8).range(0..=19)
    )]
    analytics_refresh_nice: u8,
}

fn main() -> ExitCode {
    service::run_binary(STAGE, DEFAULT_HTTP_PORT, |args: &Args| &args.service, run)
}

async fn run(args: Args, context: StageContext) -> anyhow::Result<()> {
    let pseudonymiser = Pseudonymiser::from_args(&args.pseudonym)?;
    // The group first: a restarted instance is back under its static id within its session
    // timeout, however long slow brokers and ClickHouse take to answer below.
    let topics = SinkTopics {
        enriched_events: args.topics.enriched_events.clone(),
        orders: args.topics.orders.clone(),
        customers: args.topics.customers.clone(),
    };
    let settings = LoopSettings::for_group(
        STAGE,
        &args.group,
        vec![
            topics.enriched_events.clone(),
            topics.orders.clone(),
            topics.customers.clone(),
        ],
        args.topics.dead_letter.clone(),
        args.sink.insert_max_rows,
        BatchWait::from_millis(args.sink.insert_min_wait_ms, args.sink.insert_max_wait_ms),
    );
    let Some(member) = stage_loop::join_once_brokers_answer(
        settings,
        &args.kafka,
        StageMetrics::register(&context.metrics)?,
        &context,
    )
    .await?
    else {
        return Ok(()); // stopped while the brokers did not answer
    };
    let (prepared, erasing) =
        stage_loop::split_prepared(prepare(&args, topics, pseudonymiser, &context).await);
    let result = member.run_prepared(&args.kafka, prepared, &context).await;
    // The eraser stops with the stage: what it had not committed is applied again next time.
    context.shutdown.cancel();
    if let Some(erasing) = erasing {
        match erasing.await {
            Ok(Err(error)) => tracing::error!(error = %error, "the erasure task failed"),
            Err(error) => tracing::error!(error = %error, "the erasure task panicked"),
            Ok(Ok(())) => {}
        }
    }
    result
}

/// The eraser's task, which runs beside the stage loop.
type Erasing = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Everything the sink needs before it consumes: ClickHouse migrated, the eraser and the
/// analytics' refreshers started, its processor. `None` when the stage was shut down
/// meanwhile.
async fn prepare(
    args: &Args,
    topics: SinkTopics,
    pseudonymiser: Pseudonymiser,
    context: &StageContext,
) -> anyhow::Result<Option<(SinkProcessor<WriterSchemas>, Erasing)>> {
    if !migrations::wait_until_applied(&args.clickhouse, context).await? {
        return Ok(None);
    }
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
        format: args.sink.insert_format,
        metrics: sink_metrics.clone(),
        readiness: context.readiness.clone(),
        shutdown: context.shutdown.clone(),
        timeout: args.clickhouse.timeout(),
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
    let refund_sla = Arc::new(Mutex::new(RefundSla::new(
        i64::from(args.sink.refund_sla_hours) * MICROS_PER_HOUR,
        i64::from(args.sink.refund_sla_horizon_days) * 24 * MICROS_PER_HOUR,
    )));
    // A ClickHouse hiccup here must not stop the sink: the view then keeps the target it had.
    if let Err(error) = record_refund_sla_target(&client, args.sink.refund_sla_hours).await {
        tracing::warn!(error = %error, "recording the refund SLA's target failed; the refund_sla view keeps the one it had");
    }
    sink_metrics
        .refund_sla_target_seconds
        .set(i64::from(args.sink.refund_sla_hours) * 3_600);
    let insert_load = InsertLoad::default();
    if args.sink.analytics_refresh_ms > 0 {
        let mut refresh_client = client.clone();
        if args.sink.analytics_refresh_max_threads > 0 {
            refresh_client = refresh_client.with_setting(
                "max_threads",
                args.sink.analytics_refresh_max_threads.to_string(),
            );
        }
        if args.sink.analytics_refresh_nice > 0 {
            refresh_client = refresh_client.with_setting(
                "os_thread_priority",
                args.sink.analytics_refresh_nice.to_string(),
            );
        }
        let refresher = Refresher::new(
            refresh_client,
            Duration::from_millis(args.sink.analytics_refresh_ms),
            sink_metrics.refresh.clone(),
        )
        .under_load(
            Duration::from_millis(args.sink.analytics_refresh_under_load_ms),
            insert_load.clone(),
        );
        tokio::spawn(refresher.run(context.shutdown.clone()));
    }
    if args.sink.analytics_gauges_secs > 0 {
        tokio::spawn(analytics_gauges::run(
            client.clone(),
            sink_metrics.data_quality_cases.clone(),
            sink_metrics.risk_flagged_cases.clone(),
            Duration::from_secs(args.sink.analytics_gauges_secs),
            context.shutdown.clone(),
        ));
    }
    tokio::spawn(show_refund_sla(
        refund_sla.clone(),
        sink_metrics.clone(),
        context.shutdown.clone(),
    ));
    let processor = SinkProcessor::new(
        WriterSchemas::new(&args.registry)?,
        topics.clone(),
        pseudonymiser,
        writer,
        StoredOffsets::new(&args.kafka, &group_id, client)?,
        args.sink.dedup_window_events,
        sink_metrics,
    )
    .with_refund_sla(refund_sla)
    .with_insert_load(insert_load, args.sink.insert_max_rows / 2);
    Ok(Some((processor, erasing)))
}

const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// Records the refund SLA's target in `analytics_settings`, unless it is there already, so the
/// ClickHouse view and the gauges count breaches against the same target.
async fn record_refund_sla_target(client: &clickhouse::Client, hours: u32) -> anyhow::Result<()> {
    let current: Option<i64> = client
        .query("SELECT argMax(value, updated_at) FROM analytics_settings WHERE name = 'refund_sla_hours'")
        .fetch_optional()
        .await
        .context("reading the refund SLA's target from analytics_settings")?;
    if current != Some(i64::from(hours)) {
        client
            .query("INSERT INTO analytics_settings (name, value) VALUES ('refund_sla_hours', ?)")
            .bind(i64::from(hours))
            .execute()
            .await
            .context("recording the refund SLA's target in analytics_settings")?;
        tracing::info!(hours, "refund SLA target recorded in analytics_settings");
    }
    Ok(())
}

/// Sets the refund SLA's gauges every few seconds: a case goes past the target with time,
/// whether or not records flow.
async fn show_refund_sla(
    refund_sla: Arc<Mutex<RefundSla>>,
    metrics: SinkMetrics,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                let counts = lock(&refund_sla).counts(TimestampMicros::now().as_unix_micros());
                metrics.show_refund_sla(counts);
            }
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
