//! boomerang-sink: writes enriched events and order lines to ClickHouse in batches, idempotently,
//! committing Kafka offsets only after ClickHouse has the rows.
//!
//! So far the stage starts, loads its config, serves /metrics, /healthz and /readyz (ready once
//! the Kafka brokers answer) and stops cleanly on SIGTERM; its processing lands next.

use std::process::ExitCode;

use boomerang_runtime::config;
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::registry::RegistryArgs;
use boomerang_runtime::service::{self, ServiceArgs};
use boomerang_runtime::topics::TopicsArgs;

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
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = config::load();
    let kafka = args.kafka.clone();
    service::main(STAGE, DEFAULT_HTTP_PORT, &args.service, |context| {
        service::idle_once_brokers_answer(kafka, context)
    })
    .await
}
