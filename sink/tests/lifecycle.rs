//! The binary's life against the local stack: config, endpoints, readiness and SIGTERM.

const BINARY: &str = env!("CARGO_BIN_EXE_boomerang-sink");

#[tokio::test]
async fn starts_serves_its_endpoints_and_stops_on_sigterm() {
    boomerang_testkit::assert_stage_lifecycle(BINARY, "sink", "").await;
}

#[tokio::test]
async fn is_not_ready_while_the_brokers_do_not_answer() {
    boomerang_testkit::assert_not_ready_without_brokers(BINARY, &[]).await;
}
