//! Ingest's in-process path per event: decode (Confluent frame + Avro) → validate →
//! de-duplicate → encode the validated record, through the same `IngestProcessor` the binary
//! runs, with no Kafka and the writer schema already known. Target: ≥ 250k events/s on one core.
//!
//! cargo bench -p boomerang-benches --bench ingest_path

use boomerang_benches::harness::{CurrentSchemaOnly, SCHEMA_ID};
use boomerang_ingest::processor::IngestMetrics;
use boomerang_ingest::restore::NoHistory;
use boomerang_runtime::metrics::Metrics;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use boomerang_ingest::processor::{IngestProcessor, IngestSettings};
use boomerang_ingest::validate::Rules;
use boomerang_runtime::stage_loop::{InputRecord, Outcome, Processor};
use boomerang_runtime::wire;
use boomerang_schemas::codec;
use boomerang_schemas::{PostPurchaseEvent, TimestampMicros};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const EVENTS: usize = 10_000;

fn raw_records() -> Vec<InputRecord> {
    let now = TimestampMicros::now();
    (0..EVENTS)
        .map(|n| {
            let event = PostPurchaseEvent {
                customer_id: format!("cus-{:08}", n % 5_000),
                sku: "SKU-APP-0042-M".into(),
                attributes: BTreeMap::from([("portal_version".into(), "4.2".into())]),
                ..boomerang_testkit::samples::refund_event(n, now)
            };
            let mut value = Vec::new();
            wire::start_frame(SCHEMA_ID, &mut value);
            codec::encode_into(&event, &mut value).expect("encode");
            InputRecord::new(
                "raw".into(),
                0,
                n as i64,
                Some(event.order_id.as_bytes()),
                Some(&value),
            )
            .with_timestamp_ms(Some(now.as_unix_millis()))
        })
        .collect()
}

fn processor(runtime: &tokio::runtime::Runtime) -> IngestProcessor<CurrentSchemaOnly> {
    let mut processor = IngestProcessor::new(
        CurrentSchemaOnly,
        IngestSettings {
            validated_topic: "validated".into(),
            validated_schema_id: SCHEMA_ID,
            rules: Rules::default(),
            dedup_window: Duration::from_secs(7 * 24 * 3600),
            dedup_max_keys: 10_000_000,
            headers: boomerang_ingest::publish::ValidatedHeaders::default(),
        },
        NoHistory,
        IngestMetrics::register(&Metrics::for_tests()).expect("metrics"),
    );
    runtime
        .block_on(processor.assign(&[("raw".into(), 0)]))
        .expect("assign");
    processor
}

fn ingest_path(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let records = raw_records();
    let mut group = criterion.benchmark_group("ingest_path");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("first_seen_events", |bench| {
        bench.iter_batched(
            || processor(&runtime),
            |mut processor| {
                runtime.block_on(async {
                    for record in &records {
                        let outcome = processor.process(record).await.expect("process");
                        debug_assert!(matches!(outcome, Outcome::Emit(_)));
                        black_box(outcome);
                    }
                })
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("duplicate_events", |bench| {
        let mut processor = processor(&runtime);
        runtime.block_on(async {
            for record in &records {
                processor.process(record).await.expect("process");
            }
        });
        bench.iter(|| {
            runtime.block_on(async {
                for record in &records {
                    let outcome = processor.process(record).await.expect("process");
                    debug_assert!(matches!(outcome, Outcome::Deduplicated));
                    black_box(outcome);
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, ingest_path);
criterion_main!(benches);
