//! Kafka client settings: safe defaults for each role, then whatever librdkafka properties the
//! operator passes (TLS, SASL, timeouts), which always win.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::parse_key_value;

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
}

impl KafkaArgs {
    pub fn for_brokers(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: Vec::new(),
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
            ("partition.assignment.strategy", "cooperative-sticky"),
        ]);
        if config.get("group.id").is_none() {
            config.set("group.id", group_id);
        }
        config
    }

    /// An idempotent producer that waits for every in-sync replica.
    pub fn producer_config(&self) -> ClientConfig {
        self.config_with(&[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("compression.type", "lz4"),
            ("linger.ms", "5"),
        ])
    }
}

/// Fetches cluster metadata: the cheapest proof that the brokers answer.
pub fn check_brokers(args: &KafkaArgs, timeout: Duration) -> Result<usize, KafkaError> {
    let consumer: BaseConsumer = args.client_config().create()?;
    let metadata = consumer.fetch_metadata(None, timeout)?;
    Ok(metadata.brokers().len())
}

/// A topic to create if it does not exist.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    /// Topic configs, e.g. `cleanup.policy=compact` for reference data.
    pub configs: Vec<(String, String)>,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication: 1,
            configs: Vec::new(),
        }
    }

    pub fn compacted(mut self) -> Self {
        self.configs
            .push(("cleanup.policy".to_string(), "compact".to_string()));
        self
    }
}

/// Creates the topics that do not exist yet; existing ones are left as they are.
pub async fn ensure_topics(args: &KafkaArgs, topics: &[TopicSpec]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = args.client_config().create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| {
            let mut new_topic = NewTopic::new(
                &topic.name,
                topic.partitions,
                TopicReplication::Fixed(topic.replication),
            );
            for (key, value) in &topic.configs {
                new_topic = new_topic.set(key, value);
            }
            new_topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
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
            ],
        };
        let config = args.producer_config();
        assert_eq!(config.get("acks"), Some("1"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("bootstrap.servers"), Some("b:1"));
    }

    #[test]
    fn consumers_never_auto_commit() {
        let config = KafkaArgs::for_brokers("b:1").consumer_config("g");
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("group.id"), Some("g"));
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
        };
        let created: Result<BaseProducer, _> = args.producer_config().create();
        assert!(created.is_ok(), "{:?}", created.err());
    }
}

/// A consumed record's headers, owned: name and value (`None` for a null value), in order.
pub fn owned_headers(message: &impl Message) -> Vec<(String, Option<Vec<u8>>)> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| (header.key.to_string(), header.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}
