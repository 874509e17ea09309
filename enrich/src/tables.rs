//! The reference tables every enrich instance holds in full: customers and orders (with their
//! lines), as the latest record per key on their compacted topics says.
//!
//! Only what a join needs is kept: a customer's segment, region and consent (never the CRM's
//! PII fields), an order's customer (by key), channel, times, currency and per line the
//! category and unit price. Customers who asked to be forgotten are kept as their key and the
//! time of their request only (`erased`): their customer record and orders from before it are
//! dropped and not taken in again, and their events from before it are not joined.
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
    /// Whose order it is: to forget it with its customer.
    pub customer: RefKey,
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
    /// Erasure requests: customers to forget.
    Erasures,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Customers => "customers",
            Table::Orders => "orders",
            Table::Erasures => "erasures",
        }
    }
}

#[derive(Default)]
pub struct ReferenceTables {
    customers: RefMap<CustomerRef>,
    orders: RefMap<OrderRef>,
    /// Customers who asked to be forgotten, with when they asked.
    erased: RefMap<TimestampMicros>,
    /// Customers erased whose orders are still to be dropped ([`Self::drop_erased_orders`]):
    /// one pass over the orders for a batch of requests, not one per request.
    erased_pending: std::collections::HashSet<RefKey, BuildHasherDefault<RefKeyHasher>>,
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
            Table::Erasures => self.erased.len(),
        }
    }

    /// When the customer asked to be forgotten, if they did.
    pub fn erased_at(&self, customer: RefKey) -> Option<TimestampMicros> {
        self.erased.get(&customer).copied()
    }

    /// Whether the customer asked to be forgotten after `time`: what they did then is erased.
    fn erased_after(&self, customer: RefKey, time: TimestampMicros) -> bool {
        self.erased_at(customer)
            .is_some_and(|requested_at| time <= requested_at)
    }

    /// An erasure request: the customer's record goes at once and their orders with the next
    /// [`Self::drop_erased_orders`]; their versions from before `requested_at` are not taken in
    /// again (a replayed compacted topic).
    pub fn erase(&mut self, customer: RefKey, requested_at: TimestampMicros) {
        let latest = self
            .erased
            .get(&customer)
            .map_or(requested_at, |earlier| (*earlier).max(requested_at));
        self.erased.insert(customer, latest);
        self.customers.remove(&customer);
        self.erased_pending.insert(customer);
    }

    /// Drops the orders of the customers erased since the last call: one pass over the orders.
    pub fn drop_erased_orders(&mut self) {
        if self.erased_pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.erased_pending);
        self.orders
            .retain(|_, order| !pending.contains(&order.customer));
    }

    pub fn upsert_customer(&mut self, key: RefKey, customer: &Customer) {
        if self.erased_after(key, customer.updated_at) {
            return;
        }
        let value = CustomerRef {
            segment: self.strings.get(&customer.segment),
            region: self.strings.get(&customer.region),
            analytics_consent: customer.analytics_consent,
        };
        self.customers.insert(key, value);
    }

    pub fn upsert_order(&mut self, key: RefKey, order: &Order) {
        let customer = ref_key(order.customer_id.as_bytes());
        if self.erased_after(customer, order.updated_at) {
            self.orders.remove(&key);
            return;
        }
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
            customer,
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
            Table::Erasures => self.erased.remove(&key).is_some(),
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
                    writer.u128(order.customer);
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
            Table::Erasures => {
                writer.u64(self.erased.len() as u64);
                for (key, requested_at) in &self.erased {
                    writer.u128(*key);
                    writer.i64(requested_at.as_unix_micros());
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
                customers.retain(|key, _| !self.erased.contains_key(key));
                self.customers = customers;
            }
            Table::Orders => {
                let count = reader.count(54)?;
                let mut orders = RefMap::default();
                orders.reserve(count);
                for _ in 0..count {
                    let key = reader.u128()?;
                    let customer = reader.u128()?;
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
                            customer,
                            channel,
                            placed_at,
                            delivered_at,
                            currency,
                            lines: lines.into_boxed_slice(),
                        },
                    );
                }
                orders.retain(|_, order| !self.erased.contains_key(&order.customer));
                self.orders = orders;
            }
            Table::Erasures => {
                let count = reader.count(24)?;
                let mut erased = RefMap::default();
                erased.reserve(count);
                for _ in 0..count {
                    let key = reader.u128()?;
                    erased.insert(key, TimestampMicros::from_unix_micros(reader.i64()?));
                }
                // The other tables may have been loaded first, from snapshots older than a
                // request: forget the erased customers in them too.
                self.customers.retain(|key, _| !erased.contains_key(key));
                self.orders
                    .retain(|_, order| !erased.contains_key(&order.customer));
                self.erased = erased;
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

    /// `from`'s rows of `table` through a snapshot file into `into`.
    fn write_and_read_back(
        from: &ReferenceTables,
        into: &mut ReferenceTables,
        table: Table,
        test: &str,
    ) {
        let mut writer = SnapshotWriter::new(b"t\n");
        from.write_rows(table, &mut writer);
        let path = std::env::temp_dir().join(format!(
            "boomerang-{test}-{}-{}",
            std::process::id(),
            table.name()
        ));
        writer.write_to(&path).expect("write");
        let mut reader = SnapshotReader::open(&path, b"t\n").expect("open");
        into.read_rows(table, &mut reader).expect("read");
        let _ = std::fs::remove_file(&path);
    }

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
            write_and_read_back(&tables, &mut restored, table, "tables");
        }
        assert_eq!(restored.customers, tables.customers);
        assert_eq!(restored.orders, tables.orders);
    }

    #[test]
    fn an_erasure_forgets_the_customer_and_their_orders_and_keeps_them_out() {
        let mut tables = ReferenceTables::default();
        let (alice, bob) = (ref_key(b"cu-1"), ref_key(b"cu-2"));
        tables.upsert_customer(alice, &customer("cu-1", "vip", true));
        tables.upsert_customer(bob, &customer("cu-2", "vip", true));
        tables.upsert_order(ref_key(b"o-1"), &order("o-1", "cu-1", None));
        tables.upsert_order(ref_key(b"o-2"), &order("o-2", "cu-2", None));
        let requested_at = customer("cu-1", "vip", true).updated_at;
        tables.erase(alice, requested_at);
        tables.drop_erased_orders();
        assert!(tables.customer(alice).is_none());
        assert!(tables.order(ref_key(b"o-1")).is_none());
        assert!(tables.customer(bob).is_some() && tables.order(ref_key(b"o-2")).is_some());
        assert_eq!(tables.erased_at(alice), Some(requested_at));
        // The compacted topic read again: versions from before the request stay out.
        tables.upsert_customer(alice, &customer("cu-1", "vip", true));
        tables.upsert_order(ref_key(b"o-1"), &order("o-1", "cu-1", None));
        assert!(tables.customer(alice).is_none());
        assert!(tables.order(ref_key(b"o-1")).is_none());
        // A customer record from after the request is a new relationship.
        let mut later = customer("cu-1", "new", true);
        later.updated_at = TimestampMicros::from_unix_micros(requested_at.as_unix_micros() + 1);
        tables.upsert_customer(alice, &later);
        assert_eq!(&*tables.customer(alice).expect("back").segment, "new");
    }

    #[test]
    fn erasures_read_back_forget_what_older_snapshots_of_other_tables_held() {
        let mut erased = ReferenceTables::default();
        let alice = ref_key(b"cu-1");
        erased.erase(alice, TimestampMicros::from_unix_micros(i64::MAX));
        erased.drop_erased_orders();
        let mut before = ReferenceTables::default();
        before.upsert_customer(alice, &customer("cu-1", "vip", true));
        before.upsert_order(ref_key(b"o-1"), &order("o-1", "cu-1", None));
        before.upsert_order(ref_key(b"o-2"), &order("o-2", "cu-2", None));
        let write_read = |from: &ReferenceTables, into: &mut ReferenceTables, table: Table| {
            write_and_read_back(from, into, table, "erasures");
        };
        // Either order: the customer and their order stay out, the other order stays in.
        let mut erasures_last = ReferenceTables::default();
        write_read(&before, &mut erasures_last, Table::Customers);
        write_read(&before, &mut erasures_last, Table::Orders);
        write_read(&erased, &mut erasures_last, Table::Erasures);
        let mut erasures_first = ReferenceTables::default();
        write_read(&erased, &mut erasures_first, Table::Erasures);
        write_read(&before, &mut erasures_first, Table::Customers);
        write_read(&before, &mut erasures_first, Table::Orders);
        for tables in [erasures_last, erasures_first] {
            assert!(tables.customer(alice).is_none());
            assert!(tables.order(ref_key(b"o-1")).is_none());
            assert!(tables.order(ref_key(b"o-2")).is_some());
            assert!(tables.erased_at(alice).is_some());
        }
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
