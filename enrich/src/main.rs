//! boomerang-enrich: joins validated events with CRM customers and orders (with their lines)
//! from compacted reference topics, waiting a bounded time for late reference data, and
//! publishes enriched events. See `lib.rs` for the way of an event.

use boomerang_enrich::snapshot::Snapshots;
use boomerang_runtime::retry;
use boomerang_runtime::snapshot::StateArgs;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use boomerang_enrich::join::JoinSettings;
use boomerang_enrich::metrics::EnrichMetrics;
use boomerang_enrich::pending::PendingLimits;
use boomerang_enrich::processor::{EnrichProcessor, EnrichSettings};
use boomerang_enrich::publish::EnrichedHeaders;
use boomerang_enrich::reference::{
    Arrivals, CatchUp, DEFAULT_MAX_ORDER_LINES, Loader, ReferenceLimits, ReferenceRecord,
};
use boomerang_enrich::tables::SharedTables;
use boomerang_runtime::error_kind::ErrorKind;
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::metrics::StageMetrics;
use boomerang_runtime::pseudonym::{PseudonymArgs, Pseudonymiser};
use boomerang_runtime::registry::{self, RegistryArgs, WriterSchemas};
use boomerang_runtime::service::{self, ServiceArgs, StageContext};
use boomerang_runtime::stage_loop::{self, LoopArgs, LoopSettings};
use boomerang_runtime::topics::TopicsArgs;
use boomerang_schemas::{Customer, ErasureRequest, Order, SchemaKind};
use tokio::sync::watch;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STAGE: &str = "enrich";
/// The stage's own port for /metrics, /healthz and /readyz, so the three stages can share a host.
const DEFAULT_HTTP_PORT: u16 = 9602;

#[derive(Debug, clap::Parser)]
#[command(name = "boomerang-enrich", version, about)]
struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    topics: TopicsArgs,
    #[command(flatten)]
    stage_loop: LoopArgs,
    #[command(flatten)]
    enrich: EnrichArgs,
    #[command(flatten)]
    pseudonym: PseudonymArgs,
    #[command(flatten)]
    state: StateArgs,
    #[command(flatten)]
    service: ServiceArgs,
}

#[derive(Debug, Clone, clap::Args)]
struct EnrichArgs {
    /// Days after delivery within which a return is inside the return window.
    #[arg(
        long = "return-window-days",
        env = "BOOMERANG_RETURN_WINDOW_DAYS",
        default_value_t = 30
    )]
    return_window_days: i32,

    /// The longest an event waits for its order or customer to arrive, in milliseconds; after
    /// it the event is emitted with what is there and the missing parts flagged.
    #[arg(
        long = "max-reference-wait-ms",
        env = "BOOMERANG_MAX_REFERENCE_WAIT_MS",
        default_value_t = 30_000
    )]
    max_reference_wait_ms: u64,

    /// The most events waiting for reference data at once; at the limit consumption pauses.
    #[arg(
        long = "pending-max-events",
        env = "BOOMERANG_PENDING_MAX_EVENTS",
        default_value_t = 100_000
    )]
    pending_max_events: usize,

    /// The most bytes of records waiting for reference data; at the limit consumption pauses.
    #[arg(
        long = "pending-max-bytes",
        env = "BOOMERANG_PENDING_MAX_BYTES",
        default_value_t = 256 * 1024 * 1024
    )]
    pending_max_bytes: usize,

    /// The most lines one order may have; an order with more is skipped (logged and counted
    /// as a rejected reference record), so every instance's memory stays bounded.
    #[arg(
        long = "max-order-lines",
        env = "BOOMERANG_MAX_ORDER_LINES",
        default_value_t = DEFAULT_MAX_ORDER_LINES
    )]
    max_order_lines: usize,

    /// Which of the validated record's headers an enriched record carries: `lean`, only
    /// those a later stage reads (`boomerang.history`); `full`, also the idempotency key,
    /// source and event time ingest writes, for consumers of the enriched topic that read
    /// them from headers rather than from the datum.
    #[arg(
        long = "enriched-headers",
        env = "BOOMERANG_ENRICHED_HEADERS",
        value_enum,
        default_value_t = EnrichedHeaders::Lean
    )]
    enriched_headers: EnrichedHeaders,
}

fn main() -> ExitCode {
    service::run_binary(STAGE, DEFAULT_HTTP_PORT, |args: &Args| &args.service, run)
}

async fn run(args: Args, context: StageContext) -> anyhow::Result<()> {
    let pseudonymiser = Pseudonymiser::from_args(&args.pseudonym)?;
    // The group first: a restarted instance is back under its static id within its session
    // timeout, however long slow brokers, the registry and the reference tables' snapshots
    // below take. No event is joined before the tables caught up (the processor's `assign`
    // waits for them).
    let loop_settings = LoopSettings::new(
        STAGE,
        &args.stage_loop,
        vec![args.topics.validated_events.clone()],
        args.topics.dead_letter.clone(),
    )
    .producing_to(vec![args.topics.enriched_events.clone()]);
    let Some(member) = stage_loop::join_once_brokers_answer(
        loop_settings,
        &args.kafka,
        StageMetrics::register(&context.metrics)?,
        &context,
    )
    .await?
    else {
        return Ok(()); // stopped while the brokers did not answer
    };
    let args = Arc::new(args);
    let (prepared, background) =
        stage_loop::split_prepared(prepare(args.clone(), pseudonymiser, &context).await);
    let result = member.run_prepared(&args.kafka, prepared, &context).await;
    context.shutdown.cancel();
    if let Some(background) = background {
        background.stopped().await;
    }
    result
}

/// The reference loaders and their catch-up, which run beside the stage loop.
struct Background {
    catching_up: tokio::task::JoinHandle<()>,
    loaders: [tokio::task::JoinHandle<()>; 3],
}

impl Background {
    async fn stopped(self) {
        let _ = self.catching_up.await;
        for loader in self.loaders {
            let _ = loader.await;
        }
    }
}

/// Everything enrich needs before it consumes: its output schema registered, the reference
/// loaders started from their snapshots, its processor. `None` when the stage was shut down
/// meanwhile.
async fn prepare(
    args: Arc<Args>,
    pseudonymiser: Pseudonymiser,
    context: &StageContext,
) -> anyhow::Result<Option<(EnrichProcessor<WriterSchemas>, Background)>> {
    let Some(enriched_schema_id) = registry::register_output_schema(
        &args.registry,
        &args.topics.enriched_events,
        SchemaKind::EnrichedPostPurchaseEvent,
        context,
    )
    .await?
    else {
        return Ok(None);
    };
    let enrich_metrics = EnrichMetrics::register(&context.metrics)?;
    let tables = SharedTables::default();
    let arrivals = Arrivals::default();

    // Reference data first: every instance holds every table whole.
    let snapshots = args.state.state_dir.clone().map(|dir| Snapshots {
        dir,
        interval: args.state.snapshot_interval(),
    });
    let shared = LoaderShared {
        tables: tables.clone(),
        arrivals: arrivals.clone(),
        metrics: enrich_metrics.clone(),
        snapshots,
    };
    // The customers' and the orders' loaders start side by side: each reads its snapshot and
    // its topic's offsets, which block. The erasures' loader starts after both: reading
    // erasures back forgets what the other tables' older snapshots still held.
    let (customers, orders) = tokio::join!(
        spawn_loader::<Customer>(&args, &args.topics.customers, &shared, context),
        spawn_loader::<Order>(&args, &args.topics.orders, &shared, context),
    );
    let (Some((customers, customers_progress)), Some((orders, orders_progress))) =
        (customers, orders)
    else {
        return Ok(None);
    };
    let Some((erasures, erasures_progress)) =
        start_loader::<ErasureRequest>(&args, &args.topics.erasure_requests, &shared, context)
            .await
    else {
        return Ok(None);
    };
    let orders = orders.with_limits(ReferenceLimits {
        max_order_lines: args.enrich.max_order_lines,
    });
    let loaders = [
        tokio::spawn(customers.run(context.shutdown.clone())),
        tokio::spawn(orders.run(context.shutdown.clone())),
        tokio::spawn(erasures.run(context.shutdown.clone())),
    ];
    let (caught_up, caught_up_receiver) = watch::channel(false);
    let catching_up = tokio::spawn(catch_up(
        [customers_progress, orders_progress, erasures_progress],
        context.clone(),
        enrich_metrics.clone(),
        caught_up,
    ));

    let settings = EnrichSettings {
        enriched_topic: args.topics.enriched_events.as_str().into(),
        enriched_schema_id,
        join: JoinSettings {
            return_window_days: args.enrich.return_window_days,
        },
        pending: PendingLimits {
            max_events: args.enrich.pending_max_events.max(1),
            max_bytes: args.enrich.pending_max_bytes.max(1),
            max_wait: Duration::from_millis(args.enrich.max_reference_wait_ms),
        },
        headers: args.enrich.enriched_headers,
    };
    let processor = EnrichProcessor::new(
        // The id the stage just registered proves or disproves the registry's "no such
        // id" for it and every lower one.
        WriterSchemas::new(&args.registry)?.knowing(enriched_schema_id),
        tables,
        arrivals,
        settings,
        pseudonymiser,
        enrich_metrics,
    )
    .after_catch_up(caught_up_receiver, context.shutdown.clone());
    Ok(Some((
        processor,
        Background {
            catching_up,
            loaders,
        },
    )))
}

/// What the reference loaders share.
#[derive(Clone)]
struct LoaderShared {
    tables: SharedTables,
    arrivals: Arrivals,
    metrics: EnrichMetrics,
    snapshots: Option<Snapshots>,
}

/// [`start_loader`] on a task of its own, so that loaders start in parallel.
async fn spawn_loader<T: ReferenceRecord>(
    args: &Arc<Args>,
    topic: &str,
    shared: &LoaderShared,
    context: &StageContext,
) -> Option<(Loader<T, WriterSchemas>, watch::Receiver<CatchUp>)> {
    let (args, topic, shared, context) = (
        args.clone(),
        topic.to_string(),
        shared.clone(),
        context.clone(),
    );
    let task =
        tokio::spawn(async move { start_loader::<T>(&args, &topic, &shared, &context).await });
    match task.await {
        Ok(started) => started,
        Err(error) => {
            tracing::error!(error = %error, "a reference loader's start failed");
            None
        }
    }
}

/// Starts the loader of `topic`. A broker too busy to answer at start-up is waited for, not a
/// reason to exit; `None` if the stage was asked to stop first.
async fn start_loader<T: ReferenceRecord>(
    args: &Args,
    topic: &str,
    shared: &LoaderShared,
    context: &StageContext,
) -> Option<(Loader<T, WriterSchemas>, watch::Receiver<CatchUp>)> {
    let what = format!("starting the {} loader", T::TABLE.name());
    retry::until_ok(context, ErrorKind::TopicUnavailable, &what, || async {
        let source = WriterSchemas::new(&args.registry)?;
        // Reading a snapshot and the topic's offsets blocks: off the runtime's workers.
        tokio::task::block_in_place(|| {
            Loader::<T, _>::start_with_snapshots(
                &args.kafka,
                topic,
                source,
                shared.tables.clone(),
                shared.arrivals.clone(),
                shared.metrics.clone(),
                shared.snapshots.clone(),
            )
        })
    })
    .await
}

/// Waits until every reference table has caught up, `/readyz` saying how far they are, then
/// says so on `caught_up`. Returns early if shutdown comes first.
async fn catch_up(
    mut progress: [watch::Receiver<CatchUp>; 3],
    context: StageContext,
    metrics: EnrichMetrics,
    caught_up: watch::Sender<bool>,
) {
    const CATCHING_UP: &str = "reference catch-up";
    loop {
        let states: Vec<CatchUp> = progress.iter().map(|receiver| *receiver.borrow()).collect();
        let remaining: u64 = states.iter().map(|state| state.remaining).sum();
        metrics
            .reference_catch_up_remaining
            .set(i64::try_from(remaining).unwrap_or(i64::MAX));
        if states.iter().all(|state| state.done) {
            metrics.reference_caught_up.set(1);
            context.readiness.unblock(CATCHING_UP);
            tracing::info!("reference tables caught up; joining events");
            caught_up.send_replace(true);
            return;
        }
        context.readiness.block(
            CATCHING_UP,
            format!("catching up reference data: {remaining} records to read"),
        );
        let [customers, orders, erasures] = &mut progress;
        tokio::select! {
            changed = customers.changed() => if changed.is_err() { return },
            changed = orders.changed() => if changed.is_err() { return },
            changed = erasures.changed() => if changed.is_err() { return },
            () = context.shutdown.cancelled() => return,
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
