//! command-service configuration, read from the environment (see the README's
//! configuration table).

use std::fmt;
use std::time::Duration;

use access_control::AuthConfig;
use event_bus::TopicSettings;
use service_runtime::breaker::BreakerSettings;
use service_runtime::config::{optional, redact_url, required, session_database_url, ConfigError};

/// Everything command-service needs to run.
///
/// `Debug` is written by hand: it redacts the credentials of every URL, since
/// `Debug` output ends up in logs.
#[derive(Clone)]
pub struct Config {
    /// `COMMAND_HTTP_ADDR`: where the HTTP API listens (`127.0.0.1:0` picks a free port).
    pub http_addr: String,
    /// `PRIMARY_DATABASE_URL`: the Postgres primary (event store + outbox),
    /// or PgBouncer in front of it (then set `PRIMARY_TRANSACTION_POOLER`).
    pub database_url: String,
    /// `PRIMARY_TRANSACTION_POOLER` (false): `PRIMARY_DATABASE_URL` is a
    /// transaction-mode pooler such as PgBouncer, see
    /// [`service_runtime::postgres::DbPool`].
    pub transaction_pooler: bool,
    /// `PRIMARY_SESSION_DATABASE_URL` (default `PRIMARY_DATABASE_URL`): the
    /// primary itself, for what needs a session: the migrations' lock and the
    /// relay (its leadership is a session-level advisory lock). Required,
    /// and different, when `PRIMARY_TRANSACTION_POOLER` is true.
    pub session_database_url: String,
    /// `PRIMARY_POOL_SIZE`: connections to the primary.
    pub pool_size: u32,
    /// `PRIMARY_ACQUIRE_TIMEOUT_MS`: longest wait for a pooled connection.
    pub acquire_timeout: Duration,
    /// `QUERY_PUBLIC_URL`: base URL of query-service, for `Location` headers.
    pub query_public_url: String,
    /// `BODY_LIMIT_BYTES`: largest accepted JSON body.
    pub body_limit_bytes: usize,
    /// `SNAPSHOT_EVERY`: snapshot an aggregate every that many events.
    pub snapshot_every: usize,
    /// `CACHED_AGGREGATES`: aggregates per type kept in memory between
    /// commands (0 disables the cache).
    pub cached_aggregates: usize,
    /// `APPEND_BATCH_MAX`: most commands group-committed in one statement
    /// (1 disables batching).
    pub append_batch_max: usize,
    /// `APPEND_WORKERS`: group commits in flight at once (each holds a
    /// pooled connection while it writes).
    pub append_workers: usize,
    /// `IDEMPOTENCY_TTL_SECS`: how long an Idempotency-Key is remembered.
    pub idempotency_ttl: Duration,
    /// Kafka settings, see [`TopicSettings::from_env`].
    pub topics: TopicSettings,
    /// `REDIS_URL`: the Redis that holds the rate limits every instance shares.
    pub redis_url: String,
    /// Token verification (`JWT_*`, see [`AuthConfig::from_env`]).
    pub auth: AuthConfig,
    /// `MAX_IN_FLIGHT_REQUESTS`, `REQUEST_TIMEOUT_MS`.
    pub protection: traffic_control::ProtectionConfig,
    /// `RATE_LIMIT_*` (commands class).
    pub rate_limits: traffic_control::RateLimitConfig,
    pub relay: RelayConfig,
}

/// Outbox relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `RELAY_ENABLED`: run the relay in this instance.
    pub enabled: bool,
    /// `RELAY_BATCH_SIZE`: events read and published per round.
    pub batch_size: i64,
    /// `RELAY_POLL_INTERVAL_MS`: pause when there was nothing to publish.
    pub poll_interval: Duration,
    /// `RELAY_LEASE_RETRY_MS`: how often a standby instance tries to become the
    /// active relay, and how often an idle leader confirms its lease.
    pub lease_retry: Duration,
    /// `RELAY_DELIVERY_TIMEOUT_MS`: how long the producer retries one message
    /// before the batch is failed and re-read from the cursor.
    pub delivery_timeout: Duration,
    /// The `kafka-producer` circuit breaker: `KAFKA_BREAKER_FAILURES`
    /// (default 3) failed batches in a row open it, for
    /// `KAFKA_BREAKER_OPEN_MS` (default 1000) doubling after each failed
    /// probe batch up to `KAFKA_BREAKER_MAX_OPEN_MS` (default 30000).
    /// While open the relay produces nothing.
    pub breaker: BreakerSettings,
}

impl RelayConfig {
    /// The `kafka-producer` breaker's defaults.
    pub const DEFAULT_BREAKER: BreakerSettings = BreakerSettings {
        failures_to_open: 3,
        open_for: Duration::from_secs(1),
        max_open_for: Duration::from_secs(30),
    };
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let database_url: String = required("PRIMARY_DATABASE_URL")?;
        let transaction_pooler = optional("PRIMARY_TRANSACTION_POOLER", false)?;
        let session_database_url = session_database_url(&database_url, transaction_pooler)?;
        Ok(Self {
            http_addr: optional("COMMAND_HTTP_ADDR", "127.0.0.1:8080".to_owned())?,
            database_url: database_url.clone(),
            transaction_pooler,
            session_database_url,
            pool_size: optional("PRIMARY_POOL_SIZE", 16)?,
            acquire_timeout: Duration::from_millis(optional("PRIMARY_ACQUIRE_TIMEOUT_MS", 2_000)?),
            query_public_url: optional("QUERY_PUBLIC_URL", "http://127.0.0.1:8081".to_owned())?,
            body_limit_bytes: optional("BODY_LIMIT_BYTES", 64 * 1024)?,
            snapshot_every: optional("SNAPSHOT_EVERY", 50)?,
            cached_aggregates: optional("CACHED_AGGREGATES", 10_000)?,
            append_batch_max: optional("APPEND_BATCH_MAX", 64)?,
            append_workers: optional("APPEND_WORKERS", 2)?,
            idempotency_ttl: Duration::from_secs(optional("IDEMPOTENCY_TTL_SECS", 86_400)?),
            topics: TopicSettings::from_env()?,
            redis_url: required("REDIS_URL")?,
            auth: AuthConfig::from_env()?,
            protection: traffic_control::ProtectionConfig::from_env()?,
            rate_limits: traffic_control::RateLimitConfig::from_env()?,
            relay: RelayConfig {
                enabled: optional("RELAY_ENABLED", true)?,
                batch_size: optional("RELAY_BATCH_SIZE", 500)?,
                poll_interval: Duration::from_millis(optional("RELAY_POLL_INTERVAL_MS", 20)?),
                lease_retry: Duration::from_millis(optional("RELAY_LEASE_RETRY_MS", 1_000)?),
                delivery_timeout: Duration::from_millis(optional(
                    "RELAY_DELIVERY_TIMEOUT_MS",
                    30_000,
                )?),
                breaker: BreakerSettings::from_env(
                    "KAFKA_BREAKER_FAILURES",
                    "KAFKA_BREAKER_OPEN_MS",
                    "KAFKA_BREAKER_MAX_OPEN_MS",
                    RelayConfig::DEFAULT_BREAKER,
                )?,
            },
        })
    }
}

/// What `command-service migrate` needs: the primary, directly.
#[derive(Clone)]
pub struct MigrateConfig {
    /// `PRIMARY_SESSION_DATABASE_URL`, else `PRIMARY_DATABASE_URL`.
    pub database_url: String,
}

impl MigrateConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let database_url = match std::env::var("PRIMARY_SESSION_DATABASE_URL") {
            Ok(url) => url,
            Err(_) => required("PRIMARY_DATABASE_URL")?,
        };
        Ok(Self { database_url })
    }
}

/// URLs carry passwords; `Debug` output ends up in logs. [`TopicSettings`],
/// [`RelayConfig`] and the traffic settings hold no secrets, and
/// [`AuthConfig`] redacts its key itself.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("http_addr", &self.http_addr)
            .field("database_url", &redact_url(&self.database_url))
            .field("transaction_pooler", &self.transaction_pooler)
            .field(
                "session_database_url",
                &redact_url(&self.session_database_url),
            )
            .field("pool_size", &self.pool_size)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("query_public_url", &redact_url(&self.query_public_url))
            .field("body_limit_bytes", &self.body_limit_bytes)
            .field("snapshot_every", &self.snapshot_every)
            .field("cached_aggregates", &self.cached_aggregates)
            .field("append_batch_max", &self.append_batch_max)
            .field("append_workers", &self.append_workers)
            .field("idempotency_ttl", &self.idempotency_ttl)
            .field("topics", &self.topics)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("auth", &self.auth)
            .field("protection", &self.protection)
            .field("rate_limits", &self.rate_limits)
            .field("relay", &self.relay)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_passwords() {
        let config = Config {
            http_addr: "127.0.0.1:0".to_owned(),
            database_url: "postgres://app:db-password@db:5432/app".to_owned(),
            transaction_pooler: true,
            session_database_url: "postgres://app:session-password@db:5432/app".to_owned(),
            pool_size: 16,
            acquire_timeout: Duration::from_secs(2),
            query_public_url: "http://query:query-password@query:8081".to_owned(),
            body_limit_bytes: 64 * 1024,
            snapshot_every: 50,
            cached_aggregates: 10_000,
            append_batch_max: 64,
            append_workers: 2,
            idempotency_ttl: Duration::from_secs(86_400),
            topics: TopicSettings {
                brokers: "kafka:9092".to_owned(),
                prefix: "events".to_owned(),
                partitions: 4,
                replication: 1,
            },
            redis_url: "redis://:redis-password@cache:6379/".to_owned(),
            auth: AuthConfig::hs256("the-jwt-secret-that-must-not-leak!", "iss", "aud")
                .expect("a long enough secret"),
            protection: traffic_control::ProtectionConfig::default(),
            rate_limits: traffic_control::RateLimitConfig::default(),
            relay: RelayConfig {
                enabled: true,
                batch_size: 500,
                poll_interval: Duration::from_millis(20),
                lease_retry: Duration::from_secs(1),
                delivery_timeout: Duration::from_secs(30),
                breaker: RelayConfig::DEFAULT_BREAKER,
            },
        };
        let debug = format!("{config:?}");
        for secret in [
            "db-password",
            "session-password",
            "query-password",
            "redis-password",
            "the-jwt-secret-that-must-not-leak!",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("postgres://***@db:5432/app"), "{debug}");
        assert!(debug.contains("redis://***@cache:6379/"), "{debug}");
        assert!(debug.contains("kafka:9092"), "{debug}");
    }
}
