//! The Confluent-API schema registry: client settings and registering Boomerang's schemas.

use std::time::{Duration, Instant};

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

    /// How long, in milliseconds, the registry may answer "no such schema id" before a record
    /// with that id is dead-lettered, when nothing proves the registry has read far enough to
    /// know (see [`WriterSchemas`]). A registry that has just started, or a follower behind its
    /// leader, answers so for ids it will know a moment later. 0 believes it at once.
    #[arg(
        long = "schema-registry-unknown-id-grace-ms",
        env = "BOOMERANG_SCHEMA_REGISTRY_UNKNOWN_ID_GRACE_MS",
        default_value_t = 10_000
    )]
    pub unknown_id_grace_ms: u64,
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
            unknown_id_grace_ms: 10_000,
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
    /// The registry has no such id, and has shown it would know: the record's fault.
    #[error("schema id {0} is not in the schema registry")]
    UnknownId(u32),
    /// The registry has no such id yet, and may still be reading its schemas: ask again.
    #[error("schema id {id} is not in the schema registry yet ({why})")]
    NotYetKnown { id: u32, why: String },
    /// The registry has it, but it is not an Avro schema we can read: the record's fault.
    #[error("schema id {id} is not a readable Avro schema: {reason}")]
    Unreadable { id: u32, reason: String },
    /// The registry did not answer properly: nobody's fault, retry.
    #[error("the schema registry did not answer")]
    Unavailable(#[source] anyhow::Error),
}

/// How long an id believed unknown stays so before the registry is asked again, and how long
/// one spell of unprovable "no such id" answers lasts before a new one gets its own grace.
const RECHECK_UNKNOWN: Duration = Duration::from_secs(600);
/// Ids believed unknown that are remembered at most: hostile input may carry any of 2^32.
const MAX_BELIEVED_UNKNOWN: usize = 10_000;

/// Writer schemas by registry id, fetched once and kept for the life of the process.
///
/// A registry's "no such id" (HTTP 404) is not believed at once. A registry that has just
/// started may answer before it has read its whole `_schemas` topic (crabka does), and a
/// Confluent follower lags its leader by a moment; a valid record must not be dead-lettered
/// for either. So a 404 for id `n` is believed when:
///
/// - the registry now serves an id above `n` that this process knows exists (read before, or
///   registered by the stage itself): registries hand out ids in increasing order, so one
///   that has read that far has read `n`'s registration, if there was one. If it no longer
///   serves that id, or `n` is that id, it is still reading: the record waits, however long
///   that takes;
/// - otherwise, once the registry has answered such unprovable 404s for
///   `--schema-registry-unknown-id-grace-ms`. That grace is one spell shared by every id, so
///   a flood of records with made-up ids holds a partition up once, for the grace, not once
///   per id. An outage of the registry starts a new spell.
///
/// A believed id is dead-lettered at once for ten minutes, then asked about again.
#[derive(Clone)]
pub struct WriterSchemas {
    client: reqwest::Client,
    args: RegistryArgs,
    schemas: std::collections::HashMap<u32, &'static apache_avro::Schema>,
    /// The highest id known to exist in the registry.
    highest_known: Option<u32>,
    /// Since when the registry has answered 404s that nothing could prove.
    unproven_since: Option<Instant>,
    /// Ids believed unknown, and since when.
    believed_unknown: std::collections::HashMap<u32, Instant>,
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
            highest_known: None,
            unproven_since: None,
            believed_unknown: std::collections::HashMap::new(),
        })
    }

    /// Notes that `id` exists in the registry (e.g. the stage registered its output schema
    /// under it), so a 404 for any lower id can be proven or disproven at once.
    pub fn knowing(mut self, id: u32) -> Self {
        self.know(id);
        self
    }

    fn know(&mut self, id: u32) {
        self.highest_known = Some(self.highest_known.map_or(id, |known| known.max(id)));
    }

    pub async fn get(&mut self, id: u32) -> Result<&'static apache_avro::Schema, LookupError> {
        if let Some(schema) = self.schemas.get(&id) {
            return Ok(schema);
        }
        let now = Instant::now();
        if let Some(since) = self.believed_unknown.get(&id) {
            if now.duration_since(*since) < RECHECK_UNKNOWN {
                return Err(LookupError::UnknownId(id));
            }
            self.believed_unknown.remove(&id);
        }
        let body = match self.fetch(id).await {
            Ok(Some(body)) => body,
            Ok(None) => return Err(self.judge_not_found(id, now).await),
            Err(error) => {
                self.unproven_since = None;
                return Err(LookupError::Unavailable(error));
            }
        };
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
        self.know(id);
        Ok(schema)
    }

    /// The registry answered 404 for `id`: believe it, or ask again later (see the type's doc).
    async fn judge_not_found(&mut self, id: u32, now: Instant) -> LookupError {
        if self.highest_known == Some(id) {
            return LookupError::NotYetKnown {
                id,
                why:
                    "it exists (the stage registered it): the registry is still reading its schemas"
                        .to_string(),
            };
        }
        if let Some(higher) = self.highest_known.filter(|&known| known > id) {
            return match self.fetch(higher).await {
                Ok(Some(_)) => self.believe_unknown(id, now),
                Ok(None) => LookupError::NotYetKnown {
                    id,
                    why: format!(
                        "it does not serve id {higher} either, which exists: it is still reading its schemas"
                    ),
                },
                Err(error) => {
                    self.unproven_since = None;
                    LookupError::Unavailable(error)
                }
            };
        }
        let since = match self.unproven_since {
            Some(since) if now.duration_since(since) < RECHECK_UNKNOWN => since,
            _ => *self.unproven_since.insert(now),
        };
        let grace = Duration::from_millis(self.args.unknown_id_grace_ms);
        let waited = now.duration_since(since);
        if waited >= grace {
            return self.believe_unknown(id, now);
        }
        LookupError::NotYetKnown {
            id,
            why: format!(
                "no id above it is known to prove the registry has read its schemas; \
                 believed after {} ms more",
                (grace - waited).as_millis()
            ),
        }
    }

    fn believe_unknown(&mut self, id: u32, now: Instant) -> LookupError {
        if self.believed_unknown.len() >= MAX_BELIEVED_UNKNOWN {
            self.believed_unknown
                .retain(|_, since| now.duration_since(*since) < RECHECK_UNKNOWN);
            if self.believed_unknown.len() >= MAX_BELIEVED_UNKNOWN {
                self.believed_unknown.clear();
            }
        }
        self.believed_unknown.insert(id, now);
        LookupError::UnknownId(id)
    }

    /// `GET /schemas/ids/{id}`: `None` when the registry answers 404.
    async fn fetch(&self, id: u32) -> anyhow::Result<Option<SchemaById>> {
        let url = format!("{}/schemas/ids/{id}", self.args.url.trim_end_matches('/'));
        let mut request = self.client.get(&url);
        if let Some(username) = &self.args.username {
            request = request.basic_auth(username, self.args.password.as_deref());
        }
        let response = request.send().await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            anyhow::bail!("GET /schemas/ids/{id} answered {}", response.status());
        }
        Ok(Some(response.json().await?))
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A registry that serves `GET /schemas/ids/{id}` for the ids in `known`, 404 for the
    /// others, and 503 for everything while `down`; it counts the requests.
    #[derive(Clone, Default)]
    struct FakeRegistry {
        known: Arc<Mutex<HashSet<u32>>>,
        down: Arc<Mutex<bool>>,
        requests: Arc<Mutex<Vec<u32>>>,
    }

    impl FakeRegistry {
        async fn serve(&self) -> String {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("address"));
            let registry = self.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        let mut request = Vec::new();
                        let mut buffer = [0u8; 1024];
                        while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                            match stream.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(read) => request.extend_from_slice(&buffer[..read]),
                            }
                        }
                        let line = String::from_utf8_lossy(&request).to_string();
                        let id: u32 = line
                            .split_whitespace()
                            .nth(1)
                            .and_then(|path| path.rsplit('/').next())
                            .and_then(|id| id.parse().ok())
                            .expect("GET /schemas/ids/{id}");
                        registry.requests.lock().expect("lock").push(id);
                        let (status, body) = if *registry.down.lock().expect("lock") {
                            ("503 Service Unavailable", String::new())
                        } else if registry.known.lock().expect("lock").contains(&id) {
                            ("200 OK", r#"{"schema":"\"string\""}"#.to_string())
                        } else {
                            ("404 Not Found", r#"{"error_code":40403}"#.to_string())
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                    });
                }
            });
            url
        }

        fn learn(&self, ids: &[u32]) {
            self.known.lock().expect("lock").extend(ids);
        }

        fn requests(&self) -> usize {
            self.requests.lock().expect("lock").len()
        }
    }

    async fn schemas(registry: &FakeRegistry, grace_ms: u64) -> WriterSchemas {
        let mut args = RegistryArgs::for_url(registry.serve().await);
        args.unknown_id_grace_ms = grace_ms;
        WriterSchemas::new(&args).expect("client")
    }

    fn verdict(result: Result<&'static apache_avro::Schema, LookupError>) -> &'static str {
        match result {
            Ok(_) => "found",
            Err(LookupError::UnknownId(_)) => "unknown",
            Err(LookupError::NotYetKnown { .. }) => "not yet known",
            Err(LookupError::Unavailable(_)) => "unavailable",
            Err(LookupError::Unreadable { .. }) => "unreadable",
        }
    }

    #[tokio::test]
    async fn a_registry_still_reading_its_schemas_is_waited_for_however_long() {
        let registry = FakeRegistry::default();
        // The stage registered id 5 before the registry restarted; the record carries id 3.
        let mut schemas = schemas(&registry, 0).await.knowing(5);
        for _ in 0..3 {
            assert_eq!(verdict(schemas.get(3).await), "not yet known");
        }
        // The stage's own id (ingest's validated schema is the raw topic's current one).
        assert_eq!(verdict(schemas.get(5).await), "not yet known");
        registry.learn(&[3, 5]);
        assert_eq!(verdict(schemas.get(3).await), "found");
        assert_eq!(verdict(schemas.get(5).await), "found");
    }

    #[tokio::test]
    async fn an_id_below_one_the_registry_serves_is_unknown_at_once_and_remembered() {
        let registry = FakeRegistry::default();
        registry.learn(&[5]);
        let mut schemas = schemas(&registry, 60_000).await.knowing(5);
        assert_eq!(verdict(schemas.get(3).await), "unknown");
        let asked = registry.requests();
        assert_eq!(verdict(schemas.get(3).await), "unknown");
        assert_eq!(
            registry.requests(),
            asked,
            "a believed id is not asked about again"
        );
    }

    #[tokio::test]
    async fn an_unprovable_id_is_believed_after_the_grace_once_for_all_ids() {
        let registry = FakeRegistry::default();
        let grace = Duration::from_millis(300);
        let mut schemas = schemas(&registry, grace.as_millis() as u64).await;
        let started = Instant::now();
        assert_eq!(verdict(schemas.get(99).await), "not yet known");
        let deadline = started + Duration::from_secs(10);
        loop {
            match verdict(schemas.get(99).await) {
                "unknown" => break,
                "not yet known" if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("expected the grace to end, got {other}"),
            }
        }
        assert!(
            started.elapsed() >= grace,
            "believed before the grace passed"
        );
        // The spell is shared: another made-up id is believed without a new grace.
        assert_eq!(verdict(schemas.get(100).await), "unknown");
        // An outage starts a new spell.
        *registry.down.lock().expect("lock") = true;
        assert_eq!(verdict(schemas.get(101).await), "unavailable");
        *registry.down.lock().expect("lock") = false;
        assert_eq!(verdict(schemas.get(101).await), "not yet known");
    }

    #[tokio::test]
    async fn a_grace_of_zero_believes_at_once() {
        let registry = FakeRegistry::default();
        let mut schemas = schemas(&registry, 0).await;
        assert_eq!(verdict(schemas.get(99).await), "unknown");
        registry.learn(&[7]);
        assert_eq!(verdict(schemas.get(7).await), "found");
    }
}
