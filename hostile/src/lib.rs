//! Hostile input: what each fuzz target checks, as a plain function of arbitrary bytes. The
//! cargo-fuzz targets in `fuzz/` call these, and `tests/regressions.rs` replays every committed
//! seed and every crash input through them in the ordinary test suite, so a fixed crash stays
//! fixed.
//!
//! Every check is: the code under test never panics, hangs or allocates without bound on any
//! input; and where two implementations of one thing exist, they agree.
//!
//! | target | what it runs |
//! | --- | --- |
//! | `frame` | the Confluent frame parser |
//! | `event_codec`, `enriched_codec` | the hand-written decoders of the two records on every event's path, differentially against apache-avro on the same bytes |
//! | `event_previous_schema` | decoding data a version-1 producer wrote, resolved to the current schema |
//! | `reference_records` | customer and order records as enrich's reference loaders decode and store them |
//! | `validate_event` | ingest's rules on any event the decoder accepts |
//! | `sink_rows` | the sink's row building from any enriched event (read in place and decoded, alike), order or customer the decoder accepts |

use std::fmt::Debug;
use std::future::Future;
use std::sync::LazyLock;

use apache_avro::Schema;
use boomerang_enrich::tables::{ReferenceTables, ref_key};
use boomerang_runtime::decode::{DecodeFailure, RecordDecoder, WriterSchemaSource};
use boomerang_runtime::pseudonym::{PseudonymCache, Pseudonymiser};
use boomerang_runtime::registry::LookupError;
use boomerang_schemas::codec::{self, AvroRecord};
use boomerang_schemas::wire::{self, FrameError};
use boomerang_schemas::{
    Customer, EnrichedEventRef, EnrichedPostPurchaseEvent, EventDatum, EventRef, Order,
    PostPurchaseEvent, ResolvingReader, SchemaKind, TimestampMicros,
};
use boomerang_sink::rows::{CustomerRow, EventRow, OrderRow, Source};

/// One target's checks.
pub type Check = fn(&[u8]);

/// The targets by name, for the regression tests.
pub const TARGETS: [(&str, Check); 7] = [
    ("frame", frame),
    ("event_codec", event_codec),
    ("enriched_codec", enriched_codec),
    ("event_previous_schema", event_previous_schema),
    ("reference_records", reference_records),
    ("validate_event", validate_event),
    ("sink_rows", sink_rows),
];

/// The frame parser splits exactly what it was given, and names each failure truly.
pub fn frame(data: &[u8]) {
    match wire::parse(data) {
        Ok((schema_id, datum)) => {
            let mut framed = Vec::with_capacity(data.len());
            wire::start_frame(schema_id, &mut framed);
            framed.extend_from_slice(datum);
            assert!(framed == data, "a parsed frame puts back together");
        }
        Err(FrameError::Empty) => assert!(data.is_empty()),
        Err(FrameError::BadMagicByte { found }) => {
            assert!(found != wire::MAGIC_BYTE && data.first() == Some(&found));
        }
        Err(FrameError::Truncated { length }) => {
            assert!(length == data.len() && length < wire::HEADER_BYTES);
        }
    }
}

/// The hand-written decoder and apache-avro accept the same bytes, with equal values; what
/// either accepts encodes back to bytes both read as the same value.
fn differential<T: AvroRecord + PartialEq + Debug>(data: &[u8]) {
    let specific = codec::decode::<T>(data);
    let generic = codec::decode_generic::<T>(data);
    match (&specific, &generic) {
        (Ok(specific), Ok(generic)) => assert_eq!(specific, generic, "both decoders accept"),
        (Err(_), Err(_)) => return,
        (specific, generic) => panic!(
            "the decoders disagree: hand-written {:?}, apache-avro {:?}",
            specific.as_ref().err(),
            generic.as_ref().err()
        ),
    }
    let Ok(value) = specific else { return };
    let encoded = codec::encode(&value).expect("a decoded value encodes");
    let mut generic_encoded = Vec::new();
    codec::encode_generic_into(&value, &mut generic_encoded).expect("apache-avro encodes it");
    assert!(
        encoded == generic_encoded,
        "both encoders write the same bytes"
    );
    assert_eq!(codec::decode::<T>(&encoded).expect("re-decodes"), value);
}

pub fn event_codec(data: &[u8]) {
    differential::<PostPurchaseEvent>(data);
}

pub fn enriched_codec(data: &[u8]) {
    differential::<EnrichedPostPurchaseEvent>(data);
}

static VERSION_1: LazyLock<Schema> = LazyLock::new(|| {
    // Invariant: the catalogued history parses (tested in boomerang-schemas).
    Schema::parse_str(SchemaKind::PostPurchaseEvent.history()[0]).expect("version 1 parses")
});

/// Data a version-1 producer wrote: resolved without panicking, and what resolves is an event
/// the current codec round-trips.
pub fn event_previous_schema(data: &[u8]) {
    let reader = ResolvingReader::<PostPurchaseEvent>::new(&VERSION_1).expect("version 1 resolves");
    if let Ok(event) = reader.decode(data) {
        let encoded = codec::encode(&event).expect("a resolved event encodes");
        assert_eq!(
            codec::decode::<PostPurchaseEvent>(&encoded).ok(),
            Some(event)
        );
    }
}

/// Writer schemas as a registry would serve them: 1 customer, 2 order.
#[derive(Clone, Copy)]
struct FixedSchemas;

impl WriterSchemaSource for FixedSchemas {
    fn writer_schema(
        &mut self,
        id: u32,
    ) -> impl Future<Output = Result<&'static Schema, LookupError>> + Send {
        let schema = match id {
            1 => Ok(SchemaKind::Customer.schema()),
            2 => Ok(SchemaKind::Order.schema()),
            _ => Err(LookupError::UnknownId(id)),
        };
        std::future::ready(schema)
    }
}

/// Splits the fuzzer's bytes into a selector and a framed record value: the first byte picks
/// what the value claims to be, so the fuzzer need not find a valid frame header first.
fn selected_frame(data: &[u8], schema_ids: &[u32]) -> Option<(usize, Vec<u8>)> {
    let (&selector, datum) = data.split_first()?;
    let which = usize::from(selector) % schema_ids.len();
    let mut value = Vec::with_capacity(datum.len() + wire::HEADER_BYTES);
    wire::start_frame(schema_ids[which], &mut value);
    value.extend_from_slice(datum);
    Some((which, value))
}

fn decoded<T: AvroRecord>(value: &[u8]) -> Option<T> {
    let mut decoder = RecordDecoder::<T, _>::new(FixedSchemas);
    match futures::executor::block_on(decoder.decode(Some(value))) {
        Ok(decoded) => Some(decoded.value),
        Err(DecodeFailure::Rejected(_)) => None,
        Err(DecodeFailure::Retry(error)) => panic!("a fixed schema source never retries: {error}"),
    }
}

/// Customer and order records as enrich's loaders take them: framed, decoded through the
/// stage's decoder, then stored in the reference tables and read back.
pub fn reference_records(data: &[u8]) {
    let Some((which, value)) = selected_frame(data, &[1, 2]) else {
        return;
    };
    let mut tables = ReferenceTables::default();
    if which == 0 {
        if let Some(customer) = decoded::<Customer>(&value) {
            let key = ref_key(customer.customer_id.as_bytes());
            tables.upsert_customer(key, &customer);
            assert!(tables.customer(key).is_some());
        }
    } else if let Some(order) = decoded::<Order>(&value) {
        let key = ref_key(order.order_id.as_bytes());
        tables.upsert_order(key, &order);
        let stored = tables.order(key).expect("the order is stored");
        for line in &order.lines {
            let _ = stored.line(&line.order_line_id);
        }
    }
}

/// Ingest's rules on any event the decoder accepts: an answer, never a panic. Ingest reads an
/// event of the current schema in place and validates that: both reads accept the same bytes,
/// read the same fields, and give the same verdict wherever ingest takes the in-place path.
pub fn validate_event(data: &[u8]) {
    let decoded = codec::decode::<PostPurchaseEvent>(data);
    let in_place = EventDatum::read(data);
    assert_eq!(
        decoded.is_ok(),
        in_place.is_ok(),
        "ingest's two reads accept the same bytes"
    );
    let (Ok(event), Ok(read)) = (decoded, in_place) else {
        return;
    };
    assert_eq!(read.event, EventRef::of(&event));
    let now = TimestampMicros::from_unix_micros(1_800_000_000_000_000);
    let rules = boomerang_ingest::validate::Rules::default();
    let verdict = |event: &EventRef<'_>, attributes: usize| {
        boomerang_ingest::validate::validate(event, attributes, now, &rules)
            .map_err(|rejection| (rejection.error_kind, rejection.message))
    };
    let owned = verdict(&EventRef::of(&event), event.attributes.len());
    // Over the limit as written, ingest decodes and counts again (a repeated key counts once).
    if read.attribute_entries <= rules.max_attributes {
        assert_eq!(verdict(&read.event, read.attribute_entries), owned);
    }
}

static PSEUDONYMISER: LazyLock<Pseudonymiser> = LazyLock::new(|| {
    // Invariant: the key is longer than the 16-byte minimum.
    Pseudonymiser::new(b"fuzzing-pseudonym-key-not-a-secret").expect("a long enough key")
});

/// The sink's rows from any enriched event, order or customer the decoder accepts.
pub fn sink_rows(data: &[u8]) {
    let Some((&selector, datum)) = data.split_first() else {
        return;
    };
    let topic = std::sync::Arc::from("fuzz");
    let source = Source {
        topic: &topic,
        partition: 0,
        offset: 0,
    };
    let pseudonymiser = &*PSEUDONYMISER;
    match selector % 3 {
        0 => {
            // The sink reads an event of the current schema in place: it must accept what
            // the decoder accepts, and build the same row from it.
            let decoded = codec::decode::<EnrichedPostPurchaseEvent>(datum);
            let in_place = EnrichedEventRef::read(datum);
            assert_eq!(decoded.is_ok(), in_place.is_ok());
            if let (Ok(enriched), Ok(in_place)) = (decoded, in_place) {
                // The second row's pseudonym comes from the cache the first one filled.
                let mut pseudonyms = PseudonymCache::new(pseudonymiser.clone());
                let row = EventRow::new(&EnrichedEventRef::of(&enriched), &source, &mut pseudonyms);
                assert!(!row.customer_key.is_empty());
                assert_eq!(row, EventRow::new(&in_place, &source, &mut pseudonyms));
            }
        }
        1 => {
            if let Ok(order) = codec::decode::<Order>(datum) {
                let _ = OrderRow::new(order, &source, pseudonymiser);
            }
        }
        _ => {
            if let Ok(customer) = codec::decode::<Customer>(datum) {
                let _ = CustomerRow::new(customer, &source, pseudonymiser);
            }
        }
    }
}
