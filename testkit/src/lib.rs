//! Test helpers for tests that run against the local stack (`deploy/local/stack.sh up`), one
//! module per concern; everything is re-exported here.
//!
//! - [`stack`]: the stack's endpoints ([`Stack`]), [`unique_name`], [`free_port`].
//! - [`wait`]: [`poll_until`], a condition with a deadline, never a bare sleep.
//! - [`process`]: [`StageProcess`], a stage binary under test, killed on drop; its
//!   `/metrics` and `/readyz`.
//! - [`exposition`]: sums of metrics in a Prometheus text exposition; `promtool`'s verdict.
//! - [`kafka`]: every record of a topic, committed offsets.
//! - [`pipeline`]: a private set of topics, schemas and a group for one test
//!   ([`TestPipeline`]).
//! - [`lifecycle`]: the life every stage must have alike (ready, metrics, SIGTERM).
//! - [`samples`]: the one sample event, order and customer tests start from.

pub mod exposition;
pub mod kafka;
pub mod lifecycle;
pub mod pipeline;
pub mod process;
pub mod samples;
pub mod stack;
pub mod wait;

pub use exposition::{assert_promtool_accepts, metric_sum, value};
pub use kafka::{ReadRecord, committed_and_high_watermarks, read_topic_to_end, wait_committed};
pub use lifecycle::{
    assert_not_ready_without_brokers, assert_prometheus_scrapes, assert_stage_lifecycle,
};
pub use pipeline::{TestPipeline, start_stage};
pub use process::{StageProcess, metrics, wait_ready};
pub use stack::{Stack, free_port, unique_name};
pub use wait::poll_until;
