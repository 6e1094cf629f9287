//! Materializes order summaries in Redis, never moving one backwards, leaves
//! tombstones for the other documents a batch changed, and publishes the
//! invalidation signals query-service instances subscribe to (docs/adr/0009,
//! docs/adr/0012).

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use schema::views::{
    order_summary_key, Invalidation, Invalidations, OrderSummary, CUSTOMER_HISTORY_KEY_PREFIX,
    INVALIDATION_CHANNEL, ORDER_SUMMARY_KEY_PREFIX,
};

use crate::store::BatchEffects;

/// How long an order summary stays in Redis after its last write: the
/// safety net if a write after a committed batch is lost (Redis down, the
/// projector killed in between). query-service fills it again on a miss.
pub const DOCUMENT_TTL: Duration = Duration::from_secs(3600);
/// How long a tombstone blocks older fills: longer than any replica lag
/// query-service reads under (`REPLICA_MAX_LAG_MS`, seconds), so a fill
/// read from a lagging replica before the change cannot land after it.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// Compare-and-set on the version, for each key: a summary lands only if
/// Redis holds none or an older one, atomically (a Lua script runs alone).
/// Replays, duplicates and two projectors racing during a rebalance therefore
/// cannot overwrite a newer summary with an older one. KEYS are the summaries'
/// keys, ARGV the TTL in ms then their (version, body) pairs; one call per
/// batch chunk, not one round trip per summary. (On Redis Cluster the keys
/// of one call must share a slot: chunk per slot there.) The hash layout is
/// `schema::views::DOCUMENT_VERSION_FIELD` / `DOCUMENT_BODY_FIELD`.
const WRITE_IF_NEWER: &str = r"
local written = 0
for i, key in ipairs(KEYS) do
  local version = ARGV[2 * i]
  local current = redis.call('HGET', key, 'version')
  if not current or tonumber(current) < tonumber(version) then
    redis.call('HSET', key, 'version', version, 'body', ARGV[2 * i + 1])
    redis.call('PEXPIRE', key, ARGV[1])
    written = written + 1
  end
end
return written
";

/// For each key whose document changed but is not materialized here (a
/// product): unless Redis already holds that version
/// or a newer one, drop the body and keep the version as a tombstone, so
/// that query-service's fill of an older version is refused. KEYS the keys,
/// ARGV the TTL in ms then their versions.
const TOMBSTONE_IF_OLDER: &str = r"
for i, key in ipairs(KEYS) do
  local version = ARGV[i + 1]
  local current = redis.call('HGET', key, 'version')
  if not current or tonumber(current) < tonumber(version) then
    redis.call('HSET', key, 'version', version)
    redis.call('HDEL', key, 'body')
    redis.call('PEXPIRE', key, ARGV[1])
  end
end
return #KEYS
";

/// Summaries per script call: bounds the time one call holds Redis.
const CHUNK: usize = 200;

#[derive(Clone)]
pub struct RedisSink {
    connection: ConnectionManager,
    write: Script,
    tombstone: Script,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("serializing summary: {0}")]
    Json(#[from] serde_json::Error),
}

impl RedisSink {
    pub fn new(connection: ConnectionManager) -> Self {
        Self {
            connection,
            write: Script::new(WRITE_IF_NEWER),
            tombstone: Script::new(TOMBSTONE_IF_OLDER),
        }
    }

    /// Everything Redis needs after a committed batch (or a dead letter
    /// resolved): the summaries written, tombstones for the other changed
    /// documents, then the signals published, in that order so that an
    /// instance acting on a signal finds Redis already current. Redis is a
    /// copy of Postgres: failures are logged and the batch still counts
    /// (query-service falls back to a database; TTLs bound the staleness).
    pub async fn apply(&self, effects: &BatchEffects) {
        if let Err(error) = self.write(&effects.summaries).await {
            tracing::warn!(%error, orders = effects.summaries.len(), "redis write failed");
        }
        if let Err(error) = self.tombstone(&effects.invalidations).await {
            tracing::warn!(%error, keys = effects.invalidations.len(), "redis tombstones failed");
        }
        if let Err(error) = self.publish(&effects.invalidations).await {
            tracing::warn!(%error, keys = effects.invalidations.len(), "publishing invalidations failed");
        }
    }

    /// Writes each summary unless Redis already has the same or a newer version.
    pub async fn write(&self, summaries: &[OrderSummary]) -> Result<(), SinkError> {
        let mut connection = self.connection.clone();
        for chunk in summaries.chunks(CHUNK) {
            let mut invocation = self.write.prepare_invoke();
            invocation.arg(millis(DOCUMENT_TTL));
            for summary in chunk {
                invocation
                    .key(order_summary_key(summary.order_id))
                    .arg(summary.version)
                    .arg(serde_json::to_string(summary)?);
            }
            let _written: i64 = invocation.invoke_async(&mut connection).await?;
        }
        Ok(())
    }

    /// Tombstones the changed documents this sink does not write itself.
    async fn tombstone(&self, invalidations: &[Invalidation]) -> Result<(), SinkError> {
        // Summaries are written above; histories are lists, which no tier
        // caches in Redis (docs/adr/0012), so a tombstone would only cost a
        // write per customer per batch.
        let others: Vec<&Invalidation> = invalidations
            .iter()
            .filter(|i| {
                !i.key.starts_with(ORDER_SUMMARY_KEY_PREFIX)
                    && !i.key.starts_with(CUSTOMER_HISTORY_KEY_PREFIX)
            })
            .collect();
        let mut connection = self.connection.clone();
        for chunk in others.chunks(CHUNK) {
            let mut invocation = self.tombstone.prepare_invoke();
            invocation.arg(millis(TOMBSTONE_TTL));
            for invalidation in chunk {
                invocation.key(&invalidation.key).arg(invalidation.version);
            }
            let _keys: i64 = invocation.invoke_async(&mut connection).await?;
        }
        Ok(())
    }

    /// Publishes the keys a committed batch changed, in one message. Pub/sub
    /// is fire-and-forget: an instance that is not subscribed at this moment
    /// misses it, which is why caches also expire and flush when their
    /// subscription drops (docs/adr/0009).
    pub async fn publish(&self, invalidations: &[Invalidation]) -> Result<(), SinkError> {
        if invalidations.is_empty() {
            return Ok(());
        }
        let message = serde_json::to_string(&Invalidations {
            changed: invalidations.to_vec(),
        })?;
        let mut connection = self.connection.clone();
        let _receivers: i64 = redis::cmd("PUBLISH")
            .arg(INVALIDATION_CHANNEL)
            .arg(message)
            .query_async(&mut connection)
            .await?;
        Ok(())
    }

    /// Deletes every order summary (after a rebuild of the orders
    /// projection); returns how many. SCAN + UNLINK in pages, so Redis never
    /// blocks on one big command. A summary the live projector writes
    /// meanwhile may go too: it is a cache, and a miss reads Postgres.
    pub async fn forget_order_summaries(&self) -> Result<u64, SinkError> {
        let mut connection = self.connection.clone();
        let pattern = format!("{ORDER_SUMMARY_KEY_PREFIX}*");
        let mut cursor: u64 = 0;
        let mut forgotten = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await?;
            if !keys.is_empty() {
                let removed: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await?;
                forgotten += removed;
            }
            if next == 0 {
                return Ok(forgotten);
            }
            cursor = next;
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
