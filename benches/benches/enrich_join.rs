//! Enrich's in-process join path per event: decode (Confluent frame + Avro) → look the order
//! and customer up → join, drop PII, pseudonymise → encode the enriched record, through the
//! same `EnrichProcessor` the binary runs, with 1M orders and 200k customers loaded and no
//! Kafka. Target: ≥ 250k events/s on one core.
//!
//! cargo bench -p boomerang-benches --bench enrich_join

use boomerang_benches::harness::{CurrentSchemaOnly, SCHEMA_ID};
use boomerang_enrich::metrics::EnrichMetrics;
use boomerang_runtime::metrics::Metrics;
use std::hint::black_box;
use std::time::Duration;

use boomerang_benches::reference_world::{customer, event, order};
use boomerang_enrich::join::JoinSettings;
use boomerang_enrich::pending::PendingLimits;
use boomerang_enrich::processor::{EnrichProcessor, EnrichSettings};
use boomerang_enrich::publish::EnrichedHeaders;
use boomerang_enrich::reference::Arrivals;
use boomerang_enrich::tables::{SharedTables, ref_key};
use boomerang_runtime::pseudonym::Pseudonymiser;
use boomerang_runtime::stage_loop::{InputRecord, Outcome, Processor, WARM_AHEAD};
use boomerang_runtime::wire;
use boomerang_schemas::{TimestampMicros, codec};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// The binary's allocator, so the path costs what it costs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ORDERS: usize = 1_000_000;
const CUSTOMERS: usize = 200_000;
const EVENTS: usize = 10_000;

fn loaded_tables(now: TimestampMicros) -> SharedTables {
    let tables = SharedTables::default();
    {
        let mut write = tables.write();
        for n in 0..CUSTOMERS {
            let customer = customer(n);
            write.upsert_customer(ref_key(customer.customer_id.as_bytes()), &customer);
        }
        for n in 0..ORDERS {
            let order = order(n, CUSTOMERS, now);
            write.upsert_order(ref_key(order.order_id.as_bytes()), &order);
        }
    }
    tables
}

fn validated_records(now: TimestampMicros) -> Vec<InputRecord> {
    // Spread over the whole table, so lookups miss the CPU caches as they would in production.
    (0..EVENTS)
        .map(|n| {
            let event = event(n * (ORDERS / EVENTS) + 7, CUSTOMERS, now);
            let mut value = Vec::new();
            wire::start_frame(SCHEMA_ID, &mut value);
            codec::encode_into(&event, &mut value).expect("encode");
            InputRecord::new(
                "validated".into(),
                0,
                n as i64,
                Some(event.order_id.as_bytes()),
                Some(&value),
            )
            .with_timestamp_ms(Some(now.as_unix_millis()))
            .with_headers(
                [(
                    "boomerang.idempotency_key",
                    Some(event.idempotency_key.as_bytes()),
                )]
                .into_iter()
                .collect(),
            )
        })
        .collect()
}

fn join_path(criterion: &mut Criterion) {
    let now = TimestampMicros::now();
    let tables = loaded_tables(now);
    let records = validated_records(now);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let settings = EnrichSettings {
        enriched_topic: "enriched".into(),
        enriched_schema_id: 2,
        join: JoinSettings {
            return_window_days: 30,
        },
        pending: PendingLimits {
            max_events: 100_000,
            max_bytes: 1 << 30,
            max_wait: Duration::from_secs(30),
        },
        headers: EnrichedHeaders::default(),
    };
    let pseudonymiser = Pseudonymiser::new(b"benchmark-pseudonym-key").expect("key");
    let metrics = EnrichMetrics::register(&Metrics::for_tests()).expect("metrics");
    let mut group = criterion.benchmark_group("enrich_join");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("decode_join_encode_1M_orders", |bench| {
        bench.iter_batched(
            || {
                EnrichProcessor::new(
                    CurrentSchemaOnly,
                    tables.clone(),
                    Arrivals::default(),
                    settings.clone(),
                    pseudonymiser.clone(),
                    metrics.clone(),
                )
            },
            |mut processor| {
                runtime.block_on(async {
                    // As the stage loop does: each run of records warmed, then processed.
                    for upcoming in records.chunks(WARM_AHEAD) {
                        processor.warm(upcoming);
                        for record in upcoming {
                            match processor.process(record).await {
                                Ok(Outcome::Emit(outputs)) => {
                                    black_box(outputs);
                                }
                                other => panic!("not joined: {other:?}"),
                            }
                        }
                    }
                })
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, join_path);
criterion_main!(benches);
