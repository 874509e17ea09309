//! The binary's life against the local stack: config, endpoints, readiness and SIGTERM.

mod support;

use support::{BINARY, Pipeline};

fn topics_config(pipeline: &Pipeline) -> String {
    format!(
        "raw-events-topic = \"{}\"\nvalidated-events-topic = \"{}\"\ndead-letter-topic = \"{}\"\n\
         schema-registry-url = \"{}\"\n",
        pipeline.topics.raw_events,
        pipeline.topics.validated_events,
        pipeline.topics.dead_letter,
        pipeline.stack.schema_registry_url
    )
}

#[tokio::test]
async fn starts_serves_its_endpoints_and_stops_on_sigterm() {
    let pipeline = Pipeline::new(2).await;
    boomerang_testkit::assert_stage_lifecycle(BINARY, "ingest", &topics_config(&pipeline)).await;
}

#[tokio::test]
async fn is_not_ready_while_the_brokers_do_not_answer() {
    boomerang_testkit::assert_not_ready_without_brokers(BINARY, &[]).await;
}

#[tokio::test]
async fn the_local_stack_prometheus_scrapes_it() {
    let pipeline = Pipeline::new(2).await;
    let arguments = pipeline.arguments();
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    boomerang_testkit::assert_prometheus_scrapes(BINARY, &arguments).await;
}
