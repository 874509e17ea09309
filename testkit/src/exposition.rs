//! Reading a Prometheus text exposition.

use std::process::{Command, Stdio};

/// The sum of a metric over all its label sets in a Prometheus text exposition, counting only
/// the label sets that contain every `label_filters` entry (`name="value"`).
pub fn metric_sum(exposition: &str, metric: &str, label_filters: &[&str]) -> f64 {
    boomerang_runtime::metrics::exposition_sum(exposition, metric, label_filters)
}

/// [`metric_sum`] as a count.
pub fn value(exposition: &str, name: &str, labels: &[&str]) -> u64 {
    metric_sum(exposition, name, labels) as u64
}

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
