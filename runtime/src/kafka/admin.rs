//! Topics at start-up: creating the ones that do not exist, and checking that an output topic
//! takes the stage's largest record.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::KafkaArgs;

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

/// Checks at start-up that every topic a stage produces to takes the stage's largest record
/// ([`KafkaArgs::effective_max_record_bytes`]): a topic whose `max.message.bytes` is smaller
/// would refuse a record the stage let through, and the stage would stop on it. A broker that
/// does not describe topic configs, or not within `timeout`, is trusted, with a warning.
pub async fn check_record_limit(
    args: &KafkaArgs,
    topics: &[&str],
    timeout: Duration,
) -> anyhow::Result<()> {
    let max_record_bytes = args.effective_max_record_bytes()?;
    let admin: AdminClient<DefaultClientContext> = args.client_config().create()?;
    let resources: Vec<ResourceSpecifier<'_>> = topics
        .iter()
        .map(|topic| ResourceSpecifier::Topic(topic))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let described = match admin.describe_configs(&resources, &options).await {
        Ok(described) => described,
        Err(error) => {
            tracing::warn!(error = %error, "cannot read the output topics' max.message.bytes; not checked");
            return Ok(());
        }
    };
    for (topic, result) in topics.iter().zip(described) {
        let limit = result
            .ok()
            .and_then(|resource| {
                resource
                    .get("max.message.bytes")
                    .and_then(|entry| entry.value.clone())
            })
            .and_then(|value| value.parse::<usize>().ok());
        match limit {
            Some(limit) if limit < max_record_bytes => anyhow::bail!(
                "topic {topic} takes records of at most {limit} bytes (max.message.bytes), \
                 but this stage may produce records of up to {max_record_bytes} bytes: set \
                 --max-record-bytes (BOOMERANG_MAX_RECORD_BYTES) to {limit} or less, or raise \
                 the topic's max.message.bytes"
            ),
            Some(_) => {}
            None => tracing::warn!(
                topic,
                "cannot read the topic's max.message.bytes; not checked"
            ),
        }
    }
    Ok(())
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
