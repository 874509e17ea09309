//! The binary's life against the local stack: config, endpoints, readiness and SIGTERM.

mod support;

use std::time::Duration;

use boomerang_testkit::{StageProcess, poll_until, unique_name};
use support::{BINARY, PSEUDONYM_KEY, Pipeline};

#[tokio::test]
async fn starts_serves_its_endpoints_and_stops_on_sigterm() {
    let pipeline = Pipeline::new().await;
    let config = format!(
        "enriched-events-topic = \"{}\"\ncustomers-topic = \"{}\"\norders-topic = \"{}\"\n\
         erasure-requests-topic = \"{}\"\ndead-letter-topic = \"{}\"\nschema-registry-url = \"{}\"\nclickhouse-url = \"{}\"\n\
         clickhouse-database = \"{}\"\npseudonym-key = \"{PSEUDONYM_KEY}\"\n",
        pipeline.topics.enriched_events,
        pipeline.topics.customers,
        pipeline.topics.orders,
        pipeline.topics.erasure_requests,
        pipeline.topics.dead_letter,
        pipeline.stack.schema_registry_url,
        pipeline.clickhouse.url,
        pipeline.clickhouse.database,
    );
    boomerang_testkit::assert_stage_lifecycle(BINARY, "sink", &config).await;
}

#[tokio::test]
async fn is_not_ready_while_the_brokers_do_not_answer() {
    boomerang_testkit::assert_not_ready_without_brokers(
        BINARY,
        &["--pseudonym-key", PSEUDONYM_KEY],
    )
    .await;
}

#[tokio::test]
async fn is_not_ready_until_clickhouse_is_migrated() {
    let pipeline = Pipeline::new().await;
    let database = unique_name("it_unmigrated").replace('-', "_");
    let arguments = pipeline.arguments();
    let mut arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    arguments.extend_from_slice(&["--clickhouse-database", &database]);
    let mut process = StageProcess::start(BINARY, &arguments, &[]);
    let (status, reason) = poll_until(
        "/readyz to ask for migrations",
        Duration::from_secs(30),
        || async {
            process
                .get("/readyz")
                .await
                .filter(|(_, body)| body.contains("boomerang migrate"))
        },
    )
    .await;
    assert_eq!(status, 503, "{reason}");
    let mut migrated = pipeline.clickhouse.clone();
    migrated.database = database;
    boomerang_clickhouse::migrations::apply(&migrated, None)
        .await
        .expect("migrate");
    poll_until("ready once migrated", Duration::from_secs(30), || async {
        process
            .get("/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    process.terminate();
    assert!(process.wait_exit(Duration::from_secs(10)).await.success());
}
