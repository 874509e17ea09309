//! Decoding a raw record into the current `PostPurchaseEvent`: the shared
//! [`boomerang_runtime::decode`] (Confluent frame → writer schema from the registry → resolution
//! to the current version), typed for events. Its error kinds are ingest's first
//! dead-letter kinds.

use boomerang_schemas::PostPurchaseEvent;

pub use boomerang_runtime::decode::{DecodeFailure, Decoded, WriterSchemaSource};

/// Decodes raw values into events.
pub type EventDecoder<Source> = boomerang_runtime::decode::RecordDecoder<PostPurchaseEvent, Source>;
