//! The hand-written codecs of the hot records (`src/specific.rs`) against apache-avro's serde
//! path on the same schema: the same bytes out for any record, the same record (or a refusal)
//! back for any bytes — valid datums, datums with a byte changed, cut short, or random. And
//! enrich's in-place path (`src/splice.rs`) against decode, join and encode.

use std::collections::BTreeMap;

use boomerang_schemas::codec::{decode, decode_generic, encode, encode_generic_into};
use boomerang_schemas::{
    AvroRecord, Channel, CodecError, Disposition, EnrichedEventRef, EnrichedPostPurchaseEvent,
    Enrichment, EventDatum, EventRef, EventType, EventView, JoinIds, Money, MoneyRef, Outcome,
    PostPurchaseEvent, ReasonCode, ReturnMethod, TimestampMicros, WarrantyResolution,
};
use proptest::prelude::*;

fn generic<T: AvroRecord>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_generic_into(value, &mut out).expect("apache-avro encodes");
    out
}

fn one_of<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    (0..all.len()).prop_map(move |index| all[index])
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn money() -> impl Strategy<Value = Money> {
    (any::<i64>(), "[A-Z]{3}").prop_map(|(minor, currency)| Money::new(minor, currency))
}

fn timestamp() -> impl Strategy<Value = TimestampMicros> {
    any::<i64>().prop_map(TimestampMicros::from_unix_micros)
}

fn event() -> impl Strategy<Value = PostPurchaseEvent> {
    (
        (
            text(),
            text(),
            one_of(&EventType::ALL),
            text(),
            text(),
            text(),
        ),
        (
            text(),
            text(),
            any::<i32>(),
            proptest::option::of(one_of(&ReasonCode::ALL)),
        ),
        (
            proptest::option::of(text()),
            proptest::option::of(money()),
            proptest::option::of(one_of(&ReturnMethod::ALL)),
            one_of(&Channel::ALL),
            one_of(&Outcome::ALL),
            timestamp(),
        ),
        (
            text(),
            proptest::option::of(text()),
            proptest::option::of(one_of(&WarrantyResolution::ALL)),
            proptest::option::of(one_of(&Disposition::ALL)),
            proptest::collection::btree_map(text(), text(), 0..4),
        ),
    )
        .prop_map(
            |(
                (event_id, idempotency_key, event_type, case_id, order_id, order_line_id),
                (customer_id, sku, quantity, reason),
                (reason_text, amount, method, channel, outcome, occurred_at),
                (source_system, replacement_sku, warranty_resolution, disposition, attributes),
            )| PostPurchaseEvent {
                event_id,
                idempotency_key,
                event_type,
                case_id,
                order_id,
                order_line_id,
                customer_id,
                sku,
                quantity,
                reason,
                reason_text,
                amount,
                method,
                channel,
                outcome,
                occurred_at,
                source_system,
                replacement_sku,
                warranty_resolution,
                disposition,
                attributes,
            },
        )
}

fn enriched() -> impl Strategy<Value = EnrichedPostPurchaseEvent> {
    (
        event(),
        any::<[bool; 4]>(),
        (
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(one_of(&Channel::ALL)),
            proptest::option::of(timestamp()),
            proptest::option::of(timestamp()),
        ),
        (
            proptest::option::of(text()),
            proptest::option::of(money()),
            proptest::option::of(any::<i32>()),
            proptest::option::of(any::<bool>()),
            timestamp(),
        ),
    )
        .prop_map(
            |(
                event,
                [
                    customer_missing,
                    order_missing,
                    order_line_missing,
                    customer_pseudonymised,
                ],
                (
                    customer_segment,
                    customer_region,
                    order_channel,
                    order_placed_at,
                    order_delivered_at,
                ),
                (
                    line_category,
                    line_unit_price,
                    days_since_delivery,
                    within_return_window,
                    enriched_at,
                ),
            )| EnrichedPostPurchaseEvent {
                event,
                customer_missing,
                order_missing,
                order_line_missing,
                customer_pseudonymised,
                customer_segment,
                customer_region,
                order_channel,
                order_placed_at,
                order_delivered_at,
                line_category,
                line_unit_price,
                days_since_delivery,
                within_return_window,
                enriched_at,
            },
        )
}

/// An in-place read and decoding accept `bytes` alike, refuse them with the same error, and,
/// where both accept, `same` holds of what each read.
fn assert_reads_agree<Read, Decoded>(
    bytes: &[u8],
    read: &Result<Read, CodecError>,
    decoded: &Result<Decoded, CodecError>,
    same: impl FnOnce(&Read, &Decoded) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    match (read, decoded) {
        (Ok(read), Ok(decoded)) => same(read, decoded),
        (Err(read), Err(decoded)) => {
            prop_assert_eq!(read.to_string(), decoded.to_string());
            Ok(())
        }
        _ => Err(TestCaseError::fail(format!(
            "in place {:?} but decode {:?} for {:?}",
            read.as_ref().map(|_| "accepted"),
            decoded.as_ref().map(|_| "accepted"),
            bytes
        ))),
    }
}

/// Enrich's in-place view reads what decoding reads.
fn assert_view_agrees(bytes: &[u8]) -> Result<(), TestCaseError> {
    let decoded = decode::<PostPurchaseEvent>(bytes);
    assert_reads_agree(bytes, &EventView::read(bytes), &decoded, |view, event| {
        prop_assert_eq!(view.event_type, event.event_type);
        prop_assert_eq!(view.order_id, &event.order_id);
        prop_assert_eq!(view.order_line_id, &event.order_line_id);
        prop_assert_eq!(view.customer_id, &event.customer_id);
        prop_assert_eq!(view.quantity, event.quantity);
        prop_assert_eq!(view.amount, event.amount.as_ref().map(MoneyRef::from));
        prop_assert_eq!(view.occurred_at, event.occurred_at);
        // The ids enrich reads ahead, to warm its lookups, are the view's.
        prop_assert_eq!(
            JoinIds::read(bytes),
            Some(JoinIds {
                order_id: view.order_id.as_bytes(),
                customer_id: view.customer_id.as_bytes(),
            })
        );
        Ok(())
    })
}

/// The sink's in-place read of an enriched event reads every field decoding reads (but the
/// attributes, which it checks and passes over).
fn assert_enriched_ref_agrees(bytes: &[u8]) -> Result<(), TestCaseError> {
    let decoded = decode::<EnrichedPostPurchaseEvent>(bytes);
    assert_reads_agree(
        bytes,
        &EnrichedEventRef::read(bytes),
        &decoded,
        |read, enriched| {
            prop_assert_eq!(read, &EnrichedEventRef::of(enriched));
            Ok(())
        },
    )
}

/// Ingest's in-place read of an event reads every field decoding reads, and counts at least
/// the attributes decoding keeps (a key written twice is kept once).
fn assert_event_datum_agrees(bytes: &[u8]) -> Result<(), TestCaseError> {
    let decoded = decode::<PostPurchaseEvent>(bytes);
    assert_reads_agree(bytes, &EventDatum::read(bytes), &decoded, |read, event| {
        prop_assert_eq!(&read.event, &EventRef::of(event));
        prop_assert!(read.attribute_entries >= event.attributes.len());
        Ok(())
    })
}

#[test]
fn an_attribute_key_written_twice_counts_twice_in_place_and_once_decoded() {
    let mut event = sample();
    event.attributes.clear();
    let mut bytes = encode(&event).expect("encode");
    assert_eq!(bytes.pop(), Some(0), "an empty map ends the datum");
    // One block of two entries (zigzag 4), both with key "a" (length zigzag 2), then the end.
    bytes.extend_from_slice(&[4, 2, b'a', 2, b'1', 2, b'a', 2, b'2', 0]);
    let read = EventDatum::read(&bytes).expect("read in place");
    let decoded = decode::<PostPurchaseEvent>(&bytes).expect("decode");
    assert_eq!(read.attribute_entries, 2);
    assert_eq!(decoded.attributes.len(), 1);
    assert_eq!(read.event, EventRef::of(&decoded));
}

/// Both decoders accept `bytes` or both refuse them, and agree on what they accept.
fn assert_decoders_agree<T: AvroRecord + PartialEq + std::fmt::Debug>(
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    let ours = decode::<T>(bytes);
    let reference = decode_generic::<T>(bytes);
    match (&ours, &reference) {
        (Ok(ours), Ok(reference)) => prop_assert_eq!(ours, reference),
        (Err(_), Err(_)) => {}
        _ => prop_assert!(
            false,
            "hand-written {:?} but apache-avro {:?} for {:?}",
            ours.as_ref().map(|_| "accepted"),
            reference.as_ref().map(|_| "accepted"),
            bytes
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn events_encode_to_the_bytes_apache_avro_writes(event in event()) {
        let ours = encode(&event).expect("encode");
        prop_assert_eq!(&ours, &generic(&event));
        prop_assert_eq!(decode::<PostPurchaseEvent>(&ours).expect("decode"), event);
    }

    #[test]
    fn enriched_events_encode_to_the_bytes_apache_avro_writes(enriched in enriched()) {
        let ours = encode(&enriched).expect("encode");
        prop_assert_eq!(&ours, &generic(&enriched));
        prop_assert_eq!(decode::<EnrichedPostPurchaseEvent>(&ours).expect("decode"), enriched);
    }

    #[test]
    fn a_changed_byte_is_read_alike(event in event(), position in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = generic(&event);
        let position = position.index(bytes.len());
        bytes[position] = byte;
        assert_decoders_agree::<PostPurchaseEvent>(&bytes)?;
        assert_event_datum_agrees(&bytes)?;
    }

    #[test]
    fn a_changed_byte_of_an_enriched_event_is_read_alike(enriched in enriched(), position in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = generic(&enriched);
        let position = position.index(bytes.len());
        bytes[position] = byte;
        assert_decoders_agree::<EnrichedPostPurchaseEvent>(&bytes)?;
        assert_enriched_ref_agrees(&bytes)?;
    }

    #[test]
    fn a_datum_cut_short_or_padded_is_refused_alike(event in event(), cut in any::<prop::sample::Index>(), padding in 1usize..4) {
        let bytes = generic(&event);
        assert_decoders_agree::<PostPurchaseEvent>(&bytes[..cut.index(bytes.len())])?;
        assert_event_datum_agrees(&bytes[..cut.index(bytes.len())])?;
        let mut padded = bytes.clone();
        padded.extend(std::iter::repeat_n(0u8, padding));
        assert_decoders_agree::<PostPurchaseEvent>(&padded)?;
        assert_event_datum_agrees(&padded)?;
        let read = EventDatum::read(&bytes).expect("read in place");
        prop_assert_eq!(&read.event, &EventRef::of(&event));
        prop_assert_eq!(read.attribute_entries, event.attributes.len());
    }

    #[test]
    fn random_bytes_are_read_alike(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        assert_decoders_agree::<PostPurchaseEvent>(&bytes)?;
        assert_decoders_agree::<EnrichedPostPurchaseEvent>(&bytes)?;
        assert_enriched_ref_agrees(&bytes)?;
        assert_view_agrees(&bytes)?;
        assert_event_datum_agrees(&bytes)?;
    }

    #[test]
    fn an_enriched_event_spliced_from_bytes_is_the_one_encoded(
        enriched in enriched(),
        customer_id in text(),
    ) {
        let bytes = encode(&enriched.event).expect("encode");
        assert_view_agrees(&bytes)?;
        let view = EventView::read(&bytes).expect("view");
        let mut spliced = Vec::new();
        view.write_enriched(&customer_id, &Enrichment::of(&enriched), &mut spliced);
        let mut expected = enriched.clone();
        expected.event.reason_text = None;
        expected.event.customer_id = customer_id;
        prop_assert_eq!(&spliced, &encode(&expected).expect("encode"));
        prop_assert_eq!(Enrichment::of(&enriched).apply(enriched.event.clone()), enriched);
    }

    #[test]
    fn an_enriched_event_is_read_in_place_as_decoded(
        enriched in enriched(),
        cut in any::<prop::sample::Index>(),
        padding in 1usize..4,
    ) {
        let bytes = generic(&enriched);
        let read = EnrichedEventRef::read(&bytes).expect("read in place");
        prop_assert_eq!(&read, &EnrichedEventRef::of(&enriched));
        prop_assert_eq!(read.event.idempotency_key, enriched.event.idempotency_key.as_str());
        assert_enriched_ref_agrees(&bytes[..cut.index(bytes.len())])?;
        let mut padded = bytes.clone();
        padded.extend(std::iter::repeat_n(0u8, padding));
        assert_enriched_ref_agrees(&padded)?;
    }

    #[test]
    fn a_changed_cut_or_padded_event_is_viewed_as_decoded(
        event in event(),
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        padding in 1usize..4,
    ) {
        let bytes = generic(&event);
        let mut changed = bytes.clone();
        let at = position.index(bytes.len());
        changed[at] = byte;
        assert_view_agrees(&changed)?;
        assert_view_agrees(&bytes[..at])?;
        let mut padded = bytes.clone();
        padded.extend(std::iter::repeat_n(0u8, padding));
        assert_view_agrees(&padded)?;
    }
}

/// The specification lets a writer split a map into blocks, and mark a block with a negative
/// count followed by its size in bytes; other Avro libraries do.
#[test]
fn maps_in_several_blocks_decode() {
    let mut event = PostPurchaseEvent {
        attributes: BTreeMap::new(),
        ..decode::<PostPurchaseEvent>(&generic(&sample())).expect("sample")
    };
    let mut bytes = generic(&event);
    assert_eq!(bytes.pop(), Some(0), "an empty map is its end marker");
    // Block 1: count 1; block 2: count -1 and a byte size; then the end marker.
    bytes.extend([2, 2, b'a', 2, b'1']);
    bytes.extend([1, 6, 2, b'b', 2, b'2']);
    bytes.push(0);
    event.attributes = BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
    assert_eq!(decode::<PostPurchaseEvent>(&bytes).expect("blocks"), event);
    assert_eq!(
        decode_generic::<PostPurchaseEvent>(&bytes).expect("blocks"),
        event
    );
    assert_view_agrees(&bytes).expect("the view reads blocks as decode does");
    assert!(EventView::read(&bytes).is_ok());
}

/// Any event: one drawn from the strategy.
fn sample() -> PostPurchaseEvent {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    event()
        .new_tree(&mut TestRunner::deterministic())
        .expect("an event")
        .current()
}
