//! `boomerang report`: the analytics report against any ClickHouse — return rates by category
//! and channel, refund-time quantiles, exchange conversion, warranty approval — and, given the
//! stages' metrics endpoints, their counts and whether every consumed record is accounted for.
//! With a ground truth (`boomerang gen --truth`), each figure stands beside the expected one and
//! any difference is marked; `--wait` first waits until every stage has drained.

mod intelligence;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use boomerang_clickhouse::ClickhouseArgs;
use boomerang_clickhouse::analytics_refresh;

use crate::generate::truth::{Quantiles, StageCounts, Truth, Units};

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub clickhouse: ClickhouseArgs,
    /// The ground truth to compare with (written by `boomerang gen`).
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// The stages' metrics endpoints, for their counts.
    #[arg(long, default_value = "http://127.0.0.1:9601/metrics")]
    pub ingest_metrics: String,
    #[arg(long, default_value = "http://127.0.0.1:9602/metrics")]
    pub enrich_metrics: String,
    #[arg(long, default_value = "http://127.0.0.1:9603/metrics")]
    pub sink_metrics: String,
    /// Leave the stages out (for a ClickHouse without a running pipeline).
    #[arg(long)]
    pub no_stages: bool,
    /// Wait until the stages have consumed what the truth says they will, and have drained.
    #[arg(long, requires = "truth")]
    pub wait: bool,
    #[arg(long, default_value_t = 900)]
    pub wait_timeout_secs: u64,
    /// How long to wait for the analytics stores to hold everything ClickHouse held when the
    /// report started (the sink refreshes them every --analytics-refresh-ms).
    #[arg(long, default_value_t = 120)]
    pub stores_timeout_secs: u64,
    /// Where the Prometheus of the run is, for "where to look next".
    #[arg(long, env = "BOOMERANG_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
}

/// A stage's counters, read from its /metrics.
#[derive(Debug, Default, Clone)]
struct Observed {
    counts: StageCounts,
    pending: u64,
    order_missing: u64,
}

fn sum(exposition: &str, metric: &str, filter: &str) -> u64 {
    boomerang_runtime::metrics::exposition_sum(exposition, metric, &[filter]) as u64
}

/// One client for every scrape: `reqwest::get` would build a client, root certificates
/// included, on every poll of `--wait`. (`Client::new` panics only if the TLS backend cannot
/// initialise, in which case `reqwest::get` would have panicked the same way.)
static HTTP: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(reqwest::Client::new);

async fn observe(url: &str) -> anyhow::Result<Observed> {
    let text = HTTP
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot read {url}"))?
        .text()
        .await?;
    Ok(Observed {
        counts: StageCounts {
            received: sum(&text, "boomerang_received_events_total", ""),
            sent: sum(&text, "boomerang_sent_events_total", ""),
            deduplicated: sum(&text, "boomerang_deduplicated_events_total", ""),
            dead_lettered: sum(&text, "boomerang_dead_lettered_events_total", ""),
        },
        pending: sum(&text, "boomerang_enrich_pending_events", ""),
        order_missing: sum(
            &text,
            "boomerang_enrich_join_outcomes_total",
            "order_missing",
        ) + sum(
            &text,
            "boomerang_enrich_join_outcomes_total",
            "order_and_customer_missing",
        ),
    })
}

async fn observe_all(args: &ReportArgs) -> anyhow::Result<[Observed; 3]> {
    Ok([
        observe(&args.ingest_metrics).await?,
        observe(&args.enrich_metrics).await?,
        observe(&args.sink_metrics).await?,
    ])
}

/// Waits until each stage has received what the truth expects and has nothing in flight.
async fn wait_drained(args: &ReportArgs, truth: &Truth) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.wait_timeout_secs);
    let expected = [
        truth.ingest.received,
        truth.enrich.received,
        truth.sink.received,
    ];
    let mut last_report = Instant::now();
    loop {
        let observed = observe_all(args).await;
        if let Ok(observed) = &observed {
            let done = observed.iter().zip(expected).all(|(stage, expected)| {
                let counts = &stage.counts;
                counts.received >= expected
                    && counts.received
                        == counts.sent + counts.deduplicated + counts.dead_lettered + stage.pending
            }) && observed[1].pending == 0;
            if done {
                return Ok(());
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                eprintln!(
                    "waiting for the pipeline to drain: ingest {}/{}, enrich {}/{} ({} waiting for reference data), sink {}/{}",
                    observed[0].counts.received,
                    expected[0],
                    observed[1].counts.received,
                    expected[1],
                    observed[1].pending,
                    observed[2].counts.received,
                    expected[2]
                );
            }
        }
        if Instant::now() > deadline {
            let why = observed.map_or_else(
                |error| error.to_string(),
                |observed| format!("{observed:?}"),
            );
            anyhow::bail!(
                "the pipeline did not drain within {} s: {why}",
                args.wait_timeout_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until a refresh of the analytics stores (which the analytics views read) started
/// after this call: then they hold every row ClickHouse held when it was called. Without a
/// refresher running, says so after `timeout_secs` and goes on with what the stores hold.
async fn wait_for_the_stores(client: &clickhouse::Client, timeout_secs: u64) -> anyhow::Result<()> {
    let now = analytics_refresh::clickhouse_now_micros(client)
        .await
        .context("reading ClickHouse's clock")?;
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        let refreshed = analytics_refresh::refreshed_at_micros(client)
            .await
            .context("reading when the analytics stores were refreshed")?;
        if refreshed >= now {
            return Ok(());
        }
        if Instant::now() > deadline {
            eprintln!(
                "warning: the analytics stores were not refreshed within {timeout_secs} s; the figures below may miss the latest rows. \
                 A running sink refreshes them (--analytics-refresh-ms); `boomerang refresh-analytics` does it once."
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct UnitsRow {
    key: String,
    sold: i64,
    returned: i64,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct QuantileRow {
    cases: u64,
    p50: f64,
    p90: f64,
    p99: f64,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct PairRow {
    total: u64,
    part: u64,
}

struct Measured {
    by_category: BTreeMap<String, Units>,
    by_channel: BTreeMap<String, Units>,
    refund_time: Quantiles,
    exchange: (u64, u64),
    warranty: (u64, u64),
}

async fn measure(client: &clickhouse::Client) -> anyhow::Result<Measured> {
    let units = |column: &'static str| {
        let client = client.clone();
        async move {
            let rows: Vec<UnitsRow> = client
                .query(&format!(
                    "SELECT toString({column}) AS key, toInt64(sum(units_sold)) AS sold, \
                     toInt64(sum(units_returned)) AS returned FROM return_rates GROUP BY key ORDER BY key"
                ))
                .fetch_all()
                .await
                .with_context(|| format!("return rates by {column}"))?;
            anyhow::Ok(
                rows.into_iter()
                    .map(|row| {
                        (
                            row.key,
                            Units {
                                sold: row.sold,
                                returned: row.returned,
                            },
                        )
                    })
                    .collect::<BTreeMap<_, _>>(),
            )
        }
    };
    let by_category = units("category").await?;
    let by_channel = units("channel").await?;
    let refund: QuantileRow = client
        .query(
            "SELECT count() AS cases, quantileExact(0.5)(refund_micros) / 1e6 AS p50, \
             quantileExact(0.9)(refund_micros) / 1e6 AS p90, quantileExact(0.99)(refund_micros) / 1e6 AS p99 \
             FROM refund_times",
        )
        .fetch_one()
        .await
        .context("refund times")?;
    let exchange: PairRow = client
        .query("SELECT toUInt64(sum(cases)) AS total, toUInt64(sum(exchanged_cases)) AS part FROM exchange_conversion")
        .fetch_one()
        .await
        .context("exchange conversion")?;
    let warranty: PairRow = client
        .query("SELECT toUInt64(sum(decided_claims)) AS total, toUInt64(sum(approved_claims)) AS part FROM warranty_outcomes")
        .fetch_one()
        .await
        .context("warranty outcomes")?;
    Ok(Measured {
        by_category,
        by_channel,
        refund_time: Quantiles {
            cases: refund.cases,
            p50_seconds: if refund.cases == 0 { 0.0 } else { refund.p50 },
            p90_seconds: if refund.cases == 0 { 0.0 } else { refund.p90 },
            p99_seconds: if refund.cases == 0 { 0.0 } else { refund.p99 },
        },
        exchange: (exchange.total, exchange.part),
        warranty: (warranty.total, warranty.part),
    })
}

/// Collects lines and remembers whether anything differed from the truth.
#[derive(Default)]
struct Report {
    mismatches: usize,
}

impl Report {
    fn mark(&mut self, matches: Option<bool>) -> &'static str {
        match matches {
            None => "",
            Some(true) => "  ok",
            Some(false) => {
                self.mismatches += 1;
                "  <-- MISMATCH"
            }
        }
    }
}

fn percent(value: f64) -> String {
    format!("{:.2}%", value * 100.0)
}

fn hours(seconds: f64) -> String {
    format!("{:.1} h", seconds / 3600.0)
}

/// Prints the report; returns how many figures differ from the truth.
pub async fn run(args: ReportArgs) -> anyhow::Result<usize> {
    let truth: Option<Truth> = match &args.truth {
        Some(path) => Some(
            serde_json::from_slice(
                &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            )
            .with_context(|| format!("{} is not a ground truth", path.display()))?,
        ),
        None => None,
    };
    if args.wait
        && let Some(truth) = &truth
    {
        wait_drained(&args, truth).await?;
    }
    let mut report = Report::default();
    if !args.no_stages {
        let observed = observe_all(&args).await?;
        println!(
            "Stages                  received       sent  deduplicated  dead-lettered  pending  conservation"
        );
        let expected: [Option<&StageCounts>; 3] = [
            truth.as_ref().map(|truth| &truth.ingest),
            truth.as_ref().map(|truth| &truth.enrich),
            truth.as_ref().map(|truth| &truth.sink),
        ];
        for ((name, stage), expected) in ["ingest", "enrich", "sink"]
            .iter()
            .zip(&observed)
            .zip(expected)
        {
            let counts = &stage.counts;
            let holds = counts.received
                == counts.sent + counts.deduplicated + counts.dead_lettered + stage.pending;
            let conservation = if holds { "holds" } else { "BROKEN" };
            if !holds {
                report.mismatches += 1;
            }
            let mark = report.mark(expected.map(|expected| expected == counts));
            println!(
                "  {name:<20} {:>10} {:>10} {:>13} {:>14} {:>8}  {conservation}{mark}",
                counts.received,
                counts.sent,
                counts.deduplicated,
                counts.dead_lettered,
                stage.pending
            );
            if let Some(expected) = expected
                && expected != counts
            {
                println!(
                    "  {:<20} {:>10} {:>10} {:>13} {:>14}           (expected)",
                    "",
                    expected.received,
                    expected.sent,
                    expected.deduplicated,
                    expected.dead_lettered
                );
            }
        }
        if let Some(truth) = &truth {
            let mark = report.mark(Some(
                observed[1].order_missing == truth.enrich_order_missing,
            ));
            println!(
                "  enrich flagged order_missing: {} (expected {}){mark}",
                observed[1].order_missing, truth.enrich_order_missing
            );
        }
        println!();
    }

    wait_for_the_stores(&args.clickhouse.client(), args.stores_timeout_secs).await?;
    let measured = measure(&args.clickhouse.client()).await?;
    let mut units_table = |title: &str,
                           measured: &BTreeMap<String, Units>,
                           expected: Option<&BTreeMap<String, Units>>| {
        println!("{title:<24}    sold  returned   return rate   expected");
        let keys: std::collections::BTreeSet<&String> = measured
            .keys()
            .chain(expected.into_iter().flat_map(BTreeMap::keys))
            .collect();
        for key in keys {
            let units = measured.get(key).cloned().unwrap_or_default();
            let wanted = expected.map(|expected| expected.get(key).cloned().unwrap_or_default());
            let mark = report.mark(wanted.as_ref().map(|wanted| *wanted == units));
            println!(
                "  {key:<22} {:>7} {:>9} {:>13} {:>10}{mark}",
                units.sold,
                units.returned,
                percent(units.rate()),
                wanted.map_or(String::new(), |wanted| percent(wanted.rate()))
            );
        }
        println!();
    };
    units_table(
        "Return rate by category",
        &measured.by_category,
        truth.as_ref().map(|truth| &truth.return_rate_by_category),
    );
    units_table(
        "Return rate by channel",
        &measured.by_channel,
        truth.as_ref().map(|truth| &truth.return_rate_by_channel),
    );

    let refund = &measured.refund_time;
    let expected_refund = truth.as_ref().map(|truth| &truth.refund_time);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    println!("Refund time (request to refund or store credit)");
    for (label, value, wanted) in [
        (
            "p50",
            refund.p50_seconds,
            expected_refund.map(|quantiles| quantiles.p50_seconds),
        ),
        (
            "p90",
            refund.p90_seconds,
            expected_refund.map(|quantiles| quantiles.p90_seconds),
        ),
        (
            "p99",
            refund.p99_seconds,
            expected_refund.map(|quantiles| quantiles.p99_seconds),
        ),
    ] {
        let mark = report.mark(wanted.map(|wanted| close(wanted, value)));
        println!(
            "  {label:<22} {:>10} {:>12}{mark}",
            hours(value),
            wanted.map_or(String::new(), |wanted| format!(
                "expected {}",
                hours(wanted)
            ))
        );
    }
    let mark = report.mark(expected_refund.map(|quantiles| quantiles.cases == refund.cases));
    println!(
        "  {:<22} {:>10}{}{mark}",
        "refunded cases",
        refund.cases,
        expected_refund.map_or(String::new(), |quantiles| format!(
            "   expected {}",
            quantiles.cases
        ))
    );
    println!();

    let ratio = |part: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            part as f64 / total as f64
        }
    };
    let (cases, exchanged) = measured.exchange;
    let mark = report.mark(
        truth
            .as_ref()
            .map(|truth| (truth.exchange_cases, truth.exchanged_cases) == (cases, exchanged)),
    );
    println!(
        "Exchange conversion       {} of {} cases = {}{}{mark}",
        exchanged,
        cases,
        percent(ratio(exchanged, cases)),
        truth.as_ref().map_or(String::new(), |truth| format!(
            "   expected {}",
            percent(ratio(truth.exchanged_cases, truth.exchange_cases))
        ))
    );
    let (decided, approved) = measured.warranty;
    let mark = report.mark(
        truth
            .as_ref()
            .map(|truth| (truth.warranty_decided, truth.warranty_approved) == (decided, approved)),
    );
    println!(
        "Warranty approval         {} of {} decided = {}{}{mark}",
        approved,
        decided,
        percent(ratio(approved, decided)),
        truth.as_ref().map_or(String::new(), |truth| format!(
            "   expected {}",
            percent(ratio(truth.warranty_approved, truth.warranty_decided))
        ))
    );
    println!();
    intelligence::print(
        &mut report,
        &args.clickhouse.client(),
        truth.as_ref().map(|truth| &truth.intelligence),
    )
    .await?;
    println!("Where to look next");
    println!(
        "  ClickHouse  {} (database {})",
        args.clickhouse.url, args.clickhouse.database
    );
    println!(
        "    SELECT category, sum(units_returned) / sum(units_sold) AS rate FROM {}.return_rates GROUP BY category",
        args.clickhouse.database
    );
    println!(
        "    SELECT * FROM {}.refund_time_quantiles ORDER BY day DESC LIMIT 10",
        args.clickhouse.database
    );
    if let Some(prometheus) = &args.prometheus_url {
        println!(
            "  Prometheus  {prometheus}/graph?g0.expr=rate(boomerang_received_events_total[1m])"
        );
    }
    println!(
        "  Dead letters  boomerang dlq inspect   (add --error-kind, --stage, --since-ms to filter)"
    );
    if truth.is_some() {
        if report.mismatches == 0 {
            println!("\nEverything matches the generator's ground truth.");
        } else {
            println!(
                "\n{} figure(s) differ from the generator's ground truth.",
                report.mismatches
            );
        }
    }
    Ok(report.mismatches)
}
