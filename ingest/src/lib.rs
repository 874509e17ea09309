//! Ingest: raw post-purchase events in, validated first-seen events out.
//!
//! One record's way, by file: [`decode`] (Confluent frame, writer schema from the registry,
//! resolution to the current schema) → [`validate`] (business rules) → [`dedup`] (one event
//! per idempotency key within the window, state rebuilt by [`restore`], from a
//! local [`snapshot`] when there is one) → [`publish`] (the
//! validated record). [`processor`] ties them into the shared stage loop; whatever fails
//! decoding or validation is dead-lettered by the loop with its original bytes.

pub mod decode;
pub mod dedup;
pub mod processor;
pub mod publish;
pub mod restore;
pub mod snapshot;
pub mod validate;
