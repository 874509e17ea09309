//! A stage's life, the same for every stage: logs, metrics and health endpoints up first; the
//! stage's work runs until it ends or a SIGTERM asks it to drain; the endpoints stay up while
//! it drains, and the process exits within the shutdown timeout whatever the stage does.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::error_chain;
use crate::http::{self, Readiness};
use crate::kafka::{self, KafkaArgs};
use crate::metrics::Metrics;
use crate::shutdown;
use crate::telemetry::{self, LogArgs};

#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Address of /metrics, /healthz and /readyz (port 0 picks a free port). Defaults to
    /// 127.0.0.1 and the stage's own port.
    #[arg(long = "http-listen", env = "BOOMERANG_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// A folder Prometheus watches (file-based service discovery): the process writes its
    /// scrape target there while it runs.
    #[arg(
        long = "prometheus-targets-dir",
        env = "BOOMERANG_PROMETHEUS_TARGETS_DIR"
    )]
    pub prometheus_targets_dir: Option<PathBuf>,

    /// How long a SIGTERM'd stage may take to drain and commit before the process exits anyway,
    /// in milliseconds.
    #[arg(
        long = "shutdown-timeout-ms",
        env = "BOOMERANG_SHUTDOWN_TIMEOUT_MS",
        default_value_t = 8_000
    )]
    pub shutdown_timeout_ms: u64,

    /// A TOML config file of settings by their flag names (flags and variables win over it).
    #[arg(long = "config", env = "BOOMERANG_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub log: LogArgs,
}

/// What a stage's work gets from its service.
#[derive(Clone)]
pub struct StageContext {
    pub stage: &'static str,
    pub metrics: Metrics,
    pub readiness: Readiness,
    /// Cancelled at SIGTERM: stop consuming, flush, commit, return.
    pub shutdown: CancellationToken,
}

/// A stage binary's whole `main`: its `Args` loaded (flags, then environment, then config
/// file), then [`main`] running `work` on a new runtime, to an exit code.
pub fn run_binary<Args, Work, WorkFuture>(
    stage: &'static str,
    default_http_port: u16,
    service_args: impl FnOnce(&Args) -> &ServiceArgs,
    work: Work,
) -> ExitCode
where
    Args: clap::Parser,
    Work: FnOnce(Args, StageContext) -> WorkFuture,
    WorkFuture: Future<Output = anyhow::Result<()>>,
{
    let args: Args = crate::config::load();
    let service = service_args(&args).clone();
    run_to_exit(main(stage, default_http_port, &service, |context| {
        work(args, context)
    }))
}

/// Runs a stage's `main` (below) on a multi-threaded runtime, then does not wait for blocking
/// work still running: a partition's restore or a commit the group does not answer must not
/// hold up a stage that has stopped (everything it processed is committed by then). The
/// runtime's own drop would wait for them; the chaos soak found an ingest that took more than
/// 20 s to exit after SIGTERM, behind a restore.
pub fn run_to_exit(main: impl Future<Output = ExitCode>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(main);
    runtime.shutdown_timeout(BLOCKING_WORK_GRACE);
    code
}

/// How long a stopped stage lets blocking work still running finish before it exits.
const BLOCKING_WORK_GRACE: Duration = Duration::from_secs(1);

/// Runs a stage binary: `work` is the stage itself. Returns the process exit code.
pub async fn main<Work, WorkFuture>(
    stage: &'static str,
    default_http_port: u16,
    args: &ServiceArgs,
    work: Work,
) -> ExitCode
where
    Work: FnOnce(StageContext) -> WorkFuture,
    WorkFuture: Future<Output = anyhow::Result<()>>,
{
    telemetry::init(&args.log);
    match run(stage, default_http_port, args, work).await {
        Ok(()) => {
            tracing::info!(stage, "stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(stage, error = %error_chain(error.as_ref()), "stage failed");
            ExitCode::FAILURE
        }
    }
}

async fn run<Work, WorkFuture>(
    stage: &'static str,
    default_http_port: u16,
    args: &ServiceArgs,
    work: Work,
) -> anyhow::Result<()>
where
    Work: FnOnce(StageContext) -> WorkFuture,
    WorkFuture: Future<Output = anyhow::Result<()>>,
{
    let metrics = Metrics::for_stage(stage)?;
    let shutdown = shutdown::on_signals()?;
    let readiness = Readiness::new("starting");
    // The endpoints outlive the stage's work, so /metrics and /readyz answer while it drains.
    let endpoints_shutdown = CancellationToken::new();
    let listen = args
        .http_listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_http_port)));
    let (http_address, endpoints) = http::serve(
        listen,
        metrics.clone(),
        readiness.clone(),
        endpoints_shutdown.clone(),
    )
    .await
    .map_err(|error| anyhow::anyhow!("cannot listen on {listen}: {error}"))?;
    let _scrape_target = match &args.prometheus_targets_dir {
        Some(folder) => Some(ScrapeTarget::register(folder, stage, http_address)?),
        None => None,
    };
    tracing::info!(stage, http = %http_address, "started");

    let context = StageContext {
        stage,
        metrics,
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
    };
    let work = work(context);
    tokio::pin!(work);
    let result = tokio::select! {
        result = &mut work => result,
        () = shutdown.cancelled() => {
            readiness.set_not_ready("shutting down");
            let drain_timeout = Duration::from_millis(args.shutdown_timeout_ms);
            match tokio::time::timeout(drain_timeout, &mut work).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(stage, timeout_ms = args.shutdown_timeout_ms, "did not drain in time; exiting without it");
                    Ok(())
                }
            }
        }
    };
    endpoints_shutdown.cancel();
    if let Ok(Err(error)) = endpoints.await {
        tracing::warn!(error = %error, "endpoints stopped with an error");
    }
    result
}

/// A scrape target file for Prometheus's file-based service discovery, removed on drop.
struct ScrapeTarget {
    path: PathBuf,
}

impl ScrapeTarget {
    fn register(folder: &Path, stage: &str, address: SocketAddr) -> anyhow::Result<Self> {
        let advertised = if address.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], address.port()))
        } else {
            address
        };
        let path = folder.join(format!("{stage}-{}.json", std::process::id()));
        let body = serde_json::json!([{ "targets": [advertised.to_string()], "labels": { "job": format!("boomerang-{stage}") } }]);
        // Write then rename: Prometheus must never read half a file.
        let partial = path.with_extension("json.partial");
        std::fs::create_dir_all(folder)?;
        std::fs::write(&partial, body.to_string())?;
        std::fs::rename(&partial, &path)?;
        Ok(Self { path })
    }
}

impl Drop for ScrapeTarget {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The work of a stage that has nothing to process yet: ready once the brokers answer, then
/// idle until SIGTERM.
pub async fn idle_once_brokers_answer(
    kafka_args: KafkaArgs,
    context: StageContext,
) -> anyhow::Result<()> {
    if wait_for_brokers(&kafka_args, &context).await {
        context.readiness.set_ready();
        tracing::info!(stage = context.stage, "ready");
    }
    context.shutdown.cancelled().await;
    Ok(())
}

/// Retries until the brokers answer a metadata request (`true`) or shutdown is asked for
/// (`false`); `/readyz` says why it is waiting.
///
/// One client is asked each time, and each attempt waits longer than the last (2 s, doubling,
/// at most 10 s): a broker that takes 3 s to answer, as a loaded one after an outage does,
/// answers the second attempt instead of timing every attempt out.
pub async fn wait_for_brokers(kafka_args: &KafkaArgs, context: &StageContext) -> bool {
    const FIRST_METADATA_TIMEOUT: Duration = Duration::from_secs(2);
    const MAX_METADATA_TIMEOUT: Duration = Duration::from_secs(10);
    let backoff = crate::retry::Backoff::new(Duration::from_millis(500), Duration::from_secs(2));
    let mut probe: Option<Arc<kafka::BrokerProbe>> = None;
    let mut timeouts = crate::retry::Backoff::new(FIRST_METADATA_TIMEOUT, MAX_METADATA_TIMEOUT);
    crate::retry::until_ok_with(
        context,
        crate::error_kind::ErrorKind::BrokersUnavailable,
        "kafka brokers do not answer",
        backoff,
        || {
            // Made once (creating a client does not wait for the brokers), kept after that.
            let client = match &probe {
                Some(client) => Ok(client.clone()),
                None => kafka::BrokerProbe::new(kafka_args)
                    .map(Arc::new)
                    .inspect(|client| probe = Some(client.clone())),
            };
            let timeout = timeouts.next_delay();
            async move {
                let client = client.map_err(|error| error.to_string())?;
                tokio::task::spawn_blocking(move || client.ask(timeout))
                    .await
                    .map_err(|join_error| join_error.to_string())?
                    .map_err(|error| error.to_string())
            }
        },
    )
    .await
    .is_some()
}
