//! A hostile producer's records through the real ingest binary on the local stack: each has
//! its expected outcome (a dead letter with a fitting `error_kind`, or passing), ingest keeps
//! running throughout, every record is accounted for, and its resident memory stays under a
//! stated ceiling while it happens.

mod support;

use boomerang_schemas::wire;
use std::collections::BTreeMap;
use std::time::Duration;

use boomerang_runtime::dead_letter;
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_schemas::codec;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::{Pipeline, counter, metrics, wait_until_received};

/// The peak resident memory ingest may reach while it reads these records (10 MB values
/// among them): a few copies of the largest record on top of its idle ~40 MiB.
const RSS_CEILING_BYTES: u64 = 256 * 1024 * 1024;

/// An Avro long, zigzag and varint encoded.
fn avro_long(value: i64) -> Vec<u8> {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

struct Hostile {
    name: &'static str,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    /// `None`: it passes; else the dead letter's `error_kind`.
    expected: Option<&'static str>,
}

fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[tokio::test]
async fn a_hostile_producers_records_each_end_as_expected_and_ingest_keeps_running() {
    let pipeline = Pipeline::new(2).await;
    let mut process = pipeline.start(&[]);
    let current = |event: &boomerang_schemas::PostPurchaseEvent| {
        wire::frame(
            pipeline.current_schema_id,
            &codec::encode(event).expect("encode"),
        )
    };

    // Strings that are not UTF-8: a valid datum with an identifier's bytes replaced.
    let mut not_utf8 = codec::encode(&pipeline.event("nonutf8-0")).expect("encode");
    let at = not_utf8
        .windows(7)
        .position(|window| window == b"nonutf8")
        .expect("the key's bytes");
    not_utf8[at..at + 7].fill(0xff);
    // A length prefix claiming 2 GB for the first string.
    let mut gigabytes = avro_long(2_000_000_000);
    gigabytes.extend_from_slice(b"evt-");
    // An attributes block claiming a billion entries, with a negative count and a size, in
    // place of the empty map that ends a valid datum.
    let mut billion_entries = codec::encode(&pipeline.event("billion-0")).expect("encode");
    assert_eq!(
        billion_entries.pop(),
        Some(0),
        "the datum ends with its empty map"
    );
    billion_entries.extend(avro_long(-1_000_000_000));
    billion_entries.extend(avro_long(4));
    billion_entries.extend([0, 0, 0, 0]);
    let mut ten_megabytes = pipeline.event("ten-mb-0");
    ten_megabytes.reason_text = Some("x".repeat(10 << 20));
    let mut huge_map = pipeline.event("huge-map-0");
    huge_map.attributes = (0..200_000)
        .map(|n| (format!("k{n}"), "v".to_string()))
        .collect::<BTreeMap<_, _>>();
    let null_key = pipeline.event("null-key-0");
    let huge_headers = pipeline.event("headers-0");
    let duplicated_headers = pipeline.event("dup-headers-0");

    let records = vec![
        Hostile {
            name: "another subject's schema id",
            key: Some(b"subject".to_vec()),
            value: Some(wire::frame(
                pipeline.customer_schema_id,
                &codec::encode(&pipeline.event("subject-0")).expect("encode"),
            )),
            headers: vec![],
            expected: Some("incompatible_schema"),
        },
        Hostile {
            name: "a 2 GB length prefix",
            key: Some(b"gigabytes".to_vec()),
            value: Some(wire::frame(pipeline.current_schema_id, &gigabytes)),
            headers: vec![],
            expected: Some("undecodable"),
        },
        Hostile {
            name: "a map block of a billion entries",
            key: Some(b"billion".to_vec()),
            value: Some(wire::frame(pipeline.current_schema_id, &billion_entries)),
            headers: vec![],
            expected: Some("undecodable"),
        },
        Hostile {
            name: "a string that is not UTF-8",
            key: Some(b"nonutf8".to_vec()),
            value: Some(wire::frame(pipeline.current_schema_id, &not_utf8)),
            headers: vec![],
            expected: Some("undecodable"),
        },
        Hostile {
            name: "a 10 MB value",
            key: Some(b"ten-mb".to_vec()),
            value: Some(current(&ten_megabytes)),
            headers: vec![],
            expected: Some("record_too_large"),
        },
        Hostile {
            name: "an attributes map of 200k entries",
            key: Some(b"huge-map".to_vec()),
            value: Some(current(&huge_map)),
            headers: vec![],
            expected: Some("too_many_attributes"),
        },
        Hostile {
            name: "a tombstone on the event topic",
            key: Some(b"tombstone".to_vec()),
            value: None,
            headers: vec![],
            expected: Some("empty_value"),
        },
        Hostile {
            name: "a malformed record with 2 MB of headers",
            key: Some(b"bad-headers".to_vec()),
            value: Some(b"not avro".to_vec()),
            headers: (0..2)
                .map(|n| (format!("h{n}"), vec![b'h'; 1 << 20]))
                .collect(),
            expected: Some("bad_magic_byte"),
        },
        Hostile {
            name: "a null key",
            key: None,
            value: Some(current(&null_key)),
            headers: vec![],
            expected: None,
        },
        Hostile {
            name: "a valid event with a 900 kB header",
            key: Some(b"headers".to_vec()),
            value: Some(current(&huge_headers)),
            headers: vec![("big".into(), vec![b'b'; 900 << 10])],
            expected: None,
        },
        Hostile {
            name: "a valid event with a header repeated 10,000 times",
            key: Some(b"dup-headers".to_vec()),
            value: Some(current(&duplicated_headers)),
            headers: (0..10_000)
                .map(|_| ("trace".into(), b"t".to_vec()))
                .collect(),
            expected: None,
        },
    ];

    let mut large = KafkaArgs::for_brokers(&pipeline.stack.kafka_brokers);
    large.max_record_bytes = 16 << 20;
    let producer: FutureProducer = large.producer_config().create().expect("producer");
    for record in &records {
        let mut headers = OwnedHeaders::new();
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut produced: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&pipeline.topics.raw_events).headers(headers);
        if let Some(key) = &record.key {
            produced = produced.key(key);
        }
        if let Some(value) = &record.value {
            produced = produced.payload(value);
        }
        producer
            .send(produced, Duration::from_secs(60))
            .await
            .unwrap_or_else(|(error, _)| panic!("{}: the broker refused it: {error}", record.name));
    }
    wait_until_received(&[&process], records.len() as u64).await;
    assert!(process.is_running(), "ingest keeps running");
    let peak = peak_rss_bytes(process.id());
    eprintln!("ingest's peak RSS: {} MiB", peak >> 20);
    assert!(
        peak > 0 && peak < RSS_CEILING_BYTES,
        "peak RSS {} MiB, ceiling {} MiB",
        peak >> 20,
        RSS_CEILING_BYTES >> 20
    );

    let dead_letters = pipeline.dead_letters();
    let validated = pipeline.validated();
    for record in &records {
        let letter = record.key.as_ref().and_then(|key| {
            dead_letters
                .iter()
                .find(|letter| letter.key.as_ref() == Some(key))
        });
        match record.expected {
            Some(kind) => {
                let letter = letter.unwrap_or_else(|| panic!("{}: no dead letter", record.name));
                assert_eq!(
                    letter.header(dead_letter::ERROR_KIND).as_deref(),
                    Some(kind),
                    "{}",
                    record.name
                );
                assert_eq!(letter.header(dead_letter::STAGE).as_deref(), Some("ingest"));
            }
            None => assert!(letter.is_none(), "{}: dead-lettered", record.name),
        }
    }
    let passed: Vec<String> = validated
        .iter()
        .filter_map(support::validated_key)
        .collect();
    for key in ["null-key-0", "headers-0", "dup-headers-0"] {
        assert!(
            passed.contains(&key.to_string()),
            "{key} passes: {passed:?}"
        );
    }
    assert_eq!(passed.len(), 3);
    let trimmed = dead_letters
        .iter()
        .find(|letter| letter.key.as_deref() == Some(b"bad-headers".as_slice()))
        .expect("the dead letter with 2 MB of headers");
    assert_eq!(
        trimmed.header(dead_letter::HEADERS_OMITTED).as_deref(),
        Some("2")
    );
    assert_eq!(trimmed.value.as_deref(), Some(b"not avro".as_slice()));
    let ten = dead_letters
        .iter()
        .find(|letter| letter.key.as_deref() == Some(b"ten-mb".as_slice()))
        .expect("the 10 MB record's dead letter");
    assert!(ten.value.is_none());
    assert!(ten.header(dead_letter::VALUE_OMITTED_BYTES).is_some());

    // Conservation, and the partitions committed past every record.
    let text = metrics(&process).await;
    let received = counter(&text, "boomerang_received_events_total");
    assert_eq!(received, records.len() as u64);
    assert_eq!(
        received,
        counter(&text, "boomerang_sent_events_total")
            + counter(&text, "boomerang_deduplicated_events_total")
            + counter(&text, "boomerang_dead_lettered_events_total")
    );
    boomerang_testkit::wait_committed(
        &pipeline.stack.kafka_brokers,
        &pipeline.group,
        &pipeline.topics.raw_events,
    )
    .await;
}
