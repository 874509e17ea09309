//! Keeps the analytics stores fresh (`deploy/clickhouse/migrations/0006_intelligence.sql`):
//! `cases_store`, `customers_store` and `sales_store`, which the analytics views read so they
//! answer in well under a second on millions of events.
//!
//! Every insert into the events, orders or customers table marks its customers in
//! `analytics_dirty` (materialized views in ClickHouse, so an insert from anywhere counts).
//! Every `--analytics-refresh-ms` (or three times as long as the last refresh took, if that is
//! longer, so that refreshing takes ClickHouse's CPU from the inserts at most a quarter of the
//! time) this task reads the marks it has not handled yet and, for
//! those customers, recomputes every store row from the tables as they are at that moment —
//! their cases from their events (one per idempotency key, the latest enrichment, as `FINAL`
//! keeps it), their orders' latest versions, the sales of every day their orders fall on or
//! fell on — and inserts the rows with that moment as their version. A store row is so always
//! a function of the tables: a duplicate, a replay, a late order or an erasure changes it only
//! by what the tables then say. A case that vanished (an erasure) gets a deletion row.
//!
//! Marks are read from slightly before the last refreshed one (`OVERLAP`): an insert's marks
//! can become visible after a later insert's. A mark is handled once per process; a restart
//! handles the overlap's marks again, which is harmless.
//!
//! While the sink is catching up (its inserts full: a backlog, a backfill), a refresh is due
//! only every `--analytics-refresh-under-load-ms` ([`InsertLoad`]): each refresh reads every
//! event of the customers marked since the last, which under a full load is most of the table,
//! and refreshing every few seconds then took ClickHouse's CPU from the inserts it was
//! waiting on (`pipeline_e2e`: the drain of 1M events from 10 s to 13–21 s).
//!
//! Every sink instance refreshes what it sees, so several do the same work; their rows agree.
//! `boomerang analytics refresh` runs it once, until nothing is left to refresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge};
use tokio_util::sync::CancellationToken;

/// How far back each read of the marks starts before the newest one already refreshed.
const OVERLAP_MICROS: i64 = 60_000_000;

/// Most customers per refresh batch: a batch's statements read every event of its customers.
const BATCH_CUSTOMERS: usize = 20_000;

/// How long after its last full batch the writer still counts as catching up, at least: a
/// catch-up's batches follow each other within the insert's own wait.
const MIN_BUSY_MEMORY: Duration = Duration::from_secs(2);

/// How often old sales snapshots (replaced by a newer refresh of their day) are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct RefreshMetrics {
    /// Refreshes that completed, and the customers they recomputed.
    pub refreshes: IntCounter,
    pub customers: IntCounter,
    pub failures: IntCounter,
    /// Refreshes put off because the writer was catching up.
    pub deferred: IntCounter,
    pub duration: Histogram,
    /// ClickHouse's clock when the last completed refresh read the tables (Unix seconds):
    /// every row committed before it is in the stores.
    pub refreshed_at: IntGauge,
}

impl RefreshMetrics {
    /// The metrics, named as the sink exports them; `register` them where they are exported.
    pub fn new() -> prometheus::Result<Self> {
        Ok(Self {
            refreshes: IntCounter::new(
                "boomerang_sink_analytics_refreshes_total",
                "Refreshes of the analytics stores (cases_store, customers_store, sales_store) that completed.",
            )?,
            customers: IntCounter::new(
                "boomerang_sink_analytics_refreshed_customers_total",
                "Customers whose store rows a refresh recomputed (marked by an insert since the last).",
            )?,
            failures: IntCounter::new(
                "boomerang_sink_analytics_refresh_failures_total",
                "Refreshes of the analytics stores that failed (tried again at the next tick).",
            )?,
            deferred: IntCounter::new(
                "boomerang_sink_analytics_refreshes_deferred_total",
                "Refreshes of the analytics stores put off because the sink was catching up (inserting full batches); one is still made every --analytics-refresh-under-load-ms.",
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "boomerang_sink_analytics_refresh_duration_seconds",
                    "How long a refresh of the analytics stores took.",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
            )?,
            refreshed_at: IntGauge::new(
                "boomerang_sink_analytics_refreshed_at_seconds",
                "When the last completed refresh read the tables (ClickHouse's clock, Unix seconds): every row committed before is in the analytics stores.",
            )?,
        })
    }

    pub fn register(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.refreshes.clone()))?;
        registry.register(Box::new(self.customers.clone()))?;
        registry.register(Box::new(self.failures.clone()))?;
        registry.register(Box::new(self.deferred.clone()))?;
        registry.register(Box::new(self.duration.clone()))?;
        registry.register(Box::new(self.refreshed_at.clone()))
    }
}

/// When the writer last inserted a full batch, shared between the writer, which says so, and
/// the [`Refresher`], which refreshes less often while it does.
#[derive(Clone, Debug, Default)]
pub struct InsertLoad(Arc<Mutex<Option<Instant>>>);

impl InsertLoad {
    /// The writer has just inserted a batch that was full (or nearly): it is catching up.
    pub fn full_batch(&self) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
    }

    /// Whether a full batch was inserted within `recent`.
    pub fn busy_within(&self, recent: Duration) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some_and(|at| at.elapsed() <= recent)
    }
}

/// ClickHouse's clock (microseconds since the epoch): a refresh whose `refreshed_at` is at
/// or after it has seen every row ClickHouse held then.
pub async fn clickhouse_now_micros(client: &clickhouse::Client) -> clickhouse::error::Result<i64> {
    client
        .query("SELECT toUnixTimestamp64Micro(now64(6))")
        .fetch_one()
        .await
}

/// When the last completed refresh read the tables (microseconds; 0 before the first): what
/// whoever waits for the stores compares with [`clickhouse_now_micros`].
pub async fn refreshed_at_micros(client: &clickhouse::Client) -> clickhouse::error::Result<i64> {
    refresh_state_micros(client, "refreshed_at").await
}

/// One of the refresher's moments in `analytics_refresh_state`, as it last wrote it.
async fn refresh_state_micros(
    client: &clickhouse::Client,
    name: &str,
) -> clickhouse::error::Result<i64> {
    client
        .query(
            "SELECT toUnixTimestamp64Micro(max(value)) FROM analytics_refresh_state \
             WHERE name = ?",
        )
        .bind(name)
        .fetch_one()
        .await
}

/// A customer marked since a moment, and their newest mark.
#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct Mark {
    customer_key: String,
    inserted_micros: i64,
}

#[derive(Debug, serde::Serialize, clickhouse::Row)]
struct BatchRow<'a> {
    batch: u64,
    customer_key: &'a str,
}

pub struct Refresher {
    client: clickhouse::Client,
    every: Duration,
    /// How often while the writer inserts full batches, and what says it does.
    under_load: Option<(Duration, InsertLoad)>,
    metrics: RefreshMetrics,
    /// The newest mark handled (ClickHouse time, microseconds); read from ClickHouse first.
    through: Option<i64>,
    /// The customers of the overlap already refreshed, with the newest mark handled.
    handled: HashMap<String, i64>,
    last_prune: Instant,
    last_state_write: Option<Instant>,
}

impl Refresher {
    pub fn new(client: clickhouse::Client, every: Duration, metrics: RefreshMetrics) -> Self {
        Self {
            client,
            every,
            under_load: None,
            metrics,
            through: None,
            handled: HashMap::new(),
            last_prune: Instant::now(),
            last_state_write: None,
        }
    }

    /// While `load` says the writer inserts full batches, refreshes only every `every` (if it
    /// is longer than the usual interval).
    pub fn under_load(mut self, every: Duration, load: InsertLoad) -> Self {
        self.under_load = Some((every, load));
        self
    }

    /// Whether the refresh due now waits: the writer is catching up and the last refresh
    /// (`since_last` ago; `None` before the first) is younger than the interval under load.
    fn deferred(&self, since_last: Option<Duration>) -> bool {
        let Some((every, load)) = &self.under_load else {
            return false;
        };
        let Some(since_last) = since_last else {
            return false;
        };
        since_last < *every && load.busy_within(self.every.max(MIN_BUSY_MEMORY))
    }

    /// Refreshes until `shutdown`. A failed refresh is logged, counted and tried again at the
    /// next tick; nothing is marked handled until its refresh completed.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // While refreshes keep failing (ClickHouse down), a warning every 30 s, not per tick.
        let mut last_warning: Option<Instant> = None;
        let mut pause = Duration::ZERO;
        let mut last_refresh: Option<Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            if self.deferred(last_refresh.map(|at: Instant| at.elapsed())) {
                self.metrics.deferred.inc();
                pause = self.every;
                continue;
            }
            let started = Instant::now();
            last_refresh = Some(started);
            match self.refresh_once().await {
                Ok(customers) => {
                    if last_warning.take().is_some() {
                        tracing::info!("refreshing the analytics stores works again");
                    }
                    self.metrics
                        .duration
                        .observe(started.elapsed().as_secs_f64());
                    if customers > 0 {
                        tracing::debug!(
                            customers,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "analytics stores refreshed"
                        );
                    }
                }
                Err(error) => {
                    self.metrics.failures.inc();
                    if last_warning.is_none_or(|last| last.elapsed() >= Duration::from_secs(30)) {
                        last_warning = Some(Instant::now());
                        tracing::warn!(error = %error, "refreshing the analytics stores failed; trying again every tick");
                    }
                }
            }
            // A refresh takes ClickHouse's CPU from the inserts: under a heavy load (a
            // backfill, a catch-up) at most a quarter of the time, whatever the interval.
            pause = self.every.max(started.elapsed() * 3);
            if self.last_prune.elapsed() >= PRUNE_EVERY {
                self.last_prune = Instant::now();
                if let Err(error) = self.prune().await {
                    tracing::warn!(error = %error, "deleting old sales snapshots failed");
                }
            }
        }
    }

    /// One refresh of every customer marked since the last; how many it recomputed.
    pub async fn refresh_once(&mut self) -> anyhow::Result<usize> {
        // The moment the tables are read: every row committed before it is seen below.
        let (snapshot, snapshot_text): (i64, String) = self
            .client
            .query(
                "SELECT toUnixTimestamp64Micro(t), toString(t) FROM (SELECT now64(6, 'UTC') AS t)",
            )
            .fetch_one()
            .await?;
        let through = match self.through {
            Some(through) => through,
            None => refresh_state_micros(&self.client, "refreshed_through").await?,
        };
        let from = through.saturating_sub(OVERLAP_MICROS).max(0);
        let marks: Vec<Mark> = self
            .client
            .query(
                "SELECT customer_key, toUnixTimestamp64Micro(max(inserted_at)) AS inserted_micros \
                 FROM analytics_dirty WHERE inserted_at > fromUnixTimestamp64Micro(?, 'UTC') \
                 GROUP BY customer_key ORDER BY customer_key",
            )
            .bind(from)
            .fetch_all()
            .await?;
        let fresh: Vec<&Mark> = marks
            .iter()
            .filter(|mark| {
                self.handled
                    .get(&mark.customer_key)
                    .is_none_or(|handled| *handled < mark.inserted_micros)
            })
            .collect();
        let customers: Vec<&str> = fresh
            .iter()
            .map(|mark| mark.customer_key.as_str())
            .collect();
        // The refresh's id: its snapshot; its batches count on from it.
        let refresh = u64::try_from(snapshot).unwrap_or_default();
        for (index, chunk) in customers.chunks(BATCH_CUSTOMERS).enumerate() {
            let batch = refresh + index as u64;
            self.refresh_batch(refresh, batch, snapshot, &snapshot_text, chunk)
                .await?;
        }
        if !customers.is_empty() {
            self.refresh_sales(refresh, &snapshot_text).await?;
        }
        let newest = marks.iter().map(|mark| mark.inserted_micros).max();
        for mark in &fresh {
            self.handled
                .insert(mark.customer_key.clone(), mark.inserted_micros);
        }
        let through = newest.map_or(through, |newest| through.max(newest));
        self.through = Some(through);
        let oldest_kept = through.saturating_sub(OVERLAP_MICROS);
        self.handled.retain(|_, inserted| *inserted > oldest_kept);
        // Record the moment even when nothing was marked (at most every 5 s then), so that
        // whoever waits for the stores (`boomerang report --wait`) sees them caught up.
        let idle_write_due = self
            .last_state_write
            .is_none_or(|last| last.elapsed() >= Duration::from_secs(5));
        if !customers.is_empty() || idle_write_due {
            self.client
                .query(
                    "INSERT INTO analytics_refresh_state (name, value) VALUES \
                     ('refreshed_through', fromUnixTimestamp64Micro(?, 'UTC')), \
                     ('refreshed_at', fromUnixTimestamp64Micro(?, 'UTC'))",
                )
                .bind(through)
                .bind(snapshot)
                .execute()
                .await?;
            self.last_state_write = Some(Instant::now());
        }
        self.metrics.refreshes.inc();
        self.metrics.customers.inc_by(customers.len() as u64);
        self.metrics.refreshed_at.set(snapshot / 1_000_000);
        Ok(customers.len())
    }

    /// The store rows of one batch's customers; the days their orders fall on are noted
    /// under `refresh` for [`Self::refresh_sales`].
    async fn refresh_batch(
        &self,
        refresh: u64,
        batch: u64,
        snapshot: i64,
        snapshot_text: &str,
        customers: &[&str],
    ) -> anyhow::Result<()> {
        let mut insert = self
            .client
            .insert::<BatchRow<'_>>("analytics_refresh_batch")
            .await?;
        for customer_key in customers {
            insert
                .write(&BatchRow {
                    batch,
                    customer_key,
                })
                .await?;
        }
        insert.end().await?;
        // A parameterized view takes literals: the snapshot as ClickHouse printed it.
        let arguments = format!("batch = {batch}, snapshot = '{snapshot_text}'");
        let in_batch = format!(
            "customer_key IN (SELECT customer_key FROM analytics_refresh_batch WHERE batch = {batch})"
        );
        let statements = [
            // The days whose sales change: where the customers' orders fall now or fell at
            // their last refresh (read before this refresh rewrites it).
            format!(
                "INSERT INTO analytics_refresh_days (batch, day) \
                 SELECT DISTINCT {refresh}, day FROM ( \
                   SELECT toDate(placed_at) AS day FROM orders WHERE {in_batch} \
                   UNION ALL \
                   SELECT arrayJoin(order_days) AS day FROM customers_store FINAL WHERE {in_batch})"
            ),
            format!("INSERT INTO cases_store SELECT * FROM refresh_cases({arguments})"),
            // Cases whose events are gone (an erasure moved them to other keys).
            format!(
                "INSERT INTO cases_store (case_id, customer_key, refreshed_at, is_deleted) \
                 SELECT case_id, customer_key, fromUnixTimestamp64Micro({snapshot}, 'UTC'), 1 \
                 FROM cases_store FINAL WHERE {in_batch} \
                 AND case_id NOT IN (SELECT case_id FROM post_purchase_events WHERE {in_batch})"
            ),
            format!("INSERT INTO customers_store SELECT * FROM refresh_customers({arguments})"),
        ];
        for (step, statement) in ["days", "cases", "deleted_cases", "customers"]
            .into_iter()
            .zip(&statements)
        {
            let started = Instant::now();
            self.client.query(statement).execute().await?;
            tracing::debug!(
                step,
                customers = customers.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "analytics refresh statement"
            );
        }
        Ok(())
    }

    /// The sales of every day a refresh's batches noted, recomputed once, as a new snapshot.
    async fn refresh_sales(&self, refresh: u64, snapshot_text: &str) -> anyhow::Result<()> {
        let started = Instant::now();
        self.client
            .query(&format!(
                "INSERT INTO sales_store SELECT * FROM refresh_sales(batch = {refresh}, snapshot = '{snapshot_text}')"
            ))
            .execute()
            .await?;
        tracing::debug!(
            step = "sales",
            elapsed_ms = started.elapsed().as_millis() as u64,
            "analytics refresh statement"
        );
        self.client
            .query(&format!(
                "INSERT INTO sales_days (day, snapshot) \
                 SELECT DISTINCT day, toDateTime64('{snapshot_text}', 6, 'UTC') \
                 FROM analytics_refresh_days WHERE batch = {refresh}"
            ))
            .execute()
            .await?;
        Ok(())
    }

    /// Deletes sales snapshots a newer refresh of their day replaced over ten minutes ago.
    async fn prune(&self) -> anyhow::Result<()> {
        self.client
            .query(
                "DELETE FROM sales_store WHERE snapshot < now64(6) - INTERVAL 10 MINUTE \
                 AND (day, snapshot) NOT IN (SELECT day, snapshot FROM sales_days FINAL)",
            )
            .execute()
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refresher() -> Refresher {
        let metrics = RefreshMetrics::new().expect("metrics");
        Refresher::new(
            clickhouse::Client::default(),
            Duration::from_secs(2),
            metrics,
        )
    }

    #[test]
    fn a_full_batch_counts_as_busy_for_a_while() {
        let load = InsertLoad::default();
        assert!(!load.busy_within(Duration::from_secs(60)), "never busy yet");
        load.full_batch();
        assert!(load.busy_within(Duration::from_secs(60)));
    }

    #[test]
    fn a_refresh_waits_only_while_busy_and_only_up_to_the_interval_under_load() {
        let load = InsertLoad::default();
        let plain = refresher();
        load.full_batch();
        let just_now = Some(Duration::ZERO);
        assert!(!plain.deferred(just_now), "without a load signal, never");
        let under_load = refresher().under_load(Duration::from_secs(300), load.clone());
        assert!(
            !under_load.deferred(None),
            "the first refresh is never put off"
        );
        assert!(under_load.deferred(just_now), "busy, refreshed just now");
        assert!(
            !under_load.deferred(Some(Duration::from_secs(301))),
            "the interval under load has passed"
        );
        let idle = refresher().under_load(Duration::from_secs(300), InsertLoad::default());
        assert!(!idle.deferred(just_now), "not busy: the usual interval");
    }
}
