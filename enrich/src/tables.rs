//! The reference tables every enrich instance holds in full: customers and orders (with their
//! lines), as the latest record per key on their compacted topics says.
//!
//! Only what a join needs is kept: a customer's segment, region and consent (never the CRM's
//! PII fields), an order's channel, times, currency and per line the category and unit price.
//! Keys are 128-bit xxh3 hashes of the ids and repeated strings (segments, regions, categories,
//! currencies) are shared, so a table of a million orders stays small (measured in
//! `benches/benches/enrich_reference.rs`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use boomerang_schemas::{Channel, Customer, Order, TimestampMicros};
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

/// The key of a customer or order id.
pub type RefKey = u128;

pub fn ref_key(id: &[u8]) -> RefKey {
    xxh3_128(id)
}

/// A [`RefKey`] is already a good hash: the table uses its bits instead of hashing it again
/// (SipHash of the key took a tenth of the join path).
#[derive(Default)]
pub struct RefKeyHasher(u64);

impl Hasher for RefKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than u128, which the tables do not have; fold them in.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).rotate_left(29);
        }
    }

    fn write_u128(&mut self, key: u128) {
        self.0 = (key as u64) ^ ((key >> 64) as u64);
    }
}

/// A map keyed by [`RefKey`], hashed by [`RefKeyHasher`].
pub type RefMap<V> = HashMap<RefKey, V, BuildHasherDefault<RefKeyHasher>>;

/// The key of an order line id within its order.
fn line_key(order_line_id: &str) -> u64 {
    xxh3_64(order_line_id.as_bytes())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRef {
    pub segment: Arc<str>,
    pub region: Arc<str>,
    pub analytics_consent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRef {
    pub channel: Channel,
    pub placed_at: TimestampMicros,
    pub delivered_at: Option<TimestampMicros>,
    pub currency: Arc<str>,
    pub lines: Box<[LineRef]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRef {
    line_key: u64,
    pub category: Arc<str>,
    pub unit_price_minor: i64,
}

impl OrderRef {
    pub fn line(&self, order_line_id: &str) -> Option<&LineRef> {
        let key = line_key(order_line_id);
        self.lines.iter().find(|line| line.line_key == key)
    }
}

/// One copy of each distinct short string (segment, region, category, currency).
#[derive(Default)]
struct Interner(HashMap<Arc<str>, ()>);

impl Interner {
    fn get(&mut self, value: &str) -> Arc<str> {
        if let Some((shared, ())) = self.0.get_key_value(value) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(value);
        self.0.insert(shared.clone(), ());
        shared
    }
}

/// Which table a change touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Customers,
    Orders,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Customers => "customers",
            Table::Orders => "orders",
        }
    }
}

#[derive(Default)]
pub struct ReferenceTables {
    customers: RefMap<CustomerRef>,
    orders: RefMap<OrderRef>,
    strings: Interner,
}

impl ReferenceTables {
    pub fn customer(&self, key: RefKey) -> Option<&CustomerRef> {
        self.customers.get(&key)
    }

    pub fn order(&self, key: RefKey) -> Option<&OrderRef> {
        self.orders.get(&key)
    }

    pub fn len(&self, table: Table) -> usize {
        match table {
            Table::Customers => self.customers.len(),
            Table::Orders => self.orders.len(),
        }
    }

    pub fn upsert_customer(&mut self, key: RefKey, customer: &Customer) {
        let value = CustomerRef {
            segment: self.strings.get(&customer.segment),
            region: self.strings.get(&customer.region),
            analytics_consent: customer.analytics_consent,
        };
        self.customers.insert(key, value);
    }

    pub fn upsert_order(&mut self, key: RefKey, order: &Order) {
        let lines = order
            .lines
            .iter()
            .map(|line| LineRef {
                line_key: line_key(&line.order_line_id),
                category: self.strings.get(&line.category),
                unit_price_minor: line.unit_price_minor,
            })
            .collect();
        let value = OrderRef {
            channel: order.channel,
            placed_at: order.placed_at,
            delivered_at: order.delivered_at,
            currency: self.strings.get(&order.currency),
            lines,
        };
        match self.orders.entry(key) {
            Entry::Occupied(mut occupied) => {
                occupied.insert(value);
            }
            Entry::Vacant(vacant) => {
                vacant.insert(value);
            }
        }
    }

    /// A tombstone: the key is gone. Returns whether it was there.
    pub fn delete(&mut self, table: Table, key: RefKey) -> bool {
        match table {
            Table::Customers => self.customers.remove(&key).is_some(),
            Table::Orders => self.orders.remove(&key).is_some(),
        }
    }
}

/// The tables, shared by the loader (which writes) and the processor (which reads).
#[derive(Clone, Default)]
pub struct SharedTables(Arc<RwLock<ReferenceTables>>);

impl SharedTables {
    pub fn read(&self) -> RwLockReadGuard<'_, ReferenceTables> {
        // A panic while writing leaves a table in a state a join can still read: keep going.
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, ReferenceTables> {
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use boomerang_testkit::samples::{customer, order};

    use super::*;

    #[test]
    fn upsert_replace_and_delete() {
        let mut tables = ReferenceTables::default();
        let key = ref_key(b"cu-1");
        tables.upsert_customer(key, &customer("cu-1", "regular", true));
        assert_eq!(&*tables.customer(key).expect("there").segment, "regular");
        tables.upsert_customer(key, &customer("cu-1", "vip", true));
        assert_eq!(&*tables.customer(key).expect("there").segment, "vip");
        assert_eq!(tables.len(Table::Customers), 1);
        assert!(tables.delete(Table::Customers, key));
        assert!(tables.customer(key).is_none());
        assert!(!tables.delete(Table::Customers, key));
    }

    #[test]
    fn lines_are_found_by_id_and_strings_shared() {
        let mut tables = ReferenceTables::default();
        tables.upsert_order(ref_key(b"o-1"), &order("o-1", "cu-1", None));
        tables.upsert_order(ref_key(b"o-2"), &order("o-2", "cu-1", None));
        let one = tables.order(ref_key(b"o-1")).expect("o-1");
        let two = tables.order(ref_key(b"o-2")).expect("o-2");
        assert_eq!(&*one.line("o-1/2").expect("line").category, "electronics");
        assert!(one.line("o-2/1").is_none());
        assert!(Arc::ptr_eq(&one.currency, &two.currency));
        assert!(Arc::ptr_eq(&one.lines[0].category, &two.lines[0].category));
    }
}
