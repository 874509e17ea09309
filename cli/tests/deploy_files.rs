//! The monitoring and deployment files: alert rules checked and unit-tested by promtool, the
//! compose file and the Grafana dashboard checked against what the code really exports and
//! accepts. (No Docker here: the compose file is checked, not run.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn promtool(arguments: &[&str], directory: &Path) {
    let output = Command::new("promtool")
        .args(arguments)
        .current_dir(directory)
        .output()
        .expect("promtool (installed by deploy/local/stack.sh up)");
    assert!(
        output.status.success(),
        "promtool {arguments:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// All Rust sources of the stages and their shared runtime, concatenated.
fn sources() -> String {
    let mut text = String::new();
    for crate_dir in ["runtime", "clickhouse", "ingest", "enrich", "sink", "cli"] {
        let mut stack = vec![repo().join(crate_dir).join("src")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("source dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|extension| extension == "rs") {
                    text.push_str(&std::fs::read_to_string(&path).expect("source"));
                }
            }
        }
    }
    text
}

/// `boomerang_*` metric names in a PromQL text, less histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut index = 0;
    while let Some(found) = text[index..].find("boomerang_") {
        let start = index + found;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        // Label values such as `boomerang-sink` are not metrics; names have an underscore after.
        if start == 0 || !bytes[start - 1].is_ascii_alphanumeric() {
            names.insert(name.to_string());
        }
        index = end.max(start + 1);
    }
    names
}

fn assert_defined(names: &BTreeSet<String>, sources: &str, what: &str) {
    for name in names {
        assert!(
            sources.contains(&format!("\"{name}\"")),
            "{what} uses {name}, which no binary exports"
        );
    }
}

#[test]
fn alert_rules_pass_promtool_and_fire_when_they_should() {
    let monitoring = repo().join("deploy/monitoring");
    promtool(&["check", "rules", "alerts.yml"], &monitoring);
    promtool(&["test", "rules", "alerts.test.yml"], &monitoring);
    let rules = std::fs::read_to_string(monitoring.join("alerts.yml")).expect("rules");
    let names = metric_names(&rules);
    assert!(names.len() >= 8, "{names:?}");
    assert_defined(&names, &sources(), "alerts.yml");
}

#[test]
fn the_compose_prometheus_config_is_valid() {
    let scratch =
        std::env::temp_dir().join(format!("boomerang-compose-check-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch");
    let config = std::fs::read_to_string(repo().join("deploy/compose/prometheus.yml"))
        .expect("prometheus.yml")
        .replace(
            "/etc/prometheus/alerts.yml",
            &repo()
                .join("deploy/monitoring/alerts.yml")
                .to_string_lossy(),
        );
    std::fs::write(scratch.join("prometheus.yml"), config).expect("write");
    promtool(&["check", "config", "prometheus.yml"], &scratch);
    std::fs::remove_dir_all(&scratch).ok();
}

#[test]
fn the_compose_file_uses_official_images_and_what_the_binaries_accept() {
    let compose_dir = repo().join("deploy/compose");
    let text = std::fs::read_to_string(compose_dir.join("compose.yaml")).expect("compose.yaml");
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).expect("compose.yaml is YAML");
    let services = compose["services"].as_mapping().expect("services");
    let image = |name: &str| {
        services[name]["image"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for (service, official) in [
        ("kafka", "apache/kafka:"),
        ("schema-registry", "confluentinc/cp-schema-registry:"),
        ("clickhouse", "clickhouse/clickhouse-server:"),
        ("prometheus", "prom/prometheus:"),
        ("grafana", "grafana/grafana:"),
    ] {
        assert!(
            image(service).starts_with(official),
            "{service}: {}",
            image(service)
        );
    }
    assert_eq!(
        compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"].as_str(),
        Some("broker,controller"),
        "KRaft mode"
    );
    // The three stages run our binaries with settings they accept, where Prometheus looks.
    let sources = sources();
    let scrape_config =
        std::fs::read_to_string(compose_dir.join("prometheus.yml")).expect("prometheus.yml");
    for (service, binary) in [
        ("ingest", "boomerang-ingest"),
        ("enrich", "boomerang-enrich"),
        ("sink", "boomerang-sink"),
    ] {
        let command = services[service]["command"].as_sequence().expect("command");
        assert_eq!(command[0].as_str(), Some(binary));
        let environment = services[service]["environment"]
            .as_mapping()
            .expect("environment");
        for key in environment.keys() {
            let key = key.as_str().expect("key");
            assert!(
                sources.contains(&format!("\"{key}\"")),
                "{service} sets {key}, which no binary reads"
            );
        }
        let port = 9600
            + match service {
                "ingest" => 1,
                "enrich" => 2,
                _ => 3,
            };
        assert!(
            scrape_config.contains(&format!("{service}:{port}")),
            "Prometheus scrapes {service}"
        );
        assert!(
            command
                .iter()
                .any(|part| part.as_str() == Some(&format!("0.0.0.0:{port}"))),
            "{service} listens on {port}"
        );
    }
    // Every file mounted into a container exists.
    for service in services.values() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume
                .as_str()
                .expect("volume")
                .split(':')
                .next()
                .expect("source");
            if source.starts_with('.') {
                assert!(
                    compose_dir.join(source).exists(),
                    "mounted file {source} is missing"
                );
            }
        }
    }
    assert!(compose_dir.join("Dockerfile").exists());
}

#[test]
fn the_grafana_dashboard_charts_only_metrics_the_binaries_export() {
    let dashboard: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("deploy/monitoring/grafana/boomerang.json")).expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut expressions = String::new();
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            expressions.push_str(target["expr"].as_str().expect("expr"));
            expressions.push('\n');
        }
    }
    let names = metric_names(&expressions);
    assert!(names.len() >= 20, "{names:?}");
    assert_defined(&names, &sources(), "the dashboard");
    assert_eq!(dashboard["uid"].as_str(), Some("boomerang-pipeline"));
}

/// The analytics dashboard reads ClickHouse through the provisioned data source, and only
/// objects the migrations create. (Its SQL runs against a demo run's ClickHouse in
/// `end_to_end.rs`.)
#[test]
fn the_analytics_dashboard_queries_objects_the_migrations_create() {
    let dashboard: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("deploy/monitoring/grafana/analytics.json")).expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let provisioning = std::fs::read_to_string(
        repo().join("deploy/monitoring/grafana/provisioning-datasources.yml"),
    )
    .expect("provisioning");
    assert!(provisioning.contains("uid: boomerang-clickhouse"));
    let migrations: String = boomerang_clickhouse::migrations::MIGRATIONS
        .iter()
        .map(|migration| migration.sql)
        .collect();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(
                target["datasource"]["uid"].as_str(),
                Some("boomerang-clickhouse"),
                "{panel}"
            );
            let sql = target["rawSql"].as_str().expect("rawSql");
            let object = sql
                .split("FROM ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .expect("FROM an object");
            assert!(
                migrations.contains(&format!("VIEW IF NOT EXISTS {object} "))
                    || migrations.contains(&format!("VIEW {object} "))
                    || migrations.contains(&format!("TABLE IF NOT EXISTS {object}\n")),
                "{object} is not created by a migration"
            );
        }
    }
    assert_eq!(dashboard["uid"].as_str(), Some("boomerang-analytics"));
}

#[test]
fn the_backfill_example_is_read_as_the_readme_says() {
    use boomerang_schemas::{Customer, Order, PostPurchaseEvent, avro_json};
    let example = repo().join("deploy/backfill/example");
    let lines = |name: &str| -> Vec<String> {
        std::fs::read_to_string(example.join(name))
            .unwrap_or_else(|error| panic!("{name}: {error}"))
            .lines()
            .map(str::to_string)
            .collect()
    };
    let customers: Vec<Customer> = lines("customers.jsonl")
        .iter()
        .map(|line| avro_json::decode(line).expect("a customer"))
        .collect();
    let orders: Vec<Order> = lines("orders.jsonl")
        .iter()
        .map(|line| avro_json::decode(line).expect("an order"))
        .collect();
    let events: Vec<PostPurchaseEvent> = lines("events.jsonl")
        .iter()
        .map(|line| avro_json::decode(line).expect("an event"))
        .collect();
    assert_eq!((customers.len(), orders.len(), events.len()), (1, 1, 5));
    // One case, on a line of the order, of its customer.
    assert!(events.iter().all(|event| {
        event.order_id == orders[0].order_id
            && event.customer_id == customers[0].customer_id
            && orders[0]
                .lines
                .iter()
                .any(|line| line.order_line_id == event.order_line_id)
    }));
    let refund = events.last().expect("a refund");
    assert_eq!(
        refund.amount.as_ref().map(|money| money.amount_minor),
        Some(8999)
    );
}
