//! Enrich's reference tables: memory per record, and the bootstrap rate — the enrich loader
//! reading the orders and customers topics from the beginning into its tables, beside a bare
//! rdkafka consumer reading the same topics, in the same run. Needs the local stack
//! (`deploy/local/stack.sh up`). Targets: bootstrap ≥ 100k records/s.
//!
//! cargo bench -p boomerang-benches --bench enrich_reference         # 1M orders, 200k customers
//! BOOMERANG_BENCH_ORDERS=200000 BOOMERANG_BENCH_CUSTOMERS=40000 cargo bench -p boomerang-benches --bench enrich_reference

use boomerang_benches::harness::{prefill, resident_bytes};
use boomerang_enrich::metrics::EnrichMetrics;
use boomerang_runtime::metrics::Metrics;
use std::time::{Duration, Instant};

use boomerang_benches::reference_world::{customer, order};
use boomerang_enrich::reference::{Arrivals, Loader};
use boomerang_enrich::tables::{ReferenceTables, SharedTables, Table, ref_key};
use boomerang_runtime::kafka::{KafkaArgs, TopicSpec, ensure_topics};
use boomerang_runtime::registry::{RegistryArgs, WriterSchemas, register_all};
use boomerang_runtime::topics::{TopicsArgs, value_subject};
use boomerang_schemas::{Customer, Order, TimestampMicros};
use boomerang_testkit::{Stack, unique_name};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Resident bytes per record of each table, filled directly.
fn memory(orders: usize, customers: usize, now: TimestampMicros) {
    let before = resident_bytes();
    let mut tables = ReferenceTables::default();
    for n in 0..customers {
        let customer = customer(n);
        tables.upsert_customer(ref_key(customer.customer_id.as_bytes()), &customer);
    }
    let after_customers = resident_bytes();
    for n in 0..orders {
        let order = order(n, customers, now);
        tables.upsert_order(ref_key(order.order_id.as_bytes()), &order);
    }
    let after_orders = resident_bytes();
    assert_eq!(tables.len(Table::Orders), orders);
    println!("| table | records | resident bytes | bytes per record |");
    println!("|---|---|---|---|");
    let customers_bytes = after_customers.saturating_sub(before);
    let orders_bytes = after_orders.saturating_sub(after_customers);
    println!(
        "| customers | {customers} | {customers_bytes} | {:.0} |",
        customers_bytes as f64 / customers as f64
    );
    println!(
        "| orders (avg 2 lines) | {orders} | {orders_bytes} | {:.0} |",
        orders_bytes as f64 / orders as f64
    );
}

/// A bare consumer reading every partition of both topics from the beginning.
fn bare_read(kafka: &KafkaArgs, topics: &[&str], records: usize) -> Duration {
    let consumer: BaseConsumer = kafka
        .consumer_config(&unique_name("bench-bare"))
        .create()
        .expect("consumer");
    let started = Instant::now();
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        for partition in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Beginning)
                .expect("add");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let mut read = 0;
    let mut bytes = 0usize;
    while read < records {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("consume");
            bytes += rdkafka::Message::payload(&message).map_or(0, <[u8]>::len);
            read += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "bare read stalled at {read}"
        );
    }
    std::hint::black_box(bytes);
    started.elapsed()
}

/// enrich's loaders, both tables side by side as the binary runs them, until caught up.
async fn loader_bootstrap(
    kafka: &KafkaArgs,
    registry: &RegistryArgs,
    topics: &TopicsArgs,
) -> (Duration, SharedTables) {
    let tables = SharedTables::default();
    let shutdown = CancellationToken::new();
    let metrics = EnrichMetrics::register(&Metrics::for_tests()).expect("metrics");
    let started = Instant::now();
    let (customers, mut customers_progress) = Loader::<Customer, _>::start(
        kafka,
        &topics.customers,
        WriterSchemas::new(registry).expect("registry"),
        tables.clone(),
        Arrivals::default(),
        metrics.clone(),
    )
    .expect("customers loader");
    let (orders, mut orders_progress) = Loader::<Order, _>::start(
        kafka,
        &topics.orders,
        WriterSchemas::new(registry).expect("registry"),
        tables.clone(),
        Arrivals::default(),
        metrics,
    )
    .expect("orders loader");
    let handles = [
        tokio::spawn(customers.run(shutdown.clone())),
        tokio::spawn(orders.run(shutdown.clone())),
    ];
    customers_progress
        .wait_for(|state| state.done)
        .await
        .expect("customers caught up");
    orders_progress
        .wait_for(|state| state.done)
        .await
        .expect("orders caught up");
    let elapsed = started.elapsed();
    shutdown.cancel();
    for handle in handles {
        handle.await.expect("loader stops");
    }
    (elapsed, tables)
}

fn main() {
    let orders = env_count("BOOMERANG_BENCH_ORDERS", 1_000_000);
    let customers = env_count("BOOMERANG_BENCH_CUSTOMERS", 200_000);
    let now = TimestampMicros::now();
    memory(orders, customers, now);

    let stack = Stack::from_env();
    let kafka = KafkaArgs::for_brokers(&stack.kafka_brokers);
    let registry = RegistryArgs::for_url(&stack.schema_registry_url);
    let topics = TopicsArgs::with_prefix(&unique_name("bench-ref"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (customer_schema, order_schema) = runtime.block_on(async {
        ensure_topics(
            &kafka,
            &[
                TopicSpec::new(&topics.customers, 3).compacted(),
                TopicSpec::new(&topics.orders, 3).compacted(),
            ],
        )
        .await
        .expect("topics");
        let registrations = register_all(&registry.settings().expect("settings"), &topics)
            .await
            .expect("register");
        let id = |topic: &str| {
            registrations
                .iter()
                .find(|registration| {
                    registration.subject == value_subject(topic) && registration.current
                })
                .map(|registration| registration.schema_id)
                .expect("registered")
        };
        (id(&topics.customers), id(&topics.orders))
    });
    let filled = Instant::now();
    prefill(&kafka, &topics.customers, customer_schema, customers, |n| {
        let customer = customer(n);
        (customer.customer_id.clone(), customer)
    });
    prefill(&kafka, &topics.orders, order_schema, orders, |n| {
        let order = order(n, customers, now);
        (order.order_id.clone(), order)
    });
    eprintln!(
        "prefilled {} records in {:.1?}",
        orders + customers,
        filled.elapsed()
    );

    let records = orders + customers;
    let bare = bare_read(&kafka, &[&topics.customers, &topics.orders], records);
    let (loaded, tables) = runtime.block_on(loader_bootstrap(&kafka, &registry, &topics));
    {
        let tables = tables.read();
        assert_eq!(tables.len(Table::Orders), orders);
        assert_eq!(tables.len(Table::Customers), customers);
    }
    let rate = |elapsed: Duration| records as f64 / elapsed.as_secs_f64();
    println!();
    println!("| reader | records | seconds | records/s | vs bare |");
    println!("|---|---|---|---|---|");
    println!(
        "| bare rdkafka consumer (assign, no decoding) | {records} | {:.2} | {:.0} | 1.00 |",
        bare.as_secs_f64(),
        rate(bare)
    );
    println!(
        "| enrich loaders (decode, apply to tables) | {records} | {:.2} | {:.0} | {:.2} |",
        loaded.as_secs_f64(),
        rate(loaded),
        rate(loaded) / rate(bare)
    );
}
