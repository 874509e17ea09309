//! One record's size never stops ingest. An event whose validated record would be larger than
//! the stage's limit (`--max-record-bytes`, the producer's `message.max.bytes`) is dead-lettered
//! as `record_too_large`, in a form that fits, and the partition moves on: records at the limit
//! pass, one byte over does not, and a 1 MB free-text field at the default limit is
//! dead-lettered with its value left out and its size named.

mod support;

use boomerang_runtime::dead_letter;
use boomerang_runtime::error_kind::DeadLetterKind;
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::record_size;
use boomerang_schemas::codec;
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::{Pipeline, Raw, counter, metrics, wait_until_received};

const LIMIT: usize = 20_000;

/// An event whose free text is `text_len` bytes.
fn with_text(pipeline: &Pipeline, key: &str, text_len: usize) -> Raw {
    let mut event = pipeline.event(key);
    event.reason_text = Some("x".repeat(text_len));
    pipeline.current(&event)
}

fn wire_size(record: &boomerang_testkit::ReadRecord) -> usize {
    record_size::wire_size(
        record.key.as_deref(),
        record.value.as_deref(),
        record
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_deref())),
    )
}

#[tokio::test]
async fn records_at_the_limit_pass_and_one_byte_over_is_dead_lettered() {
    let pipeline = Pipeline::new(1).await;
    let limit = LIMIT.to_string();
    let mut process = pipeline.start(&[("BOOMERANG_MAX_RECORD_BYTES", limit.as_str())]);

    // Every key is five characters, so every record's fixed parts are the same size.
    // Calibrate: how many bytes the validated record adds around the free text. (Texts between
    // 8,192 and 524,287 bytes all take a 3-byte length, so the overhead is the same for all.)
    const PROBE: usize = 10_000;
    pipeline
        .produce(&[with_text(&pipeline, "probe", PROBE)])
        .await;
    wait_until_received(&[&process], 1).await;
    boomerang_testkit::poll_until(
        "the probe validated",
        std::time::Duration::from_secs(30),
        || async { (!pipeline.validated().is_empty()).then_some(()) },
    )
    .await;
    let probe = pipeline.validated().remove(0);
    let overhead = wire_size(&probe) - PROBE;
    let at_limit = LIMIT - overhead;

    pipeline
        .produce(&[
            with_text(&pipeline, "under", at_limit - 1),
            with_text(&pipeline, "exact", at_limit),
            with_text(&pipeline, "above", at_limit + 1),
            with_text(&pipeline, "giant", 3 * LIMIT),
            with_text(&pipeline, "after", 10),
        ])
        .await;
    wait_until_received(&[&process], 6).await;
    assert!(process.is_running(), "ingest keeps running");

    let validated = pipeline.validated();
    let passed: Vec<String> = validated
        .iter()
        .filter_map(support::validated_key)
        .collect();
    assert_eq!(passed, ["probe", "under", "exact", "after"]);
    let at = &validated[2];
    assert_eq!(wire_size(at), LIMIT, "exactly at the limit, and through");
    assert_eq!(wire_size(&validated[1]), LIMIT - 1);

    let dead_letters = pipeline.dead_letters();
    assert_eq!(dead_letters.len(), 2, "above and giant");
    for (letter, key) in dead_letters.iter().zip(["above", "giant"]) {
        assert_eq!(
            letter.key.as_deref(),
            Some(pipeline.event(key).order_id.as_bytes())
        );
        assert_eq!(
            letter.header(dead_letter::ERROR_KIND).as_deref(),
            Some(DeadLetterKind::RecordTooLarge.as_str())
        );
        assert!(
            wire_size(letter) <= LIMIT,
            "the dead letter fits: {}",
            wire_size(letter)
        );
    }
    // Each keeps its original value if that fits beside the dead-letter headers, else names
    // its size. (One byte over the limit as a validated record is near it as a raw one too,
    // and the dead-letter headers are longer than the validated ones: both values go here.)
    for (letter, key, text_len) in [
        (&dead_letters[0], "above", at_limit + 1),
        (&dead_letters[1], "giant", 3 * LIMIT),
    ] {
        let raw = with_text(&pipeline, key, text_len).value.expect("value");
        match &letter.value {
            Some(value) => assert!(value == &raw, "{key}: the original bytes"),
            None => assert_eq!(
                letter.header(dead_letter::VALUE_OMITTED_BYTES),
                Some(raw.len().to_string()),
                "{key}: the omitted value's size"
            ),
        }
    }
    assert!(
        dead_letters[1].value.is_none(),
        "giant: 60 kB cannot fit in 20 kB"
    );

    let text = metrics(&process).await;
    assert_eq!(
        boomerang_testkit::metric_sum(
            &text,
            "boomerang_dead_lettered_events_total",
            &["error_kind=\"record_too_large\""]
        ),
        2.0
    );
    assert_eq!(counter(&text, "boomerang_sent_events_total"), 4);
    boomerang_testkit::wait_committed(
        &pipeline.stack.kafka_brokers,
        &pipeline.group,
        &pipeline.topics.raw_events,
    )
    .await;
}

/// The hostile record users met: one valid event with a 1 MB `reason_text`, which the broker
/// took on the raw topic. At the default limit ingest dead-letters it and goes on.
#[tokio::test]
async fn a_one_megabyte_event_is_dead_lettered_at_the_default_limit() {
    let pipeline = Pipeline::new(1).await;
    let mut process = pipeline.start(&[]);
    let mut large_producer = KafkaArgs::for_brokers(&pipeline.stack.kafka_brokers);
    large_producer.max_record_bytes = 4_000_000;
    let producer: FutureProducer = large_producer.producer_config().create().expect("producer");
    let huge = with_text(&pipeline, "huge", 1 << 20);
    let huge_value = huge.value.clone().expect("value");
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&pipeline.topics.raw_events)
                .key(&huge.key)
                .payload(&huge_value),
            std::time::Duration::from_secs(30),
        )
        .await
        .expect("the broker takes a 1 MB record");
    pipeline.produce(&[with_text(&pipeline, "after", 10)]).await;
    wait_until_received(&[&process], 2).await;
    assert!(process.is_running(), "ingest keeps running");

    let dead_letters = pipeline.dead_letters();
    assert_eq!(dead_letters.len(), 1);
    let letter = &dead_letters[0];
    assert_eq!(
        letter.header(dead_letter::ERROR_KIND).as_deref(),
        Some(DeadLetterKind::RecordTooLarge.as_str())
    );
    assert_eq!(
        letter.value, None,
        "a 1 MB value does not fit in a dead letter"
    );
    assert_eq!(
        letter.header(dead_letter::VALUE_OMITTED_BYTES),
        Some(huge_value.len().to_string())
    );
    let validated = pipeline.validated();
    assert_eq!(validated.len(), 1, "the next event passes");
    let (_, datum) =
        boomerang_runtime::wire::parse(validated[0].value.as_deref().unwrap_or_default())
            .expect("framed");
    let decoded: boomerang_schemas::PostPurchaseEvent = codec::decode(datum).expect("decodes");
    assert_eq!(decoded.idempotency_key, "after");
    boomerang_testkit::wait_committed(
        &pipeline.stack.kafka_brokers,
        &pipeline.group,
        &pipeline.topics.raw_events,
    )
    .await;
}
