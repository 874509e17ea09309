//! Test helpers for tests that run against the local stack (`deploy/local/stack.sh up`).
//!
//! - [`Stack`]: the stack's endpoints, from the environment or the stack's env file.
//! - [`unique_name`]: names that never collide between tests or runs.
//! - [`poll_until`]: wait for a condition with a deadline, never a bare sleep.
//! - [`StageProcess`]: a stage binary under test, killed on drop.

pub mod samples;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The local stack's endpoints.
#[derive(Debug, Clone)]
pub struct Stack {
    pub kafka_brokers: String,
    pub schema_registry_url: String,
    pub clickhouse_url: String,
    pub prometheus_url: String,
    /// Where a binary registers its scrape target for the stack's Prometheus.
    pub prometheus_targets_dir: String,
}

impl Stack {
    /// Reads `BOOMERANG_*` variables, else the env file `stack.sh up` wrote. Panics with what to
    /// do when neither is there: these tests need the real stack, never mocks.
    pub fn from_env() -> Self {
        let file = env_file_path();
        let from_file = std::fs::read_to_string(&file)
            .map(|text| parse_env_file(&text))
            .unwrap_or_default();
        let get = |name: &str| {
            std::env::var(name)
                .ok()
                .or_else(|| from_file.get(name).cloned())
                .unwrap_or_else(|| {
                    panic!(
                        "{name} is not set and {} has no value for it: start the local stack with \
                         deploy/local/stack.sh up (or run deploy/local/test.sh)",
                        file.display()
                    )
                })
        };
        Self {
            kafka_brokers: get("BOOMERANG_KAFKA_BROKERS"),
            schema_registry_url: get("BOOMERANG_SCHEMA_REGISTRY_URL"),
            clickhouse_url: get("BOOMERANG_CLICKHOUSE_URL"),
            prometheus_url: get("BOOMERANG_PROMETHEUS_URL"),
            prometheus_targets_dir: get("BOOMERANG_PROMETHEUS_TARGETS_DIR"),
        }
    }
}

fn env_file_path() -> PathBuf {
    if let Some(path) = std::env::var_os("BOOMERANG_STACK_ENV") {
        return PathBuf::from(path);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    workspace.join("target/stack/stack.env")
}

fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// `prefix-<pid>-<time>-<n>`: unique across tests in a run and across runs on one stack.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Calls `check` until it returns `Some`, pausing briefly between calls; panics with `what`
/// when `deadline` passes first.
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if started.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on loopback (free when asked; bind it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// One HTTP client for every poll: `reqwest::get` builds a client per call, which loads the
/// system's root certificates each time — enough CPU, polled every 100 ms, to disturb the
/// benchmarks that share the machine. No idle connections are kept, so the client can serve
/// the many test runtimes without handing one a connection that belongs to another.
fn http_client() -> &'static reqwest::Client {
    static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            // Invariant: building fails only if the TLS backend cannot initialise, which
            // would make every HTTP call of the tests fail anyway.
            .expect("HTTP client")
    });
    &CLIENT
}

/// A binary under test; killed (SIGKILL) on drop if still running.
pub struct StageProcess {
    child: Child,
    pub http_address: String,
}

impl StageProcess {
    /// Starts `binary` with `arguments`, its endpoints on a free port, logs to the test's stderr.
    pub fn start(binary: &str, arguments: &[&str], environment: &[(&str, &str)]) -> Self {
        let http_address = format!("127.0.0.1:{}", free_port());
        let child = Command::new(binary)
            .args(arguments)
            .arg("--http-listen")
            .arg(&http_address)
            .envs(environment.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {binary}: {error}"));
        Self {
            child,
            http_address,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has not exited (yet).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_address)
    }

    /// GETs an endpoint: `Some((status, body))`, or `None` while nothing listens.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = http_client().get(self.url(path)).send().await.ok()?;
        let status = response.status().as_u16();
        let body = response.text().await.ok()?;
        Some((status, body))
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// `kill -9`: no shutdown, no final commit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit, polling; panics after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let child = &mut self.child;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if started.elapsed() > deadline {
                panic!("process did not exit within {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

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
/// `promtool check metrics` (installed with the local stack's Prometheus) accepts the exposition:
/// well-formed, and named and typed by Prometheus's conventions.
pub fn assert_promtool_accepts(exposition: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (installed by deploy/local/stack.sh up)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write metrics to promtool");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

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

/// The sum of a metric over all its label sets in a Prometheus text exposition, counting only
/// the label sets that contain every `label_filters` entry (`name="value"`).
pub fn metric_sum(exposition: &str, metric: &str, label_filters: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            if name != metric || !label_filters.iter().all(|filter| series.contains(filter)) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// One consumed record, as a test inspects it.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl ReadRecord {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_ref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }
}

/// Every record of `topic` from the start of each partition to its high watermark as of now.
pub fn read_topic_to_end(brokers: &str, topic: &str) -> Vec<ReadRecord> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("testkit-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("topic metadata");
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|topic| {
            topic
                .partitions()
                .iter()
                .map(|partition| partition.id())
                .collect()
        })
        .unwrap_or_default();
    let mut records = Vec::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .expect("watermarks");
        if high <= low {
            continue;
        }
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(low))
            .expect("assignment");
        consumer.assign(&assignment).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = low;
        while next < high {
            assert!(
                Instant::now() < deadline,
                "reading {topic}/{partition} stalled at {next} of {high}"
            );
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = message.expect("consume");
            next = message.offset() + 1;
            records.push(ReadRecord {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                timestamp_ms: message.timestamp().to_millis(),
                headers: message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|header| {
                                (header.key.to_string(), header.value.map(<[u8]>::to_vec))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
    }
    records
}

/// For each partition of `topic`: the offset `group` committed (-1 if none) and the high
/// watermark.
pub fn committed_and_high_watermarks(
    brokers: &str,
    group: &str,
    topic: &str,
) -> Vec<(i32, i64, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offsets consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("metadata");
    let mut partitions = TopicPartitionList::new();
    for partition in metadata
        .topics()
        .iter()
        .flat_map(|topic| topic.partitions())
    {
        partitions.add_partition(topic, partition.id());
    }
    let committed = consumer
        .committed_offsets(partitions, timeout)
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|element| {
            let (_, high) = consumer
                .fetch_watermarks(topic, element.partition(), timeout)
                .expect("watermarks");
            let offset = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => -1,
            };
            (element.partition(), offset, high)
        })
        .collect()
}

/// A stage's current `/metrics` text (empty while it does not answer).
pub async fn metrics(process: &StageProcess) -> String {
    process
        .get("/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// [`metric_sum`] as a count.
pub fn value(exposition: &str, name: &str, labels: &[&str]) -> u64 {
    metric_sum(exposition, name, labels) as u64
}

/// Waits for a stage's `/readyz` to answer 200.
pub async fn wait_ready(process: &StageProcess) {
    poll_until("the stage to be ready", Duration::from_secs(60), || async {
        process
            .get("/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
}

/// Waits until `group` has committed every partition of `topic` to its end (an empty
/// partition has nothing to commit).
pub async fn wait_committed(brokers: &str, group: &str, topic: &str) {
    poll_until(
        "offsets committed to the end",
        Duration::from_secs(60),
        || async {
            committed_and_high_watermarks(brokers, group, topic)
                .iter()
                .all(|(_, committed, high)| committed == high || *high == 0)
                .then_some(())
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_matching_series_only() {
        let text = "# HELP x\nboomerang_sent_events_total{stage=\"ingest\",topic=\"a\"} 3\n\
                    boomerang_sent_events_total{stage=\"ingest\",topic=\"b\"} 4\n\
                    boomerang_sent_events_total_other 9\nboomerang_dedup 1\n";
        assert_eq!(metric_sum(text, "boomerang_sent_events_total", &[]), 7.0);
        assert_eq!(
            metric_sum(text, "boomerang_sent_events_total", &["topic=\"b\""]),
            4.0
        );
        assert_eq!(metric_sum(text, "boomerang_dedup", &[]), 1.0);
    }
}
