//! What Boomerang's stages share, so that each stage's own code is only its processing step.
//!
//! - [`config`]: one way to load settings (flag, then environment variable, then config file,
//!   then default) and the argument groups every binary uses.
//! - [`kafka`]: librdkafka client settings with safe defaults and pass-through properties;
//!   creating and checking topics; reading headers.
//! - [`registry`]: the schema registry client and `schemas register`.
//! - [`topics`]: the topic names and the schema each topic carries.
//! - [`metrics`], [`http`]: the Prometheus registry (with `boomerang_errors_total` and the
//!   counters every stage keeps) and the `/metrics`, `/healthz`, `/readyz` endpoints.
//! - [`retry`]: the one way to retry what fails outside the stage (a broker, the registry,
//!   ClickHouse), with backoff, each failed attempt counted in `boomerang_errors_total`.
//! - [`service`]: a stage's life: telemetry, endpoints, readiness, SIGTERM and draining.
//! - [`stage_loop`]: consume → process → produce → commit, the same for every stage;
//!   [`delivery`]: counting a batch's acknowledgements.
//! - [`snapshot`]: local snapshots of a stage's state, so a restart reads back only the tail.
//! - [`error_kind`]: every `error_kind` a stage reports, defined once.
//! - [`dead_letter`]: the dead-letter header contract; [`record_size`]: the largest record a
//!   stage produces; [`wire`]: Confluent framing (from
//!   `boomerang_schemas`, beside the codec).
//!
//! ClickHouse is not here: only the sink and the CLI link it (`boomerang-clickhouse`).

pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod delivery;
pub mod error_kind;
pub mod http;
pub mod idempotency;
pub mod kafka;
pub mod metrics;
pub mod pseudonym;
pub mod record_size;
pub mod registry;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod snapshot;
pub mod stage_loop;
pub mod telemetry;
pub mod topics;
/// Confluent framing lives beside the codec; re-exported for the stages.
pub use boomerang_schemas::wire;
