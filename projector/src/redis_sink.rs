//! Materializes order summaries in Redis, never moving one backwards, and
//! publishes the invalidation signals query-service instances subscribe to.

use redis::aio::ConnectionManager;
use redis::Script;
use schema::views::{
    order_summary_key, Invalidation, Invalidations, OrderSummary, INVALIDATION_CHANNEL,
};

/// Compare-and-set on the version: the write lands only if Redis holds no
/// summary or an older one, atomically (a Lua script runs alone). Replays,
/// duplicates and two projectors racing during a rebalance therefore cannot
/// overwrite a newer summary with an older one.
const WRITE_IF_NEWER: &str = r"
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'body', ARGV[2])
return 1
";

#[derive(Clone)]
pub struct RedisSink {
    connection: ConnectionManager,
    script: Script,
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
            script: Script::new(WRITE_IF_NEWER),
        }
    }

    /// Writes each summary unless Redis already has the same or a newer version.
    pub async fn write(&self, summaries: &[OrderSummary]) -> Result<(), SinkError> {
        let mut connection = self.connection.clone();
        for summary in summaries {
            let body = serde_json::to_string(summary)?;
            let _written: i64 = self
                .script
                .key(order_summary_key(summary.order_id))
                .arg(summary.version)
                .arg(body)
                .invoke_async(&mut connection)
                .await?;
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
        let pattern =
            order_summary_key(uuid::Uuid::nil()).replace(&uuid::Uuid::nil().to_string(), "*");
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
