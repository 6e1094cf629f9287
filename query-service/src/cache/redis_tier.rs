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
//! the tier is a circuit breaker: a failed call opens it for
//! [`FAILURE_BACKOFF`], during which calls skip Redis at once; the first call
//! after that is the probe that closes it again or re-opens it.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use schema::views::{DOCUMENT_BODY_FIELD, DOCUMENT_VERSION_FIELD};
use service_runtime::shutdown::CancellationToken;

use super::Document;

/// How long one attempt to establish the first connection may take. Longer
/// than a read's budget: a TCP/TLS handshake to a remote Redis is slower than
/// a HGET on an open connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between attempts to establish the first connection.
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// How long calls skip Redis after one failed (the breaker's open state).
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(1);
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
    skip_until: Mutex<Option<Instant>>,
    fill: Script,
}

impl RedisTier {
    /// A tier for `redis_url`, not yet connected. Fails only on a malformed
    /// URL. `timeout` bounds every call, waiting for a reconnect included.
    pub fn new(redis_url: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(redis_url)?,
            connection: OnceLock::new(),
            timeout,
            skip_until: Mutex::new(None),
            fill: Script::new(FILL_IF_NOT_OLDER),
        })
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

    /// Whether calls currently skip Redis (the breaker is open).
    pub fn is_open(&self) -> bool {
        !self.is_connected() || self.in_backoff()
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
        let mut connection = self.usable()?;
        let mut command = redis::cmd("HMGET");
        command
            .arg(key)
            .arg(DOCUMENT_VERSION_FIELD)
            .arg(DOCUMENT_BODY_FIELD);
        let read = command.query_async::<(Option<i64>, Option<Vec<u8>>)>(&mut connection);
        match self.bounded(key, "read", read).await? {
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
        let Some(mut connection) = self.usable() else {
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
        let _stored = self.bounded(key, "fill", call).await;
    }

    /// A connection if Redis may be called now.
    fn usable(&self) -> Option<ConnectionManager> {
        let connection = self.connection.get()?;
        if self.in_backoff() {
            return None;
        }
        Some(connection.clone())
    }

    async fn bounded<T>(
        &self,
        key: &str,
        what: &str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.start_backoff();
                tracing::warn!(key, what, %error, "redis call failed; using the database");
                None
            }
            Err(_) => {
                self.start_backoff();
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

    fn in_backoff(&self) -> bool {
        let skip_until = self
            .skip_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        skip_until.is_some_and(|until| Instant::now() < until)
    }

    fn start_backoff(&self) {
        let mut skip_until = self
            .skip_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *skip_until = Some(Instant::now() + FAILURE_BACKOFF);
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
    use super::*;

    #[tokio::test]
    async fn unconnected_tier_misses_without_waiting() {
        let tier = RedisTier::new("redis://127.0.0.1:1/", Duration::from_millis(50)).expect("url");
        assert!(!tier.is_connected());
        assert!(tier.is_open());
        assert!(tier.get("order_summary:x").await.is_none());
    }

    #[test]
    fn a_failure_opens_the_breaker() {
        let tier = RedisTier::new("redis://127.0.0.1:1/", Duration::from_millis(50)).expect("url");
        assert!(!tier.in_backoff());
        tier.start_backoff();
        assert!(tier.in_backoff());
    }

    #[test]
    fn malformed_url_is_rejected() {
        assert!(RedisTier::new("not a url", Duration::from_millis(50)).is_err());
    }
}
