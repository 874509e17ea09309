//! Joins against reference data that is there, late, never there, updated and deleted; PII
//! never leaves; nothing consumed is unaccounted for.

mod support;

use std::time::Duration;

use boomerang_runtime::pseudonym::Pseudonymiser;
use boomerang_testkit::samples::customer;
use boomerang_testkit::{committed_and_high_watermarks, poll_until};
use support::{
    PSEUDONYM_KEY, Pipeline, event, metrics, order, reference_records, value, wait_for_metric,
    wait_ready,
};

/// Short, so the test sees deadlines pass; long enough for a late order to arrive in time.
const MAX_WAIT_MS: u64 = 4_000;

#[tokio::test]
async fn late_data_is_joined_missing_data_flagged_and_updates_seen() {
    let pipeline = Pipeline::new(2).await;
    pipeline
        .produce_customer(&customer("cu-1", "regular", true))
        .await;
    pipeline
        .produce_customer(&customer("cu-2", "new", false))
        .await;
    pipeline.produce_order(&order("o-1", "cu-1")).await;
    let process = pipeline.start(MAX_WAIT_MS);
    wait_ready(&process).await;
    assert_eq!(reference_records(&process).await, (2, 1));
    assert_eq!(
        value(
            &metrics(&process).await,
            "boomerang_enrich_reference_caught_up",
            &[]
        ),
        1
    );

    // Everything there: joined at once.
    pipeline.produce_event(&event("e-now", "o-1", "cu-1")).await;
    let joined = pipeline.wait_for_enriched("e-now").await;
    assert!(!joined.order_missing && !joined.customer_missing && !joined.order_line_missing);
    assert_eq!(joined.customer_segment.as_deref(), Some("regular"));
    assert_eq!(joined.line_category.as_deref(), Some("apparel"));
    assert_eq!(joined.days_since_delivery, Some(9));
    assert_eq!(joined.within_return_window, Some(true));
    assert_eq!(joined.event.customer_id, "cu-1");
    assert_eq!(joined.event.reason_text, None, "PII dropped");

    // A customer without consent: a keyed pseudonym.
    pipeline
        .produce_event(&event("e-pseudo", "o-1", "cu-2"))
        .await;
    let pseudonymised = pipeline.wait_for_enriched("e-pseudo").await;
    let pseudonymiser = Pseudonymiser::new(PSEUDONYM_KEY.as_bytes()).expect("key");
    assert!(pseudonymised.customer_pseudonymised);
    assert_eq!(
        pseudonymised.event.customer_id,
        pseudonymiser.pseudonym("cu-2")
    );

    // The order arrives after its event, within the wait: joined, not flagged.
    pipeline
        .produce_event(&event("e-late", "o-late", "cu-1"))
        .await;
    wait_for_metric(&process, "boomerang_enrich_pending_events", &[], 1).await;
    pipeline.produce_order(&order("o-late", "cu-1")).await;
    let late = pipeline.wait_for_enriched("e-late").await;
    assert!(!late.order_missing, "{late:?}");
    assert_eq!(
        late.order_channel,
        Some(boomerang_schemas::Channel::MobileApp)
    );

    // The order never arrives: emitted after the deadline, flagged.
    pipeline
        .produce_event(&event("e-never", "o-never", "cu-1"))
        .await;
    let never = pipeline.wait_for_enriched("e-never").await;
    assert!(never.order_missing && !never.customer_missing);
    assert_eq!(never.order_channel, None);
    assert_eq!(never.customer_segment.as_deref(), Some("regular"));

    // A customer update changes what later events see.
    pipeline
        .produce_customer(&customer("cu-1", "vip", true))
        .await;
    wait_for_metric(
        &process,
        "boomerang_enrich_reference_changes_total",
        &["table=\"customers\"", "change=\"upsert\""],
        3,
    )
    .await;
    pipeline.produce_event(&event("e-vip", "o-1", "cu-1")).await;
    assert_eq!(
        pipeline
            .wait_for_enriched("e-vip")
            .await
            .customer_segment
            .as_deref(),
        Some("vip")
    );

    // A tombstone removes the customer: later events wait, then are flagged.
    pipeline.delete_customer("cu-2").await;
    wait_for_metric(
        &process,
        "boomerang_enrich_reference_changes_total",
        &["table=\"customers\"", "change=\"tombstone\""],
        1,
    )
    .await;
    pipeline
        .produce_event(&event("e-deleted", "o-1", "cu-2"))
        .await;
    let deleted = pipeline.wait_for_enriched("e-deleted").await;
    assert!(deleted.customer_missing && !deleted.order_missing);
    assert!(
        deleted.customer_pseudonymised,
        "no consent known: pseudonymised"
    );
    assert_eq!(deleted.customer_segment, None);

    // Outcomes as counted.
    let exposition = metrics(&process).await;
    let outcome = |name: &str| {
        value(
            &exposition,
            "boomerang_enrich_join_outcomes_total",
            &[&format!("outcome=\"{name}\"")],
        )
    };
    assert_eq!(outcome("joined"), 3, "{exposition}");
    assert_eq!(outcome("joined_after_wait"), 1);
    assert_eq!(outcome("order_missing"), 1);
    assert_eq!(outcome("customer_missing"), 1);

    // PII of CRM records never reaches the output.
    for record in pipeline.enriched_records() {
        let bytes = record.value.clone().unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("@example.com")
                && !text.contains("Lovelace")
                && !text.contains("may name people"),
            "PII in output: {text}"
        );
    }

    // Nothing is lost: each event once, received = sent, and the group committed to the end.
    let enriched = pipeline.enriched();
    assert_eq!(enriched.len(), 6, "{enriched:?}");
    let exposition = metrics(&process).await;
    assert_eq!(
        value(&exposition, "boomerang_received_events_total", &[]),
        6
    );
    assert_eq!(value(&exposition, "boomerang_sent_events_total", &[]), 6);
    assert_eq!(
        value(&exposition, "boomerang_enrich_pending_events", &[]),
        0
    );
    let brokers = pipeline.stack.kafka_brokers.clone();
    let (group, topic) = (
        pipeline.group.clone(),
        pipeline.topics.validated_events.clone(),
    );
    poll_until(
        "offsets committed to the end",
        Duration::from_secs(30),
        || {
            let (brokers, group, topic) = (brokers.clone(), group.clone(), topic.clone());
            async move {
                let partitions = committed_and_high_watermarks(&brokers, &group, &topic);
                partitions
                    .iter()
                    .all(|(_, committed, high)| committed == high)
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn undecodable_events_are_dead_lettered() {
    let pipeline = Pipeline::new(1).await;
    let process = pipeline.start(MAX_WAIT_MS);
    wait_ready(&process).await;
    pipeline.produce_raw_event("o-x", b"not avro at all").await;
    poll_until("a dead letter", Duration::from_secs(30), || async {
        let dead_letters = pipeline.dead_letters();
        (!dead_letters.is_empty()).then_some(dead_letters)
    })
    .await;
    let dead_letters = pipeline.dead_letters();
    assert_eq!(dead_letters.len(), 1);
    assert_eq!(
        dead_letters[0].value.as_deref(),
        Some(&b"not avro at all"[..])
    );
    assert_eq!(
        dead_letters[0].header("boomerang.dlq.stage").as_deref(),
        Some("enrich")
    );
    assert_eq!(
        dead_letters[0]
            .header("boomerang.dlq.error_kind")
            .as_deref(),
        Some("bad_magic_byte")
    );
    let exposition = metrics(&process).await;
    assert_eq!(
        value(&exposition, "boomerang_dead_lettered_events_total", &[]),
        1
    );
}

#[tokio::test]
async fn a_full_pending_buffer_pauses_consumption_and_loses_nothing() {
    let pipeline = Pipeline::new(1).await;
    pipeline
        .produce_customer(&customer("cu-1", "regular", true))
        .await;
    let process = pipeline.start_with(
        1_000,
        &["--pending-max-events", "2", "--batch-max-records", "1"],
    );
    wait_ready(&process).await;
    for n in 0..6 {
        pipeline
            .produce_event(&event(&format!("wait-{n}"), &format!("o-none-{n}"), "cu-1"))
            .await;
    }
    let most_held = std::sync::atomic::AtomicU64::new(0);
    let out = poll_until(
        "all six emitted, flagged",
        Duration::from_secs(60),
        || async {
            let held = value(
                &metrics(&process).await,
                "boomerang_enrich_pending_events",
                &[],
            );
            most_held.fetch_max(held, std::sync::atomic::Ordering::Relaxed);
            let out = pipeline.enriched();
            (out.len() >= 6).then_some(out)
        },
    )
    .await;
    let most_held = most_held.into_inner();
    assert!(most_held <= 2, "held {most_held} with room for 2");
    assert_eq!(out.len(), 6);
    assert!(out.iter().all(|enriched| enriched.order_missing));
    // In order: one partition, and each waited its turn.
    let ids: Vec<String> = out
        .into_iter()
        .map(|enriched| enriched.event.event_id)
        .collect();
    assert_eq!(ids, (0..6).map(|n| format!("wait-{n}")).collect::<Vec<_>>());
}
