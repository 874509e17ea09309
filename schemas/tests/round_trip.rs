//! The Rust model and the `.avsc` files agree: every type round-trips through its schema, data
//! written with an earlier schema version decodes into the current model, and the schema
//! evolution rules (BACKWARD compatibility) hold.

use std::collections::BTreeMap;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use boomerang_schemas::codec::{decode, decode_written_with, encode, encode_for_writer_schema};
use boomerang_schemas::{
    Channel, Customer, DedupFacts, Disposition, EnrichedPostPurchaseEvent, EventType, Money, Order,
    OrderLine, Outcome, PostPurchaseEvent, ReasonCode, ReturnMethod, SchemaKind, TimestampMicros,
    WarrantyResolution,
};
use proptest::prelude::*;

fn full_event() -> PostPurchaseEvent {
    PostPurchaseEvent {
        event_id: "evt-1".into(),
        idempotency_key: "portal:rma-7:refund".into(),
        event_type: EventType::RefundIssued,
        case_id: "rma-7".into(),
        order_id: "ord-1".into(),
        order_line_id: "ord-1/1".into(),
        customer_id: "cus-1".into(),
        sku: "SKU-RED-M".into(),
        quantity: 2,
        reason: Some(ReasonCode::TooLarge),
        reason_text: Some("sleeves too long".into()),
        amount: Some(Money::new(4_998, "EUR")),
        method: Some(ReturnMethod::DropOff),
        channel: Channel::MobileApp,
        outcome: Outcome::Completed,
        occurred_at: TimestampMicros::from_unix_micros(1_763_000_000_123_456),
        source_system: "returns-portal".into(),
        replacement_sku: Some("SKU-RED-S".into()),
        warranty_resolution: Some(WarrantyResolution::Refund),
        disposition: Some(Disposition::Refurbish),
        attributes: BTreeMap::from([("portal_version".into(), "4.2".into())]),
    }
}

fn minimal_event() -> PostPurchaseEvent {
    PostPurchaseEvent {
        reason: None,
        reason_text: None,
        amount: None,
        method: None,
        replacement_sku: None,
        warranty_resolution: None,
        disposition: None,
        attributes: BTreeMap::new(),
        event_type: EventType::ReturnRequested,
        outcome: Outcome::Pending,
        ..full_event()
    }
}

fn customer() -> Customer {
    Customer {
        customer_id: "cus-1".into(),
        email: Some("ada@example.com".into()),
        full_name: None,
        segment: "vip".into(),
        region: "emea".into(),
        country: "GB".into(),
        analytics_consent: false,
        updated_at: TimestampMicros::from_unix_micros(1_700_000_000_000_000),
    }
}

fn order() -> Order {
    Order {
        order_id: "ord-1".into(),
        customer_id: "cus-1".into(),
        channel: Channel::Web,
        currency: "EUR".into(),
        placed_at: TimestampMicros::from_unix_micros(1_762_000_000_000_000),
        delivered_at: Some(TimestampMicros::from_unix_micros(1_762_300_000_000_000)),
        lines: vec![
            OrderLine {
                order_line_id: "ord-1/1".into(),
                sku: "SKU-RED-M".into(),
                category: "apparel".into(),
                quantity: 2,
                unit_price_minor: 2_499,
            },
            OrderLine {
                order_line_id: "ord-1/2".into(),
                sku: "SKU-USB-C".into(),
                category: "electronics".into(),
                quantity: 1,
                unit_price_minor: 1_999,
            },
        ],
        updated_at: TimestampMicros::from_unix_micros(1_762_300_000_000_001),
    }
}

fn enriched() -> EnrichedPostPurchaseEvent {
    EnrichedPostPurchaseEvent {
        event: PostPurchaseEvent {
            reason_text: None,
            ..full_event()
        },
        customer_missing: false,
        order_missing: false,
        order_line_missing: false,
        customer_pseudonymised: true,
        customer_segment: Some("vip".into()),
        customer_region: Some("emea".into()),
        order_channel: Some(Channel::Web),
        order_placed_at: Some(TimestampMicros::from_unix_micros(1_762_000_000_000_000)),
        order_delivered_at: None,
        line_category: Some("apparel".into()),
        line_unit_price: Some(Money::new(2_499, "EUR")),
        days_since_delivery: Some(8),
        within_return_window: Some(true),
        enriched_at: TimestampMicros::from_unix_micros(1_763_000_000_500_000),
    }
}

/// Decodes with no Rust types involved: what any Avro reader holding the .avsc would see.
fn generic_value(kind: SchemaKind, datum: &[u8]) -> Value {
    GenericDatumReader::builder(kind.schema())
        .build()
        .expect("generic reader")
        .read_value(&mut &datum[..])
        .expect("generic decode")
}

/// Decoding the bytes generically (no Rust types) must see every schema field: this proves the
/// bytes follow the .avsc, not merely that the Rust types agree with themselves.
fn assert_generic_record_has_every_field(kind: SchemaKind, datum: &[u8]) {
    let Value::Record(fields) = generic_value(kind, datum) else {
        panic!("{kind:?} did not decode to a record");
    };
    let Schema::Record(record) = kind.schema() else {
        panic!("{kind:?} schema is not a record");
    };
    let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
    let expected: Vec<&str> = record
        .fields
        .iter()
        .map(|field| field.name.as_str())
        .collect();
    assert_eq!(names, expected);
}

#[test]
fn event_round_trips_with_every_field_set() {
    let event = full_event();
    let datum = encode(&event).expect("encode");
    assert_generic_record_has_every_field(SchemaKind::PostPurchaseEvent, &datum);
    assert_eq!(decode::<PostPurchaseEvent>(&datum).expect("decode"), event);
}

#[test]
fn event_round_trips_with_every_optional_field_empty() {
    let event = minimal_event();
    let datum = encode(&event).expect("encode");
    assert_eq!(decode::<PostPurchaseEvent>(&datum).expect("decode"), event);
}

#[test]
fn every_event_type_round_trips_by_its_symbol() {
    for event_type in EventType::ALL {
        let event = PostPurchaseEvent {
            event_type,
            ..minimal_event()
        };
        let datum = encode(&event).expect("encode");
        let Value::Record(fields) = generic_value(SchemaKind::PostPurchaseEvent, &datum) else {
            panic!("not a record");
        };
        let (_, Value::Enum(_, symbol)) = &fields[2] else {
            panic!("event_type is not an enum");
        };
        assert_eq!(symbol, event_type.symbol());
        assert_eq!(
            decode::<PostPurchaseEvent>(&datum)
                .expect("decode")
                .event_type,
            event_type
        );
    }
}

#[test]
fn reference_records_and_enriched_events_round_trip() {
    let customer = customer();
    let datum = encode(&customer).expect("encode customer");
    assert_generic_record_has_every_field(SchemaKind::Customer, &datum);
    assert_eq!(
        decode::<Customer>(&datum).expect("decode customer"),
        customer
    );

    let order = order();
    let datum = encode(&order).expect("encode order");
    assert_generic_record_has_every_field(SchemaKind::Order, &datum);
    assert_eq!(decode::<Order>(&datum).expect("decode order"), order);

    let enriched = enriched();
    let datum = encode(&enriched).expect("encode enriched");
    assert_generic_record_has_every_field(SchemaKind::EnrichedPostPurchaseEvent, &datum);
    assert_eq!(
        decode::<EnrichedPostPurchaseEvent>(&datum).expect("decode enriched"),
        enriched
    );
}

#[test]
fn truncated_and_padded_datums_are_errors() {
    let datum = encode(&full_event()).expect("encode");
    assert!(decode::<PostPurchaseEvent>(&datum[..datum.len() - 3]).is_err());
    let mut padded = datum.clone();
    padded.push(0);
    let error = decode::<PostPurchaseEvent>(&padded).expect_err("trailing byte");
    assert_eq!(
        error.to_string(),
        "1 bytes follow the boomerang.PostPurchaseEvent datum"
    );
}

#[test]
fn an_event_written_with_version_1_decodes_into_the_current_model() {
    let v1 = Schema::parse_str(SchemaKind::PostPurchaseEvent.history()[0]).expect("v1 parses");
    let event = full_event();
    // Written as a version-1 producer would: without the fields version 2 added.
    let datum = encode_for_writer_schema(&event, &v1).expect("encode with v1");
    let Value::Record(fields) = GenericDatumReader::builder(&v1)
        .build()
        .expect("v1 reader")
        .read_value(&mut &datum[..])
        .expect("a plain v1 datum")
    else {
        panic!("not a record");
    };
    assert_eq!(fields.len(), 19, "version 1 has 19 fields");

    let decoded: PostPurchaseEvent = decode_written_with(&datum, &v1).expect("decode v1 datum");
    assert_eq!(
        decoded,
        PostPurchaseEvent {
            disposition: None,
            attributes: BTreeMap::new(),
            ..event
        }
    );
}

/// A schema's fields as `DedupFacts` reads them: names and types, without docs, defaults,
/// type names or enum symbols (it reads enums as bare indexes).
fn read_shape(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        Json::Object(object) if object.get("type") == Some(&Json::from("enum")) => {
            Json::from("enum")
        }
        Json::Object(object) => Json::Object(
            object
                .iter()
                .filter(|(key, _)| {
                    !["doc", "default", "namespace", "aliases"].contains(&key.as_str())
                })
                .filter(|(key, _)| {
                    // A record's own name is not read; a field's name says which field it is.
                    key.as_str() != "name" || !object.contains_key("fields")
                })
                .map(|(key, inner)| (key.clone(), read_shape(inner)))
                .collect(),
        ),
        Json::Array(items) => Json::Array(items.iter().map(read_shape).collect()),
        other => other.clone(),
    }
}

/// Ingest's restore reads a validated event's key and time from the front of its datum,
/// whichever version wrote it (`DedupFacts`): every version of the event's schema must start
/// with the same sixteen fields, `event_id` to `occurred_at`. A new version that changes them
/// breaks the restore of every validated record written before it.
#[test]
fn every_event_schema_version_starts_with_the_fields_dedup_reads() {
    let prefix = |avsc: &str| {
        let schema: serde_json::Value = serde_json::from_str(avsc).expect("avsc is json");
        let fields = schema["fields"].as_array().expect("fields");
        assert_eq!(fields[15]["name"], "occurred_at");
        read_shape(&serde_json::Value::Array(fields[..16].to_vec()))
    };
    let current = prefix(SchemaKind::PostPurchaseEvent.avsc());
    assert!(!SchemaKind::PostPurchaseEvent.history().is_empty());
    for earlier in SchemaKind::PostPurchaseEvent.history() {
        assert_eq!(prefix(earlier), current);
    }
}

#[test]
fn dedup_facts_are_read_from_every_version_and_from_an_enriched_event() {
    let v1 = Schema::parse_str(SchemaKind::PostPurchaseEvent.history()[0]).expect("v1 parses");
    for event in [full_event(), minimal_event()] {
        let expected = DedupFacts {
            idempotency_key: &event.idempotency_key,
            occurred_at: event.occurred_at,
        };
        let current = encode(&event).expect("encode");
        assert_eq!(DedupFacts::read(&current).expect("current"), expected);
        let written_with_v1 = encode_for_writer_schema(&event, &v1).expect("encode with v1");
        assert_eq!(DedupFacts::read(&written_with_v1).expect("v1"), expected);
        let enriched = encode(&EnrichedPostPurchaseEvent {
            event: event.clone(),
            ..enriched()
        })
        .expect("encode enriched");
        assert_eq!(DedupFacts::read(&enriched).expect("enriched"), expected);
        // Cut anywhere: an error or the right facts, never a wrong answer; and the facts come
        // from the front alone, so a datum cut after `occurred_at` still reads.
        let readable_cuts: Vec<usize> = (0..current.len())
            .filter(|cut| match DedupFacts::read(&current[..*cut]) {
                Ok(facts) => {
                    assert_eq!(facts, expected, "cut at {cut}");
                    true
                }
                Err(_) => false,
            })
            .collect();
        let first_readable = readable_cuts.first().copied().expect("a prefix reads");
        assert_eq!(
            readable_cuts,
            (first_readable..current.len()).collect::<Vec<_>>()
        );
        assert!(first_readable > event.idempotency_key.len() + 8);
    }
}

fn event_schema_json() -> serde_json::Value {
    serde_json::from_str(SchemaKind::PostPurchaseEvent.avsc()).expect("avsc is json")
}

fn with_field(mut schema: serde_json::Value, field: serde_json::Value) -> Schema {
    schema["fields"].as_array_mut().expect("fields").push(field);
    Schema::parse(&schema).expect("next version parses")
}

#[test]
fn adding_an_optional_field_is_backward_compatible() {
    let next = with_field(
        event_schema_json(),
        serde_json::json!({"name": "carrier", "type": ["null", "string"], "default": null}),
    );
    // BACKWARD: consumers on the new schema read data written with the current one.
    SchemaCompatibility::can_read(SchemaKind::PostPurchaseEvent.schema(), &next)
        .expect("adding an optional field is backward compatible");
}

#[test]
fn adding_a_required_field_is_not_backward_compatible() {
    let next = with_field(
        event_schema_json(),
        serde_json::json!({"name": "carrier", "type": "string"}),
    );
    assert!(SchemaCompatibility::can_read(SchemaKind::PostPurchaseEvent.schema(), &next).is_err());
}

#[test]
fn changing_a_field_type_is_not_backward_compatible() {
    let mut schema = event_schema_json();
    let quantity = schema["fields"]
        .as_array_mut()
        .expect("fields")
        .iter_mut()
        .find(|field| field["name"] == "quantity")
        .expect("quantity field");
    quantity["type"] = serde_json::json!("string");
    let next = Schema::parse(&schema).expect("next version parses");
    assert!(SchemaCompatibility::can_read(SchemaKind::PostPurchaseEvent.schema(), &next).is_err());
}

fn arbitrary_event() -> impl Strategy<Value = PostPurchaseEvent> {
    (
        (
            "\\PC{0,24}",
            "\\PC{1,24}",
            0usize..20,
            any::<i32>(),
            any::<i64>(),
        ),
        (
            proptest::option::of(("[A-Z]{3}", any::<i64>())),
            proptest::option::of("\\PC{0,40}"),
            proptest::collection::btree_map("\\PC{0,8}", "\\PC{0,8}", 0..4),
        ),
    )
        .prop_map(
            |((event_id, key, type_index, quantity, micros), (amount, reason_text, attributes))| {
                PostPurchaseEvent {
                    event_id,
                    idempotency_key: key,
                    event_type: EventType::ALL[type_index],
                    quantity,
                    occurred_at: TimestampMicros::from_unix_micros(micros),
                    amount: amount.map(|(currency, minor)| Money::new(minor, currency)),
                    reason_text,
                    attributes,
                    ..full_event()
                }
            },
        )
}

proptest! {
    #[test]
    fn arbitrary_events_round_trip(event in arbitrary_event()) {
        let datum = encode(&event).expect("encode");
        prop_assert_eq!(decode::<PostPurchaseEvent>(&datum).expect("decode"), event);
    }

    #[test]
    fn dedup_facts_of_arbitrary_events_are_theirs(event in arbitrary_event()) {
        let datum = encode(&event).expect("encode");
        let facts = DedupFacts::read(&datum).expect("reads");
        prop_assert_eq!(facts.idempotency_key, event.idempotency_key.as_str());
        prop_assert_eq!(facts.occurred_at, event.occurred_at);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode::<PostPurchaseEvent>(&bytes);
        let _ = DedupFacts::read(&bytes);
    }
}
