//! The Avro schemas of Boomerang's topics (`schemas/avro/*.avsc`) and the typed Rust model that
//! matches them.
//!
//! - [`catalog`]: every schema, parsed once, with its earlier versions and its PII fields.
//! - [`avro_json`]: Avro's JSON encoding of the model, for files people and export scripts
//!   write (`boomerang backfill`'s JSON lines).
//! - [`borrowed`]: an enriched event read in place, strings borrowed (the sink's common case).
//! - [`splice`]: an enriched event written from a validated event's bytes, without decoding
//!   it (enrich's common case).
//! - [`codec`]: Avro datum encoding and decoding of the model, including decoding data written
//!   with an earlier schema version into the current model; [`wire`]: the Confluent frame
//!   around a datum.
//! - The model: [`PostPurchaseEvent`] (what platforms publish), [`Customer`] and [`Order`] (CRM
//!   and order-system reference data) and [`EnrichedPostPurchaseEvent`] (what enrich emits), and [`ErasureRequest`] (a customer's
//!   request to be forgotten).
//!
//! Money is integer minor units with an ISO 4217 code ([`Money`]); times are UTC microseconds
//! since the Unix epoch ([`TimestampMicros`]).

pub mod avro_json;
pub mod borrowed;
pub mod catalog;
pub mod codec;
mod customer;
mod enriched;
mod erasure;
mod event;
mod order;
mod primitives;
mod specific;
pub mod splice;
pub mod wire;

pub use borrowed::{DedupFacts, EnrichedEventRef, EventDatum, EventRef};
pub use catalog::SchemaKind;
pub use codec::{AvroRecord, CodecError, ResolvingReader};
pub use customer::Customer;
pub use enriched::EnrichedPostPurchaseEvent;
pub use erasure::{ErasureRequest, MIN_SALT_HEX_DIGITS};
pub use event::{
    CaseKind, Channel, Disposition, EventType, Outcome, PostPurchaseEvent, ReasonCode,
    ReturnMethod, WarrantyResolution,
};
pub use order::{Order, OrderLine};
pub use primitives::{Money, TimestampMicros};
pub use specific::Malformed;
pub use splice::{Enrichment, EventView, JoinIds, MoneyRef};
