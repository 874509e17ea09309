//! boomerang-ingest: decodes raw post-purchase events, validates them, de-duplicates them on
//! the producer's idempotency key and publishes the first-seen ones to the validated topic.
//! Whatever it cannot pass goes to the dead-letter topic. See `lib.rs` for the way of a record.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use boomerang_ingest::processor::{IngestMetrics, IngestProcessor, IngestSettings};
use boomerang_ingest::publish::ValidatedHeaders;
use boomerang_ingest::restore::ValidatedTopic;
use boomerang_ingest::validate::{DEFAULT_MAX_ATTRIBUTES, Rules};
use boomerang_runtime::error_kind::ErrorKind;
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::metrics::StageMetrics;
use boomerang_runtime::registry::{self, RegistryArgs, WriterSchemas};
use boomerang_runtime::retry;
use boomerang_runtime::service::{self, ServiceArgs, StageContext};
use boomerang_runtime::snapshot::StateArgs;
use boomerang_runtime::stage_loop::{self, LoopArgs, LoopSettings};
use boomerang_runtime::topics::TopicsArgs;
use boomerang_schemas::SchemaKind;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The stage allocates several small buffers per record; glibc's allocator took about a fifth
/// of ingest's CPU in a profile of the drain benchmark. With the workspace's `override`
/// feature, librdkafka's C allocations are served by mimalloc too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STAGE: &str = "ingest";
/// The stage's own port for /metrics, /healthz and /readyz, so the three stages can share a host.
const DEFAULT_HTTP_PORT: u16 = 9601;

#[derive(Debug, clap::Parser)]
#[command(name = "boomerang-ingest", version, about)]
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
    ingest: IngestArgs,
    #[command(flatten)]
    state: StateArgs,
    #[command(flatten)]
    service: ServiceArgs,
}

#[derive(Debug, Clone, clap::Args)]
struct IngestArgs {
    /// How far in the future an event's occurred_at may be (producers' clock skew), in seconds.
    #[arg(
        long = "max-future-skew-secs",
        env = "BOOMERANG_MAX_FUTURE_SKEW_SECS",
        default_value_t = 300
    )]
    max_future_skew_secs: u64,

    /// How old an event's occurred_at may be before it is implausible, in seconds. Keep it
    /// within the de-duplication window, or late duplicates of old events can pass.
    #[arg(
        long = "max-event-age-secs",
        env = "BOOMERANG_MAX_EVENT_AGE_SECS",
        default_value_t = 7 * 24 * 3600
    )]
    max_event_age_secs: u64,

    /// Within this window of event time, exactly one event per idempotency key passes, in
    /// seconds.
    #[arg(
        long = "dedup-window-secs",
        env = "BOOMERANG_DEDUP_WINDOW_SECS",
        default_value_t = 7 * 24 * 3600
    )]
    dedup_window_secs: u64,

    /// The most idempotency keys an instance remembers (about 100 bytes each: 5M keys take
    /// about 500 MB), shared by the partitions it owns; past it the oldest are forgotten early
    /// (and counted in boomerang_dedup_evictions_total).
    #[arg(
        long = "dedup-max-keys",
        env = "BOOMERANG_DEDUP_MAX_KEYS",
        default_value_t = 5_000_000
    )]
    dedup_max_keys: usize,

    /// The most entries an event's free-form `attributes` map may hold; an event with more is
    /// dead-lettered as too_many_attributes.
    #[arg(
        long = "max-attributes",
        env = "BOOMERANG_MAX_ATTRIBUTES",
        default_value_t = DEFAULT_MAX_ATTRIBUTES
    )]
    max_attributes: usize,

    /// Which headers a validated record carries: `lean`, only `boomerang.history` on a
    /// backfilled event (the idempotency key and event time are read from the datum); `full`,
    /// also the idempotency key, source and event time headers. An ingest without this
    /// option restores de-duplication keys only from those headers: while one may still
    /// read the validated topic (a rolling upgrade, a rollback), run every new one `full`.
    #[arg(
        long = "validated-headers",
        env = "BOOMERANG_VALIDATED_HEADERS",
        value_enum,
        default_value_t = ValidatedHeaders::Lean
    )]
    validated_headers: ValidatedHeaders,
}

fn main() -> ExitCode {
    service::run_binary(STAGE, DEFAULT_HTTP_PORT, |args: &Args| &args.service, run)
}

async fn run(args: Args, context: StageContext) -> anyhow::Result<()> {
    if args.ingest.max_event_age_secs > args.ingest.dedup_window_secs {
        tracing::warn!(
            max_event_age_secs = args.ingest.max_event_age_secs,
            dedup_window_secs = args.ingest.dedup_window_secs,
            "events older than the de-duplication window can pass; late duplicates of them too"
        );
    }
    // The group first: a restarted instance is back under its static id within its session
    // timeout, however long slow brokers, the registry and the snapshots below take.
    let loop_settings = LoopSettings::new(
        STAGE,
        &args.stage_loop,
        vec![args.topics.raw_events.clone()],
        args.topics.dead_letter.clone(),
    )
    .producing_to(vec![args.topics.validated_events.clone()]);
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
    let prepared = prepare(&args, &context).await;
    member.run_prepared(&args.kafka, prepared, &context).await
}

/// Everything ingest needs before it consumes: its topics checked, its output schema
/// registered, its processor. `None` when the stage was shut down meanwhile.
async fn prepare(
    args: &Args,
    context: &StageContext,
) -> anyhow::Result<Option<IngestProcessor<WriterSchemas>>> {
    let checked = retry::until_ok(
        context,
        ErrorKind::TopicUnavailable,
        "checking the topics' partitions",
        || {
            let kafka = args.kafka.clone();
            let (raw, validated) = (
                args.topics.raw_events.clone(),
                args.topics.validated_events.clone(),
            );
            async move {
                tokio::task::spawn_blocking(move || check_co_partitioned(&kafka, &raw, &validated))
                    .await?
            }
        },
    )
    .await;
    match checked {
        None => return Ok(None), // shut down while the brokers did not answer
        Some(Err(mismatch)) => anyhow::bail!(mismatch),
        Some(Ok(())) => {}
    }
    let Some(validated_schema_id) = registry::register_output_schema(
        &args.registry,
        &args.topics.validated_events,
        SchemaKind::PostPurchaseEvent,
        context,
    )
    .await?
    else {
        return Ok(None); // shut down while the registry was not answering
    };

    let ingest_metrics = IngestMetrics::register(&context.metrics)?;
    let settings = IngestSettings {
        validated_topic: args.topics.validated_events.as_str().into(),
        validated_schema_id,
        rules: Rules {
            max_future_skew: Duration::from_secs(args.ingest.max_future_skew_secs),
            max_event_age: Duration::from_secs(args.ingest.max_event_age_secs),
            max_attributes: args.ingest.max_attributes,
        },
        dedup_window: Duration::from_secs(args.ingest.dedup_window_secs),
        dedup_max_keys: args.ingest.dedup_max_keys,
        headers: args.ingest.validated_headers,
    };
    let mut processor = IngestProcessor::new(
        // The id the stage just registered proves or disproves the registry's "no such
        // id" for it and every lower one.
        WriterSchemas::new(&args.registry)?.knowing(validated_schema_id),
        settings,
        ValidatedTopic {
            kafka: args.kafka.clone(),
            topic: args.topics.validated_events.clone(),
        },
        ingest_metrics,
    );
    if let Some(dir) = args.state.state_dir.clone() {
        processor = processor
            .with_snapshots(
                args.kafka.clone(),
                dir.clone(),
                args.state.snapshot_interval(),
            )
            .with_context(|| format!("cannot start writing snapshots to {}", dir.display()))?;
    }
    Ok(Some(processor))
}

/// Validated partition P is raw partition P's de-duplication log: the counts must match.
/// The outer error is the brokers' (worth retrying), the inner one the topics' (not).
fn check_co_partitioned(
    kafka: &KafkaArgs,
    raw: &str,
    validated: &str,
) -> anyhow::Result<Result<(), String>> {
    let consumer: BaseConsumer = kafka.client_config().create()?;
    let count = |topic: &str| -> anyhow::Result<usize> {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("cannot read the metadata of {topic}"))?;
        let partitions = metadata
            .topics()
            .first()
            .map(|topic| topic.partitions().len())
            .unwrap_or(0);
        if partitions == 0 {
            anyhow::bail!("topic {topic} does not exist; create it with `boomerang topics create`");
        }
        Ok(partitions)
    };
    let (raw_partitions, validated_partitions) = (count(raw)?, count(validated)?);
    if raw_partitions != validated_partitions {
        return Ok(Err(format!(
            "{raw} has {raw_partitions} partitions and {validated} has {validated_partitions}: \
             ingest needs them equal (validated partition P de-duplicates raw partition P)"
        )));
    }
    Ok(Ok(()))
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
