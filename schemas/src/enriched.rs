//! `EnrichedPostPurchaseEvent`: a validated event joined with CRM and order data by enrich.

use serde::{Deserialize, Serialize};

use crate::catalog::SchemaKind;
use crate::codec::{self, AvroRecord, CodecError};
use crate::event::{Channel, PostPurchaseEvent};
use crate::primitives::{Money, TimestampMicros};
use crate::specific;

/// What enrich emits, as `avro/enriched_post_purchase_event.avsc` describes it. Where reference
/// data was missing at the join deadline the `*_missing` flags say so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrichedPostPurchaseEvent {
    /// The event less its PII fields; `customer_id` is a keyed pseudonym when
    /// `customer_pseudonymised` is set.
    pub event: PostPurchaseEvent,
    pub customer_missing: bool,
    pub order_missing: bool,
    pub order_line_missing: bool,
    pub customer_pseudonymised: bool,
    pub customer_segment: Option<String>,
    pub customer_region: Option<String>,
    pub order_channel: Option<Channel>,
    pub order_placed_at: Option<TimestampMicros>,
    pub order_delivered_at: Option<TimestampMicros>,
    pub line_category: Option<String>,
    pub line_unit_price: Option<Money>,
    /// Whole days from delivery to the event.
    pub days_since_delivery: Option<i32>,
    pub within_return_window: Option<bool>,
    pub enriched_at: TimestampMicros,
}

impl AvroRecord for EnrichedPostPurchaseEvent {
    const KIND: SchemaKind = SchemaKind::EnrichedPostPurchaseEvent;

    fn write_datum(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        specific::write_enriched(self, &mut specific::Writer(out));
        Ok(())
    }

    fn read_datum(datum: &mut &[u8]) -> Result<Self, CodecError> {
        codec::read_specific(datum, specific::read_enriched)
    }
}
