//! The dead-letter contract, the same for every stage: a record a stage cannot process goes to
//! the dead-letter topic with its original key, value and headers unchanged, plus headers that
//! say where it came from, which stage gave up on it, when and why.
//!
//! | header | value |
//! | --- | --- |
//! | `boomerang.dlq.stage` | `ingest`, `enrich` or `sink` |
//! | `boomerang.dlq.error_kind` | a stable, low-cardinality kind, e.g. `unknown_schema_id` |
//! | `boomerang.dlq.error_message` | for people; never record contents or PII |
//! | `boomerang.dlq.source_topic` | the topic the record was consumed from |
//! | `boomerang.dlq.source_partition` | its partition, decimal |
//! | `boomerang.dlq.source_offset` | its offset, decimal |
//! | `boomerang.dlq.schema_id` | the writer schema id, when the frame was readable |
//! | `boomerang.dlq.failed_at_ms` | when the stage gave up, UTC milliseconds since the epoch |

pub const STAGE: &str = "boomerang.dlq.stage";
pub const ERROR_KIND: &str = "boomerang.dlq.error_kind";
pub const ERROR_MESSAGE: &str = "boomerang.dlq.error_message";
pub const SOURCE_TOPIC: &str = "boomerang.dlq.source_topic";
pub const SOURCE_PARTITION: &str = "boomerang.dlq.source_partition";
pub const SOURCE_OFFSET: &str = "boomerang.dlq.source_offset";
pub const SCHEMA_ID: &str = "boomerang.dlq.schema_id";
pub const FAILED_AT_MS: &str = "boomerang.dlq.failed_at_ms";

/// Why a stage gives up on a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable and low-cardinality: a metric label and a header.
    pub error_kind: &'static str,
    /// For people: what is wrong, without record contents or PII.
    pub message: String,
    pub schema_id: Option<u32>,
}

impl Rejection {
    pub fn new(error_kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            error_kind,
            message: message.into(),
            schema_id: None,
        }
    }

    pub fn with_schema_id(mut self, schema_id: u32) -> Self {
        self.schema_id = Some(schema_id);
        self
    }
}

/// The dead-letter headers for a rejected record, to append after its original headers.
pub fn headers(
    stage: &str,
    rejection: &Rejection,
    source_topic: &str,
    source_partition: i32,
    source_offset: i64,
    failed_at_ms: i64,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (STAGE, stage.to_string()),
        (ERROR_KIND, rejection.error_kind.to_string()),
        (ERROR_MESSAGE, rejection.message.clone()),
        (SOURCE_TOPIC, source_topic.to_string()),
        (SOURCE_PARTITION, source_partition.to_string()),
        (SOURCE_OFFSET, source_offset.to_string()),
        (FAILED_AT_MS, failed_at_ms.to_string()),
    ];
    if let Some(schema_id) = rejection.schema_id {
        headers.push((SCHEMA_ID, schema_id.to_string()));
    }
    headers
}
