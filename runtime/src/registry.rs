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

/// Why a writer schema could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The registry answered that it has no such id: the record's fault.
    #[error("schema id {0} is not in the schema registry")]
    UnknownId(u32),
    /// The registry has it, but it is not an Avro schema we can read: the record's fault.
    #[error("schema id {id} is not a readable Avro schema: {reason}")]
    Unreadable { id: u32, reason: String },
    /// The registry did not answer properly: nobody's fault, retry.
    #[error("the schema registry did not answer")]
    Unavailable(#[source] anyhow::Error),
}

/// Writer schemas by registry id, fetched once and kept for the life of the process.
#[derive(Clone)]
pub struct WriterSchemas {
    client: reqwest::Client,
    args: RegistryArgs,
    schemas: std::collections::HashMap<u32, &'static apache_avro::Schema>,
}

#[derive(serde::Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

impl WriterSchemas {
    pub fn new(args: &RegistryArgs) -> Result<Self, LookupError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(args.timeout_ms))
            .build()
            .map_err(|error| LookupError::Unavailable(error.into()))?;
        Ok(Self {
            client,
            args: args.clone(),
            schemas: std::collections::HashMap::new(),
        })
    }

    pub async fn get(&mut self, id: u32) -> Result<&'static apache_avro::Schema, LookupError> {
        if let Some(schema) = self.schemas.get(&id) {
            return Ok(schema);
        }
        let url = format!("{}/schemas/ids/{id}", self.args.url.trim_end_matches('/'));
        let mut request = self.client.get(&url);
        if let Some(username) = &self.args.username {
            request = request.basic_auth(username, self.args.password.as_deref());
        }
        let response = request
            .send()
            .await
            .map_err(|error| LookupError::Unavailable(error.into()))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(LookupError::UnknownId(id));
        }
        if !response.status().is_success() {
            return Err(LookupError::Unavailable(anyhow::anyhow!(
                "GET /schemas/ids/{id} answered {}",
                response.status()
            )));
        }
        let body: SchemaById = response
            .json()
            .await
            .map_err(|error| LookupError::Unavailable(error.into()))?;
        if let Some(schema_type) = body.schema_type.filter(|kind| kind != "AVRO") {
            return Err(LookupError::Unreadable {
                id,
                reason: format!("it is a {schema_type} schema"),
            });
        }
        let schema = apache_avro::Schema::parse_str(&body.schema).map_err(|error| {
            LookupError::Unreadable {
                id,
                reason: error.to_string(),
            }
        })?;
        // Leaked on purpose: a schema is fetched once per id and lives as long as the process;
        // the count is bounded by the ids that exist in the registry, and readers built on it
        // can then be cached without self-referential structs.
        let schema: &'static apache_avro::Schema = Box::leak(Box::new(schema));
        self.schemas.insert(id, schema);
        Ok(schema)
    }
}

/// Registers `kind`'s current schema under `topic`'s value subject (as Confluent serializers
/// do with auto-registration) and returns its id; an unchanged schema keeps its id.
pub async fn register_value_schema(
    settings: &SrSettings,
    topic: &str,
    kind: boomerang_schemas::SchemaKind,
) -> Result<u32, RegistryError> {
    let subject = value_subject(topic);
    let schema = SuppliedSchema::new(
        Some(kind.full_name().to_string()),
        SchemaType::Avro,
        kind.avsc().to_string(),
    );
    post_schema(settings, subject.clone(), schema)
        .await
        .map(|registered| registered.id)
        .map_err(|source| RegistryError::Register { subject, source })
}

/// [`register_value_schema`] for a stage's output topic at start-up, retried with backoff while
/// the registry does not answer (`/readyz` says so). `None` if shutdown came first.
pub async fn register_output_schema(
    args: &RegistryArgs,
    topic: &str,
    kind: boomerang_schemas::SchemaKind,
    context: &crate::service::StageContext,
) -> anyhow::Result<Option<u32>> {
    let settings = args.settings()?;
    let what = format!("schema registry: registering the schema of {topic}");
    Ok(crate::retry::until_ok(
        context,
        crate::error_kind::ErrorKind::SchemaRegistryUnavailable,
        &what,
        || async {
            register_value_schema(&settings, topic, kind)
                .await
                .map_err(|error| crate::config::error_chain(&error))
        },
    )
    .await)
}
