//! `boomerang schemas register` and `boomerang topics create` against the local stack.

use std::process::Command;

use boomerang_testkit::{Stack, unique_name};

const BINARY: &str = env!("CARGO_BIN_EXE_boomerang");

fn topic_flags(prefix: &str) -> Vec<String> {
    [
        ("--raw-events-topic", "post-purchase.raw"),
        ("--validated-events-topic", "post-purchase.validated"),
        ("--enriched-events-topic", "post-purchase.enriched"),
        ("--customers-topic", "crm.customers"),
        ("--orders-topic", "oms.orders"),
        ("--erasure-requests-topic", "privacy.erasure-requests"),
        ("--dead-letter-topic", "dead-letter"),
    ]
    .iter()
    .flat_map(|(flag, suffix)| [flag.to_string(), format!("{prefix}.{suffix}")])
    .collect()
}

fn run(arguments: &[String]) -> String {
    let output = Command::new(BINARY)
        .args(arguments)
        .output()
        .expect("run boomerang");
    assert!(
        output.status.success(),
        "boomerang {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn schemas_register_puts_every_topic_subject_in_the_registry_and_is_repeatable() {
    let stack = Stack::from_env();
    let prefix = unique_name("it-cli");
    let mut arguments: Vec<String> = vec![
        "schemas".into(),
        "register".into(),
        "--schema-registry-url".into(),
        stack.schema_registry_url.clone(),
    ];
    arguments.extend(topic_flags(&prefix));

    let first = run(&arguments);
    // Raw and validated events carry the event schema with its history: 2 versions each.
    assert_eq!(first.lines().count(), 8, "6 subjects, 8 versions:\n{first}");
    let second = run(&arguments);
    assert_eq!(first, second, "registering again changes nothing");

    let subjects: Vec<String> = reqwest::get(format!("{}/subjects", stack.schema_registry_url))
        .await
        .expect("list subjects")
        .json()
        .await
        .expect("subjects json");
    for suffix in [
        "post-purchase.raw",
        "post-purchase.validated",
        "post-purchase.enriched",
        "crm.customers",
        "oms.orders",
        "privacy.erasure-requests",
    ] {
        let subject = format!("{prefix}.{suffix}-value");
        assert!(
            subjects.contains(&subject),
            "{subject} missing from {subjects:?}"
        );
    }
    assert!(
        !subjects
            .iter()
            .any(|subject| subject.contains("dead-letter")),
        "the dead-letter topic carries raw bytes, not one schema"
    );
}

#[tokio::test]
async fn topics_create_makes_every_topic_and_is_repeatable() {
    let stack = Stack::from_env();
    let prefix = unique_name("it-topics");
    let mut arguments: Vec<String> = vec![
        "topics".into(),
        "create".into(),
        "--kafka-brokers".into(),
        stack.kafka_brokers.clone(),
        "--event-partitions".into(),
        "4".into(),
    ];
    arguments.extend(topic_flags(&prefix));
    let output = run(&arguments);
    assert!(
        output.contains(&format!("{prefix}.post-purchase.raw")),
        "{output}"
    );
    assert!(output.contains("4 partitions"), "{output}");
    run(&arguments);
}
