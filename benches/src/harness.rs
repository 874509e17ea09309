//! What the end-to-end harnesses share.

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use apache_avro::Schema;
use boomerang_runtime::decode::WriterSchemaSource;
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::registry::LookupError;
use boomerang_runtime::wire;
use boomerang_schemas::{AvroRecord, SchemaKind, codec};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// The schema id in-process benchmarks frame events with.
pub const SCHEMA_ID: u32 = 1;

/// A writer-schema source that knows one id, [`SCHEMA_ID`], the current event schema: the
/// in-process benchmarks run without a registry.
pub struct CurrentSchemaOnly;

impl WriterSchemaSource for CurrentSchemaOnly {
    fn writer_schema(
        &mut self,
        id: u32,
    ) -> impl Future<Output = Result<&'static Schema, LookupError>> + Send {
        let found = if id == SCHEMA_ID {
            Ok(SchemaKind::PostPurchaseEvent.schema())
        } else {
            Err(LookupError::UnknownId(id))
        };
        async move { found }
    }
}

/// The median of `values`: the middle one, or the mean of the two middle ones (NaN for none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => sorted[len / 2],
        len => (sorted[len / 2 - 1] + sorted[len / 2]) / 2.0,
    }
}

/// A number from the environment (`BOOMERANG_BENCH_EVENTS`, say), else `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Produces `count` records to `topic`, the `n`th keyed and valued by `record(n)`, framed with
/// `schema_id`, as fast as the producer takes them; returns how long it took, flush included.
pub fn prefill<T: AvroRecord>(
    kafka: &KafkaArgs,
    topic: &str,
    schema_id: u32,
    count: usize,
    record: impl Fn(usize) -> (String, T),
) -> Duration {
    let started = Instant::now();
    let mut config = kafka.producer_config();
    config.set("queue.buffering.max.messages", "1000000");
    config.set("linger.ms", "20");
    let producer: ThreadedProducer<DefaultProducerContext> = config.create().expect("producer");
    let mut value = Vec::with_capacity(512);
    for n in 0..count {
        let (key, record) = record(n);
        value.clear();
        wire::start_frame(schema_id, &mut value);
        codec::encode_into(&record, &mut value).expect("encode");
        loop {
            match producer.send(BaseRecord::<str, [u8]>::to(topic).key(&key).payload(&value)) {
                Ok(()) => break,
                Err((_, _record)) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
    producer.flush(Duration::from_secs(300)).expect("flush");
    started.elapsed()
}

/// Builds `bin` of `package` in release mode (as deployed) and returns its path; with
/// `BOOMERANG_BENCH_BINARIES`, that directory's `bin` instead.
pub fn built_release_binary(package: &str, bin: &str) -> PathBuf {
    // Another build's binaries, to compare it with this one under the same harness (the
    // directory of a second clone's `target/release`, say).
    if let Some(directory) = std::env::var_os("BOOMERANG_BENCH_BINARIES") {
        let binary = PathBuf::from(directory).join(bin);
        assert!(binary.is_file(), "{} is not there", binary.display());
        eprintln!("using {}", binary.display());
        return binary;
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .expect("workspace");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", package, "--bin", bin])
        .current_dir(&workspace)
        .status()
        .expect("cargo build");
    assert!(status.success(), "building {bin} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    target.join("release").join(bin)
}

/// Waits, up to `max_wait`, until the machine's CPUs were at least `idle_share` idle over one
/// second (Linux, /proc/stat), and says how long that took. A drain that starts while
/// ClickHouse still merges the parts of the one before, or the broker still settles a
/// pre-fill, pays for that work too: on 2 shared cores it moved a stage's CPU per event by up
/// to 2 µs between rounds (benches/README.md, 2026-12-04).
pub fn wait_for_quiet_machine(idle_share: f64, max_wait: Duration) {
    let started = Instant::now();
    let mut idle = idle_over(Duration::from_secs(1));
    while idle < idle_share && started.elapsed() < max_wait {
        idle = idle_over(Duration::from_secs(1));
    }
    let verdict = if idle >= idle_share {
        "quiet"
    } else {
        "still busy"
    };
    eprintln!(
        "machine {verdict} after {:.0} s ({:.0}% idle over the last second)",
        started.elapsed().as_secs_f64(),
        idle * 100.0
    );
}

/// The share of CPU time spent idle (or waiting for I/O) over `window`.
fn idle_over(window: Duration) -> f64 {
    let before = cpu_times();
    // A measurement window, not a synchronisation: the counters are read at both ends.
    std::thread::sleep(window);
    let after = cpu_times();
    let total = after.0.saturating_sub(before.0);
    let idle = after.1.saturating_sub(before.1);
    if total == 0 {
        return 1.0;
    }
    idle as f64 / total as f64
}

/// All CPUs' (total, idle + iowait) ticks since boot, from /proc/stat's `cpu` line.
fn cpu_times() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .filter(|line| line.starts_with("cpu "))
        .map(|line| {
            line.split_whitespace()
                .skip(1)
                .filter_map(|field| field.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total, idle)
}

/// User + system CPU seconds a process has used (Linux, /proc/PID/stat; 100 ticks a second).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// A process's peak resident memory, KiB (Linux, /proc/PID/status).
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// This process's resident memory now, bytes (Linux, /proc/self/statm).
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("resident pages");
    pages * 4096
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_two_middle_ones() {
        assert_eq!(median(&[0.57, 0.46, 0.66]), 0.57);
        assert_eq!(median(&[4.0, 3.0, 5.0, 6.0]), 4.5);
        assert!(median(&[]).is_nan());
    }
}
