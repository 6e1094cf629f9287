//! projector configuration, read from the environment (see the README's
//! configuration table).

use std::fmt;
use std::time::Duration;

use access_control::AuthConfig;
use event_bus::TopicSettings;
use service_runtime::config::{optional, redact_url, required, session_database_url, ConfigError};

use crate::partitions::MaintenanceSettings;

/// Everything projector needs to run.
///
/// `Debug` is written by hand: it redacts the credentials of every URL, since
/// `Debug` output ends up in logs.
#[derive(Clone)]
pub struct Config {
    /// `PROJECTOR_HTTP_ADDR`: health endpoints (`127.0.0.1:0` picks a free port).
    pub http_addr: String,
    /// `PRIMARY_DATABASE_URL`: read models are written to the primary and
    /// reach the replicas by streaming replication; or PgBouncer in front of
    /// it (then set `PRIMARY_TRANSACTION_POOLER`).
    pub database_url: String,
    /// `PRIMARY_TRANSACTION_POOLER` (false): `PRIMARY_DATABASE_URL` is a
    /// transaction-mode pooler such as PgBouncer, see
    /// [`service_runtime::postgres::DbPool`].
    pub transaction_pooler: bool,
    /// `PRIMARY_SESSION_DATABASE_URL` (default `PRIMARY_DATABASE_URL`): the
    /// primary itself, for what needs a session: the migrations' lock.
    /// Required, and different, when `PRIMARY_TRANSACTION_POOLER` is true.
    pub session_database_url: String,
    /// `PROJECTOR_POOL_SIZE`
    pub pool_size: u32,
    /// `REDIS_URL`
    pub redis_url: String,
    /// Kafka settings, see [`TopicSettings::from_env`].
    pub topics: TopicSettings,
    /// `PROJECTOR_GROUP_ID`: the consumer group; instances sharing it split the partitions.
    pub group_id: String,
    /// `PROJECTOR_BATCH_SIZE`: most messages applied in one transaction.
    pub batch_size: usize,
    /// `PROJECTOR_BATCH_TIMEOUT_MS`: longest wait to fill a batch once it has one message.
    pub batch_timeout: Duration,
    /// `PROJECTOR_FETCH_WAIT_MS` (librdkafka `fetch.wait.max.ms`): how long
    /// the broker may hold a fetch that finds nothing new. Apache Kafka
    /// answers a held fetch as soon as data arrives, so there it only bounds
    /// idle polling; Tansu holds it for the whole wait, which at librdkafka's
    /// default of 500 ms made that the median projection delay
    /// (docs/BENCHMARKS.md, Freshness). Raise it on Kafka to poll less.
    pub fetch_wait: Duration,
    /// `PROJECTOR_SESSION_TIMEOUT_MS`: how long the group waits for a silent
    /// member (e.g. kill -9) before giving its partitions to the others.
    pub session_timeout: Duration,
    /// `PROJECTOR_MAX_ATTEMPTS`: tries of a failing batch (with backoff)
    /// before its failing events are parked as dead letters.
    pub max_attempts: u32,
    /// Monthly partitions of the time-series read models.
    pub partitions: MaintenanceSettings,
    /// Token verification for the admin API (`JWT_*`, see
    /// [`AuthConfig::from_env`]); admin routes need the `admin` scope.
    pub auth: AuthConfig,
    /// `MAX_IN_FLIGHT_REQUESTS`, `REQUEST_TIMEOUT_MS` of the admin API.
    pub protection: traffic_control::ProtectionConfig,
    /// `RATE_LIMIT_ADMIN` (admin class).
    pub rate_limits: traffic_control::RateLimitConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let database_url: String = required("PRIMARY_DATABASE_URL")?;
        let transaction_pooler = optional("PRIMARY_TRANSACTION_POOLER", false)?;
        let session_database_url = session_database_url(&database_url, transaction_pooler)?;
        Ok(Self {
            http_addr: optional("PROJECTOR_HTTP_ADDR", "127.0.0.1:8082".to_owned())?,
            database_url,
            transaction_pooler,
            session_database_url,
            pool_size: optional("PROJECTOR_POOL_SIZE", 4)?,
            redis_url: required("REDIS_URL")?,
            topics: TopicSettings::from_env()?,
            group_id: optional("PROJECTOR_GROUP_ID", "projector".to_owned())?,
            batch_size: optional("PROJECTOR_BATCH_SIZE", 500)?,
            batch_timeout: Duration::from_millis(optional("PROJECTOR_BATCH_TIMEOUT_MS", 50)?),
            fetch_wait: Duration::from_millis(optional("PROJECTOR_FETCH_WAIT_MS", 10)?),
            session_timeout: Duration::from_millis(optional(
                "PROJECTOR_SESSION_TIMEOUT_MS",
                10_000,
            )?),
            max_attempts: optional("PROJECTOR_MAX_ATTEMPTS", 5)?,
            partitions: MaintenanceSettings {
                ahead_months: optional("PARTITIONS_AHEAD_MONTHS", 3)?,
                retention_months: optional("HISTORY_RETENTION_MONTHS", 0)?,
                interval: Duration::from_secs(optional("PARTITION_MAINTENANCE_INTERVAL_S", 3600)?),
            },
            auth: AuthConfig::from_env()?,
            protection: traffic_control::ProtectionConfig::from_env()?,
            rate_limits: traffic_control::RateLimitConfig::from_env()?,
        })
    }
}

/// URLs carry passwords; `Debug` output ends up in logs. [`TopicSettings`]
/// and the other settings hold no secrets, and [`AuthConfig`] redacts its
/// key itself.
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
            .field("redis_url", &redact_url(&self.redis_url))
            .field("topics", &self.topics)
            .field("group_id", &self.group_id)
            .field("batch_size", &self.batch_size)
            .field("batch_timeout", &self.batch_timeout)
            .field("fetch_wait", &self.fetch_wait)
            .field("session_timeout", &self.session_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("partitions", &self.partitions)
            .field("auth", &self.auth)
            .field("protection", &self.protection)
            .field("rate_limits", &self.rate_limits)
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
            pool_size: 4,
            redis_url: "redis://:redis-password@cache:6379/".to_owned(),
            topics: TopicSettings {
                brokers: "kafka:9092".to_owned(),
                prefix: "events".to_owned(),
                partitions: 4,
                replication: 1,
            },
            group_id: "projector".to_owned(),
            batch_size: 500,
            batch_timeout: Duration::from_millis(50),
            fetch_wait: Duration::from_millis(10),
            session_timeout: Duration::from_secs(10),
            max_attempts: 5,
            partitions: MaintenanceSettings {
                ahead_months: 3,
                retention_months: 0,
                interval: Duration::from_secs(3600),
            },
            auth: AuthConfig::hs256("the-jwt-secret-that-must-not-leak!", "iss", "aud")
                .expect("a long enough secret"),
            protection: traffic_control::ProtectionConfig::default(),
            rate_limits: traffic_control::RateLimitConfig::default(),
        };
        let debug = format!("{config:?}");
        for secret in [
            "db-password",
            "session-password",
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
