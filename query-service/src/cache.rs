//! Reads of the order summary documents the projector keeps in Redis.
//!
//! Redis is an accelerator here, never a dependency: every failure (not
//! connected, error, slower than the configured timeout, undecodable
//! document) is logged and reported as a miss, and the caller reads the
//! replica instead. This module never writes to Redis.
//!
//! Connecting: `ConnectionManager` connects eagerly and then reconnects on its
//! own. If Redis is down when the service starts, [`OrderCache::connect`]
//! fails, the service starts anyway, and [`keep_connecting`] (run by
//! `Application::run_until_stopped`) retries in the background until the
//! first connection succeeds. Until then requests skip Redis without waiting.
//!
//! While Redis is failing, a read waits up to the read timeout (the manager is
//! reconnecting). To keep an outage from adding that delay to every request,
//! a failed read makes the following reads skip Redis for [`FAILURE_BACKOFF`].

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use schema::views::{order_summary_key, OrderSummary};
use service_runtime::shutdown::CancellationToken;
use uuid::Uuid;

/// How long one attempt to establish the first connection may take. Longer
/// than a read's budget: a TCP/TLS handshake to a remote Redis is slower than
/// a HGET on an open connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between attempts to establish the first connection.
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// How long reads skip Redis after one failed.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(1);
/// Cap of the manager's own backoff between reconnect attempts, in ms.
const RECONNECT_MAX_DELAY_MS: u64 = 2_000;

/// The hash field holding the OrderSummary JSON (the other one is `version`).
const BODY_FIELD: &str = "body";

/// Read-only access to the order summaries in Redis.
pub struct OrderCache {
    client: redis::Client,
    connection: OnceLock<ConnectionManager>,
    read_timeout: Duration,
    skip_until: Mutex<Option<Instant>>,
}

impl OrderCache {
    /// A cache for `redis_url`, not yet connected. Fails only on a malformed
    /// URL. `read_timeout` bounds every read, waiting for a reconnect included.
    pub fn new(redis_url: &str, read_timeout: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(redis_url)?,
            connection: OnceLock::new(),
            read_timeout,
            skip_until: Mutex::new(None),
        })
    }

    /// Whether a connection manager exists. Once it does it stays: it
    /// reconnects by itself after Redis restarts.
    pub fn is_connected(&self) -> bool {
        self.connection.get().is_some()
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
                tracing::warn!(%error, "redis unavailable; serving reads from the replica");
                false
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = CONNECT_TIMEOUT.as_millis(),
                    "redis connect timed out; serving reads from the replica"
                );
                false
            }
        }
    }

    /// The order summary Redis holds for `order_id`, or `None` on a miss and
    /// on any failure (logged at warn).
    pub async fn order_summary(&self, order_id: Uuid) -> Option<OrderSummary> {
        let Some(connection) = self.connection.get() else {
            tracing::debug!(%order_id, "redis not connected; skipping it");
            return None;
        };
        if self.in_backoff() {
            tracing::debug!(%order_id, "redis failed recently; skipping it");
            return None;
        }
        let mut connection = connection.clone();
        let key = order_summary_key(order_id);
        let read = connection.hget::<_, _, Option<String>>(&key, BODY_FIELD);
        let body = match tokio::time::timeout(self.read_timeout, read).await {
            Ok(Ok(Some(body))) => body,
            Ok(Ok(None)) => return None,
            Ok(Err(error)) => {
                self.start_backoff();
                tracing::warn!(%order_id, %error, "redis read failed; falling back to the replica");
                return None;
            }
            Err(_) => {
                self.start_backoff();
                tracing::warn!(
                    %order_id,
                    timeout_ms = self.read_timeout.as_millis(),
                    "redis read timed out; falling back to the replica"
                );
                return None;
            }
        };
        decode(order_id, &body)
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

/// A document that does not parse, or belongs to another order, is treated as
/// a miss: the replica has the same data in columns.
fn decode(order_id: Uuid, body: &str) -> Option<OrderSummary> {
    match serde_json::from_str::<OrderSummary>(body) {
        Ok(summary) if summary.order_id == order_id => Some(summary),
        Ok(summary) => {
            tracing::warn!(%order_id, found = %summary.order_id, "redis document is of another order; ignoring it");
            None
        }
        Err(error) => {
            tracing::warn!(%order_id, %error, "redis document does not decode; ignoring it");
            None
        }
    }
}

/// Retries [`OrderCache::connect`] every few seconds until it succeeds or
/// `stop` is cancelled. Returns at once if already connected.
pub async fn keep_connecting(cache: Arc<OrderCache>, stop: CancellationToken) {
    while !cache.is_connected() {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CONNECT_RETRY_INTERVAL) => {}
        }
        cache.connect().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = r#"{
        "order_id": "00000000-0000-0000-0000-000000000001",
        "customer_id": "00000000-0000-0000-0000-000000000002",
        "status": "placed",
        "lines": [{
            "product_id": "00000000-0000-0000-0000-000000000003",
            "quantity": 2,
            "unit_price": {"amount_minor": 500, "currency": "EUR"},
            "amount": {"amount_minor": 1000, "currency": "EUR"}
        }],
        "total": {"amount_minor": 1000, "currency": "EUR"},
        "placed_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "version": 1
    }"#;

    #[test]
    fn decodes_the_document_of_the_requested_order_only() {
        let id = Uuid::from_u128(1);
        assert_eq!(decode(id, SUMMARY).map(|s| s.version), Some(1));
        assert!(decode(Uuid::from_u128(9), SUMMARY).is_none());
        assert!(decode(id, "{not json").is_none());
    }

    #[tokio::test]
    async fn unconnected_cache_misses_without_waiting() {
        let cache =
            OrderCache::new("redis://127.0.0.1:1/", Duration::from_millis(50)).expect("valid url");
        assert!(!cache.is_connected());
        assert!(cache.order_summary(Uuid::from_u128(1)).await.is_none());
    }

    #[test]
    fn a_failure_opens_a_backoff_window() {
        let cache =
            OrderCache::new("redis://127.0.0.1:1/", Duration::from_millis(50)).expect("valid url");
        assert!(!cache.in_backoff());
        cache.start_backoff();
        assert!(cache.in_backoff());
    }

    #[test]
    fn malformed_url_is_rejected() {
        assert!(OrderCache::new("not a url", Duration::from_millis(50)).is_err());
    }
}
