//! `boomerang erase`: files a customer's erasure request, or (`--verify`) says what is left of
//! them: rows in ClickHouse that can still be linked to them, the requests filed and applied,
//! and until when each topic may still hold their id.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use boomerang_clickhouse::ClickhouseArgs;
use boomerang_runtime::decode::{DecodeFailure, RecordDecoder};
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::pseudonym::Pseudonymiser;
use boomerang_runtime::registry::{RegistryArgs, WriterSchemas};
use boomerang_runtime::topics::TopicsArgs;
use boomerang_schemas::{ErasureRequest, SchemaKind, TimestampMicros, codec};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Debug, clap::Args)]
pub struct EraseArgs {
    /// The customer, as the CRM and the events name them.
    #[arg(long = "customer-id")]
    customer_id: String,
    /// Who files the request, for the audit (a system or a ticket, never a person's name).
    #[arg(long = "requested-by", default_value = "boomerang-cli")]
    requested_by: String,
    /// Do not file a request: say what ClickHouse and the topics still hold of the customer.
    /// Exits with 1 if a row in ClickHouse can still be linked to them.
    #[arg(long)]
    verify: bool,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    topics: TopicsArgs,
    #[command(flatten)]
    clickhouse: ClickhouseArgs,
    /// The pipeline's pseudonym key: needed by --verify only, to find the customer's rows.
    #[arg(
        long = "pseudonym-key",
        env = "BOOMERANG_PSEUDONYM_KEY",
        hide_env_values = true
    )]
    pseudonym_key: Option<String>,
}

/// `Some(problems)` with `--verify`.
pub async fn run(args: &EraseArgs) -> anyhow::Result<Option<usize>> {
    if args.verify {
        verify(args).await.map(Some)
    } else {
        file(args).await.map(|()| None)
    }
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buffer)?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

async fn file(args: &EraseArgs) -> anyhow::Result<()> {
    let request = ErasureRequest {
        request_id: format!("er-{}", random_hex(12)?),
        customer_id: args.customer_id.clone(),
        requested_at: TimestampMicros::now(),
        requested_by: args.requested_by.clone(),
        anonymisation_salt: random_hex(32)?,
    };
    let topic = &args.topics.erasure_requests;
    let settings = args.registry.settings()?;
    let schema_id = boomerang_runtime::registry::register_value_schema(
        &settings,
        topic,
        SchemaKind::ErasureRequest,
    )
    .await?;
    let value = codec::encode_framed(schema_id, &request)?;
    let producer: FutureProducer = args.kafka.producer_config().create()?;
    producer
        .send(
            FutureRecord::to(topic)
                .key(&request.customer_id)
                .payload(&value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(error, _)| error)?;
    println!(
        "erasure request {} filed on {topic}; the sink applies it and records it in erasure_audit",
        request.request_id
    );
    println!("check with: boomerang erase --verify --customer-id <id> (with the same settings)");
    Ok(())
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct RequestStatus {
    request_id: String,
    complete: bool,
    events_rows: u64,
    orders_rows: u64,
    customers_rows: u64,
}

async fn verify(args: &EraseArgs) -> anyhow::Result<usize> {
    let Some(key) = &args.pseudonym_key else {
        anyhow::bail!("--verify needs the pipeline's --pseudonym-key (BOOMERANG_PSEUDONYM_KEY)");
    };
    let pseudonymiser = Pseudonymiser::new(key.as_bytes())?;
    let pseudonym = pseudonymiser.pseudonym(&args.customer_id);
    let client = args.clickhouse.client();
    let mut linkable = 0;
    println!("ClickHouse rows that can be linked to the customer (their pseudonym or id):");
    for table in [
        "post_purchase_events",
        "orders",
        "customers",
        "cases_store",
        "customers_store",
        "analytics_dirty",
        "analytics_refresh_batch",
    ] {
        let rows: u64 = client
            .query(&format!(
                "SELECT count() FROM {table} WHERE customer_key IN ({{pseudonym:String}}, {{id:String}})"
            ))
            .param("pseudonym", &pseudonym)
            .param("id", &args.customer_id)
            .fetch_one()
            .await?;
        println!("  {table:<22} {rows}");
        linkable += usize::try_from(rows).unwrap_or(usize::MAX);
    }

    // The requests filed for this customer, from the topic (the only place the id and the
    // request meet), and what the sink's audit says of each.
    // Every request is read, whatever its record's key: enrich and the sink go by the id in it.
    let mut values = Vec::new();
    crate::topic::read_to_end(&args.kafka, &args.topics.erasure_requests, |message| {
        use rdkafka::Message;
        values.push(message.payload().map(<[u8]>::to_vec));
    })?;
    let mut decoder = RecordDecoder::<ErasureRequest, _>::new(WriterSchemas::new(&args.registry)?);
    let mut requests = Vec::new();
    for value in values {
        match decoder.decode(value.as_deref()).await {
            Ok(decoded) if decoded.value.customer_id == args.customer_id => {
                requests.push(decoded.value);
            }
            // Another customer's, or one the sink dead-lettered too.
            Ok(_) | Err(DecodeFailure::Rejected(_)) => {}
            Err(DecodeFailure::Retry(error)) => {
                anyhow::bail!("cannot read the erasure requests: {error}")
            }
        }
    }
    println!(
        "erasure requests filed for the customer: {}",
        requests.len()
    );
    let mut earliest: Option<TimestampMicros> = None;
    for request in &requests {
        earliest = Some(earliest.map_or(request.requested_at, |at| at.min(request.requested_at)));
        let status = client
            .query(
                "SELECT request_id, complete, events_rows, orders_rows, customers_rows \
                 FROM erasure_requests WHERE request_id = {id:String}",
            )
            .param("id", &request.request_id)
            .fetch_optional::<RequestStatus>()
            .await?;
        match status {
            Some(status) => println!(
                "  {} requested {}: {}, anonymised {} event, {} order and {} customer rows",
                status.request_id,
                request.requested_at,
                if status.complete {
                    "applied"
                } else {
                    "first pass applied, settling"
                },
                status.events_rows,
                status.orders_rows,
                status.customers_rows
            ),
            None => println!(
                "  {} requested {}: not applied yet",
                request.request_id, request.requested_at
            ),
        }
    }

    println!("topics that may still hold the customer's id, until their retention removes it:");
    for (topic, until) in topic_horizons(args, earliest).await? {
        println!("  {topic:<48} {until}");
    }
    if linkable > 0 {
        println!("NOT ERASED: {linkable} rows in ClickHouse can still be linked to the customer");
    } else {
        println!("erased: no row in ClickHouse can be linked to the customer");
    }
    Ok(linkable)
}

/// Kafka's default `log.retention.ms`: 7 days.
const KAFKA_DEFAULT_RETENTION_MICROS: i64 = 7 * 86_400 * 1_000_000;

/// Per topic, until when it may hold the customer's id: records are removed `retention.ms`
/// after their timestamp; a compacted topic keeps a key's latest record until the source
/// publishes a tombstone for it.
async fn topic_horizons(
    args: &EraseArgs,
    requested_at: Option<TimestampMicros>,
) -> anyhow::Result<Vec<(String, String)>> {
    let topics = [
        &args.topics.raw_events,
        &args.topics.validated_events,
        &args.topics.enriched_events,
        &args.topics.dead_letter,
        &args.topics.customers,
        &args.topics.orders,
        &args.topics.erasure_requests,
    ];
    let admin: AdminClient<DefaultClientContext> = args.kafka.client_config().create()?;
    let resources: Vec<ResourceSpecifier<'_>> = topics
        .iter()
        .map(|topic| ResourceSpecifier::Topic(topic))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let described = admin.describe_configs(&resources, &options).await?;
    let since = requested_at.unwrap_or_else(TimestampMicros::now);
    let mut horizons = Vec::new();
    for (topic, result) in topics.iter().zip(described) {
        let Ok(resource) = result else {
            horizons.push((
                (*topic).clone(),
                "unknown (the broker did not describe the topic)".to_string(),
            ));
            continue;
        };
        let configs: HashMap<String, String> = resource
            .entries
            .into_iter()
            .filter_map(|entry| entry.value.map(|value| (entry.name, value)))
            .collect();
        let compacted = configs
            .get("cleanup.policy")
            .is_some_and(|policy| policy.contains("compact"));
        let retention_ms = configs
            .get("retention.ms")
            .and_then(|value| value.parse::<i64>().ok());
        let until = if compacted
            && (*topic == &args.topics.customers || *topic == &args.topics.orders)
        {
            "its latest record per key, until the source publishes a tombstone for it (then compaction removes it)".to_string()
        } else {
            match retention_ms {
                Some(ms) if ms >= 0 => format!(
                    "records from before the request until at the latest {}",
                    TimestampMicros::from_unix_micros(
                        since
                            .as_unix_micros()
                            .saturating_add(ms.saturating_mul(1_000))
                    )
                ),
                Some(_) => "for ever (retention.ms=-1): set a retention".to_string(),
                None => format!(
                    "the broker's default retention (log.retention.ms; 7 days on Kafka: {})",
                    TimestampMicros::from_unix_micros(
                        since
                            .as_unix_micros()
                            .saturating_add(KAFKA_DEFAULT_RETENTION_MICROS)
                    )
                ),
            }
        };
        horizons.push(((*topic).clone(), until));
    }
    Ok(horizons)
}
