//! Kafka client settings: safe defaults for each role, then whatever librdkafka properties the
//! operator passes (TLS, SASL, timeouts), which always win.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use crate::config::parse_key_value;

mod admin;
mod headers;

use crate::record_size::{DEFAULT_MAX_RECORD_BYTES, MIN_MAX_RECORD_BYTES};
pub use admin::{TopicSpec, check_record_limit, ensure_topics};
pub use headers::{header, owned_headers};

/// Environment variables `BOOMERANG_KAFKA_PROPERTY_<NAME>` set librdkafka property `<name>` with
/// `_` read as `.`: `BOOMERANG_KAFKA_PROPERTY_SASL_MECHANISMS=PLAIN` sets `sasl.mechanisms`.
pub const PROPERTY_ENV_PREFIX: &str = "BOOMERANG_KAFKA_PROPERTY_";

#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated HOST:PORT.
    #[arg(
        long = "kafka-brokers",
        env = "BOOMERANG_KAFKA_BROKERS",
        default_value = "127.0.0.1:19092"
    )]
    pub brokers: String,

    /// A librdkafka property as KEY=VALUE, repeatable; it overrides Boomerang's defaults. Also
    /// from BOOMERANG_KAFKA_PROPERTY_<NAME> variables, `_` standing for `.`.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub properties: Vec<(String, String)>,

    /// The largest record a stage produces, in bytes as the producer counts them (its
    /// `message.max.bytes`, unless that property is set itself). An output over it, and the
    /// record it came from, is dead-lettered as `record_too_large`; a dead letter over it omits
    /// the original value, then headers, then key. Must not exceed the output topics'
    /// `max.message.bytes`, which each stage checks at start-up.
    #[arg(
        long = "max-record-bytes",
        env = "BOOMERANG_MAX_RECORD_BYTES",
        default_value_t = DEFAULT_MAX_RECORD_BYTES,
        value_parser = parse_max_record_bytes
    )]
    pub max_record_bytes: usize,

    /// This instance's static group membership id (`group.instance.id`), unique among the
    /// instances of a stage and kept across restarts (a pod name, a systemd instance name). A
    /// restarted instance then gets its partitions back at once instead of after the dead
    /// member's session timeout, and a rolling restart moves no partition. Without it the
    /// instance joins as a new member each time.
    #[arg(long = "instance-id", env = "BOOMERANG_INSTANCE_ID")]
    pub instance_id: Option<String>,
}

fn parse_max_record_bytes(value: &str) -> Result<usize, String> {
    let bytes: usize = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number of bytes"))?;
    if bytes < MIN_MAX_RECORD_BYTES {
        return Err(format!(
            "at least {MIN_MAX_RECORD_BYTES} bytes: a dead letter's own headers must fit"
        ));
    }
    Ok(bytes)
}

impl KafkaArgs {
    pub fn for_brokers(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: Vec::new(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            instance_id: None,
        }
    }

    /// The operator's properties: environment first, then flags (and config file), later wins.
    pub fn operator_properties(&self) -> BTreeMap<String, String> {
        let mut properties: BTreeMap<String, String> = std::env::vars()
            .filter_map(|(name, value)| {
                let property = name.strip_prefix(PROPERTY_ENV_PREFIX)?;
                Some((property.to_ascii_lowercase().replace('_', "."), value))
            })
            .collect();
        properties.extend(self.properties.iter().cloned());
        properties
    }

    fn config_with(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in self.operator_properties() {
            config.set(key, value);
        }
        config
    }

    /// For admin and metadata clients.
    pub fn client_config(&self) -> ClientConfig {
        self.config_with(&[])
    }

    /// A consumer in `group_id` that commits only what the stage tells it to.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut config = self.config_with(&[
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            // Eager, not incremental (cooperative-sticky): every generation's assignment names
            // every partition. Incrementally, a member gives partitions up and only then rejoins
            // to hand them over; a static member stopped in between is given its old assignment
            // back when it returns, and what it gave up has no owner, for good (the chaos soak
            // found this; tests/group_membership.rs). Static membership already keeps restarts
            // from rebalancing, which is what incremental rebalancing would have saved.
            ("partition.assignment.strategy", "range"),
            // A member that died holds its partitions until its session times out: 10 s, not
            // librdkafka's 45 s. Heartbeats come from librdkafka's own thread, so a busy stage
            // loop does not miss them.
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
            // How long a fetch may wait at the broker for data. Kafka answers as soon as data
            // arrives; a broker that holds the fetch for its whole wait (the local stack's)
            // made each hop cost up to 500 ms, librdkafka's default, at low rates. Under load
            // fetches return full at once, so this only adds idle fetches (20 a second).
            ("fetch.wait.max.ms", "50"),
        ]);
        if config.get("group.id").is_none() {
            config.set("group.id", group_id);
        }
        config
    }

    /// The consumer of a stage's own group: [`Self::consumer_config`] plus its static
    /// membership id, if it has one.
    pub fn group_member_config(&self, group_id: &str) -> ClientConfig {
        let mut config = self.consumer_config(group_id);
        if let Some(instance_id) = &self.instance_id
            && config.get("group.instance.id").is_none()
        {
            config.set("group.instance.id", instance_id);
        }
        config
    }

    /// An idempotent producer that waits for every in-sync replica.
    pub fn producer_config(&self) -> ClientConfig {
        self.config_with(&[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("compression.type", "lz4"),
            // Up to 20 ms to fill a batch, not librdkafka's 5. At a steady few thousand events a
            // second each hop then sends a quarter of the batches: fewer produce requests, and
            // fewer fetches that find new data, for the broker to serve. At 2,000 events/s on
            // the local stack the broker's CPU fell by a third and the p99 to queryable from
            // 0.6–4.7 s to 0.3–0.4 s, for 12 ms at p50 (benches/README.md). Under full load
            // batches fill before the linger ends, so it costs nothing there.
            ("linger.ms", "20"),
            ("message.max.bytes", &self.max_record_bytes.to_string()),
        ])
    }

    /// The largest record the producer takes: its `message.max.bytes`, as the operator or
    /// `--max-record-bytes` set it.
    pub fn effective_max_record_bytes(&self) -> anyhow::Result<usize> {
        let config = self.producer_config();
        let value = config.get("message.max.bytes").unwrap_or_default();
        let bytes: usize = value
            .parse()
            .map_err(|_| anyhow::anyhow!("message.max.bytes={value:?} is not a number of bytes"))?;
        if bytes < MIN_MAX_RECORD_BYTES {
            anyhow::bail!(
                "message.max.bytes={bytes} is below {MIN_MAX_RECORD_BYTES}, too small for a dead letter's own headers"
            );
        }
        Ok(bytes)
    }
}

/// One metadata client asked again and again while a stage waits for its brokers. Keeping it
/// keeps its connection: a broker that answers slowly (restarting, or loaded after an outage)
/// is not asked to accept a new client and its handshake on every attempt, and a connection
/// already made is not thrown away because one attempt's timeout ended first.
pub struct BrokerProbe {
    client: BaseConsumer,
}

impl BrokerProbe {
    pub fn new(args: &KafkaArgs) -> Result<Self, KafkaError> {
        Ok(Self {
            client: args.client_config().create()?,
        })
    }

    /// How many brokers the cluster's metadata names (the cheapest proof that the brokers
    /// answer), or why none answered within `timeout`.
    pub fn ask(&self, timeout: Duration) -> Result<usize, KafkaError> {
        let metadata = self.client.fetch_metadata(None, timeout)?;
        Ok(metadata.brokers().len())
    }
}

/// A librdkafka log line as rdkafka's default client context writes it (target `librdkafka`),
/// for contexts that look at some lines first.
pub fn log_librdkafka(level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as Level;
    match level {
        Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
            tracing::error!(target: "librdkafka", "librdkafka: {facility} {message}")
        }
        Level::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {facility} {message}"),
        Level::Notice | Level::Info => {
            tracing::info!(target: "librdkafka", "librdkafka: {facility} {message}")
        }
        Level::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_properties_override_defaults() {
        let args = KafkaArgs {
            brokers: "b:1".into(),
            properties: vec![
                ("acks".into(), "1".into()),
                ("security.protocol".into(), "SASL_SSL".into()),
                ("message.max.bytes".into(), "2000000".into()),
            ],
            max_record_bytes: 5_000,
            instance_id: None,
        };
        let config = args.producer_config();
        assert_eq!(config.get("message.max.bytes"), Some("2000000"));
        assert_eq!(args.effective_max_record_bytes().ok(), Some(2_000_000));
        assert_eq!(config.get("acks"), Some("1"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("bootstrap.servers"), Some("b:1"));
    }

    #[test]
    fn the_record_limit_is_the_producers_unless_an_operator_property_sets_it() {
        let mut args = KafkaArgs::for_brokers("b:1");
        args.max_record_bytes = 50_000;
        assert_eq!(
            args.producer_config().get("message.max.bytes"),
            Some("50000")
        );
        assert_eq!(args.effective_max_record_bytes().ok(), Some(50_000));
        args.properties = vec![("message.max.bytes".into(), "100".into())];
        assert!(
            args.effective_max_record_bytes().is_err(),
            "too small to dead-letter"
        );
    }

    #[test]
    fn consumers_never_auto_commit() {
        let config = KafkaArgs::for_brokers("b:1").consumer_config("g");
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("group.id"), Some("g"));
    }

    #[test]
    fn only_the_stage_groups_member_is_static() {
        let mut args = KafkaArgs::for_brokers("b:1");
        assert_eq!(args.group_member_config("g").get("group.instance.id"), None);
        args.instance_id = Some("ingest-0".into());
        assert_eq!(
            args.group_member_config("g").get("group.instance.id"),
            Some("ingest-0")
        );
        assert_eq!(
            args.consumer_config("g").get("group.instance.id"),
            None,
            "helper consumers (restores, readers) never take the stage's membership"
        );
    }
}

#[cfg(test)]
mod tls_tests {
    use rdkafka::producer::BaseProducer;

    use super::*;

    /// Production clusters need TLS and SASL: librdkafka must be built with OpenSSL.
    #[test]
    fn tls_and_sasl_properties_are_supported() {
        let args = KafkaArgs {
            brokers: "127.0.0.1:1".into(),
            properties: vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanisms".into(), "SCRAM-SHA-512".into()),
                ("sasl.username".into(), "user".into()),
                ("sasl.password".into(), "secret".into()),
            ],
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            instance_id: None,
        };
        let created: Result<BaseProducer, _> = args.producer_config().create();
        assert!(created.is_ok(), "{:?}", created.err());
    }
}
