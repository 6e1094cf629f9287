//! Typed configuration, read from the environment once at start-up.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use access_control::AuthConfig;
use service_runtime::breaker::BreakerSettings;
use service_runtime::config::{optional, redact_url, required, ConfigError};
use traffic_control::{ProtectionConfig, RateLimitConfig};

/// Everything query-service needs to run.
///
/// Fields are public so tests build a `Config` in code, typically with
/// [`Config::new`] and struct-update syntax:
///
/// ```
/// # use query_service::config::Config;
/// let config = Config {
///     http_addr: "127.0.0.1:0".parse().expect("socket address"),
///     ..Config::new(
///         "postgres://app:app@127.0.0.1:55432/app",
///         vec!["postgres://app:app@127.0.0.1:55433/app".to_owned()],
///         "redis://127.0.0.1:56379/",
///         access_control::AuthConfig::hs256(
///             "a secret of at least thirty-two bytes",
///             "issuer",
///             "audience",
///         )
///         .expect("a long enough secret"),
///     )
/// };
/// # assert_eq!(config.http_addr.port(), 0);
/// ```
#[derive(Clone)]
pub struct Config {
    /// Where the HTTP server listens (`QUERY_HTTP_ADDR`). Port 0 picks a free
    /// port; [`crate::startup::Application::port`] tells which.
    pub http_addr: SocketAddr,
    /// The Postgres primary (`PRIMARY_DATABASE_URL`), or PgBouncer in front
    /// of it (then set [`Config::primary_transaction_pooler`]): the
    /// reference the replicas' lag is measured against, and the fallback for
    /// reads when no replica qualifies (if [`Config::primary_fallback`]
    /// allows).
    pub primary_database_url: String,
    /// `PRIMARY_TRANSACTION_POOLER` (false): `PRIMARY_DATABASE_URL` is a
    /// transaction-mode pooler such as PgBouncer, see
    /// [`service_runtime::postgres::DbPool`]. Only the primary: the replicas
    /// are always connected directly, so `REPLICA_DATABASE_URLS` must not
    /// name a transaction pooler. Unlike command-service, query-service needs
    /// no session URL beside it: it keeps no session state (no advisory
    /// locks, `LISTEN` or migrations; its invalidation feed is Redis), only
    /// reads, each in a transaction of its own behind the pooler.
    pub primary_transaction_pooler: bool,
    /// The read replicas (`REPLICA_DATABASE_URLS`, comma-separated; may be
    /// empty, then every read goes to the primary if allowed).
    pub replica_database_urls: Vec<String>,
    /// Redis: the shared cache tier and the invalidation feed (`REDIS_URL`).
    pub redis_url: String,
    /// Connections per replica (`REPLICA_POOL_SIZE`). Each replica has its
    /// own pool, so a stuck one cannot take the connections of the others.
    pub replica_pool_size: u32,
    /// Connections to the primary for fallback and consistent reads
    /// (`PRIMARY_READ_POOL_SIZE`); small on purpose, the primary serves writes.
    pub primary_pool_size: u32,
    /// Budget of one attempt on one database, waiting for a connection
    /// included (`READ_ATTEMPT_TIMEOUT_MS`). Past it the read moves on to
    /// the next database, and the timeout counts against the slow one's
    /// circuit breaker ([`Config::db_breaker`]).
    pub read_attempt_timeout: Duration,
    /// Budget of a whole read over all attempts (`READ_DEADLINE_MS`); past
    /// it the answer is 503.
    pub read_deadline: Duration,
    /// Postgres `statement_timeout` of every read connection
    /// (`READ_STATEMENT_TIMEOUT_MS`); 0 disables it, as in Postgres. Stops
    /// the server's work on a statement whose client gave up.
    pub read_statement_timeout: Duration,
    /// A replica lagging more than this is not read from
    /// (`REPLICA_MAX_LAG_MS`).
    pub replica_max_lag: Duration,
    /// Whether reads go to the primary when no replica qualifies
    /// (`PRIMARY_FALLBACK`: `allow` or `deny`; with `deny` they get 503).
    pub primary_fallback: PrimaryFallback,
    /// How often the monitor checks each database's health and lag
    /// (`REPLICA_CHECK_INTERVAL_MS`).
    pub replica_check_interval: Duration,
    /// How long a read carrying a consistency token waits for a replica to
    /// catch up before asking the primary (`CONSISTENT_READ_REPLICA_WAIT_MS`).
    pub consistent_read_replica_wait: Duration,
    /// How long a read carrying a consistency token may wait in all before
    /// it is answered 503 `not-yet-consistent` (`CONSISTENT_READ_TIMEOUT_MS`).
    pub consistent_read_timeout: Duration,
    /// Budget of one Redis call, waiting for a reconnect included
    /// (`REDIS_TIMEOUT_MS`). Past it the request reads the database instead.
    pub redis_timeout: Duration,
    /// Entries of the in-process cache tier (`LOCAL_CACHE_CAPACITY`).
    pub local_cache_capacity: u64,
    /// Time to live of an in-process cache entry (`LOCAL_CACHE_TTL_MS`): the
    /// safety net behind event-driven invalidation.
    pub local_cache_ttl: Duration,
    /// Time to live of a document query-service puts in Redis
    /// (`REDIS_CACHE_TTL_S`).
    pub redis_cache_ttl: Duration,
    /// The circuit breaker of each database (`db-replica-N`, `db-primary`):
    /// `DB_BREAKER_FAILURES` (default 1: one failed or timed-out read
    /// attempt takes the database out) failed attempts in a row open it for
    /// `DB_BREAKER_OPEN_MS` (default 1000), doubling after each failed probe
    /// read up to `DB_BREAKER_MAX_OPEN_MS` (default 10000).
    pub db_breaker: BreakerSettings,
    /// The `redis-cache` circuit breaker: after `REDIS_BREAKER_FAILURES`
    /// (default 1) failed calls in a row, requests skip Redis for
    /// `REDIS_BREAKER_OPEN_MS` (default 1000), doubling after each failed
    /// probe up to `REDIS_BREAKER_MAX_OPEN_MS` (default 10000).
    pub redis_breaker: BreakerSettings,
    /// Token verification (`JWT_*`, see [`AuthConfig::from_env`]).
    pub auth: AuthConfig,
    /// `MAX_IN_FLIGHT_REQUESTS`, `REQUEST_TIMEOUT_MS`.
    pub protection: ProtectionConfig,
    /// `RATE_LIMIT_*` (reads class).
    pub rate_limits: RateLimitConfig,
}

/// What to do with a read when no replica is healthy and fresh enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryFallback {
    /// Read from the primary (more load on it, but an answer).
    Allow,
    /// Answer 503 with `Retry-After` (protects the primary).
    Deny,
}

impl FromStr for PrimaryFallback {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            other => Err(format!("expected allow or deny, got {other:?}")),
        }
    }
}

impl Config {
    /// Default [`Config::db_breaker`].
    pub const DEFAULT_DB_BREAKER: BreakerSettings = BreakerSettings {
        failures_to_open: 1,
        open_for: Duration::from_secs(1),
        max_open_for: Duration::from_secs(10),
    };

    /// Default [`Config::redis_breaker`].
    pub const DEFAULT_REDIS_BREAKER: BreakerSettings = BreakerSettings {
        failures_to_open: 1,
        open_for: Duration::from_secs(1),
        max_open_for: Duration::from_secs(10),
    };

    /// Default `QUERY_HTTP_ADDR`.
    pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        8081,
    ));

    /// A configuration with the required URLs and every other setting at its
    /// default.
    pub fn new(
        primary_database_url: impl Into<String>,
        replica_database_urls: Vec<String>,
        redis_url: impl Into<String>,
        auth: AuthConfig,
    ) -> Self {
        Self {
            http_addr: Self::DEFAULT_HTTP_ADDR,
            primary_database_url: primary_database_url.into(),
            primary_transaction_pooler: false,
            replica_database_urls,
            redis_url: redis_url.into(),
            replica_pool_size: 16,
            primary_pool_size: 4,
            read_attempt_timeout: Duration::from_millis(500),
            read_deadline: Duration::from_millis(2000),
            read_statement_timeout: Duration::from_millis(2000),
            replica_max_lag: Duration::from_millis(2000),
            primary_fallback: PrimaryFallback::Allow,
            replica_check_interval: Duration::from_millis(250),
            consistent_read_replica_wait: Duration::from_millis(500),
            consistent_read_timeout: Duration::from_millis(1000),
            redis_timeout: Duration::from_millis(200),
            local_cache_capacity: 100_000,
            local_cache_ttl: Duration::from_secs(30),
            redis_cache_ttl: Duration::from_secs(600),
            db_breaker: Self::DEFAULT_DB_BREAKER,
            redis_breaker: Self::DEFAULT_REDIS_BREAKER,
            auth,
            protection: ProtectionConfig::default(),
            rate_limits: RateLimitConfig::default(),
        }
    }

    /// Reads every variable named on the fields; `PRIMARY_DATABASE_URL` and
    /// `REDIS_URL` are required.
    pub fn from_env() -> Result<Self, ConfigError> {
        let auth = AuthConfig::from_env()?;
        let d = Self::new(String::new(), Vec::new(), String::new(), auth.clone());
        let ms = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            Ok(Duration::from_millis(optional(name, millis(default))?))
        };
        let positive_ms = |name: &'static str, default: Duration| {
            ms(name, default).and_then(|value| positive(name, value))
        };
        Ok(Self {
            http_addr: optional("QUERY_HTTP_ADDR", d.http_addr)?,
            primary_database_url: required("PRIMARY_DATABASE_URL")?,
            primary_transaction_pooler: optional(
                "PRIMARY_TRANSACTION_POOLER",
                d.primary_transaction_pooler,
            )?,
            replica_database_urls: url_list(&optional("REPLICA_DATABASE_URLS", String::new())?),
            redis_url: required("REDIS_URL")?,
            replica_pool_size: positive(
                "REPLICA_POOL_SIZE",
                optional("REPLICA_POOL_SIZE", d.replica_pool_size)?,
            )?,
            primary_pool_size: positive(
                "PRIMARY_READ_POOL_SIZE",
                optional("PRIMARY_READ_POOL_SIZE", d.primary_pool_size)?,
            )?,
            read_attempt_timeout: positive_ms("READ_ATTEMPT_TIMEOUT_MS", d.read_attempt_timeout)?,
            read_deadline: positive_ms("READ_DEADLINE_MS", d.read_deadline)?,
            read_statement_timeout: ms("READ_STATEMENT_TIMEOUT_MS", d.read_statement_timeout)?,
            replica_max_lag: positive_ms("REPLICA_MAX_LAG_MS", d.replica_max_lag)?,
            primary_fallback: optional("PRIMARY_FALLBACK", d.primary_fallback)?,
            replica_check_interval: positive_ms(
                "REPLICA_CHECK_INTERVAL_MS",
                d.replica_check_interval,
            )?,
            consistent_read_replica_wait: ms(
                "CONSISTENT_READ_REPLICA_WAIT_MS",
                d.consistent_read_replica_wait,
            )?,
            consistent_read_timeout: positive_ms(
                "CONSISTENT_READ_TIMEOUT_MS",
                d.consistent_read_timeout,
            )?,
            redis_timeout: positive_ms("REDIS_TIMEOUT_MS", d.redis_timeout)?,
            local_cache_capacity: optional("LOCAL_CACHE_CAPACITY", d.local_cache_capacity)?,
            local_cache_ttl: positive_ms("LOCAL_CACHE_TTL_MS", d.local_cache_ttl)?,
            redis_cache_ttl: Duration::from_secs(positive(
                "REDIS_CACHE_TTL_S",
                optional("REDIS_CACHE_TTL_S", d.redis_cache_ttl.as_secs())?,
            )?),
            db_breaker: BreakerSettings::from_env(
                "DB_BREAKER_FAILURES",
                "DB_BREAKER_OPEN_MS",
                "DB_BREAKER_MAX_OPEN_MS",
                d.db_breaker,
            )?,
            redis_breaker: BreakerSettings::from_env(
                "REDIS_BREAKER_FAILURES",
                "REDIS_BREAKER_OPEN_MS",
                "REDIS_BREAKER_MAX_OPEN_MS",
                d.redis_breaker,
            )?,
            auth,
            protection: ProtectionConfig::from_env()?,
            rate_limits: RateLimitConfig::from_env()?,
        })
    }
}

/// `a, b,,c` → `[a, b, c]`.
fn url_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A zero pool size or zero wait would fail every request, so it is refused
/// at start-up rather than discovered under load.
fn positive<T>(name: &'static str, value: T) -> Result<T, ConfigError>
where
    T: PartialOrd + Default + fmt::Debug,
{
    if value > T::default() {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            name,
            value: format!("{value:?}"),
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
        let replicas: Vec<String> = self
            .replica_database_urls
            .iter()
            .map(|url| redact_url(url))
            .collect();
        f.debug_struct("Config")
            .field("http_addr", &self.http_addr)
            .field(
                "primary_database_url",
                &redact_url(&self.primary_database_url),
            )
            .field(
                "primary_transaction_pooler",
                &self.primary_transaction_pooler,
            )
            .field("replica_database_urls", &replicas)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("replica_pool_size", &self.replica_pool_size)
            .field("primary_pool_size", &self.primary_pool_size)
            .field("read_attempt_timeout", &self.read_attempt_timeout)
            .field("read_deadline", &self.read_deadline)
            .field("read_statement_timeout", &self.read_statement_timeout)
            .field("replica_max_lag", &self.replica_max_lag)
            .field("primary_fallback", &self.primary_fallback)
            .field("replica_check_interval", &self.replica_check_interval)
            .field(
                "consistent_read_replica_wait",
                &self.consistent_read_replica_wait,
            )
            .field("consistent_read_timeout", &self.consistent_read_timeout)
            .field("redis_timeout", &self.redis_timeout)
            .field("local_cache_capacity", &self.local_cache_capacity)
            .field("local_cache_ttl", &self.local_cache_ttl)
            .field("redis_cache_ttl", &self.redis_cache_ttl)
            .field("db_breaker", &self.db_breaker)
            .field("redis_breaker", &self.redis_breaker)
            .field("auth", &self.auth)
            .field("protection", &self.protection)
            .field("rate_limits", &self.rate_limits)
            .finish()
    }
}

/// Token settings for unit tests that build a [`Config`].
#[cfg(test)]
pub(crate) fn test_auth() -> AuthConfig {
    AuthConfig::hs256("a secret of at least thirty-two bytes", "tests", "tests")
        .expect("a long enough secret")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_passwords() {
        let config = Config::new(
            "postgres://app:secret@db:5432/app",
            vec!["postgres://app:hidden@replica:5432/app".to_owned()],
            "redis://:pw@cache:6379/",
            AuthConfig::hs256("the-jwt-secret-that-must-not-leak!", "iss", "aud").expect("secret"),
        );
        let debug = format!("{config:?}");
        assert!(!debug.contains("app:secret"), "{debug}");
        assert!(!debug.contains("hidden"), "{debug}");
        assert!(!debug.contains(":pw@"), "{debug}");
        assert!(debug.contains("***@db:5432/app"), "{debug}");
        assert!(
            debug.contains("primary_transaction_pooler: false"),
            "{debug}"
        );
    }

    #[test]
    fn replica_list_ignores_blanks() {
        assert_eq!(url_list(""), Vec::<String>::new());
        assert_eq!(url_list(" a , ,b,"), vec!["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn fallback_parses_allow_and_deny_only() {
        assert_eq!("allow".parse(), Ok(PrimaryFallback::Allow));
        assert_eq!("deny".parse(), Ok(PrimaryFallback::Deny));
        assert!("maybe".parse::<PrimaryFallback>().is_err());
    }

    #[test]
    fn zero_is_refused_where_it_would_fail_every_request() {
        assert!(positive("X", 0u32).is_err());
        assert!(positive("X", Duration::ZERO).is_err());
        assert_eq!(positive("X", 3u32).ok(), Some(3));
    }
}
