//! Typed configuration, read from the environment once at start-up.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use service_runtime::config::{optional, required, ConfigError};

/// Everything query-service needs to run.
///
/// Fields are public so tests build a `Config` in code, typically with
/// [`Config::new`] and struct-update syntax:
///
/// ```
/// # use query_service::config::Config;
/// let config = Config {
///     http_addr: "127.0.0.1:0".parse().expect("socket address"),
///     ..Config::new("postgres://app:app@127.0.0.1:55433/app", "redis://127.0.0.1:56379/")
/// };
/// # assert_eq!(config.http_addr.port(), 0);
/// ```
#[derive(Clone)]
pub struct Config {
    /// Where the HTTP server listens (`QUERY_HTTP_ADDR`). Port 0 picks a free
    /// port; [`crate::startup::Application::port`] tells which.
    pub http_addr: SocketAddr,
    /// The Postgres read replica (`REPLICA_DATABASE_URL`). The service never
    /// connects to the primary.
    pub replica_database_url: String,
    /// Redis holding the order summary documents (`REDIS_URL`).
    pub redis_url: String,
    /// Maximum number of replica connections (`REPLICA_POOL_SIZE`).
    pub replica_pool_size: u32,
    /// How long a request waits for a free replica connection before it is
    /// answered 503 (`REPLICA_ACQUIRE_TIMEOUT_MS`).
    pub replica_acquire_timeout: Duration,
    /// Postgres `statement_timeout` of every replica connection
    /// (`REPLICA_STATEMENT_TIMEOUT_MS`); 0 disables it, as in Postgres.
    pub replica_statement_timeout: Duration,
    /// Budget of one Redis read, waiting for a reconnect included
    /// (`REDIS_TIMEOUT_MS`). Past it the request reads the replica instead.
    pub redis_timeout: Duration,
}

impl Config {
    /// Default `QUERY_HTTP_ADDR`.
    pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        8081,
    ));
    /// Default `REPLICA_POOL_SIZE`.
    pub const DEFAULT_REPLICA_POOL_SIZE: u32 = 16;
    /// Default `REPLICA_ACQUIRE_TIMEOUT_MS`.
    pub const DEFAULT_REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(2000);
    /// Default `REPLICA_STATEMENT_TIMEOUT_MS`.
    pub const DEFAULT_REPLICA_STATEMENT_TIMEOUT: Duration = Duration::from_millis(5000);
    /// Default `REDIS_TIMEOUT_MS`.
    pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(200);

    /// A configuration with the two required URLs and every other setting at
    /// its default.
    pub fn new(replica_database_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            http_addr: Self::DEFAULT_HTTP_ADDR,
            replica_database_url: replica_database_url.into(),
            redis_url: redis_url.into(),
            replica_pool_size: Self::DEFAULT_REPLICA_POOL_SIZE,
            replica_acquire_timeout: Self::DEFAULT_REPLICA_ACQUIRE_TIMEOUT,
            replica_statement_timeout: Self::DEFAULT_REPLICA_STATEMENT_TIMEOUT,
            redis_timeout: Self::DEFAULT_REDIS_TIMEOUT,
        }
    }

    /// Reads `QUERY_HTTP_ADDR`, `REPLICA_DATABASE_URL` (required), `REDIS_URL`
    /// (required), `REPLICA_POOL_SIZE`, `REPLICA_ACQUIRE_TIMEOUT_MS`,
    /// `REPLICA_STATEMENT_TIMEOUT_MS` and `REDIS_TIMEOUT_MS`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = Self::new(String::new(), String::new());
        Ok(Self {
            http_addr: optional("QUERY_HTTP_ADDR", defaults.http_addr)?,
            replica_database_url: required("REPLICA_DATABASE_URL")?,
            redis_url: required("REDIS_URL")?,
            replica_pool_size: positive(
                "REPLICA_POOL_SIZE",
                optional("REPLICA_POOL_SIZE", defaults.replica_pool_size)?,
            )?,
            replica_acquire_timeout: Duration::from_millis(positive(
                "REPLICA_ACQUIRE_TIMEOUT_MS",
                optional(
                    "REPLICA_ACQUIRE_TIMEOUT_MS",
                    millis(defaults.replica_acquire_timeout),
                )?,
            )?),
            replica_statement_timeout: Duration::from_millis(optional(
                "REPLICA_STATEMENT_TIMEOUT_MS",
                millis(defaults.replica_statement_timeout),
            )?),
            redis_timeout: Duration::from_millis(positive(
                "REDIS_TIMEOUT_MS",
                optional("REDIS_TIMEOUT_MS", millis(defaults.redis_timeout))?,
            )?),
        })
    }
}

/// A zero pool size or zero wait would fail every request, so it is refused
/// at start-up rather than discovered under load.
fn positive<T>(name: &'static str, value: T) -> Result<T, ConfigError>
where
    T: PartialOrd + Default + fmt::Display,
{
    if value > T::default() {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            name,
            value: value.to_string(),
            reason: "must be greater than 0".to_owned(),
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// URLs carry passwords; `Debug` output ends up in logs.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("http_addr", &self.http_addr)
            .field("replica_database_url", &redact(&self.replica_database_url))
            .field("redis_url", &redact(&self.redis_url))
            .field("replica_pool_size", &self.replica_pool_size)
            .field("replica_acquire_timeout", &self.replica_acquire_timeout)
            .field("replica_statement_timeout", &self.replica_statement_timeout)
            .field("redis_timeout", &self.redis_timeout)
            .finish()
    }
}

/// `scheme://user:secret@host/db` → `scheme://***@host/db`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_uses_documented_defaults() {
        let config = Config::new("postgres://r", "redis://c");
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:8081");
        assert_eq!(config.replica_pool_size, 16);
        assert_eq!(config.replica_acquire_timeout, Duration::from_millis(2000));
        assert_eq!(
            config.replica_statement_timeout,
            Duration::from_millis(5000)
        );
        assert_eq!(config.redis_timeout, Duration::from_millis(200));
    }

    #[test]
    fn debug_hides_credentials() {
        let config = Config::new(
            "postgres://app:s3cret@db:5432/app",
            "redis://:hunter2@cache:6379/",
        );
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("hunter2"),
            "{debug}"
        );
        assert!(debug.contains("postgres://***@db:5432/app"), "{debug}");
    }

    #[test]
    fn zero_is_rejected_where_it_would_fail_every_request() {
        assert!(positive("X", 0_u32).is_err());
        assert_eq!(positive("X", 3_u64).ok(), Some(3));
    }
}
