//! The binary's life against the local stack: config, endpoints, readiness and SIGTERM.

mod support;

use support::{BINARY, PSEUDONYM_KEY, Pipeline};

#[tokio::test]
async fn starts_serves_its_endpoints_and_stops_on_sigterm() {
    let pipeline = Pipeline::new(2).await;
    let config = format!(
        "validated-events-topic = \"{}\"\nenriched-events-topic = \"{}\"\ncustomers-topic = \"{}\"\n\
         orders-topic = \"{}\"\nerasure-requests-topic = \"{}\"\ndead-letter-topic = \"{}\"\n\
         schema-registry-url = \"{}\"\npseudonym-key = \"{PSEUDONYM_KEY}\"\n",
        pipeline.topics.validated_events,
        pipeline.topics.enriched_events,
        pipeline.topics.customers,
        pipeline.topics.orders,
        pipeline.topics.erasure_requests,
        pipeline.topics.dead_letter,
        pipeline.stack.schema_registry_url
    );
    boomerang_testkit::assert_stage_lifecycle(BINARY, "enrich", &config).await;
}

#[tokio::test]
async fn is_not_ready_while_the_brokers_do_not_answer() {
    boomerang_testkit::assert_not_ready_without_brokers(
        BINARY,
        &["--pseudonym-key", PSEUDONYM_KEY],
    )
    .await;
}

/// Found by the chaos soak: an enrich whose reference loader could not read its topic's
/// metadata at start-up (a broker too loaded to answer in time) exited. It now waits, not
/// ready and saying why, and starts once it can: here the orders topic does not exist yet.
#[tokio::test]
async fn waits_for_a_reference_topic_it_cannot_read_yet_instead_of_exiting() {
    let pipeline = Pipeline::new(1).await;
    let orders = boomerang_testkit::unique_name("it-enr-late-orders");
    let mut stage = pipeline.start_with(1_000, &["--orders-topic", &orders]);
    boomerang_testkit::poll_until(
        "/readyz to say it waits for the orders loader",
        std::time::Duration::from_secs(60),
        || async {
            stage
                .get("/readyz")
                .await
                .filter(|(status, body)| *status == 503 && body.contains("orders loader"))
        },
    )
    .await;
    assert!(stage.is_running(), "enrich exited instead of waiting");
    boomerang_runtime::kafka::ensure_topics(
        &pipeline.kafka,
        &[boomerang_runtime::kafka::TopicSpec::new(&orders, 2).compacted()],
    )
    .await
    .expect("create the orders topic");
    boomerang_testkit::wait_ready(&stage).await;
    assert!(stage.is_running());
}
