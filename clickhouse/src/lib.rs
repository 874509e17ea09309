//! ClickHouse for the stages that write or read it (the sink and the CLI); the other stages do
//! not link it.
//!
//! - [`args`]: where ClickHouse is and how to reach it ([`ClickhouseArgs`]), and its clients.
//! - [`migrations`]: the SQL files in `deploy/clickhouse/migrations/`, applied by `boomerang
//!   migrate`, checked by the sink before it writes.
//! - [`analytics_refresh`]: keeps the analytics stores the views read fresh (run by the sink,
//!   or once by `boomerang analytics refresh`).

pub mod analytics_refresh;
pub mod args;
pub mod migrations;

pub use args::ClickhouseArgs;
