//! The sink's own work per enriched event, before the insert: from the record's datum to the
//! ClickHouse row (and the row dropped, as after its insert). Decoding into an owned event
//! first, as the sink did for every event until 2026-12-02 and still does for an earlier schema
//! version, against reading the current schema's datum in place
//! (`boomerang_schemas::borrowed`). Both build the same row (`schemas/tests/specific_codec.rs`
//! and the `sink_rows` fuzz target hold them to it).
//!
//! Then the insert's side: 50k rows appended to one Native block (`sink/src/native.rs`), and a
//! whole batch from datums to the insert's pieces, the old way and the new.
//!
//! cargo bench -p boomerang-benches --bench sink_rows

use std::hint::black_box;
use std::sync::Arc;

use boomerang_benches::reference_world::enriched;
use boomerang_runtime::pseudonym::{PseudonymCache, Pseudonymiser};
use boomerang_schemas::codec::{decode, encode};
use boomerang_schemas::{EnrichedEventRef, EnrichedPostPurchaseEvent, TimestampMicros};
use boomerang_sink::native::NativeBlock;
use boomerang_sink::rows::{EventRow, EventRowRef, Source};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Distinct events, so that the rows' strings differ as in a drain.
const EVENTS: usize = 1_000;

fn sink_rows(criterion: &mut Criterion) {
    let now = TimestampMicros::from_unix_micros(1_763_000_000_000_000);
    let datums: Vec<Vec<u8>> = (0..EVENTS)
        .map(|n| encode(&enriched(n, now)).expect("encode"))
        .collect();
    let pseudonymiser = Pseudonymiser::new(b"benchmark-pseudonym-key").expect("key");
    let mut pseudonyms = PseudonymCache::new(pseudonymiser.clone());
    let topic: Arc<str> = Arc::from("enriched");
    let source = |offset: usize| Source {
        topic: &topic,
        partition: 0,
        offset: offset as i64,
    };

    // Every event's customer is pseudonymised: HMAC-SHA256 each time, against the sink's cache
    // (since 2026-12-04), over the 20k customers of a `pipeline_e2e` drain.
    let customers: Vec<String> = (0..20_000).map(|n| format!("cus-{n:06}")).collect();
    let mut group = criterion.benchmark_group("sink_pseudonym");
    group.throughput(Throughput::Elements(customers.len() as u64));
    group.bench_function("hmac_sha256_each", |bench| {
        bench.iter(|| {
            for customer in &customers {
                black_box(pseudonymiser.pseudonym(black_box(customer)));
            }
        })
    });
    group.bench_function("cached", |bench| {
        bench.iter(|| {
            for customer in &customers {
                black_box(pseudonyms.pseudonym(black_box(customer)));
            }
        })
    });
    group.finish();

    let mut group = criterion.benchmark_group("sink_event_row");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("decode_owned_then_row", |bench| {
        bench.iter(|| {
            for (offset, datum) in datums.iter().enumerate() {
                let decoded =
                    decode::<EnrichedPostPurchaseEvent>(black_box(datum)).expect("decode");
                let row = EventRow::new(
                    &EnrichedEventRef::of(&decoded),
                    &source(offset),
                    &mut pseudonyms,
                );
                black_box(row);
            }
        })
    });
    group.bench_function("read_in_place_then_row", |bench| {
        bench.iter(|| {
            for (offset, datum) in datums.iter().enumerate() {
                let in_place = EnrichedEventRef::read(black_box(datum)).expect("read");
                let row = EventRow::new(&in_place, &source(offset), &mut pseudonyms);
                black_box(row);
            }
        })
    });
    group.finish();

    // The insert's side: a batch's rows appended to one Native block, then its pieces.
    let rows: Vec<EventRow> = (0..BLOCK_ROWS)
        .map(|n| {
            let datum = &datums[n % EVENTS];
            let in_place = EnrichedEventRef::read(datum).expect("read");
            EventRow::new(&in_place, &source(n), &mut pseudonyms)
        })
        .collect();
    let mut group = criterion.benchmark_group("sink_native_block");
    group.throughput(Throughput::Elements(BLOCK_ROWS as u64));
    group.sample_size(20);
    group.bench_function("append_rows_then_finish", |bench| {
        bench.iter(|| {
            let mut block = NativeBlock::with_rows(rows.len());
            for row in &rows {
                row.append_to(&mut block);
            }
            black_box(block.finish().expect("one shape"))
        })
    });
    group.finish();

    // A whole batch, from the records' datums to the insert's pieces: as the sink did until
    // 2026-12-04 (an owned row per event, kept, then appended to a block at insert time), and
    // as it does now (each event's row appended to the batch's block as it is processed, the
    // block reused from batch to batch).
    let mut group = criterion.benchmark_group("sink_batch");
    group.throughput(Throughput::Elements(BLOCK_ROWS as u64));
    group.sample_size(20);
    let mut kept: Vec<EventRow> = Vec::with_capacity(BLOCK_ROWS);
    group.bench_function("owned_rows_then_block", |bench| {
        bench.iter(|| {
            kept.clear();
            for n in 0..BLOCK_ROWS {
                let in_place =
                    EnrichedEventRef::read(black_box(&datums[n % EVENTS])).expect("read");
                kept.push(EventRow::new(&in_place, &source(n), &mut pseudonyms));
            }
            let mut block = NativeBlock::with_rows(kept.len());
            for row in &kept {
                row.append_to(&mut block);
            }
            black_box(block.finish().expect("one shape"))
        })
    });
    let mut block = Arc::new(NativeBlock::with_rows(BLOCK_ROWS));
    group.bench_function("appended_as_processed", |bench| {
        bench.iter(|| {
            let filling = Arc::make_mut(&mut block);
            filling.clear();
            for n in 0..BLOCK_ROWS {
                let in_place =
                    EnrichedEventRef::read(black_box(&datums[n % EVENTS])).expect("read");
                EventRowRef::new(&in_place, &source(n), &mut pseudonyms).append_to(filling);
            }
            black_box(block.pieces().expect("one shape"))
        })
    });
    group.finish();
}

/// Rows per block, as in a full batch of the drain.
const BLOCK_ROWS: usize = 50_000;

criterion_group!(benches, sink_rows);
criterion_main!(benches);
