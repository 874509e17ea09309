//! The local stack's endpoints, and names that never collide on it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// A free TCP port on loopback (free when asked; bind it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}
