//! The binary's life against the local stack: config, endpoints, readiness and SIGTERM.

mod support;

use support::{BINARY, PSEUDONYM_KEY, Pipeline};

#[tokio::test]
async fn starts_serves_its_endpoints_and_stops_on_sigterm() {
    let pipeline = Pipeline::new(2).await;
    let config = format!(
        "validated-events-topic = \"{}\"\nenriched-events-topic = \"{}\"\ncustomers-topic = \"{}\"\n\
         orders-topic = \"{}\"\ndead-letter-topic = \"{}\"\nschema-registry-url = \"{}\"\n\
         pseudonym-key = \"{PSEUDONYM_KEY}\"\n",
        pipeline.topics.validated_events,
        pipeline.topics.enriched_events,
        pipeline.topics.customers,
        pipeline.topics.orders,
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
