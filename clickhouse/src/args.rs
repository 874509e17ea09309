//! Where ClickHouse is and how to reach it: the sink, `boomerang migrate` and `boomerang
//! report` share these settings.

use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct ClickhouseArgs {
    /// ClickHouse HTTP(S) endpoint.
    #[arg(
        id = "clickhouse-url",
        long = "clickhouse-url",
        env = "BOOMERANG_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:18123"
    )]
    pub url: String,

    /// The database holding Boomerang's tables and analytics views.
    #[arg(
        id = "clickhouse-database",
        long = "clickhouse-database",
        env = "BOOMERANG_CLICKHOUSE_DATABASE",
        default_value = "boomerang"
    )]
    pub database: String,

    #[arg(
        id = "clickhouse-user",
        long = "clickhouse-user",
        env = "BOOMERANG_CLICKHOUSE_USER"
    )]
    pub user: Option<String>,

    #[arg(
        id = "clickhouse-password",
        long = "clickhouse-password",
        env = "BOOMERANG_CLICKHOUSE_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,

    /// A ClickHouse setting for every query and insert, as NAME=VALUE; repeatable.
    #[arg(id = "clickhouse-setting",
        long = "clickhouse-setting", value_name = "NAME=VALUE", value_parser = boomerang_runtime::config::parse_key_value)]
    pub settings: Vec<(String, String)>,

    /// How long one request may take before it is abandoned (and, for inserts, retried), in
    /// seconds.
    #[arg(
        id = "clickhouse-timeout-secs",
        long = "clickhouse-timeout-secs",
        env = "BOOMERANG_CLICKHOUSE_TIMEOUT_SECS",
        default_value_t = 60
    )]
    pub timeout_secs: u64,

    /// How inserts and query answers travel: `lz4`, ClickHouse's own block compression (less
    /// network, some CPU on both ends), or `none` (a ClickHouse on the same host or a fast
    /// link, where the CPU matters more than the bytes).
    #[arg(
        id = "clickhouse-compression",
        long = "clickhouse-compression",
        env = "BOOMERANG_CLICKHOUSE_COMPRESSION",
        value_enum,
        default_value_t = Compression::Lz4
    )]
    pub compression: Compression,
}

/// [`ClickhouseArgs::compression`]'s choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    Lz4,
    None,
}

impl Compression {
    fn of_client(self) -> clickhouse::Compression {
        match self {
            Compression::Lz4 => clickhouse::Compression::Lz4,
            Compression::None => clickhouse::Compression::None,
        }
    }
}

impl ClickhouseArgs {
    pub fn for_url(url: &str, database: &str) -> Self {
        Self {
            url: url.to_string(),
            database: database.to_string(),
            user: None,
            password: None,
            settings: Vec::new(),
            timeout_secs: 60,
            compression: Compression::Lz4,
        }
    }

    /// A client of the server, without a database (to create it).
    pub fn server_client(&self) -> clickhouse::Client {
        let mut client = clickhouse::Client::default()
            .with_url(&self.url)
            .with_compression(self.compression.of_client());
        if let Some(user) = &self.user {
            client = client.with_user(user);
        }
        if let Some(password) = &self.password {
            client = client.with_password(password);
        }
        for (name, value) in &self.settings {
            client = client.with_setting(name, value);
        }
        client
    }

    /// A client of Boomerang's database.
    pub fn client(&self) -> clickhouse::Client {
        self.server_client().with_database(&self.database)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }
}
