//! `Customer`: CRM reference data, keyed by customer id on a compacted topic.

use serde::{Deserialize, Serialize};

use crate::catalog::SchemaKind;
use crate::codec::AvroRecord;
use crate::primitives::TimestampMicros;

/// A customer as `avro/customer.avsc` describes it. `email` and `full_name` are PII: they are
/// marked `"pii": true` in the schema and never leave enrich.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub customer_id: String,
    pub email: Option<String>,
    pub full_name: Option<String>,
    pub segment: String,
    pub region: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    /// `false`: analytics see a keyed pseudonym instead of the customer id.
    pub analytics_consent: bool,
    pub updated_at: TimestampMicros,
}

impl AvroRecord for Customer {
    const KIND: SchemaKind = SchemaKind::Customer;
}

/// Debug output leaves the PII out, so a customer can never reach a log by `{:?}`.
impl std::fmt::Debug for Customer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Customer")
            .field("customer_id", &self.customer_id)
            .field("email", &self.email.as_ref().map(|_| "<redacted>"))
            .field("full_name", &self.full_name.as_ref().map(|_| "<redacted>"))
            .field("segment", &self.segment)
            .field("region", &self.region)
            .field("country", &self.country)
            .field("analytics_consent", &self.analytics_consent)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_pii() {
        let customer = Customer {
            customer_id: "c-1".into(),
            email: Some("ada@example.com".into()),
            full_name: Some("Ada Lovelace".into()),
            segment: "vip".into(),
            region: "emea".into(),
            country: "GB".into(),
            analytics_consent: true,
            updated_at: TimestampMicros::from_unix_micros(1),
        };
        let debug = format!("{customer:?}");
        assert!(!debug.contains("ada@example.com"), "{debug}");
        assert!(!debug.contains("Lovelace"), "{debug}");
        assert!(debug.contains("c-1"), "{debug}");
    }
}
