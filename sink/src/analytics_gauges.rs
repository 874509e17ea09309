//! What ClickHouse's data-quality and risk objects hold, as Prometheus gauges: every few
//! minutes the sink reads `data_quality` (cases by kind) and `risk_flags` (cases by flag, over
//! all days) and shows them as `boomerang_data_quality_cases{kind}` and
//! `boomerang_risk_flagged_cases{flag}`. Rules that need a case's history can only be applied
//! where the history is; the one-event rules are also counted in the stream, by enrich
//! (`boomerang_enrich_risk_flags_total`). Every sink instance shows the same figures: alert on
//! `max`, not `sum`.

use std::time::Duration;

use prometheus::IntGaugeVec;
use tokio_util::sync::CancellationToken;

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct CountRow {
    key: String,
    cases: u64,
}

async fn read(client: &clickhouse::Client, sql: &str) -> anyhow::Result<Vec<CountRow>> {
    Ok(client.query(sql).fetch_all::<CountRow>().await?)
}

fn show(gauges: &IntGaugeVec, rows: Vec<CountRow>) {
    gauges.reset();
    for row in rows {
        gauges
            .with_label_values(&[&row.key])
            .set(i64::try_from(row.cases).unwrap_or(i64::MAX));
    }
}

/// Reads both objects every `every` until `shutdown`; a failed read is logged and tried again
/// next time (the gauges keep their last values).
pub async fn run(
    client: clickhouse::Client,
    data_quality: IntGaugeVec,
    risk_flags: IntGaugeVec,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match read(&client, "SELECT kind AS key, cases FROM data_quality").await {
            Ok(rows) => show(&data_quality, rows),
            Err(error) => {
                tracing::warn!(error = %error, "reading data_quality for its gauges failed")
            }
        }
        match read(
            &client,
            "SELECT flag AS key, toUInt64(sum(cases)) AS cases FROM risk_flags GROUP BY flag",
        )
        .await
        {
            Ok(rows) => show(&risk_flags, rows),
            Err(error) => {
                tracing::warn!(error = %error, "reading risk_flags for its gauges failed")
            }
        }
    }
}
