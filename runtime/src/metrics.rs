//! The process's Prometheus registry. Every metric carries a constant `stage` label, so one
//! query covers every instance of a stage; other labels stay low-cardinality (`topic`,
//! `partition`, `error_kind`), never an id or a raw error message.

use std::collections::HashMap;

use prometheus::{Encoder, IntGauge, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up metrics")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// A registry whose metrics all carry `stage`, with `boomerang_build_info` and the
    /// standard `process_*` metrics (CPU, resident memory, open file descriptors).
    pub fn for_stage(stage: &str) -> Result<Self, MetricsError> {
        let labels = HashMap::from([("stage".to_string(), stage.to_string())]);
        let registry = Registry::new_custom(None, Some(labels))?;
        let build_info = IntGauge::with_opts(
            Opts::new(
                "boomerang_build_info",
                "Always 1; the labels say which build is running.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build_info.set(1);
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self { registry })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        // The text encoder writes UTF-8 only.
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_carries_the_stage_label() {
        let metrics = Metrics::for_stage("ingest").expect("metrics");
        let text = metrics.render().expect("render");
        let build_info = text
            .lines()
            .find(|line| line.starts_with("boomerang_build_info{"))
            .unwrap_or_else(|| panic!("no build info in {text}"));
        assert!(build_info.contains(r#"stage="ingest""#), "{build_info}");
        assert!(build_info.contains("version="), "{build_info}");
        assert!(
            text.lines()
                .filter(|line| line.starts_with("process_"))
                .all(|line| line.contains(r#"stage="ingest""#)),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
