//! `PostPurchaseEvent`: what shops, return portals, warehouses and support tools publish.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::SchemaKind;
use crate::codec::{self, AvroRecord, CodecError};
use crate::primitives::{Money, TimestampMicros};
use crate::specific;

/// One post-purchase fact, as `avro/post_purchase_event.avsc` (version 2) describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostPurchaseEvent {
    pub event_id: String,
    /// The producer's idempotency key: a retried publish of the same fact carries the same key.
    pub idempotency_key: String,
    pub event_type: EventType,
    /// The RMA or claim id that ties one case's lifecycle together.
    pub case_id: String,
    pub order_id: String,
    pub order_line_id: String,
    pub customer_id: String,
    /// The product id of the order line.
    pub sku: String,
    pub quantity: i32,
    pub reason: Option<ReasonCode>,
    /// The customer's own words: may hold personal data (marked `"pii": true`).
    pub reason_text: Option<String>,
    pub amount: Option<Money>,
    pub method: Option<ReturnMethod>,
    pub channel: Channel,
    pub outcome: Outcome,
    pub occurred_at: TimestampMicros,
    pub source_system: String,
    pub replacement_sku: Option<String>,
    pub warranty_resolution: Option<WarrantyResolution>,
    /// Added in schema version 2.
    pub disposition: Option<Disposition>,
    /// Added in schema version 2: producer-specific extensions.
    pub attributes: BTreeMap<String, String>,
}

impl AvroRecord for PostPurchaseEvent {
    const KIND: SchemaKind = SchemaKind::PostPurchaseEvent;

    fn write_datum(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        specific::write_event(self, &mut specific::Writer(out));
        Ok(())
    }

    fn read_datum(datum: &mut &[u8]) -> Result<Self, CodecError> {
        codec::read_specific(datum, specific::read_event)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    ReturnRequested,
    ReturnApproved,
    ReturnRejected,
    ReturnLabelCreated,
    ReturnInTransit,
    ReturnReceived,
    ReturnInspected,
    RefundIssued,
    StoreCreditIssued,
    ExchangeRequested,
    ExchangeApproved,
    ExchangeShipped,
    ExchangeCompleted,
    ExchangeCancelled,
    WarrantyFiled,
    WarrantyApproved,
    WarrantyDenied,
    WarrantyRepaired,
    WarrantyReplaced,
    WarrantyResolved,
}

/// The kind of case an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaseKind {
    Return,
    Refund,
    Exchange,
    Warranty,
}

impl EventType {
    pub const ALL: [EventType; 20] = [
        EventType::ReturnRequested,
        EventType::ReturnApproved,
        EventType::ReturnRejected,
        EventType::ReturnLabelCreated,
        EventType::ReturnInTransit,
        EventType::ReturnReceived,
        EventType::ReturnInspected,
        EventType::RefundIssued,
        EventType::StoreCreditIssued,
        EventType::ExchangeRequested,
        EventType::ExchangeApproved,
        EventType::ExchangeShipped,
        EventType::ExchangeCompleted,
        EventType::ExchangeCancelled,
        EventType::WarrantyFiled,
        EventType::WarrantyApproved,
        EventType::WarrantyDenied,
        EventType::WarrantyRepaired,
        EventType::WarrantyReplaced,
        EventType::WarrantyResolved,
    ];

    pub fn case_kind(self) -> CaseKind {
        use EventType::*;
        match self {
            ReturnRequested | ReturnApproved | ReturnRejected | ReturnLabelCreated
            | ReturnInTransit | ReturnReceived | ReturnInspected => CaseKind::Return,
            RefundIssued | StoreCreditIssued => CaseKind::Refund,
            ExchangeRequested | ExchangeApproved | ExchangeShipped | ExchangeCompleted
            | ExchangeCancelled => CaseKind::Exchange,
            WarrantyFiled | WarrantyApproved | WarrantyDenied | WarrantyRepaired
            | WarrantyReplaced | WarrantyResolved => CaseKind::Warranty,
        }
    }

    /// The Avro symbol, e.g. `RETURN_REQUESTED`: a stable, low-cardinality label.
    pub fn symbol(self) -> &'static str {
        use EventType::*;
        match self {
            ReturnRequested => "RETURN_REQUESTED",
            ReturnApproved => "RETURN_APPROVED",
            ReturnRejected => "RETURN_REJECTED",
            ReturnLabelCreated => "RETURN_LABEL_CREATED",
            ReturnInTransit => "RETURN_IN_TRANSIT",
            ReturnReceived => "RETURN_RECEIVED",
            ReturnInspected => "RETURN_INSPECTED",
            RefundIssued => "REFUND_ISSUED",
            StoreCreditIssued => "STORE_CREDIT_ISSUED",
            ExchangeRequested => "EXCHANGE_REQUESTED",
            ExchangeApproved => "EXCHANGE_APPROVED",
            ExchangeShipped => "EXCHANGE_SHIPPED",
            ExchangeCompleted => "EXCHANGE_COMPLETED",
            ExchangeCancelled => "EXCHANGE_CANCELLED",
            WarrantyFiled => "WARRANTY_FILED",
            WarrantyApproved => "WARRANTY_APPROVED",
            WarrantyDenied => "WARRANTY_DENIED",
            WarrantyRepaired => "WARRANTY_REPAIRED",
            WarrantyReplaced => "WARRANTY_REPLACED",
            WarrantyResolved => "WARRANTY_RESOLVED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReasonCode {
    TooLarge,
    TooSmall,
    Defective,
    DamagedInTransit,
    NotAsDescribed,
    WrongItem,
    ChangedMind,
    ArrivedLate,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReturnMethod {
    Mail,
    InStore,
    DropOff,
    Pickup,
    KeepIt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Channel {
    Web,
    MobileApp,
    Store,
    Marketplace,
    SupportAgent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    Pending,
    Completed,
    Denied,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WarrantyResolution {
    Repair,
    Replace,
    Refund,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Disposition {
    Restock,
    Refurbish,
    Resell,
    Recycle,
    Dispose,
}

/// `symbol()`: the Avro symbol of a variant, e.g. `TOO_LARGE`, for columns and labels; `ALL`:
/// every variant, in declaration order, which is the schema's symbol order (tested).
macro_rules! symbols {
    ($($enum:ident { $($variant:ident => $symbol:literal),* $(,)? })*) => {
        $(impl $enum {
            pub const ALL: [$enum; [$($symbol),*].len()] = [$($enum::$variant),*];

            pub fn symbol(self) -> &'static str {
                match self {
                    $($enum::$variant => $symbol),*
                }
            }
        })*
    };
}

symbols! {
    ReasonCode {
        TooLarge => "TOO_LARGE",
        TooSmall => "TOO_SMALL",
        Defective => "DEFECTIVE",
        DamagedInTransit => "DAMAGED_IN_TRANSIT",
        NotAsDescribed => "NOT_AS_DESCRIBED",
        WrongItem => "WRONG_ITEM",
        ChangedMind => "CHANGED_MIND",
        ArrivedLate => "ARRIVED_LATE",
        Other => "OTHER",
    }
    ReturnMethod {
        Mail => "MAIL",
        InStore => "IN_STORE",
        DropOff => "DROP_OFF",
        Pickup => "PICKUP",
        KeepIt => "KEEP_IT",
    }
    Channel {
        Web => "WEB",
        MobileApp => "MOBILE_APP",
        Store => "STORE",
        Marketplace => "MARKETPLACE",
        SupportAgent => "SUPPORT_AGENT",
    }
    Outcome {
        Pending => "PENDING",
        Completed => "COMPLETED",
        Denied => "DENIED",
    }
    WarrantyResolution {
        Repair => "REPAIR",
        Replace => "REPLACE",
        Refund => "REFUND",
    }
    Disposition {
        Restock => "RESTOCK",
        Refurbish => "REFURBISH",
        Resell => "RESELL",
        Recycle => "RECYCLE",
        Dispose => "DISPOSE",
    }
}

#[cfg(test)]
mod symbol_tests {
    use super::*;

    /// `symbol()` is what serde (and so Avro) writes.
    fn serde_name<T: Serialize>(value: T) -> String {
        serde_json::to_value(value)
            .ok()
            .and_then(|value| value.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    #[test]
    fn symbols_match_the_serialized_names() {
        for value in [
            ReasonCode::TooLarge,
            ReasonCode::DamagedInTransit,
            ReasonCode::Other,
        ] {
            assert_eq!(value.symbol(), serde_name(value));
        }
        for value in [ReturnMethod::InStore, ReturnMethod::KeepIt] {
            assert_eq!(value.symbol(), serde_name(value));
        }
        for value in [Channel::MobileApp, Channel::SupportAgent] {
            assert_eq!(value.symbol(), serde_name(value));
        }
        for value in [Outcome::Pending, Outcome::Denied] {
            assert_eq!(value.symbol(), serde_name(value));
        }
        assert_eq!(
            WarrantyResolution::Replace.symbol(),
            serde_name(WarrantyResolution::Replace)
        );
        assert_eq!(
            Disposition::Refurbish.symbol(),
            serde_name(Disposition::Refurbish)
        );
        for value in EventType::ALL {
            assert_eq!(value.symbol(), serde_name(value));
        }
    }
}
