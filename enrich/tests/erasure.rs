//! A customer's erasure request as enrich sees it: the customer's record and orders are
//! forgotten, their events from before the request are not emitted (counted), later events are
//! a new relationship, other customers are untouched, and a restarted enrich still knows.

mod support;

use std::time::Duration;

use boomerang_schemas::{ErasureRequest, TimestampMicros};
use boomerang_testkit::samples::customer;
use support::{
    Pipeline, event, metrics, order, reference_records, value, wait_for_metric, wait_ready,
};

const MAX_WAIT_MS: u64 = 1_000;

fn request(customer_id: &str) -> ErasureRequest {
    ErasureRequest {
        request_id: format!("er-{customer_id}"),
        customer_id: customer_id.into(),
        requested_at: TimestampMicros::now(),
        requested_by: "integration-test".into(),
        anonymisation_salt: "00112233445566778899aabbccddeeff".into(),
    }
}

#[tokio::test]
async fn an_erased_customer_is_forgotten_and_their_earlier_events_not_emitted() {
    let pipeline = Pipeline::new(2).await;
    for id in ["cu-1", "cu-2"] {
        pipeline.produce_customer(&customer(id, "vip", true)).await;
    }
    pipeline.produce_order(&order("o-1", "cu-1")).await;
    pipeline.produce_order(&order("o-2", "cu-2")).await;
    let process = pipeline.start(MAX_WAIT_MS);
    wait_ready(&process).await;
    assert_eq!(reference_records(&process).await, (2, 2));

    let erasure = request("cu-1");
    pipeline
        .produce(&pipeline.topics.erasure_requests, "cu-1", &erasure)
        .await;
    wait_for_metric(
        &process,
        "boomerang_enrich_reference_records",
        &["table=\"erasures\""],
        1,
    )
    .await;
    assert_eq!(
        reference_records(&process).await,
        (1, 1),
        "cu-1 and o-1 forgotten"
    );

    // An event of the erased customer from before the request (in flight, or replayed), and
    // one of another customer: only the other one is emitted.
    pipeline
        .produce_event(&event("e-erased", "o-1", "cu-1"))
        .await;
    pipeline
        .produce_event(&event("e-kept", "o-2", "cu-2"))
        .await;
    let kept = pipeline.wait_for_enriched("e-kept").await;
    assert!(!kept.customer_missing && !kept.order_missing);
    wait_for_metric(&process, "boomerang_enrich_events_erased_total", &[], 1).await;
    // After the request: a new relationship, joined with what there is now (nothing).
    let mut later = event("e-later", "o-1", "cu-1");
    later.occurred_at = TimestampMicros::now();
    pipeline.produce_event(&later).await;
    let later = pipeline.wait_for_enriched("e-later").await;
    assert!(later.customer_missing && later.order_missing, "{later:?}");
    assert!(
        pipeline
            .enriched()
            .iter()
            .all(|enriched| enriched.event.event_id != "e-erased"),
        "the earlier event is not emitted"
    );

    // The CRM publishes the old record again (a compaction replay): it stays out.
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
    assert_eq!(reference_records(&process).await, (1, 1));

    // A restarted enrich reads the request again before it joins anything.
    process.terminate();
    let mut process = process;
    process.wait_exit(Duration::from_secs(30)).await;
    let restarted = pipeline.start(MAX_WAIT_MS);
    wait_ready(&restarted).await;
    assert_eq!(reference_records(&restarted).await, (1, 1));
    pipeline
        .produce_event(&event("e-erased-2", "o-1", "cu-1"))
        .await;
    pipeline
        .produce_event(&event("e-kept-2", "o-2", "cu-2"))
        .await;
    pipeline.wait_for_enriched("e-kept-2").await;
    wait_for_metric(&restarted, "boomerang_enrich_events_erased_total", &[], 1).await;
    assert_eq!(
        value(
            &metrics(&restarted).await,
            "boomerang_enrich_events_erased_total",
            &[]
        ),
        1
    );
    assert!(
        pipeline
            .enriched()
            .iter()
            .all(|enriched| !enriched.event.event_id.starts_with("e-erased")),
    );
}

#[tokio::test]
async fn a_consent_withdrawal_takes_effect_for_every_later_event() {
    let pipeline = Pipeline::new(1).await;
    pipeline
        .produce_customer(&customer("cu-1", "vip", true))
        .await;
    pipeline.produce_order(&order("o-1", "cu-1")).await;
    let process = pipeline.start(MAX_WAIT_MS);
    wait_ready(&process).await;
    pipeline
        .produce_event(&event("e-given", "o-1", "cu-1"))
        .await;
    let given = pipeline.wait_for_enriched("e-given").await;
    assert_eq!(given.event.customer_id, "cu-1");
    assert!(!given.customer_pseudonymised);

    let mut withdrawn = customer("cu-1", "vip", false);
    withdrawn.updated_at = TimestampMicros::now();
    pipeline.produce_customer(&withdrawn).await;
    wait_for_metric(
        &process,
        "boomerang_enrich_reference_changes_total",
        &["table=\"customers\"", "change=\"upsert\""],
        2,
    )
    .await;
    pipeline
        .produce_event(&event("e-withdrawn", "o-1", "cu-1"))
        .await;
    let later = pipeline.wait_for_enriched("e-withdrawn").await;
    assert!(later.customer_pseudonymised);
    assert_ne!(later.event.customer_id, "cu-1");
    assert!(
        boomerang_runtime::pseudonym::Pseudonymiser::looks_like_pseudonym(&later.event.customer_id)
    );
}
