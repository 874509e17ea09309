//! One event per idempotency key passes, whether the duplicates share a batch or not and
//! whichever schema version the producer used; every malformed record lands in the dead-letter
//! topic with its original bytes and the contract's headers; and the metrics add up.

mod support;

use boomerang_schemas::wire;
use std::collections::{BTreeMap, BTreeSet};

use boomerang_runtime::dead_letter;
use boomerang_schemas::codec;
use support::{Pipeline, Raw, counter, metrics, validated_key, wait_until_received};

/// A malformed record: its expected `error_kind`, its value, and the schema id the dead letter
/// should name.
type Malformed = (&'static str, Option<Vec<u8>>, Option<u32>);

#[tokio::test]
async fn one_event_per_key_passes_and_every_bad_record_is_dead_lettered() {
    let pipeline = Pipeline::new(3).await;
    let process = pipeline.start(&[]);

    // Round 1: 20 keys, the first 5 produced twice in a row; 3 from a version-1 producer;
    // one record of each malformed kind.
    let mut round_1 = Vec::new();
    for n in 0..20 {
        let event = pipeline.event(&format!("k{n}"));
        round_1.push(pipeline.current(&event));
        if n < 5 {
            round_1.push(pipeline.current(&event));
        }
    }
    for n in 0..3 {
        round_1.push(pipeline.version_1(&pipeline.event(&format!("v{n}"))));
    }
    let valid_datum = codec::encode(&pipeline.event("bad")).expect("encode");
    let zero_quantity = codec::encode(&boomerang_schemas::PostPurchaseEvent {
        quantity: 0,
        ..pipeline.event("bad-quantity")
    })
    .expect("encode");
    let malformed: Vec<Malformed> = vec![
        ("empty_value", None, None),
        (
            "bad_magic_byte",
            Some(b"{\"not\": \"avro\"}".to_vec()),
            None,
        ),
        ("truncated_frame", Some(vec![0, 0, 0]), None),
        (
            "unknown_schema_id",
            Some(wire::frame(999_999, &valid_datum)),
            Some(999_999),
        ),
        (
            "undecodable",
            Some(wire::frame(pipeline.current_schema_id, &[0xff; 12])),
            Some(pipeline.current_schema_id),
        ),
        (
            "incompatible_schema",
            Some(wire::frame(pipeline.customer_schema_id, &valid_datum)),
            Some(pipeline.customer_schema_id),
        ),
        (
            "non_positive_quantity",
            Some(wire::frame(pipeline.current_schema_id, &zero_quantity)),
            Some(pipeline.current_schema_id),
        ),
    ];
    for (kind, value, _) in &malformed {
        round_1.push(Raw {
            key: format!("bad-{kind}"),
            value: value.clone(),
            headers: vec![("trace", "t-1")],
        });
    }
    pipeline.produce(&round_1).await;
    wait_until_received(&[&process], round_1.len() as u64).await;

    // Round 2, after round 1 is through: duplicates across batches, and new keys.
    let mut round_2 = Vec::new();
    for n in 0..10 {
        round_2.push(pipeline.current(&pipeline.event(&format!("k{n}"))));
    }
    for n in 20..25 {
        round_2.push(pipeline.current(&pipeline.event(&format!("k{n}"))));
    }
    pipeline.produce(&round_2).await;
    let received = (round_1.len() + round_2.len()) as u64;
    wait_until_received(&[&process], received).await;

    // Exactly one validated event per key, each as the contract says.
    let validated = pipeline.validated();
    // The raw partition each key was produced to (a key's copies share its order id, and so
    // its partition).
    let raw_partitions: BTreeMap<String, i32> = pipeline
        .read(&pipeline.topics.raw_events)
        .iter()
        .filter_map(|record| Some((validated_key(record)?, record.partition)))
        .collect();
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for record in &validated {
        let key = validated_key(record).expect("an idempotency key in the datum");
        *per_key.entry(key.clone()).or_default() += 1;
        let event = pipeline.event(&key);
        assert_eq!(
            record.key.as_deref(),
            Some(event.order_id.as_bytes()),
            "keyed by order id"
        );
        assert_eq!(
            raw_partitions.get(&key),
            Some(&record.partition),
            "validated partition = raw partition"
        );
        // `--validated-headers lean`: no header of ingest's own; the datum says it all.
        assert!(record.headers.is_empty(), "{key}: {:?}", record.headers);
        let (schema_id, datum) =
            boomerang_runtime::wire::parse(record.value.as_deref().unwrap_or_default())
                .expect("framed");
        assert_eq!(schema_id, pipeline.current_schema_id);
        let decoded: boomerang_schemas::PostPurchaseEvent = codec::decode(datum).expect("decodes");
        assert_eq!(decoded.idempotency_key, key);
        // Timestamped when validated, after the event happened, not with the event time:
        // retention counts from then.
        let validated_ms = record.timestamp_ms.expect("a timestamp");
        let occurred_ms = decoded.occurred_at.as_unix_millis();
        assert!(
            validated_ms > occurred_ms,
            "timestamped {validated_ms}, the event happened at {occurred_ms}"
        );
    }
    let expected_keys: BTreeSet<String> = (0..25)
        .map(|n| format!("k{n}"))
        .chain((0..3).map(|n| format!("v{n}")))
        .collect();
    assert_eq!(
        per_key.keys().cloned().collect::<BTreeSet<_>>(),
        expected_keys
    );
    assert!(per_key.values().all(|count| *count == 1), "{per_key:?}");

    // Every malformed record, dead-lettered with its bytes and the contract's headers.
    let dead_letters = pipeline.dead_letters();
    assert_eq!(dead_letters.len(), malformed.len());
    for (kind, value, schema_id) in &malformed {
        let key = format!("bad-{kind}");
        let record = dead_letters
            .iter()
            .find(|record| record.key.as_deref() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("no dead letter for {kind}"));
        assert_eq!(&record.value, value, "{kind}: original bytes");
        assert_eq!(
            record.header("trace").as_deref(),
            Some("t-1"),
            "{kind}: original header kept"
        );
        assert_eq!(record.header(dead_letter::STAGE).as_deref(), Some("ingest"));
        assert_eq!(
            record.header(dead_letter::ERROR_KIND).as_deref(),
            Some(*kind)
        );
        assert!(
            !record
                .header(dead_letter::ERROR_MESSAGE)
                .unwrap_or_default()
                .is_empty()
        );
        assert_eq!(
            record.header(dead_letter::SOURCE_TOPIC).as_deref(),
            Some(pipeline.topics.raw_events.as_str())
        );
        let partition: i32 = record
            .header(dead_letter::SOURCE_PARTITION)
            .expect("partition")
            .parse()
            .expect("number");
        let offset: i64 = record
            .header(dead_letter::SOURCE_OFFSET)
            .expect("offset")
            .parse()
            .expect("number");
        assert!(
            (0..3).contains(&partition) && offset >= 0,
            "{kind}: {partition}/{offset}"
        );
        assert_eq!(
            record.header(dead_letter::SCHEMA_ID),
            schema_id.map(|id| id.to_string()),
            "{kind}: schema id"
        );
        let failed_at_ms: i64 = record
            .header(dead_letter::FAILED_AT_MS)
            .expect("time")
            .parse()
            .expect("number");
        let now_ms = boomerang_schemas::TimestampMicros::now().as_unix_millis();
        assert!(
            now_ms - failed_at_ms < 120_000 && failed_at_ms <= now_ms,
            "{kind}: failed_at_ms"
        );
    }

    // Everything consumed is committed: exactly the next offset to read, no further.
    boomerang_testkit::poll_until(
        "offsets committed up to the end",
        std::time::Duration::from_secs(30),
        || async {
            let offsets = boomerang_testkit::committed_and_high_watermarks(
                &pipeline.stack.kafka_brokers,
                &pipeline.group,
                &pipeline.topics.raw_events,
            );
            offsets
                .iter()
                .all(|(_, committed, high)| committed == high)
                .then_some(())
        },
    )
    .await;

    // Conservation, read from the metrics: received = sent + deduplicated + dead-lettered.
    let text = metrics(&process).await;
    let sent = counter(&text, "boomerang_sent_events_total");
    let deduplicated = counter(&text, "boomerang_deduplicated_events_total");
    let dead_lettered = counter(&text, "boomerang_dead_lettered_events_total");
    assert_eq!(counter(&text, "boomerang_received_events_total"), received);
    assert_eq!((sent, deduplicated, dead_lettered), (28, 15, 7));
    assert_eq!(received, sent + deduplicated + dead_lettered);
    assert_eq!(
        boomerang_testkit::metric_sum(
            &text,
            "boomerang_dead_lettered_events_total",
            &["error_kind=\"unknown_schema_id\""]
        ),
        1.0
    );
}
