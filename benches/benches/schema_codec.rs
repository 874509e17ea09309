//! The Avro codec of the event model, per event: encoding, decoding data written with the
//! current schema, and decoding data written with version 1 (resolved to the current schema).
//! The baseline under ingest's decode → validate → de-dup → encode path.
//!
//! cargo bench -p boomerang-benches --bench schema_codec

use std::collections::BTreeMap;
use std::hint::black_box;

use apache_avro::Schema;
use boomerang_schemas::codec::{self, decode, decode_written_with, encode, encode_into};
use boomerang_schemas::{
    Channel, EventType, Money, Outcome, PostPurchaseEvent, ReasonCode, ResolvingReader,
    ReturnMethod, SchemaKind, TimestampMicros,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn event() -> PostPurchaseEvent {
    PostPurchaseEvent {
        event_id: "0b9d3c1e-5f7a-4a55-9b8e-2f1d0c4e6a71".into(),
        idempotency_key: "returns-portal:rma-000123456:refund-issued".into(),
        event_type: EventType::RefundIssued,
        case_id: "rma-000123456".into(),
        order_id: "ord-0009876543".into(),
        order_line_id: "ord-0009876543/2".into(),
        customer_id: "cus-00001234".into(),
        sku: "SKU-APP-0042-M".into(),
        quantity: 1,
        reason: Some(ReasonCode::TooLarge),
        reason_text: None,
        amount: Some(Money::new(4_999, "EUR")),
        method: Some(ReturnMethod::Mail),
        channel: Channel::Web,
        outcome: Outcome::Completed,
        occurred_at: TimestampMicros::from_unix_micros(1_763_000_000_000_000),
        source_system: "returns-portal".into(),
        replacement_sku: None,
        warranty_resolution: None,
        disposition: None,
        attributes: BTreeMap::from([("portal_version".into(), "4.2".into())]),
    }
}

fn codec(criterion: &mut Criterion) {
    let event = event();
    let datum = encode(&event).expect("encode");
    let v1 = Schema::parse_str(SchemaKind::PostPurchaseEvent.history()[0]).expect("v1 parses");
    let v1_datum = codec::encode_for_writer_schema(&event, &v1).expect("v1 datum");

    let mut group = criterion.benchmark_group("post_purchase_event");
    group.throughput(Throughput::Elements(1));
    let mut buffer = Vec::with_capacity(512);
    group.bench_function("encode", |bench| {
        bench.iter(|| {
            buffer.clear();
            encode_into(black_box(&event), &mut buffer).expect("encode");
            black_box(buffer.len())
        })
    });
    group.bench_function("encode_apache_avro_serde", |bench| {
        bench.iter(|| {
            buffer.clear();
            codec::encode_generic_into(black_box(&event), &mut buffer).expect("encode");
            black_box(buffer.len())
        })
    });
    group.bench_function("decode_current_version", |bench| {
        bench.iter(|| decode::<PostPurchaseEvent>(black_box(&datum)).expect("decode"))
    });
    group.bench_function("decode_current_version_apache_avro_serde", |bench| {
        bench
            .iter(|| codec::decode_generic::<PostPurchaseEvent>(black_box(&datum)).expect("decode"))
    });
    group.bench_function("decode_version_1_resolved", |bench| {
        bench.iter(|| {
            decode_written_with::<PostPurchaseEvent>(black_box(&v1_datum), &v1).expect("decode")
        })
    });
    let v1_reader = ResolvingReader::<PostPurchaseEvent>::new(&v1).expect("resolving reader");
    group.bench_function("decode_version_1_with_cached_reader", |bench| {
        bench.iter(|| v1_reader.decode(black_box(&v1_datum)).expect("decode"))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
