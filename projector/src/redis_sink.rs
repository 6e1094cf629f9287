//! Materializes order summaries in Redis, never moving one backwards, and
//! publishes the invalidation signals query-service instances subscribe to.

use redis::aio::ConnectionManager;
use redis::Script;
use schema::views::{
    order_summary_key, Invalidation, Invalidations, OrderSummary, INVALIDATION_CHANNEL,
    ORDER_SUMMARY_KEY_PREFIX,
};

/// Compare-and-set on the version, for each key: a summary lands only if
/// Redis holds none or an older one, atomically (a Lua script runs alone).
/// Replays, duplicates and two projectors racing during a rebalance therefore
/// cannot overwrite a newer summary with an older one. KEYS are the summaries'
/// keys, ARGV their (version, body) pairs; one call per batch chunk, not one
/// round trip per summary. (On Redis Cluster the keys of one call must share
/// a slot: chunk per slot there.)
const WRITE_IF_NEWER: &str = r"
local written = 0
for i, key in ipairs(KEYS) do
  local version = ARGV[2 * i - 1]
  local current = redis.call('HGET', key, 'version')
  if not current or tonumber(current) < tonumber(version) then
    redis.call('HSET', key, 'version', version, 'body', ARGV[2 * i])
    written = written + 1
  end
end
return written
";

/// Summaries per script call: bounds the time one call holds Redis.
const CHUNK: usize = 200;

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
        for chunk in summaries.chunks(CHUNK) {
            let mut invocation = self.script.prepare_invoke();
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
