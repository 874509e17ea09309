//! One config loader for every binary: a setting comes from its flag, else its environment
//! variable, else the config file (`--config FILE` or `BOOMERANG_CONFIG`), else its default.
//!
//! The config file is TOML whose keys are the long flag names (`kafka-brokers = "..."`, with
//! `-` or `_`); a table value expands to repeated `KEY=VALUE` flags, e.g.
//! `[kafka-property]` with `"security.protocol" = "SASL_SSL"`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, CommandFactory, Parser};

/// The flag and variable that name the config file.
pub const CONFIG_FLAG: &str = "--config";
pub const CONFIG_ENV: &str = "BOOMERANG_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config file {path} sets {key}, which is not a setting of this program")]
    UnknownKey { path: PathBuf, key: String },
    #[error("config file {path} sets {key} to a {kind}, which cannot be a setting")]
    UnsupportedValue {
        path: PathBuf,
        key: String,
        kind: &'static str,
    },
}

/// Parses `T` from the process's arguments, environment and config file; exits with clap's
/// message on bad flags, as any command-line program does.
pub fn load<T: Parser>() -> T {
    load_from(std::env::args_os().collect::<Vec<_>>())
}

pub fn load_from<T: Parser>(argv: Vec<OsString>) -> T {
    match file_arguments::<T>(&argv) {
        Ok(arguments) => {
            let matches = T::command()
                .args_override_self(true)
                .get_matches_from(arguments);
            T::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
        }
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            std::process::exit(2);
        }
    }
}

/// The argument list with the config file's settings inserted before the real arguments, for
/// the settings whose environment variable is not set (so environment beats file, and a flag,
/// coming later with `args_override_self`, beats both).
fn file_arguments<T: CommandFactory>(argv: &[OsString]) -> Result<Vec<OsString>, ConfigError> {
    let Some(path) = config_path(argv) else {
        return Ok(argv.to_vec());
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| ConfigError::Parse {
        path: path.clone(),
        source,
    })?;
    let command = T::command();
    let mut arguments: Vec<OsString> = argv.iter().take(1).cloned().collect();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(argument) = command
            .get_arguments()
            .find(|argument| argument.get_long() == Some(long.as_str()))
        else {
            return Err(ConfigError::UnknownKey {
                path,
                key: key.clone(),
            });
        };
        let env_is_set = argument
            .get_env()
            .is_some_and(|name| std::env::var_os(name).is_some());
        if env_is_set {
            continue;
        }
        let takes_value = !matches!(
            argument.get_action(),
            ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
        );
        for value in flag_values(&path, key, value)? {
            if takes_value {
                arguments.push(format!("--{long}={value}").into());
            } else if value == "true" {
                arguments.push(format!("--{long}").into());
            }
        }
    }
    arguments.extend(argv.iter().skip(1).cloned());
    Ok(arguments)
}

fn flag_values(path: &Path, key: &str, value: &toml::Value) -> Result<Vec<String>, ConfigError> {
    let unsupported = |kind| ConfigError::UnsupportedValue {
        path: path.to_path_buf(),
        key: key.to_string(),
        kind,
    };
    Ok(match value {
        toml::Value::String(text) => vec![text.clone()],
        toml::Value::Integer(number) => vec![number.to_string()],
        toml::Value::Float(number) => vec![number.to_string()],
        toml::Value::Boolean(flag) => vec![flag.to_string()],
        toml::Value::Array(items) => {
            let mut values = Vec::with_capacity(items.len());
            for item in items {
                values.extend(flag_values(path, key, item)?);
            }
            values
        }
        toml::Value::Table(entries) => {
            let mut values = Vec::with_capacity(entries.len());
            for (name, item) in entries {
                for item_value in flag_values(path, key, item)? {
                    values.push(format!("{name}={item_value}"));
                }
            }
            values
        }
        toml::Value::Datetime(_) => return Err(unsupported("datetime")),
    })
}

fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut arguments = argv.iter().skip(1);
    while let Some(argument) = arguments.next() {
        let argument = argument.to_string_lossy();
        if argument == CONFIG_FLAG {
            return arguments.next().map(PathBuf::from);
        }
        if let Some(path) = argument.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(CONFIG_ENV).map(PathBuf::from)
}

/// `KEY=VALUE`, for clap's `value_parser`.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// An error with its causes, `a: b: c`, for the one place a binary prints it.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use clap::FromArgMatches;

    use super::*;

    #[derive(Debug, Parser)]
    struct Settings {
        #[arg(long, env = "BOOMERANG_TEST_CONFIG_NAME", default_value = "default")]
        name: String,
        #[arg(long, env = "BOOMERANG_TEST_CONFIG_ONLY_IN_FILE_AND_FLAG")]
        size: Option<u32>,
        #[arg(long)]
        verbose: bool,
        #[arg(long = "kafka-property", value_parser = parse_key_value)]
        kafka_properties: Vec<(String, String)>,
        #[arg(long)]
        config: Option<PathBuf>,
    }

    fn config_file(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with_contents(text)
    }

    /// A temp file without a dependency: removed on drop.
    mod tempfile_path {
        use super::*;

        pub struct TempPath(pub PathBuf);

        impl TempPath {
            pub fn with_contents(text: &str) -> Self {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "boomerang-config-test-{}-{}.toml",
                    std::process::id(),
                    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                let mut file = std::fs::File::create(&path).expect("create temp config");
                file.write_all(text.as_bytes()).expect("write temp config");
                Self(path)
            }
        }

        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn parse(file: &tempfile_path::TempPath, flags: &[&str]) -> Settings {
        let mut argv: Vec<OsString> = vec!["test".into(), "--config".into(), file.0.clone().into()];
        argv.extend(flags.iter().map(OsString::from));
        let arguments = file_arguments::<Settings>(&argv).expect("config loads");
        let matches = Settings::command()
            .args_override_self(true)
            .try_get_matches_from(arguments)
            .expect("arguments parse");
        Settings::from_arg_matches(&matches).expect("settings")
    }

    #[test]
    fn file_fills_what_flags_leave_unset_and_flags_win() {
        let file = config_file(
            "size = 7\nverbose = true\n[kafka_property]\n\"security.protocol\" = \"SASL_SSL\"\n",
        );
        let settings = parse(&file, &[]);
        assert_eq!(settings.size, Some(7));
        assert!(settings.verbose);
        assert_eq!(
            settings.kafka_properties,
            vec![("security.protocol".to_string(), "SASL_SSL".to_string())]
        );
        assert_eq!(parse(&file, &["--size", "9"]).size, Some(9));
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let file = config_file("sise = 7\n");
        let argv: Vec<OsString> = vec!["test".into(), "--config".into(), file.0.clone().into()];
        let error = file_arguments::<Settings>(&argv).expect_err("unknown key");
        assert!(error.to_string().contains("sets sise"), "{error}");
    }

    #[test]
    fn key_value_needs_a_key() {
        assert_eq!(
            parse_key_value("a.b=c=d"),
            Ok(("a.b".to_string(), "c=d".to_string()))
        );
        assert!(parse_key_value("=x").is_err());
        assert!(parse_key_value("novalue").is_err());
    }
}
