//! ClickHouse schema migrations: the ordered SQL files in `deploy/clickhouse/migrations/`,
//! compiled into the binaries, applied by `boomerang migrate` and checked by the sink at
//! start-up. Applied versions are recorded in `schema_migrations` with a checksum of their SQL;
//! applying again skips them, and a migration edited after it was applied is refused.

use std::time::Duration;

use boomerang_runtime::config::error_chain;
use boomerang_runtime::error_kind::ErrorKind;
use boomerang_runtime::retry::{Backoff, Retry};
use boomerang_runtime::service::StageContext;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::ClickhouseArgs;

pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. A test checks this against the folder.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_tables.sql",
        sql: include_str!("../../deploy/clickhouse/migrations/0001_tables.sql"),
    },
    Migration {
        version: 2,
        name: "0002_analytics.sql",
        sql: include_str!("../../deploy/clickhouse/migrations/0002_analytics.sql"),
    },
    Migration {
        version: 3,
        name: "0003_plain_strings.sql",
        sql: include_str!("../../deploy/clickhouse/migrations/0003_plain_strings.sql"),
    },
    Migration {
        version: 4,
        name: "0004_erasure.sql",
        sql: include_str!("../../deploy/clickhouse/migrations/0004_erasure.sql"),
    },
    Migration {
        version: 5,
        name: "0005_backfill.sql",
        sql: include_str!("../../deploy/clickhouse/migrations/0005_backfill.sql"),
    },
    Migration {
        version: 6,
        name: "0006_intelligence.sql",
        sql: include_str!("../../deploy/clickhouse/migrations/0006_intelligence.sql"),
    },
];

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations \
    (version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) \
    ENGINE = MergeTree ORDER BY version";

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("the database name {0:?} is not a plain identifier")]
    BadDatabaseName(String),
    #[error("ClickHouse refused {what}")]
    ClickHouse {
        what: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error(
        "migration {name} was changed after it was applied (checksum {applied} in the database, {current} now); add a new migration instead"
    )]
    Changed {
        name: &'static str,
        applied: String,
        current: String,
    },
    #[error("migrations not applied yet: {0:?}; run `boomerang migrate`")]
    Pending(Vec<&'static str>),
}

fn checksum(sql: &str) -> String {
    let digest = Sha256::digest(sql.as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The statements of a migration file: split at a `;` ending a line; comment-only pieces
/// dropped.
pub fn statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        current.push_str(line);
        current.push('\n');
        if line.trim_end().ends_with(';') {
            push_statement(&mut statements, &current);
            current.clear();
        }
    }
    push_statement(&mut statements, &current);
    statements
}

fn push_statement(statements: &mut Vec<String>, text: &str) {
    let has_code = text
        .lines()
        .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with("--"));
    if has_code {
        let statement = text.trim().trim_end_matches(';').trim().to_string();
        statements.push(statement);
    }
}

fn plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || character == '_')
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct AppliedRow {
    version: u32,
    checksum: String,
}

async fn applied(client: &clickhouse::Client) -> Result<Vec<AppliedRow>, MigrationError> {
    client
        .query("SELECT version, checksum FROM schema_migrations ORDER BY version")
        .fetch_all::<AppliedRow>()
        .await
        .map_err(|source| MigrationError::ClickHouse {
            what: "reading schema_migrations".into(),
            source,
        })
}

/// What `apply` did.
#[derive(Debug, Default)]
pub struct Applied {
    pub applied: Vec<&'static str>,
    pub already: Vec<&'static str>,
}

/// Creates the database if needed and applies every migration not applied yet, in order.
/// With `retention_days`, also sets the TTL of the events table and of what is derived from
/// its events (`event_key_hashes`, `cases_store`).
pub async fn apply(
    args: &ClickhouseArgs,
    retention_days: Option<u32>,
) -> Result<Applied, MigrationError> {
    if !plain_identifier(&args.database) {
        return Err(MigrationError::BadDatabaseName(args.database.clone()));
    }
    let execute = |client: clickhouse::Client, sql: String, what: String| async move {
        client
            .query(&sql)
            .execute()
            .await
            .map_err(|source| MigrationError::ClickHouse { what, source })
    };
    execute(
        args.server_client(),
        format!("CREATE DATABASE IF NOT EXISTS `{}`", args.database),
        format!("creating database {}", args.database),
    )
    .await?;
    let client = args.client();
    execute(
        client.clone(),
        MIGRATIONS_TABLE.to_string(),
        "creating schema_migrations".into(),
    )
    .await?;
    let done = applied(&client).await?;
    let mut report = Applied::default();
    for migration in MIGRATIONS {
        let current = checksum(migration.sql);
        if let Some(row) = done.iter().find(|row| row.version == migration.version) {
            if row.checksum != current {
                return Err(MigrationError::Changed {
                    name: migration.name,
                    applied: row.checksum.clone(),
                    current,
                });
            }
            report.already.push(migration.name);
            continue;
        }
        for (index, statement) in statements(migration.sql).into_iter().enumerate() {
            execute(
                client.clone(),
                statement,
                format!("statement {} of {}", index + 1, migration.name),
            )
            .await?;
        }
        execute(
            client
                .clone(),
            format!(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ({}, '{}', '{current}')",
                migration.version, migration.name
            ),
            format!("recording {}", migration.name),
        )
        .await?;
        tracing::info!(migration = migration.name, "applied");
        report.applied.push(migration.name);
    }
    if let Some(days) = retention_days {
        // The events, and what is derived from them per event or per case.
        for (table, time) in [
            ("post_purchase_events", "occurred_at"),
            ("event_key_hashes", "occurred_at"),
            ("cases_store", "opened_at"),
        ] {
            execute(
                client.clone(),
                format!("ALTER TABLE {table} MODIFY TTL toDateTime({time}) + INTERVAL {days} DAY"),
                format!("setting the retention of {table}"),
            )
            .await?;
        }
    }
    Ok(report)
}

/// Fails unless every migration is applied, unchanged.
pub async fn check(args: &ClickhouseArgs) -> Result<(), MigrationError> {
    let client = args.client();
    let done = match applied(&client).await {
        Ok(done) => done,
        Err(MigrationError::ClickHouse { source, .. })
            if source.to_string().contains("UNKNOWN_TABLE")
                || source.to_string().contains("UNKNOWN_DATABASE") =>
        {
            Vec::new()
        }
        Err(error) => return Err(error),
    };
    let mut pending = Vec::new();
    for migration in MIGRATIONS {
        match done.iter().find(|row| row.version == migration.version) {
            Some(row) if row.checksum != checksum(migration.sql) => {
                return Err(MigrationError::Changed {
                    name: migration.name,
                    applied: row.checksum.clone(),
                    current: checksum(migration.sql),
                });
            }
            Some(_) => {}
            None => pending.push(migration.name),
        }
    }
    if pending.is_empty() {
        Ok(())
    } else {
        Err(MigrationError::Pending(pending))
    }
}

/// Waits until ClickHouse answers with every migration applied, `/readyz` saying why not yet
/// and each failed check counted (`migrations_pending`, or `clickhouse_unavailable` when it
/// does not answer). `false` if the stage was asked to stop first; an error if a migration was
/// changed after it was applied, which waiting cannot mend.
pub async fn wait_until_applied(
    clickhouse: &ClickhouseArgs,
    context: &StageContext,
) -> Result<bool, MigrationError> {
    let mut retry = Retry::in_stage("checking ClickHouse's migrations", context).with_backoff(
        Backoff::new(Duration::from_millis(500), Duration::from_secs(5)),
    );
    loop {
        let error = match check(clickhouse).await {
            Ok(()) => return Ok(true),
            Err(error @ MigrationError::Changed { .. }) => return Err(error),
            Err(error) => error,
        };
        let kind = match error {
            MigrationError::Pending(_) => ErrorKind::MigrationsPending,
            _ => ErrorKind::ClickhouseUnavailable,
        };
        let reason = error_chain(&error);
        context
            .readiness
            .set_not_ready(format!("clickhouse: {reason}"));
        if !retry.failed(kind, &reason).await {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_the_folder_is_listed_in_order() {
        let folder = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/clickhouse/migrations"
        );
        let mut files: Vec<String> = std::fs::read_dir(folder)
            .expect("migrations folder")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|migration| migration.name).collect();
        assert_eq!(files, listed);
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1);
            assert!(
                migration
                    .name
                    .starts_with(&format!("{:04}_", migration.version))
            );
        }
    }

    #[test]
    fn statements_split_at_line_ending_semicolons_and_skip_comments() {
        let sql = "-- a comment; not a statement\nCREATE TABLE a (x Int8)\nENGINE = Memory;\n\n-- trailing\nSELECT 'a;b';\n-- only a comment\n";
        assert_eq!(
            statements(sql),
            vec![
                "-- a comment; not a statement\nCREATE TABLE a (x Int8)\nENGINE = Memory"
                    .to_string(),
                // A comment before a statement stays with it: ClickHouse ignores it.
                "-- trailing\nSELECT 'a;b'".to_string()
            ]
        );
    }

    #[test]
    fn every_migration_has_statements() {
        for migration in MIGRATIONS {
            assert!(!statements(migration.sql).is_empty(), "{}", migration.name);
        }
    }
}
