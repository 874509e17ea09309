//! `Order`: order-system reference data with its lines, keyed by order id on a compacted topic.

use serde::{Deserialize, Serialize};

use crate::catalog::SchemaKind;
use crate::codec::AvroRecord;
use crate::event::Channel;
use crate::primitives::TimestampMicros;

/// An order as `avro/order.avsc` describes it. Its lines are the units sold: the denominator of
/// a return rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub customer_id: String,
    pub channel: Channel,
    /// The ISO 4217 code of every price in the order.
    pub currency: String,
    pub placed_at: TimestampMicros,
    /// `None` until delivered.
    pub delivered_at: Option<TimestampMicros>,
    pub lines: Vec<OrderLine>,
    pub updated_at: TimestampMicros,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub order_line_id: String,
    pub sku: String,
    pub category: String,
    pub quantity: i32,
    /// The price of one unit in the order currency's minor unit.
    pub unit_price_minor: i64,
}

impl AvroRecord for Order {
    const KIND: SchemaKind = SchemaKind::Order;
}

impl Order {
    pub fn line(&self, order_line_id: &str) -> Option<&OrderLine> {
        self.lines
            .iter()
            .find(|line| line.order_line_id == order_line_id)
    }
}
