//! The report's second half: repeat purchase, the money of returns, operations times,
//! dispositions, risk flags, the refund SLA and data quality, each beside the generator's truth
//! (`generate/truth/cases.rs`) when there is one.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;

use super::{Report, hours, percent};
use crate::generate::truth::cases::{Intelligence, Repeat, ReturnValue, Steps};

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct CountRow {
    key: String,
    count: u64,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct RepeatRow {
    outcome: String,
    customers: u64,
    eligible_30: u64,
    repeated_30: u64,
    eligible_90: u64,
    repeated_90: u64,
    eligible_365: u64,
    repeated_365: u64,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct ValueRow {
    currency: String,
    refunded: i64,
    store_credit: i64,
    exchange_value: i64,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct StepsRow {
    method: String,
    cases: u64,
    received: u64,
    receipt_p50: f64,
    inspected: u64,
    inspection_p50: f64,
    refunded: u64,
    refund_p50: f64,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct SlaRow {
    target_hours: i64,
    received: u64,
    within: u64,
    late: u64,
    open_past: u64,
    now_micros: i64,
}

async fn counts(
    client: &clickhouse::Client,
    what: &str,
    sql: &str,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let rows: Vec<CountRow> = client
        .query(sql)
        .fetch_all()
        .await
        .with_context(|| what.to_string())?;
    Ok(rows.into_iter().map(|row| (row.key, row.count)).collect())
}

/// A table by key: each measured line, marked against the expected figure when there is a
/// truth, and the expected line under it when they differ. Keys of either side are shown.
fn keyed_table<T: Clone + Default>(
    report: &mut Report,
    header: &str,
    measured: &BTreeMap<String, T>,
    expected: Option<&BTreeMap<String, T>>,
    same: impl Fn(&T, &T) -> bool,
    line: impl Fn(&T) -> String,
) {
    println!("{header}");
    let keys: BTreeSet<&String> = measured
        .keys()
        .chain(expected.into_iter().flat_map(BTreeMap::keys))
        .collect();
    if keys.is_empty() {
        println!("  (none)");
    }
    for key in keys {
        let value = measured.get(key).cloned().unwrap_or_default();
        let wanted = expected.map(|expected| expected.get(key).cloned().unwrap_or_default());
        let mark = report.mark(wanted.as_ref().map(|wanted| same(wanted, &value)));
        println!("  {key:<28} {}{mark}", line(&value));
        if let Some(wanted) = wanted
            && !same(&wanted, &value)
        {
            println!("  {:<28} {}  (expected)", "", line(&wanted));
        }
    }
    println!();
}

/// A table of case counts by key.
fn count_table(
    report: &mut Report,
    title: &str,
    measured: &BTreeMap<String, u64>,
    expected: Option<&BTreeMap<String, u64>>,
) {
    keyed_table(
        report,
        &format!("{title}\n  {:<28} {:>8}", "", "cases"),
        measured,
        expected,
        |a, b| a == b,
        |count| format!("{count:>8}"),
    );
}

fn ratio(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 / total as f64
    }
}

/// Prints the intelligence figures.
pub async fn print(
    report: &mut Report,
    client: &clickhouse::Client,
    truth: Option<&Intelligence>,
) -> anyhow::Result<()> {
    // Repeat purchase.
    let rows: Vec<RepeatRow> = client
        .query(
            "SELECT outcome, toUInt64(sum(customers)) AS customers, \
             toUInt64(sum(eligible_30d)) AS eligible_30, toUInt64(sum(repeated_30d)) AS repeated_30, \
             toUInt64(sum(eligible_90d)) AS eligible_90, toUInt64(sum(repeated_90d)) AS repeated_90, \
             toUInt64(sum(eligible_365d)) AS eligible_365, toUInt64(sum(repeated_365d)) AS repeated_365 \
             FROM repeat_purchase GROUP BY outcome ORDER BY outcome",
        )
        .fetch_all()
        .await
        .context("repeat purchase")?;
    let measured: BTreeMap<String, Repeat> = rows
        .into_iter()
        .map(|row| {
            (
                row.outcome,
                Repeat {
                    customers: row.customers,
                    windows: [
                        (row.eligible_30, row.repeated_30),
                        (row.eligible_90, row.repeated_90),
                        (row.eligible_365, row.repeated_365),
                    ],
                },
            )
        })
        .collect();
    let window = |(eligible, repeated): (u64, u64)| {
        format!(
            "{} ({repeated}/{eligible})",
            percent(ratio(repeated, eligible))
        )
    };
    keyed_table(
        report,
        &format!(
            "Repeat purchase after a case's resolution: bought again / customers the data covers for the whole window\n  {:<28} {:>9} {:>18} {:>18} {:>18}",
            "outcome", "customers", "30 days", "90 days", "365 days"
        ),
        &measured,
        truth.map(|truth| &truth.repeat_purchase),
        |a, b| a == b,
        |repeat| {
            format!(
                "{:>9} {:>18} {:>18} {:>18}",
                repeat.customers,
                window(repeat.windows[0]),
                window(repeat.windows[1]),
                window(repeat.windows[2])
            )
        },
    );

    // The money of returns.
    let rows: Vec<ValueRow> = client
        .query(
            "SELECT currency, toInt64(sum(refunded_minor)) AS refunded, \
             toInt64(sum(store_credit_minor)) AS store_credit, \
             toInt64(sum(exchange_value_minor)) AS exchange_value \
             FROM return_value GROUP BY currency ORDER BY currency",
        )
        .fetch_all()
        .await
        .context("return value")?;
    let measured: BTreeMap<String, ReturnValue> = rows
        .into_iter()
        .map(|row| {
            (
                row.currency,
                ReturnValue {
                    refunded_minor: row.refunded,
                    store_credit_minor: row.store_credit,
                    exchange_value_minor: row.exchange_value,
                },
            )
        })
        .collect();
    keyed_table(
        report,
        &format!(
            "{:<30} {:>11} {:>13} {:>10} {:>9}",
            "Money of returns (minor units)", "refunded", "store credit", "exchanged", "retained"
        ),
        &measured,
        truth.map(|truth| &truth.return_value),
        |a, b| a == b,
        |value| {
            let retained = value.store_credit_minor + value.exchange_value_minor;
            let total = retained + value.refunded_minor;
            format!(
                "{:>11} {:>13} {:>10} {:>9}",
                value.refunded_minor,
                value.store_credit_minor,
                value.exchange_value_minor,
                percent(if total == 0 {
                    0.0
                } else {
                    retained as f64 / total as f64
                })
            )
        },
    );

    // Operations.
    let rows: Vec<StepsRow> = client
        .query(
            "SELECT method, count() AS cases, \
             count(receipt_micros) AS received, ifNull(quantileExactOrNull(0.5)(receipt_micros) / 1e6, 0) AS receipt_p50, \
             count(inspection_micros) AS inspected, ifNull(quantileExactOrNull(0.5)(inspection_micros) / 1e6, 0) AS inspection_p50, \
             count(refund_micros) AS refunded, ifNull(quantileExactOrNull(0.5)(refund_micros) / 1e6, 0) AS refund_p50 \
             FROM return_steps GROUP BY method ORDER BY method",
        )
        .fetch_all()
        .await
        .context("return steps")?;
    let measured: BTreeMap<String, Steps> = rows
        .into_iter()
        .map(|row| {
            (
                row.method,
                Steps {
                    cases: row.cases,
                    received: row.received,
                    receipt_p50_seconds: row.receipt_p50,
                    inspected: row.inspected,
                    inspection_p50_seconds: row.inspection_p50,
                    refunded: row.refunded,
                    refund_p50_seconds: row.refund_p50,
                },
            )
        })
        .collect();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    keyed_table(
        report,
        &format!(
            "{:<30} {:>7} {:>16} {:>19} {:>15}",
            "Return steps (median)",
            "cases",
            "request→receipt",
            "receipt→inspection",
            "receipt→refund"
        ),
        &measured,
        truth.map(|truth| &truth.operations),
        |a: &Steps, b: &Steps| {
            (a.cases, a.received, a.inspected, a.refunded)
                == (b.cases, b.received, b.inspected, b.refunded)
                && close(a.receipt_p50_seconds, b.receipt_p50_seconds)
                && close(a.inspection_p50_seconds, b.inspection_p50_seconds)
                && close(a.refund_p50_seconds, b.refund_p50_seconds)
        },
        |steps| {
            format!(
                "{:>7} {:>16} {:>19} {:>15}",
                steps.cases,
                format!("{} ({})", hours(steps.receipt_p50_seconds), steps.received),
                format!(
                    "{} ({})",
                    hours(steps.inspection_p50_seconds),
                    steps.inspected
                ),
                format!("{} ({})", hours(steps.refund_p50_seconds), steps.refunded),
            )
        },
    );

    let measured = counts(
        client,
        "dispositions",
        "SELECT disposition AS key, toUInt64(sum(cases)) AS count FROM dispositions GROUP BY key ORDER BY key",
    )
    .await?;
    count_table(
        report,
        "Dispositions of inspected returns",
        &measured,
        truth.map(|truth| &truth.dispositions),
    );

    let measured = counts(
        client,
        "risk flags",
        "SELECT flag AS key, toUInt64(sum(cases)) AS count FROM risk_flags GROUP BY key ORDER BY key",
    )
    .await?;
    count_table(
        report,
        "Risk flags (flagged_cases)",
        &measured,
        truth.map(|truth| &truth.risk_flags),
    );

    // The refund SLA.
    let sla: SlaRow = client
        .query(
            "SELECT ifNull((SELECT argMax(value, updated_at) FROM analytics_settings WHERE name = 'refund_sla_hours'), 72) AS target_hours, \
             toUInt64(sum(received_cases)) AS received, toUInt64(sum(refunded_within_target)) AS within, \
             toUInt64(sum(refunded_late)) AS late, toUInt64(sum(open_past_target)) AS open_past, \
             toUnixTimestamp64Micro(now64(6)) AS now_micros FROM refund_sla",
        )
        .fetch_one()
        .await
        .context("refund SLA")?;
    let expected = truth.map(|truth| &truth.refund_sla);
    let matches = expected.map(|expected| {
        (
            expected.target_hours,
            expected.received,
            expected.refunded_within,
            expected.refunded_late,
            expected.open_past_target(sla.now_micros),
        ) == (
            sla.target_hours,
            sla.received,
            sla.within,
            sla.late,
            sla.open_past,
        )
    });
    let mark = report.mark(matches);
    println!(
        "Refund SLA ({} h from receipt)   {} received, {} refunded within, {} late, {} open past it: {} breached{mark}",
        sla.target_hours,
        sla.received,
        sla.within,
        sla.late,
        sla.open_past,
        percent(ratio(sla.late + sla.open_past, sla.received))
    );
    if let Some(expected) = expected
        && matches == Some(false)
    {
        println!(
            "{:<34} {} received, {} refunded within, {} late, {} open past it (expected, {} h)",
            "",
            expected.received,
            expected.refunded_within,
            expected.refunded_late,
            expected.open_past_target(sla.now_micros),
            expected.target_hours
        );
    }
    println!();

    let measured = counts(
        client,
        "data quality",
        "SELECT kind AS key, cases AS count FROM data_quality ORDER BY key",
    )
    .await?;
    count_table(
        report,
        "Data quality: cases excluded or in conflict",
        &measured,
        truth.map(|truth| &truth.data_quality),
    );
    Ok(())
}
