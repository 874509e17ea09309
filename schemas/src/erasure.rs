//! `ErasureRequest`: a customer's request to be forgotten, published to the erasure-request
//! topic (by `boomerang erase` or any platform).

use serde::{Deserialize, Serialize};

use crate::catalog::SchemaKind;
use crate::codec::AvroRecord;
use crate::primitives::TimestampMicros;

/// The fewest hex digits an anonymisation salt may have: 128 bits.
pub const MIN_SALT_HEX_DIGITS: usize = 32;

/// An erasure request as `avro/erasure_request.avsc` describes it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureRequest {
    pub request_id: String,
    /// PII: never logged (see `Debug`) and never written to ClickHouse.
    pub customer_id: String,
    pub requested_at: TimestampMicros,
    pub requested_by: String,
    pub anonymisation_salt: String,
}

impl AvroRecord for ErasureRequest {
    const KIND: SchemaKind = SchemaKind::ErasureRequest;
}

impl ErasureRequest {
    /// Why the request cannot be applied as it is, if it cannot.
    pub fn problem(&self) -> Option<&'static str> {
        if self.request_id.is_empty() {
            Some("the request_id is empty")
        } else if self.customer_id.is_empty() {
            Some("the customer_id is empty")
        } else if self.anonymisation_salt.len() < MIN_SALT_HEX_DIGITS
            || !self
                .anonymisation_salt
                .bytes()
                .all(|byte| byte.is_ascii_hexdigit())
        {
            Some("the anonymisation_salt is not at least 32 hex digits")
        } else {
            None
        }
    }
}

/// Debug output leaves the customer id and the salt out.
impl std::fmt::Debug for ErasureRequest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ErasureRequest")
            .field("request_id", &self.request_id)
            .field("customer_id", &"<redacted>")
            .field("requested_at", &self.requested_at)
            .field("requested_by", &self.requested_by)
            .field("anonymisation_salt", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ErasureRequest {
        ErasureRequest {
            request_id: "er-1".into(),
            customer_id: "cu-secret".into(),
            requested_at: TimestampMicros::from_unix_micros(1),
            requested_by: "support".into(),
            anonymisation_salt: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    #[test]
    fn debug_output_redacts_the_customer_and_the_salt() {
        let debug = format!("{:?}", request());
        assert!(!debug.contains("cu-secret"), "{debug}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
        assert!(debug.contains("er-1"), "{debug}");
    }

    #[test]
    fn a_request_needs_an_id_a_customer_and_a_long_hex_salt() {
        assert_eq!(request().problem(), None);
        let mut short = request();
        short.anonymisation_salt = "abcd".into();
        assert!(short.problem().is_some());
        let mut not_hex = request();
        not_hex.anonymisation_salt = "z".repeat(40);
        assert!(not_hex.problem().is_some());
        let mut anonymous = request();
        anonymous.customer_id.clear();
        assert!(anonymous.problem().is_some());
    }

    #[test]
    fn round_trips_through_its_schema() {
        let bytes = crate::codec::encode(&request()).expect("encode");
        let back: ErasureRequest = crate::codec::decode(&bytes).expect("decode");
        assert_eq!(back, request());
    }
}
