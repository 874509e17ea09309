//! The main job, end to end, through the README's first command: a small generated world,
//! exported and loaded with `boomerang backfill`, through the real binaries on the local stack; every stage's counts and every analytics
//! figure must equal the generator's ground truth (the report exits non-zero otherwise). Then a
//! customer erased through `boomerang erase` (no linkable row left, every figure unchanged), and
//! the run's dead letters: every one listed, and the malformed ones replayed come back. And
//! every panel of the analytics dashboard answers with rows from the run's ClickHouse.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn run_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/run.sh")
}

fn stack_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/stack.sh")
}

fn stack_is_up() -> bool {
    Command::new(stack_script())
        .arg("status")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// `run.sh` under this test's own run root and ports: its `stop` stops only what this test's
/// run started, never the stages or the stack of a run the person started before the tests
/// (the README's two commands, in order).
fn run_command(run_root: &std::path::Path, ports: &str) -> Command {
    let mut command = Command::new(run_script());
    command
        .env("BOOMERANG_RUN_ROOT", run_root)
        .env("BOOMERANG_RUN_HTTP_PORTS", ports);
    command
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The release CLI run.sh built.
fn boomerang() -> PathBuf {
    target_dir().join("release/boomerang")
}

/// `boomerang dlq …` on the run's dead-letter topic; its output.
fn dlq(dead_letter_topic: &str, arguments: &[&str]) -> String {
    let output = Command::new(boomerang())
        .arg("dlq")
        .args(arguments)
        .env("BOOMERANG_DEAD_LETTER_TOPIC", dead_letter_topic)
        .output()
        .expect("boomerang dlq");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn selected(inspect_output: &str) -> u64 {
    inspect_output
        .lines()
        .find_map(|line| line.strip_suffix(" dead letter(s) selected"))
        .and_then(|count| count.parse().ok())
        .expect("a count")
}

/// While the stages still run: every dead letter is listed, and replayed malformed records
/// come back to the dead-letter topic (they are still malformed).
fn check_dead_letters(truth: &serde_json::Value) {
    let topic = format!(
        "{}.dead-letter",
        truth["topics_prefix"].as_str().expect("run id")
    );
    let every = ["inspect", "--limit", "1000000"];
    let all = selected(&dlq(&topic, &every));
    assert_eq!(Some(all), truth["ingest"]["dead_lettered"].as_u64());
    let malformed = selected(&dlq(
        &topic,
        &[
            "inspect",
            "--limit",
            "1000000",
            "--error-kind",
            "bad_magic_byte",
        ],
    ));
    assert!(malformed > 0 && malformed < all, "{malformed} of {all}");
    let replayed = dlq(
        &topic,
        &[
            "replay",
            "--limit",
            "1000000",
            "--error-kind",
            "bad_magic_byte",
        ],
    );
    assert!(
        replayed.contains(&format!("{malformed} dead letter(s) replayed")),
        "{replayed}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while selected(&dlq(&topic, &every)) < all + malformed {
        assert!(
            Instant::now() < deadline,
            "replayed records did not come back"
        );
        std::thread::sleep(Duration::from_millis(500)); // polling, with the deadline above
    }
}

/// `boomerang erase …` on the run's topics and database; its exit status and output.
fn erase(prefix: &str, arguments: &[&str]) -> (bool, String) {
    let output = Command::new(boomerang())
        .arg("erase")
        .args(arguments)
        .env(
            "BOOMERANG_ERASURE_REQUESTS_TOPIC",
            format!("{prefix}.privacy.erasure-requests"),
        )
        .env(
            "BOOMERANG_CUSTOMERS_TOPIC",
            format!("{prefix}.crm.customers"),
        )
        .env("BOOMERANG_ORDERS_TOPIC", format!("{prefix}.oms.orders"))
        .env(
            "BOOMERANG_CLICKHOUSE_DATABASE",
            format!("boomerang_{}", prefix.replace('-', "_")),
        )
        .env(
            "BOOMERANG_PSEUDONYM_KEY",
            "local-run-pseudonym-key-not-a-secret",
        )
        .output()
        .expect("boomerang erase");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// The SQL of a dashboard panel with the ClickHouse data source's macros expanded as the
/// plugin expands them, over a range wide enough for any generated world.
fn expand_macros(sql: &str) -> String {
    let mut expanded = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(start) = rest.find("$__dateFilter(") {
        expanded.push_str(&rest[..start]);
        let after = &rest[start + "$__dateFilter(".len()..];
        let end = after.find(')').expect("a closed $__dateFilter(");
        let column = &after[..end];
        expanded.push_str(&format!(
            "{column} >= toDate('2000-01-01') AND {column} <= toDate('2100-01-01')"
        ));
        rest = &after[end + 1..];
    }
    expanded.push_str(rest);
    assert!(!expanded.contains("$__"), "a macro left: {expanded}");
    expanded
}

/// Every panel of the analytics dashboard, run against the run's ClickHouse, returns rows.
fn check_analytics_dashboard(truth: &serde_json::Value) {
    let prefix = truth["topics_prefix"].as_str().expect("run id");
    let database = format!("boomerang_{}", prefix.replace('-', "_"));
    let url = std::env::var("BOOMERANG_CLICKHOUSE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:18123".to_string());
    let dashboard: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/monitoring/grafana/analytics.json"),
        )
        .expect("the analytics dashboard"),
    )
    .expect("JSON");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let client = reqwest::Client::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().expect("targets") {
            let sql = expand_macros(target["rawSql"].as_str().expect("rawSql"));
            let (status, body) = runtime.block_on(async {
                let response = client
                    .post(&url)
                    .query(&[("database", database.as_str())])
                    .body(format!("{sql}\nFORMAT TSV"))
                    .send()
                    .await
                    .expect("ClickHouse answers");
                let status = response.status();
                (status, response.text().await.expect("a body"))
            });
            assert!(
                status.is_success(),
                "panel {title:?}: {status} {body}\n{sql}"
            );
            assert!(
                body.lines().count() > 0,
                "panel {title:?} returned no rows:\n{sql}"
            );
        }
    }
}

/// While the stages still run: a customer erased through the CLI leaves no linkable row, and
/// every figure of the report still matches the ground truth (anonymised, not deleted).
fn check_erasure(truth: &serde_json::Value, truth_path: &std::path::Path, ports: &str) {
    let prefix = truth["topics_prefix"].as_str().expect("run id");
    let customer = ["--customer-id", "cus-0000042"];
    let (erased, before) = erase(prefix, &[&customer[..], &["--verify"]].concat());
    assert!(!erased && before.contains("NOT ERASED"), "{before}");
    let (filed, output) = erase(
        prefix,
        &[&customer[..], &["--requested-by", "e2e-test"]].concat(),
    );
    assert!(filed, "{output}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (erased, verdict) = erase(prefix, &[&customer[..], &["--verify"]].concat());
        // Both passes done, and nothing linkable left.
        if erased && verdict.contains(": applied, anonymised") {
            break;
        }
        assert!(Instant::now() < deadline, "not erased in time: {verdict}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let report = Command::new(boomerang())
        .args(["report", "--truth"])
        .arg(truth_path)
        .args(
            ["--ingest-metrics", "--enrich-metrics", "--sink-metrics"]
                .iter()
                .zip(ports.split(' '))
                .flat_map(|(flag, port)| {
                    [flag.to_string(), format!("http://127.0.0.1:{port}/metrics")]
                }),
        )
        .env(
            "BOOMERANG_CLICKHOUSE_DATABASE",
            format!("boomerang_{}", prefix.replace('-', "_")),
        )
        .output()
        .expect("boomerang report");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&report.stdout),
        String::from_utf8_lossy(&report.stderr),
    );
    assert!(
        stdout.contains("Everything matches the generator's ground truth."),
        "the figures changed with the erasure: {stdout}{stderr}"
    );
}

#[test]
fn a_small_world_matches_its_ground_truth_at_every_stage() {
    let run_root = target_dir().join(format!("test-runs/e2e-{}", std::process::id()));
    let ports = [(); 3].map(|()| boomerang_testkit::free_port().to_string());
    let ports = ports.join(" ");
    let stack_was_up = stack_is_up();
    let output = run_command(&run_root, &ports)
        .args(["--orders", "1500", "--customers", "300", "--seed", "7"])
        .output()
        .expect("run deploy/local/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let truth_path: Option<PathBuf> = stderr
        .lines()
        .find_map(|line| line.strip_prefix("gen: ground truth in "))
        .map(|path| PathBuf::from(path.trim()));
    let truth: Option<serde_json::Value> = truth_path
        .as_ref()
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let dead_letters = match (&truth, output.status.success()) {
        (Some(truth), true) => Some(std::panic::catch_unwind(|| {
            // First: the dead letters' check replays some, which changes ingest's counts.
            check_analytics_dashboard(truth);
            check_erasure(truth, truth_path.as_deref().expect("read from it"), &ports);
            check_dead_letters(truth);
        })),
        _ => None,
    };
    // Whatever happened, stop what the run started.
    let stopped = run_command(&run_root, &ports).arg("stop").status();
    let stack_still_up = stack_is_up();

    assert!(
        output.status.success(),
        "run.sh failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("Everything matches the generator's ground truth."),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("  holds  ok").count(),
        3,
        "conservation at every stage: {stdout}"
    );
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
    if let Some(Err(panic)) = dead_letters {
        std::panic::resume_unwind(panic);
    }
    assert!(
        stopped.is_ok_and(|status| status.success()),
        "run.sh stop failed"
    );
    assert!(
        !stack_was_up || stack_still_up,
        "the test's run.sh stop brought down a stack it did not start"
    );

    // The world exercised every fault the pipeline handles.
    let truth = truth.expect("the ground truth");
    // Retried events: inside ingest's window dropped there, older ones by the sink.
    assert!(
        truth["ingest"]["deduplicated"].as_u64() > Some(0),
        "{truth}"
    );
    assert!(truth["sink"]["deduplicated"].as_u64() > Some(0), "{truth}");
    assert!(
        truth["ingest"]["dead_lettered"].as_u64() > Some(0),
        "{truth}"
    );
    assert!(truth["enrich_order_missing"].as_u64() > Some(0), "{truth}");
    assert!(truth["refund_time"]["cases"].as_u64() > Some(0), "{truth}");
    assert!(truth["warranty_decided"].as_u64() > Some(0), "{truth}");
    let intelligence = &truth["intelligence"];
    for figure in [
        "repeat_purchase",
        "return_value",
        "operations",
        "dispositions",
        "risk_flags",
        "data_quality",
    ] {
        assert!(
            intelligence[figure]
                .as_object()
                .is_some_and(|figure| !figure.is_empty()),
            "{figure}: {intelligence}"
        );
    }
    assert!(
        intelligence["refund_sla"]["received"].as_u64() > Some(0),
        "{intelligence}"
    );
}
