//! Enrich: validated events in, events joined with CRM and order data out.
//!
//! Reference data, by file: [`reference`] reads the customers and orders topics (compacted,
//! every partition, on every instance) into [`tables`], catching up before any event is
//! consumed and following updates afterwards; with `--state-dir` it starts from a local
//! [`snapshot`] of each table and reads only what was written since.
//!
//! One event's way, by file: decode (the shared `boomerang_runtime::decode`) → [`join`]
//! (look the order and customer up, add what they say, drop PII, pseudonymise) → [`publish`].
//! An event whose reference data has not arrived waits in [`pending`] for a bounded time and is
//! then joined with whatever is there, the missing parts flagged. [`processor`] ties them into
//! the shared stage loop.

pub mod join;
pub mod metrics;
pub mod pending;
pub mod processor;
pub mod publish;
pub mod reference;
pub mod snapshot;
pub mod tables;
