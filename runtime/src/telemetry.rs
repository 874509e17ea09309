//! Structured logs with `tracing`: JSON lines by default (what log pipelines ingest), or
//! human-readable text. Filtered by `--log-filter` / `BOOMERANG_LOG`, e.g. `info,rdkafka=warn`.
//! Logs never carry PII: stages log ids, offsets and error kinds, never record contents.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long = "log-format", env = "BOOMERANG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub format: LogFormat,

    /// Which logs to keep, in tracing's EnvFilter syntax.
    #[arg(long = "log-filter", env = "BOOMERANG_LOG", default_value = "info")]
    pub filter: String,
}

/// Installs the global subscriber; a second call (tests) keeps the first.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.filter).unwrap_or_else(|error| {
        eprintln!(
            "invalid --log-filter {:?} ({error}); using info",
            args.filter
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match args.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
