//! `boomerang`: the operator CLI.
//!
//! - `boomerang schemas register`: registers every topic's value schema (with its history) in
//!   the schema registry under TopicNameStrategy subjects (`<topic>-value`).
//! - `boomerang topics create`: creates the pipeline's topics with their partitions, reference
//!   topics compacted.
//! - `boomerang migrate`: applies the ClickHouse migrations (`deploy/clickhouse/migrations/`).
//! - `boomerang backfill`: loads history from export files through the pipeline, exactly once,
//!   with progress, a checkpoint to resume from and a reconciled summary (`backfill/`).
//! - `boomerang gen`: publishes a seeded world of traffic and writes its ground truth (`generate/`).
//! - `boomerang report`: the analytics report, beside the ground truth if given (`report.rs`).
//! - `boomerang dlq inspect | replay`: the dead-letter topic (`dlq.rs`).
//! - `boomerang erase [--verify]`: a customer's erasure request, and what is left of them
//!   (`erase.rs`).

mod backfill;
mod dlq;
mod erase;
mod generate;
mod report;
mod topic;
mod verify;

use std::process::ExitCode;

use boomerang_clickhouse::ClickhouseArgs;
use boomerang_clickhouse::migrations;
use boomerang_runtime::config::{self, error_chain};
use boomerang_runtime::kafka::{self, KafkaArgs, TopicSpec};
use boomerang_runtime::registry::{self, RegistryArgs};
use boomerang_runtime::telemetry::{self, LogArgs, LogFormat};
use boomerang_runtime::topics::TopicsArgs;

#[derive(Debug, clap::Parser)]
#[command(name = "boomerang", version, about = "Operate a Boomerang pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// A TOML config file of settings by their flag names (flags and variables win over it).
    #[arg(long = "config", env = "BOOMERANG_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Schema registry operations.
    #[command(subcommand)]
    Schemas(SchemasCommand),
    /// Kafka topic operations.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Create the ClickHouse database, tables and analytics views, applying the migrations not
    /// applied yet (applying again is harmless).
    Migrate {
        #[command(flatten)]
        clickhouse: ClickhouseArgs,
        /// Keep events this many days (the events table's TTL); unchanged if not given.
        #[arg(long = "retention-days", env = "BOOMERANG_RETENTION_DAYS")]
        retention_days: Option<u32>,
    },
    /// Refresh the analytics stores the analytics views read, once, until no customer marked
    /// by an insert is left (the sink does it every --analytics-refresh-ms while it runs).
    RefreshAnalytics {
        #[command(flatten)]
        clickhouse: ClickhouseArgs,
    },
    /// Publish a seeded world of customers, orders and case events, with producer faults, and
    /// write its ground truth.
    Gen(generate::GenArgs),
    /// Load history (customers, orders, events) from export files through the pipeline,
    /// exactly once, and wait until ClickHouse has it. Exits with 1 unless every event read is
    /// accounted for.
    Backfill(backfill::BackfillArgs),
    /// Print the analytics report (and the stages' counts), beside a ground truth if given.
    /// Exits with 1 if anything differs from it.
    Report(report::ReportArgs),
    /// Dead-letter operations.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// After a run: every valid event the generator published, exactly once in ClickHouse?
    /// Per idempotency key, at every seam. Exits with 1 on any loss, duplicate row or
    /// unexpected row.
    Verify(verify::VerifyArgs),
    /// File a customer's erasure request (right to be forgotten), or with --verify say what
    /// ClickHouse and the topics still hold of them. With --verify, exits with 1 if a row in
    /// ClickHouse can still be linked to the customer.
    Erase(erase::EraseArgs),
}

#[derive(Debug, clap::Subcommand)]
enum DlqCommand {
    /// List dead letters with their headers.
    Inspect(dlq::DlqArgs),
    /// Re-publish the selected dead letters to their source topics.
    Replay {
        #[command(flatten)]
        args: dlq::DlqArgs,
        /// Only say what would be replayed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
enum SchemasCommand {
    /// Register every topic's value schema, earlier versions first, under `<topic>-value`.
    Register {
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        topics: TopicsArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
enum TopicsCommand {
    /// Create the pipeline's topics that do not exist yet.
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        topics: TopicsArgs,
        /// Partitions of the event topics (the unit of parallelism of each stage).
        #[arg(long, env = "BOOMERANG_EVENT_PARTITIONS", default_value_t = 6)]
        event_partitions: i32,
        /// Partitions of the reference topics (customers, orders).
        #[arg(long, env = "BOOMERANG_REFERENCE_PARTITIONS", default_value_t = 3)]
        reference_partitions: i32,
        /// Replication factor of every topic.
        #[arg(long, env = "BOOMERANG_REPLICATION", default_value_t = 1)]
        replication: i32,
        /// A topic config for every topic created, KEY=VALUE, repeatable (e.g.
        /// retention.ms=-1). Mind time-based retention on the validated and enriched topics:
        /// their records carry the event's time as their timestamp, so a broker deletes events
        /// older than retention.ms as soon as it applies retention.
        #[arg(long = "topic-config", value_name = "KEY=VALUE", value_parser = boomerang_runtime::config::parse_key_value)]
        topic_configs: Vec<(String, String)>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = config::load();
    telemetry::init(&LogArgs {
        format: LogFormat::Text,
        filter: "warn".into(),
    });
    match run(cli.command).await {
        Ok(Some(mismatches)) if mismatches > 0 => ExitCode::FAILURE,
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// `Some(mismatches)` for a report.
async fn run(command: Command) -> anyhow::Result<Option<usize>> {
    match command {
        Command::Gen(args) => {
            generate::run(args).await?;
            Ok(None)
        }
        Command::Report(args) => Ok(Some(report::run(args).await?)),
        Command::Backfill(args) => backfill::run(args).await,
        Command::Erase(args) => erase::run(&args).await,
        Command::Verify(args) => {
            let summary = args.summary.clone();
            let verdict = verify::run(args).await?;
            Ok(Some(verify::print(&verdict, summary.as_ref())?))
        }
        Command::Dlq(DlqCommand::Inspect(args)) => {
            dlq::inspect(&args)?;
            Ok(None)
        }
        Command::Dlq(DlqCommand::Replay { args, dry_run }) => {
            dlq::replay(&args, dry_run).await?;
            Ok(None)
        }
        Command::RefreshAnalytics { clickhouse } => {
            let started = std::time::Instant::now();
            let mut refresher = boomerang_clickhouse::analytics_refresh::Refresher::new(
                clickhouse.client(),
                std::time::Duration::ZERO,
                boomerang_clickhouse::analytics_refresh::RefreshMetrics::new()?,
            );
            let mut customers = 0;
            loop {
                let refreshed = refresher.refresh_once().await?;
                customers += refreshed;
                if refreshed == 0 {
                    break;
                }
            }
            println!(
                "analytics stores refreshed: {customers} customers in {:.1?}",
                started.elapsed()
            );
            Ok(None)
        }
        Command::Migrate {
            clickhouse,
            retention_days,
        } => {
            let applied = migrations::apply(&clickhouse, retention_days).await?;
            for name in &applied.already {
                println!("{name:<32} already applied");
            }
            for name in &applied.applied {
                println!("{name:<32} applied");
            }
            if let Some(days) = retention_days {
                println!("retention of post_purchase_events: {days} days");
            }
            println!(
                "database {} on {} is up to date",
                clickhouse.database, clickhouse.url
            );
            Ok(None)
        }
        Command::Schemas(SchemasCommand::Register { registry, topics }) => {
            let settings = registry.settings()?;
            let registrations = registry::register_all(&settings, &topics).await?;
            for registration in registrations {
                let version = if registration.current {
                    "current"
                } else {
                    "earlier"
                };
                println!(
                    "{:<48} {:<38} {:<8} id {}",
                    registration.subject, registration.record, version, registration.schema_id
                );
            }
            Ok(None)
        }
        Command::Topics(TopicsCommand::Create {
            kafka: kafka_args,
            topics,
            event_partitions,
            reference_partitions,
            replication,
            topic_configs,
        }) => {
            let with_replication = |spec: TopicSpec| {
                let mut spec = TopicSpec {
                    replication,
                    ..spec
                };
                spec.configs.extend(topic_configs.iter().cloned());
                spec
            };
            let specs: Vec<TopicSpec> = [
                TopicSpec::new(&topics.raw_events, event_partitions),
                TopicSpec::new(&topics.validated_events, event_partitions),
                TopicSpec::new(&topics.enriched_events, event_partitions),
                TopicSpec::new(&topics.dead_letter, event_partitions),
                TopicSpec::new(&topics.customers, reference_partitions).compacted(),
                TopicSpec::new(&topics.orders, reference_partitions).compacted(),
                // Requests are rare; one partition keeps them in the order they were filed.
                TopicSpec::new(&topics.erasure_requests, 1),
            ]
            .into_iter()
            .map(with_replication)
            .collect();
            kafka::ensure_topics(&kafka_args, &specs).await?;
            for spec in specs {
                println!("{:<48} {} partitions", spec.name, spec.partitions);
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Clap checks its definitions only in debug builds, at parse time: check them all here.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
