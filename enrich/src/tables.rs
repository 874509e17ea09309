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

use boomerang_runtime::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
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

/// Snapshots (see `reference.rs`): a table's rows written out and read back whole.
impl ReferenceTables {
    /// Writes `table`'s rows.
    pub fn write_rows(&self, table: Table, writer: &mut SnapshotWriter) {
        match table {
            Table::Customers => {
                writer.reserve(self.customers.len() * 40);
                writer.u64(self.customers.len() as u64);
                for (key, customer) in &self.customers {
                    writer.u128(*key);
                    writer.str(&customer.segment);
                    writer.str(&customer.region);
                    writer.u8(u8::from(customer.analytics_consent));
                }
            }
            Table::Orders => {
                writer.reserve(self.orders.len() * 80);
                writer.u64(self.orders.len() as u64);
                for (key, order) in &self.orders {
                    writer.u128(*key);
                    writer.u8(channel_code(order.channel));
                    writer.i64(order.placed_at.as_unix_micros());
                    match order.delivered_at {
                        Some(at) => {
                            writer.u8(1);
                            writer.i64(at.as_unix_micros());
                        }
                        None => writer.u8(0),
                    }
                    writer.str(&order.currency);
                    writer.u64(order.lines.len() as u64);
                    for line in &order.lines {
                        writer.u64(line.line_key);
                        writer.str(&line.category);
                        writer.i64(line.unit_price_minor);
                    }
                }
            }
        }
    }

    /// Replaces `table`'s rows with those read back; on an error, leaves them as they were.
    pub fn read_rows(
        &mut self,
        table: Table,
        reader: &mut SnapshotReader,
    ) -> Result<(), SnapshotError> {
        match table {
            Table::Customers => {
                // A key, two string lengths and the consent at least.
                let count = reader.count(25)?;
                let mut customers = RefMap::default();
                customers.reserve(count);
                for _ in 0..count {
                    let key = reader.u128()?;
                    let segment = self.strings.get(&reader.string()?);
                    let region = self.strings.get(&reader.string()?);
                    let analytics_consent = reader.u8()? != 0;
                    customers.insert(
                        key,
                        CustomerRef {
                            segment,
                            region,
                            analytics_consent,
                        },
                    );
                }
                self.customers = customers;
            }
            Table::Orders => {
                let count = reader.count(38)?;
                let mut orders = RefMap::default();
                orders.reserve(count);
                for _ in 0..count {
                    let key = reader.u128()?;
                    let channel = channel_from_code(reader.u8()?)?;
                    let placed_at = TimestampMicros::from_unix_micros(reader.i64()?);
                    let delivered_at = match reader.u8()? {
                        0 => None,
                        _ => Some(TimestampMicros::from_unix_micros(reader.i64()?)),
                    };
                    let currency = self.strings.get(&reader.string()?);
                    let line_count = reader.count(20)?;
                    let mut lines = Vec::with_capacity(line_count);
                    for _ in 0..line_count {
                        lines.push(LineRef {
                            line_key: reader.u64()?,
                            category: self.strings.get(&reader.string()?),
                            unit_price_minor: reader.i64()?,
                        });
                    }
                    orders.insert(
                        key,
                        OrderRef {
                            channel,
                            placed_at,
                            delivered_at,
                            currency,
                            lines: lines.into_boxed_slice(),
                        },
                    );
                }
                self.orders = orders;
            }
        }
        Ok(())
    }
}

fn channel_code(channel: Channel) -> u8 {
    match channel {
        Channel::Web => 0,
        Channel::MobileApp => 1,
        Channel::Store => 2,
        Channel::Marketplace => 3,
        Channel::SupportAgent => 4,
    }
}

fn channel_from_code(code: u8) -> Result<Channel, SnapshotError> {
    Ok(match code {
        0 => Channel::Web,
        1 => Channel::MobileApp,
        2 => Channel::Store,
        3 => Channel::Marketplace,
        4 => Channel::SupportAgent,
        _ => return Err(SnapshotError::Corrupt),
    })
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
    fn both_tables_read_back_from_their_snapshot_rows() {
        let mut tables = ReferenceTables::default();
        tables.upsert_customer(ref_key(b"cu-1"), &customer("cu-1", "vip", false));
        tables.upsert_order(ref_key(b"o-1"), &order("o-1", "cu-1", None));
        let mut delivered = order("o-2", "cu-1", None);
        delivered.delivered_at = Some(TimestampMicros::from_unix_micros(1_700_000_000_000_000));
        tables.upsert_order(ref_key(b"o-2"), &delivered);
        let mut restored = ReferenceTables::default();
        for table in [Table::Customers, Table::Orders] {
            let mut writer = SnapshotWriter::new(b"t\n");
            tables.write_rows(table, &mut writer);
            let path = std::env::temp_dir().join(format!(
                "boomerang-tables-{}-{}",
                std::process::id(),
                table.name()
            ));
            writer.write_to(&path).expect("write");
            let mut reader = SnapshotReader::open(&path, b"t\n").expect("open");
            restored.read_rows(table, &mut reader).expect("read");
            let _ = std::fs::remove_file(&path);
        }
        assert_eq!(restored.customers, tables.customers);
        assert_eq!(restored.orders, tables.orders);
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
