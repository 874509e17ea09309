//! Erasure requests: a customer's right to be forgotten, applied to ClickHouse.
//!
//! The sink reads the erasure-request topic with a consumer of its own (group
//! `<group>-erasure`: one instance applies each request) and, per request, anonymises the
//! customer's rows in every table it writes:
//!
//! - each identifier — the customer key, the idempotency key, event, case, order and line ids —
//!   is replaced by `erased_` + 32 hex digits of SHA-256(salt ‖ value), with the request's own
//!   random salt. The same value always gets the same token within one request, so the erased
//!   customer's events, orders and customer row still join up with each other, and every
//!   aggregate (return rates, refund times, exchange and warranty figures, by segment too)
//!   stays what it was. Nobody can compute a token from an id without the salt, which lives
//!   only in the request record until the topic's retention removes it;
//! - everything that is not an identifier (SKUs, categories, amounts, times, segment, region,
//!   country) is kept.
//!
//! A table's pass copies the customer's rows (the latest version of each, `FINAL`) with tokens
//! in place of identifiers, skipping copies already there (and with a deduplication token made
//! of what it copies, so that two instances applying one request at once copy it once), then
//! deletes the originals (lightweight `DELETE`: gone from every query at once, from disk at the
//! parts' next merge). Both steps are idempotent, so a pass cut short by a crash is simply made
//! again.
//!
//! The analytics stores (`cases_store`, `customers_store`) lose the customer's rows, and the
//! tokens' rows are recomputed from the copies (`boomerang_clickhouse::analytics_refresh`).
//!
//! Each request gets two passes: `first` when it is read, and `settled` after `--erasure-settle-secs`,
//! for the customer's events that were already between enrich and ClickHouse when the request
//! came (enrich drops the customer's earlier events from the moment it reads the request).
//! Each pass appends a row to `erasure_audit` (no id, pseudonym or salt); the request's offset
//! is committed after its `settled` pass, so a crash at any point applies it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use boomerang_runtime::dead_letter::{self, Rejection};
use boomerang_runtime::decode::{DecodeFailure, RecordDecoder};
use boomerang_runtime::error_kind::{DeadLetterKind, ErrorKind};
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::pseudonym::Pseudonymiser;
use boomerang_runtime::registry::WriterSchemas;
use boomerang_runtime::retry::until_ok;
use boomerang_runtime::service::StageContext;
use boomerang_runtime::stage_loop::InputRecord;
use boomerang_schemas::{ErasureRequest, TimestampMicros};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::metrics::SinkMetrics;

/// The most requests applied together: their passes share one settle wait. Small enough that
/// a batch's passes end well within the consumer's poll interval (below).
const BATCH: usize = 20;

/// Test hook: the process aborts after the first pass copied a table's rows and before it
/// deleted the originals, as a crash there would.
pub const CRASH_AFTER_COPY_ENV: &str = "BOOMERANG_TEST_ERASURE_CRASH_AFTER_COPY";

#[derive(Debug, Clone, clap::Args)]
pub struct ErasureArgs {
    /// How long after a request's first pass the sink makes its second, in seconds: long
    /// enough for events that were between enrich and ClickHouse when the request came to
    /// land (the sink's lag at its worst, plus a batch's wait).
    #[arg(
        long = "erasure-settle-secs",
        env = "BOOMERANG_ERASURE_SETTLE_SECS",
        default_value_t = 60
    )]
    pub settle_secs: u64,
}

/// A pass over the tables for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    First,
    Settled,
}

impl Pass {
    pub fn as_str(self) -> &'static str {
        match self {
            Pass::First => "first",
            Pass::Settled => "settled",
        }
    }
}

/// Rows anonymised by one pass, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erased {
    pub events: u64,
    pub orders: u64,
    pub customers: u64,
}

#[derive(Debug, Serialize, clickhouse::Row)]
struct AuditRow<'a> {
    request_id: &'a str,
    requested_at: i64,
    requested_by: &'a str,
    pass: &'static str,
    applied_at: i64,
    events_rows: u64,
    orders_rows: u64,
    customers_rows: u64,
}

/// The salt of the request erasing the row's customer (SQL, with the `customers` and `salts`
/// parameters: the pseudonyms of a batch's customers and their requests' salts, in order).
const ROW_SALT: &str =
    "transform(customer_key, {customers:Array(String)}, {salts:Array(String)}, '')";

/// `column`'s value replaced by its token (SQL): the same function as [`token_of`].
fn token(column: &str) -> String {
    format!("concat('erased_', lower(hex(substring(SHA256(concat({ROW_SALT}, {column})), 1, 16))))")
}

/// The token of `value` under `salt`: `erased_` + the first 16 bytes of SHA-256(salt ‖ value)
/// in hex, as ClickHouse computes it in [`token`].
pub fn token_of(salt: &str, value: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update(value.as_bytes())
        .finalize();
    let mut token = String::with_capacity(39);
    token.push_str("erased_");
    for byte in &digest[..16] {
        token.push_str(&format!("{byte:02x}"));
    }
    token
}

/// The statements of one table's pass over a batch of requests, in order: count, what to
/// copy, copy, delete. Each takes the `customers` (pseudonyms) and `salts` parameters, the
/// copies also `tokens` (each customer's own token): one statement per table for the whole
/// batch, since a `DELETE` reads the table whatever it finds.
struct TableErasure {
    table: &'static str,
    /// Rows per customer (every version).
    count: String,
    /// How many rows the copy would write, and a hash of their keys: the copy's deduplication
    /// token, so that two instances applying the same requests at once (one of them revoked in
    /// a rebalance it has not noticed yet) write the copies once.
    to_copy: String,
    /// Copies of the latest version of each row, identifiers replaced, unless already there.
    copy: String,
    /// The customers' rows themselves.
    delete: String,
}

impl TableErasure {
    fn new(table: &'static str, key: &str, columns: &[(&str, Option<String>)]) -> Self {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let values: Vec<String> = columns
            .iter()
            .map(|(name, value)| value.clone().unwrap_or_else(|| (*name).to_string()))
            .collect();
        let where_customer = "customer_key IN {customers:Array(String)}";
        let not_copied = format!(
            "{where_customer} AND {key_token} NOT IN \
             (SELECT {key} FROM {table} WHERE customer_key IN {{tokens:Array(String)}})",
            key_token = token(key),
        );
        Self {
            table,
            count: format!(
                "SELECT customer_key, count() FROM {table} WHERE {where_customer} GROUP BY customer_key"
            ),
            to_copy: format!(
                "SELECT count(), groupBitXor(cityHash64({key})) FROM {table} FINAL WHERE {not_copied}"
            ),
            copy: format!(
                "INSERT INTO {table} ({names}) SELECT {values} FROM {table} FINAL WHERE {not_copied}",
                names = names.join(", "),
                values = values.join(", "),
            ),
            delete: format!("DELETE FROM {table} WHERE {where_customer}"),
        }
    }

    fn all() -> [TableErasure; 3] {
        let kept = |name| (name, None);
        let tokened = |name| (name, Some(token(name)));
        [
            TableErasure::new(
                "post_purchase_events",
                "idempotency_key",
                &[
                    tokened("idempotency_key"),
                    tokened("event_id"),
                    kept("event_type"),
                    tokened("case_id"),
                    tokened("order_id"),
                    tokened("order_line_id"),
                    tokened("customer_key"),
                    kept("sku"),
                    kept("quantity"),
                    kept("reason"),
                    kept("amount_minor"),
                    kept("amount_currency"),
                    kept("method"),
                    kept("channel"),
                    kept("outcome"),
                    kept("occurred_at"),
                    kept("source_system"),
                    kept("replacement_sku"),
                    kept("warranty_resolution"),
                    kept("disposition"),
                    kept("customer_missing"),
                    kept("order_missing"),
                    kept("order_line_missing"),
                    kept("customer_pseudonymised"),
                    kept("customer_segment"),
                    kept("customer_region"),
                    kept("order_channel"),
                    kept("order_placed_at"),
                    kept("order_delivered_at"),
                    kept("line_category"),
                    kept("line_unit_price_minor"),
                    kept("line_currency"),
                    kept("days_since_delivery"),
                    kept("within_return_window"),
                    kept("enriched_at"),
                    kept("source_topic"),
                    kept("source_partition"),
                    kept("source_offset"),
                    kept("backfill_run"),
                ],
            ),
            TableErasure::new(
                "orders",
                "order_id",
                &[
                    tokened("order_id"),
                    tokened("customer_key"),
                    kept("channel"),
                    kept("currency"),
                    kept("placed_at"),
                    kept("delivered_at"),
                    kept("updated_at"),
                    (
                        "line_ids",
                        Some(format!(
                            "arrayMap(line_id -> {}, line_ids)",
                            token("line_id")
                        )),
                    ),
                    kept("line_skus"),
                    kept("line_categories"),
                    kept("line_quantities"),
                    kept("line_unit_prices_minor"),
                    kept("is_deleted"),
                    kept("source_topic"),
                    kept("source_partition"),
                    kept("source_offset"),
                ],
            ),
            TableErasure::new(
                "customers",
                "customer_key",
                &[
                    tokened("customer_key"),
                    kept("segment"),
                    kept("region"),
                    kept("country"),
                    kept("analytics_consent"),
                    kept("updated_at"),
                    kept("is_deleted"),
                    kept("source_topic"),
                    kept("source_partition"),
                    kept("source_offset"),
                ],
            ),
        ]
    }
}

/// Applies erasure requests to ClickHouse.
pub struct Applier {
    pub client: clickhouse::Client,
    pub pseudonymiser: Pseudonymiser,
    tables: [TableErasure; 3],
}

impl Applier {
    pub fn new(client: clickhouse::Client, pseudonymiser: Pseudonymiser) -> Self {
        Self {
            client,
            pseudonymiser,
            tables: TableErasure::all(),
        }
    }

    /// One pass of `request` over every table, then its audit row. Idempotent.
    pub async fn apply(
        &self,
        request: &ErasureRequest,
        pass: Pass,
    ) -> Result<Erased, clickhouse::error::Error> {
        let erased = self.apply_all(&[request], pass).await?;
        Ok(erased.first().copied().unwrap_or_default())
    }

    /// One pass of each of `requests` over every table, together, then their audit rows; what
    /// each anonymised, in order. Idempotent. A customer named by two requests is anonymised
    /// with the first one's salt, and the second finds nothing left.
    pub async fn apply_all(
        &self,
        requests: &[&ErasureRequest],
        pass: Pass,
    ) -> Result<Vec<Erased>, clickhouse::error::Error> {
        let mut erased = vec![Erased::default(); requests.len()];
        // The first request per customer: pseudonym, salt, the customer's own token.
        let mut owner: HashMap<String, usize> = HashMap::new();
        let (mut customers, mut salts, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
        for (index, request) in requests.iter().enumerate() {
            let customer = self.pseudonymiser.pseudonym(&request.customer_id);
            if owner.contains_key(&customer) {
                continue;
            }
            let salt = request.anonymisation_salt.to_ascii_lowercase();
            tokens.push(token_of(&salt, &customer));
            owner.insert(customer.clone(), index);
            customers.push(customer);
            salts.push(salt);
        }
        for table in &self.tables {
            let rows: Vec<(String, u64)> = self
                .client
                .query(&table.count)
                .param("customers", &customers)
                .fetch_all()
                .await?;
            if rows.is_empty() {
                continue;
            }
            for (customer, count) in &rows {
                if let Some(index) = owner.get(customer) {
                    let counts = &mut erased[*index];
                    match table.table {
                        "post_purchase_events" => counts.events = *count,
                        "orders" => counts.orders = *count,
                        _ => counts.customers = *count,
                    }
                }
            }
            let (copies, keys_hash): (u64, u64) = self
                .client
                .query(&table.to_copy)
                .param("customers", &customers)
                .param("salts", &salts)
                .param("tokens", &tokens)
                .fetch_one()
                .await?;
            if copies > 0 {
                self.client
                    .query(&table.copy)
                    .param("customers", &customers)
                    .param("salts", &salts)
                    .param("tokens", &tokens)
                    .with_setting(
                        "insert_deduplication_token",
                        format!("erasure-{}-{copies}-{keys_hash:016x}", table.table),
                    )
                    .execute()
                    .await?;
            }
            if pass == Pass::First && std::env::var_os(CRASH_AFTER_COPY_ENV).is_some() {
                tracing::error!(table = table.table, "test hook: aborting mid-erasure");
                std::process::abort();
            }
            self.client
                .query(&table.delete)
                .param("customers", &customers)
                .execute()
                .await?;
        }
        // The analytics stores: the customer's rows go with the originals; the tokens' rows
        // are recomputed from the copies, now that the originals are gone (a refresh between
        // the copy and the delete would have counted both).
        for statement in [
            "DELETE FROM cases_store WHERE customer_key IN {customers:Array(String)}",
            "DELETE FROM customers_store WHERE customer_key IN {customers:Array(String)}",
            "DELETE FROM analytics_dirty WHERE customer_key IN {customers:Array(String)}",
            "DELETE FROM analytics_refresh_batch WHERE customer_key IN {customers:Array(String)}",
        ] {
            self.client
                .query(statement)
                .param("customers", &customers)
                .execute()
                .await?;
        }
        self.client
            .query("INSERT INTO analytics_dirty (customer_key) SELECT arrayJoin({tokens:Array(String)})")
            .param("tokens", &tokens)
            .execute()
            .await?;
        let applied_at = TimestampMicros::now().as_unix_micros();
        let mut insert = self.client.insert::<AuditRow<'_>>("erasure_audit").await?;
        for (request, counts) in requests.iter().zip(&erased) {
            insert
                .write(&AuditRow {
                    request_id: &request.request_id,
                    requested_at: request.requested_at.as_unix_micros(),
                    requested_by: &request.requested_by,
                    pass: pass.as_str(),
                    applied_at,
                    events_rows: counts.events,
                    orders_rows: counts.orders,
                    customers_rows: counts.customers,
                })
                .await?;
        }
        insert.end().await?;
        Ok(erased)
    }
}

/// The sink's erasure task: reads requests, applies them, commits them.
pub struct Eraser {
    consumer: StreamConsumer,
    producer: FutureProducer,
    topic: Arc<str>,
    dead_letter_topic: String,
    max_record_bytes: usize,
    decoder: RecordDecoder<ErasureRequest, WriterSchemas>,
    applier: Applier,
    metrics: SinkMetrics,
    settle: Duration,
}

/// One request read, with where it came from.
struct Read {
    record: InputRecord,
    request: Option<ErasureRequest>,
}

impl Eraser {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kafka: &KafkaArgs,
        group_id: &str,
        topic: &str,
        dead_letter_topic: &str,
        schemas: WriterSchemas,
        applier: Applier,
        metrics: SinkMetrics,
        args: &ErasureArgs,
    ) -> anyhow::Result<Self> {
        let mut config = kafka.consumer_config(&format!("{group_id}-erasure"));
        // The consumer is not polled while a batch is applied and settles (a minute or more):
        // librdkafka would otherwise take it out of the group after 5 minutes without a poll.
        if config.get("max.poll.interval.ms").is_none() {
            config.set("max.poll.interval.ms", "3600000");
        }
        let consumer: StreamConsumer = config.create()?;
        Ok(Self {
            consumer,
            producer: kafka.producer_config().create()?,
            topic: Arc::from(topic),
            dead_letter_topic: dead_letter_topic.to_string(),
            max_record_bytes: kafka.effective_max_record_bytes()?,
            decoder: RecordDecoder::new(schemas),
            applier,
            metrics,
            settle: Duration::from_secs(args.settle_secs),
        })
    }

    /// Until the stage stops: a request is committed only once both its passes are done.
    pub async fn run(mut self, context: StageContext) -> anyhow::Result<()> {
        // A topic not created yet is waited for, as enrich waits for its reference topics.
        let consumer = &self.consumer;
        let topic = &*self.topic;
        let found = until_ok(
            &context,
            ErrorKind::TopicUnavailable,
            "reading the erasure-request topic's metadata",
            || async move {
                let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
                if metadata
                    .topics()
                    .first()
                    .is_none_or(|topic| topic.partitions().is_empty())
                {
                    anyhow::bail!(
                        "topic {topic} does not exist; create it with `boomerang topics create`"
                    );
                }
                Ok(())
            },
        )
        .await;
        if found.is_none() {
            return Ok(());
        }
        self.consumer.subscribe(&[topic])?;
        loop {
            let Some(batch) = self.next_batch(&context).await else {
                return Ok(());
            };
            let mut reads = Vec::with_capacity(batch.len());
            for record in batch {
                let Some(read) = self.decode(record, &context).await else {
                    return Ok(());
                };
                reads.push(read);
            }
            for pass in [Pass::First, Pass::Settled] {
                if pass == Pass::Settled {
                    tokio::select! {
                        () = tokio::time::sleep(self.settle) => {}
                        () = context.shutdown.cancelled() => return Ok(()),
                    }
                }
                let requests: Vec<&ErasureRequest> = reads
                    .iter()
                    .filter_map(|read| read.request.as_ref())
                    .collect();
                if requests.is_empty() {
                    continue;
                }
                let applier = &self.applier;
                let requests = &requests;
                let Some(erased) = until_ok(
                    &context,
                    ErrorKind::ClickhouseUnavailable,
                    "applying erasure requests",
                    || applier.apply_all(requests, pass),
                )
                .await
                else {
                    return Ok(());
                };
                for (request, erased) in requests.iter().zip(erased) {
                    self.metrics.count_erasure(pass, erased);
                    tracing::info!(
                        request_id = %request.request_id,
                        pass = pass.as_str(),
                        events = erased.events,
                        orders = erased.orders,
                        customers = erased.customers,
                        "erasure request applied"
                    );
                }
            }
            self.commit(&reads, &context).await;
        }
    }

    /// The next requests: waits for one, then takes what else is there at once.
    async fn next_batch(&self, context: &StageContext) -> Option<Vec<InputRecord>> {
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            let wait = if batch.is_empty() {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(200)
            };
            tokio::select! {
                () = context.shutdown.cancelled() => return None,
                received = tokio::time::timeout(wait, self.consumer.recv()) => match received {
                    Ok(Ok(message)) => batch.push(InputRecord::of(&message, self.topic.clone())),
                    Ok(Err(error)) => {
                        context.metrics.errors().count(ErrorKind::ConsumeFailed);
                        tracing::warn!(error = %error, "erasure consumer error");
                    }
                    Err(_elapsed) if batch.is_empty() => {}
                    Err(_elapsed) => break,
                },
            }
        }
        Some(batch)
    }

    /// The request in `record`, or its dead letter sent; `None` if the stage stopped first.
    async fn decode(&mut self, record: InputRecord, context: &StageContext) -> Option<Read> {
        let rejection = loop {
            match self.decoder.decode(record.value()).await {
                Ok(decoded) => match decoded.value.problem() {
                    None => {
                        return Some(Read {
                            record,
                            request: Some(decoded.value),
                        });
                    }
                    Some(problem) => {
                        break Rejection::new(DeadLetterKind::InvalidErasureRequest, problem)
                            .with_schema_id(decoded.schema_id);
                    }
                },
                Err(DecodeFailure::Rejected(rejection)) => break rejection,
                Err(DecodeFailure::Retry(error)) => {
                    context
                        .metrics
                        .errors()
                        .count(ErrorKind::SchemaRegistryUnavailable);
                    tracing::warn!(error = %error, "reading an erasure request; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = context.shutdown.cancelled() => return None,
                    }
                }
            }
        };
        tracing::warn!(
            error_kind = %rejection.error_kind,
            offset = record.offset,
            "erasure request dead-lettered: {}",
            rejection.message
        );
        let failed_at_ms = TimestampMicros::now().as_unix_micros() / 1_000;
        let letter = dead_letter::record(
            "sink",
            &self.dead_letter_topic,
            &record,
            &rejection,
            failed_at_ms,
            self.max_record_bytes,
        );
        let producer = &self.producer;
        let sent = until_ok(
            context,
            ErrorKind::ProduceFailed,
            "dead-lettering an erasure request",
            || async {
                let mut headers = OwnedHeaders::new_with_capacity(letter.headers.len());
                for (key, value) in letter.headers.iter() {
                    headers = headers.insert(Header { key, value });
                }
                let mut out: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&letter.topic).headers(headers);
                if let Some(key) = &letter.key {
                    out = out.key(key);
                }
                if let Some(value) = &letter.value {
                    out = out.payload(value);
                }
                producer
                    .send(out, Duration::from_secs(30))
                    .await
                    .map_err(|(error, _)| error)
            },
        )
        .await;
        sent?;
        self.metrics.erasure_requests_rejected.inc();
        Some(Read {
            record,
            request: None,
        })
    }

    async fn commit(&self, reads: &[Read], context: &StageContext) {
        let mut offsets = TopicPartitionList::new();
        for read in reads {
            // Later records of a partition come later in the batch: the last one wins.
            let _ = offsets.add_partition_offset(
                &read.record.topic,
                read.record.partition,
                Offset::Offset(read.record.offset + 1),
            );
        }
        // A commit that fails leaves the requests to be applied again: harmless.
        if let Err(error) = self.consumer.commit(&offsets, CommitMode::Sync) {
            context.metrics.errors().count(ErrorKind::CommitFailed);
            tracing::warn!(error = %error, "committing erasure requests");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token the sink computes (for a customer's own key) is ClickHouse's: checked against
    /// the value ClickHouse 26.9 gave for `concat('erased_', lower(hex(substring(SHA256(
    /// concat('salt', 'a')), 1, 16))))`.
    #[test]
    fn tokens_are_computed_as_clickhouse_computes_them() {
        assert_eq!(
            token_of("salt", "a"),
            "erased_c48e22d109fbdc9ea9d09115591b1613"
        );
    }

    #[test]
    fn every_identifier_is_tokened_and_every_table_is_covered() {
        let tables = TableErasure::all();
        let names: Vec<_> = tables.iter().map(|table| table.table).collect();
        assert_eq!(names, ["post_purchase_events", "orders", "customers"]);
        let events = &tables[0].copy;
        for identifier in [
            "idempotency_key",
            "event_id",
            "case_id",
            "order_id",
            "order_line_id",
            "customer_key",
        ] {
            assert!(
                events.contains(&format!("{ROW_SALT}, {identifier})")),
                "{identifier} is not tokened: {events}"
            );
        }
        assert!(tables[1].copy.contains("arrayMap(line_id"));
        for table in &tables {
            assert!(
                table
                    .delete
                    .ends_with("WHERE customer_key IN {customers:Array(String)}")
            );
        }
    }
}
