//! Assertions about a stage's whole life that every stage must pass alike.

use std::time::Duration;

use crate::process::http_client;
use crate::{Stack, StageProcess, assert_promtool_accepts, free_port, poll_until, unique_name};

/// Starts a stage binary configured by a config file (brokers) and a variable (the Prometheus
/// targets folder), and checks its whole life: alive, ready once the brokers answer, metrics
/// labelled with its stage, registered as a scrape target, and a clean exit within 10 s of
/// SIGTERM that removes its scrape target.
/// `extra_config` is TOML appended to the config file (a stage's topics, say).
pub async fn assert_stage_lifecycle(binary: &str, stage: &str, extra_config: &str) {
    let stack = Stack::from_env();
    let scratch = std::env::temp_dir().join(unique_name("boomerang-lifecycle"));
    let targets = scratch.join("targets");
    std::fs::create_dir_all(&targets).expect("targets folder");
    let config = scratch.join("stage.toml");
    std::fs::write(
        &config,
        format!(
            "kafka-brokers = \"{}\"\nlog-format = \"text\"\n{extra_config}",
            stack.kafka_brokers
        ),
    )
    .expect("write config file");
    let config = config.to_string_lossy().into_owned();
    let targets_text = targets.to_string_lossy().into_owned();

    let mut process = StageProcess::start(
        binary,
        &["--config", &config],
        &[("BOOMERANG_PROMETHEUS_TARGETS_DIR", &targets_text)],
    );
    let health = poll_until("/healthz", Duration::from_secs(30), || {
        process.get("/healthz")
    })
    .await;
    assert_eq!(health, (200, "ok\n".to_string()));
    poll_until("/readyz to say ready", Duration::from_secs(30), || async {
        process
            .get("/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    let (status, metrics) = process.get("/metrics").await.expect("metrics answer");
    assert_eq!(status, 200);
    let stage_label = format!("stage=\"{stage}\"");
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("boomerang_build_info{") && line.contains(&stage_label)),
        "{metrics}"
    );
    assert_promtool_accepts(&metrics);
    let target_file = targets.join(format!("{stage}-{}.json", process.id()));
    let target = std::fs::read_to_string(&target_file).expect("scrape target registered");
    assert!(target.contains(&process.http_address), "{target}");

    process.terminate();
    let exit = process.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "exit after SIGTERM: {exit}");
    assert!(!target_file.exists(), "scrape target removed at exit");
    let _ = std::fs::remove_dir_all(scratch);
}

/// A stage whose brokers do not answer is alive but not ready, says why, and still stops
/// promptly on SIGTERM.
/// `extra_arguments`: what the stage needs besides brokers to get that far.
pub async fn assert_not_ready_without_brokers(binary: &str, extra_arguments: &[&str]) {
    let nowhere = format!("127.0.0.1:{}", free_port());
    let mut arguments = vec!["--kafka-brokers", &nowhere, "--log-format", "text"];
    arguments.extend_from_slice(extra_arguments);
    let mut process = StageProcess::start(binary, &arguments, &[]);
    poll_until("/healthz", Duration::from_secs(30), || {
        process.get("/healthz")
    })
    .await;
    let (status, reason) = poll_until("/readyz to explain", Duration::from_secs(30), || async {
        process
            .get("/readyz")
            .await
            .filter(|(_, body)| body.contains("kafka brokers do not answer"))
    })
    .await;
    assert_eq!(status, 503, "{reason}");
    process.terminate();
    let exit = process.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "exit after SIGTERM: {exit}");
}

/// Starts a stage registered with the stack's Prometheus and waits until Prometheus has scraped
/// it successfully (its target is `up`).
pub async fn assert_prometheus_scrapes(binary: &str, arguments: &[&str]) {
    let stack = Stack::from_env();
    let process = StageProcess::start(
        binary,
        arguments,
        &[(
            "BOOMERANG_PROMETHEUS_TARGETS_DIR",
            &stack.prometheus_targets_dir,
        )],
    );
    let targets_url = format!("{}/api/v1/targets?state=active", stack.prometheus_url);
    let address = process.http_address.clone();
    poll_until(
        "Prometheus to scrape the stage",
        Duration::from_secs(60),
        || async {
            let body: serde_json::Value = http_client()
                .get(&targets_url)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let targets = body["data"]["activeTargets"].as_array()?;
            let target = targets
                .iter()
                .find(|target| target["labels"]["instance"] == address.as_str())?;
            (target["health"] == "up").then_some(())
        },
    )
    .await;
}
