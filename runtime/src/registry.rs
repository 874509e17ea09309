//! The Confluent-API schema registry: client settings and registering Boomerang's schemas.

use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{SrSettings, post_schema};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

use crate::topics::{TopicsArgs, value_subject};

#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Schema registry URL (Confluent REST API).
    #[arg(
        long = "schema-registry-url",
        env = "BOOMERANG_SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:18081"
    )]
    pub url: String,

    /// Basic-auth user for the schema registry.
    #[arg(
        long = "schema-registry-username",
        env = "BOOMERANG_SCHEMA_REGISTRY_USERNAME"
    )]
    pub username: Option<String>,

    /// Basic-auth password for the schema registry.
    #[arg(
        long = "schema-registry-password",
        env = "BOOMERANG_SCHEMA_REGISTRY_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,

    /// Timeout of one schema registry request, in milliseconds.
    #[arg(
        long = "schema-registry-timeout-ms",
        env = "BOOMERANG_SCHEMA_REGISTRY_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid schema registry settings")]
    Settings(#[source] SRCError),
    #[error("schema registry refused {subject}")]
    Register {
        subject: String,
        #[source]
        source: SRCError,
    },
}

impl RegistryArgs {
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            username: None,
            password: None,
            timeout_ms: 5_000,
        }
    }

    pub fn settings(&self) -> Result<SrSettings, RegistryError> {
        let mut builder = SrSettings::new_builder(self.url.clone());
        builder.set_timeout(Duration::from_millis(self.timeout_ms));
        if let Some(username) = &self.username {
            builder.set_basic_authorization(username, self.password.as_deref());
        }
        builder.build().map_err(RegistryError::Settings)
    }
}

/// One schema version registered under a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub subject: String,
    pub record: &'static str,
    pub schema_id: u32,
    /// `true` for the current version, `false` for an earlier one from the history.
    pub current: bool,
}

/// Registers every topic's value schema under `<topic>-value`: the earlier versions first, then
/// the current one, so the registry holds the real history and checks each step for
/// compatibility. Registering an unchanged schema again returns its existing id.
pub async fn register_all(
    settings: &SrSettings,
    topics: &TopicsArgs,
) -> Result<Vec<Registration>, RegistryError> {
    let mut registrations = Vec::new();
    for (topic, kind) in topics.value_schemas() {
        let subject = value_subject(topic);
        let versions = kind
            .history()
            .iter()
            .map(|avsc| (*avsc, false))
            .chain(std::iter::once((kind.avsc(), true)));
        for (avsc, current) in versions {
            let schema = SuppliedSchema::new(
                Some(kind.full_name().to_string()),
                SchemaType::Avro,
                avsc.to_string(),
            );
            let registered = post_schema(settings, subject.clone(), schema)
                .await
                .map_err(|source| RegistryError::Register {
                    subject: subject.clone(),
                    source,
                })?;
            registrations.push(Registration {
                subject: subject.clone(),
                record: kind.full_name(),
                schema_id: registered.id,
                current,
            });
        }
    }
    Ok(registrations)
}
