//! The shared cache tier: versioned documents in Redis (docs/adr/0012).
//!
//! Layout (shared with the projector, see `schema::views`): one hash per
//! document key with fields `version` and `body` (the JSON served). A hash
//! with a `version` but no `body` is a tombstone the projector left when the
//! document changed: it says "version N exists" so that a fill of anything
//! older is refused ([`FILL_IF_NOT_OLDER`]). Order summaries are written by
//! the projector itself; query-service fills any document on a miss.
//!
//! Redis is an accelerator here, never a dependency: every failure (not
//! connected, error, slower than the configured timeout, undecodable
//! document) is logged and reported as a miss, and the caller reads the
//! database instead.
//!
//! Connecting: `ConnectionManager` connects eagerly and then reconnects on its
//! own. If Redis is down when the service starts, [`RedisTier::connect`]
//! fails, the service starts anyway, and [`keep_connecting`] (run by
//! `Application::run_until_stopped`) retries in the background until the
//! first connection succeeds. Until then requests skip Redis without waiting.
//!
//! While Redis is failing, a call waits up to the timeout (the manager is
//! reconnecting). To keep an outage from adding that delay to every request
//! the tier sits behind the `redis-cache` circuit breaker
//! ([`service_runtime::breaker`], settings [`Config::redis_breaker`]): by
//! default one failed or timed-out call opens it for [`FAILURE_BACKOFF`],
//! during which calls skip Redis at once (a miss, so the request reads the
//! database). Then exactly one call is the probe: its success closes the
//! breaker, its failure re-opens it for twice as long (up to the configured
//! maximum) while the other calls keep skipping Redis. A reply Redis gave
//! but that does not decode says nothing about Redis' health and counts as
//! a success. Before the first connection calls skip Redis without asking
//! the breaker.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use schema::views::{DOCUMENT_BODY_FIELD, DOCUMENT_VERSION_FIELD};
use service_runtime::breaker::{Breaker, BreakerMetrics, BreakerSettings, CallPermit};
use service_runtime::shutdown::CancellationToken;

use super::Document;
use crate::config::Config;

/// How long one attempt to establish the first connection may take. Longer
/// than a read's budget: a TCP/TLS handshake to a remote Redis is slower than
/// a HGET on an open connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between attempts to establish the first connection.
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// How long calls skip Redis after a failure, by default (the breaker's
/// first open period).
pub const FAILURE_BACKOFF: Duration = Config::DEFAULT_REDIS_BREAKER.open_for;
/// Name of the tier's circuit breaker (the `breaker` metric label).
pub const BREAKER_NAME: &str = "redis-cache";
/// Cap of the manager's own backoff between reconnect attempts, in ms.
const RECONNECT_MAX_DELAY_MS: u64 = 2_000;

/// Stores a document unless Redis holds a newer version, or the same version
/// with a body. A tombstone of the same version is replaced: it only said
/// that this version exists. KEYS[1] the key; ARGV: version, body, TTL in ms.
const FILL_IF_NOT_OLDER: &str = r"
local current = redis.call('HGET', KEYS[1], 'version')
if current then
  local held = tonumber(current)
  local offered = tonumber(ARGV[1])
  if held > offered then return 0 end
  if held == offered and redis.call('HEXISTS', KEYS[1], 'body') == 1 then return 0 end
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'body', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Versioned documents in Redis.
pub struct RedisTier {
    client: redis::Client,
    connection: OnceLock<ConnectionManager>,
    timeout: Duration,
    breaker: Breaker,
    fill: Script,
}

impl RedisTier {
    /// A tier for `redis_url`, not yet connected, with the default breaker
    /// settings ([`Config::DEFAULT_REDIS_BREAKER`]) and breaker metrics no
    /// registry holds (its state is still exported by
    /// [`crate::metrics::Metrics`] at scrape time). Fails only on a
    /// malformed URL. `timeout` bounds every call, waiting for a reconnect
    /// included.
    pub fn new(redis_url: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        Self::with_breaker(
            redis_url,
            timeout,
            Config::DEFAULT_REDIS_BREAKER,
            &BreakerMetrics::new(),
        )
    }

    /// [`RedisTier::new`] with the `redis-cache` breaker configured by
    /// `breaker` and reporting to `metrics` (the application's).
    pub fn with_breaker(
        redis_url: &str,
        timeout: Duration,
        breaker: BreakerSettings,
        metrics: &BreakerMetrics,
    ) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(redis_url)?,
            connection: OnceLock::new(),
            timeout,
            breaker: Breaker::new(BREAKER_NAME, breaker, metrics),
            fill: Script::new(FILL_IF_NOT_OLDER),
        })
    }

    /// The `redis-cache` breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The client, for the invalidation feed's own (pub/sub) connection.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Whether a connection manager exists. Once it does it stays: it
    /// reconnects by itself after Redis restarts.
    pub fn is_connected(&self) -> bool {
        self.connection.get().is_some()
    }

    /// Whether calls currently skip Redis: not connected yet, or the
    /// breaker would refuse a call (open, or half-open with its probe out).
    pub fn is_open(&self) -> bool {
        !self.is_connected() || !self.breaker.is_call_permitted()
    }

    /// One attempt to establish the connection; `true` if connected (now or
    /// before). Takes at most about one second.
    pub async fn connect(&self) -> bool {
        if self.is_connected() {
            return true;
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_max_delay(RECONNECT_MAX_DELAY_MS);
        let attempt = ConnectionManager::new_with_config(self.client.clone(), config);
        // The manager retries inside `new_with_config` too; the outer timeout
        // keeps start-up from waiting through its whole backoff.
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(manager)) => {
                // Losing a race with a concurrent attempt is fine: the
                // existing manager is as good as this one.
                let _ = self.connection.set(manager);
                tracing::info!("connected to redis");
                true
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "redis unavailable; serving reads from the database");
                false
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = CONNECT_TIMEOUT.as_millis(),
                    "redis connect timed out; serving reads from the database"
                );
                false
            }
        }
    }

    /// The document Redis holds at `key`, or `None` on a miss, a tombstone
    /// and any failure (logged at warn).
    pub async fn get(&self, key: &str) -> Option<Document> {
        let (mut connection, permit) = self.usable()?;
        let mut command = redis::cmd("HMGET");
        command
            .arg(key)
            .arg(DOCUMENT_VERSION_FIELD)
            .arg(DOCUMENT_BODY_FIELD);
        let read = command.query_async::<(Option<i64>, Option<Vec<u8>>)>(&mut connection);
        match self.bounded(key, "read", permit, read).await? {
            (Some(version), Some(body)) => Some(Document {
                version,
                body: body.into(),
            }),
            _ => None,
        }
    }

    /// Stores `document` at `key` for `ttl` unless Redis has a newer
    /// version; failures are logged and otherwise ignored.
    pub async fn fill(&self, key: &str, document: &Document, ttl: Duration) {
        let Some((mut connection, permit)) = self.usable() else {
            return;
        };
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.fill.prepare_invoke();
        invocation
            .key(key)
            .arg(document.version)
            .arg(document.body.as_ref())
            .arg(ttl_ms);
        let call = invocation.invoke_async::<i64>(&mut connection);
        let _stored = self.bounded(key, "fill", permit, call).await;
    }

    /// A connection and the breaker's permit if Redis may be called now.
    fn usable(&self) -> Option<(ConnectionManager, CallPermit)> {
        let connection = self.connection.get()?;
        let permit = self.breaker.try_acquire()?;
        Some((connection.clone(), permit))
    }

    /// Runs `call` within the timeout and gives the breaker its verdict.
    async fn bounded<T>(
        &self,
        key: &str,
        what: &str,
        permit: CallPermit,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                permit.success();
                Some(value)
            }
            Ok(Err(error)) if error.kind() == redis::ErrorKind::TypeError => {
                // Redis answered; what it holds is not a document.
                permit.success();
                tracing::warn!(key, what, %error, "undecodable redis reply; using the database");
                None
            }
            Ok(Err(error)) => {
                permit.failure();
                tracing::warn!(key, what, %error, "redis call failed; using the database");
                None
            }
            Err(_) => {
                permit.failure();
                tracing::warn!(
                    key,
                    what,
                    timeout_ms = self.timeout.as_millis(),
                    "redis call timed out; using the database"
                );
                None
            }
        }
    }
}

/// Retries [`RedisTier::connect`] every few seconds until it succeeds or
/// `stop` is cancelled. Returns at once if already connected.
pub async fn keep_connecting(tier: Arc<RedisTier>, stop: CancellationToken) {
    while !tier.is_connected() {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CONNECT_RETRY_INTERVAL) => {}
        }
        tier.connect().await;
    }
}

#[cfg(test)]
mod tests {
    use service_runtime::breaker::BreakerState;

    use super::*;

    #[tokio::test]
    async fn unconnected_tier_misses_without_waiting() {
        let tier = RedisTier::new("redis://127.0.0.1:1/", Duration::from_millis(50)).expect("url");
        assert!(!tier.is_connected());
        assert!(tier.is_open());
        assert!(tier.get("order_summary:x").await.is_none());
    }

    fn tier_with_breaker(open_for: Duration) -> RedisTier {
        let settings = BreakerSettings {
            failures_to_open: 1,
            open_for,
            max_open_for: open_for * 4,
        };
        RedisTier::with_breaker(
            "redis://127.0.0.1:1/",
            Duration::from_millis(50),
            settings,
            &BreakerMetrics::new(),
        )
        .expect("url")
    }

    #[test]
    fn a_failure_opens_the_breaker() {
        let tier = tier_with_breaker(FAILURE_BACKOFF);
        assert_eq!(tier.breaker().name(), BREAKER_NAME);
        assert!(tier.breaker().is_call_permitted());
        tier.breaker().try_acquire().expect("closed").failure();
        assert!(!tier.breaker().is_call_permitted());
        assert!(tier.breaker().try_acquire().is_none(), "calls skip redis");
        assert!(tier.is_open());
    }

    #[tokio::test]
    async fn failed_calls_open_the_breaker_and_one_probe_closes_it() {
        let tier = tier_with_breaker(Duration::from_millis(40));
        // A call that fails (nothing listens on port 1).
        let refused = async {
            Err::<(), _>(redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )))
        };
        let permit = tier.breaker().try_acquire().expect("closed");
        assert_eq!(tier.bounded("k", "read", permit, refused).await, None);
        assert_eq!(tier.breaker().state(), BreakerState::Open);

        // A call slower than the timeout fails too, once the probe is due.
        tokio::time::sleep(
            tier.breaker().open_remaining().expect("open") + Duration::from_millis(5),
        )
        .await;
        let probe = tier.breaker().try_acquire().expect("probe");
        assert!(
            tier.breaker().try_acquire().is_none(),
            "one probe at a time"
        );
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        };
        assert_eq!(tier.bounded("k", "read", probe, slow).await, None);
        assert_eq!(tier.breaker().state(), BreakerState::Open);

        // An undecodable reply is Redis answering: the probe closes it.
        tokio::time::sleep(
            tier.breaker().open_remaining().expect("open") + Duration::from_millis(5),
        )
        .await;
        let probe = tier.breaker().try_acquire().expect("probe");
        let garbled = async {
            Err::<(), _>(redis::RedisError::from((
                redis::ErrorKind::TypeError,
                "not a document",
            )))
        };
        assert_eq!(tier.bounded("k", "read", probe, garbled).await, None);
        assert_eq!(tier.breaker().state(), BreakerState::Closed);
    }

    #[test]
    fn malformed_url_is_rejected() {
        assert!(RedisTier::new("not a url", Duration::from_millis(50)).is_err());
    }
}
