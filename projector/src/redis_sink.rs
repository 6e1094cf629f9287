//! Materializes order summaries in Redis, never moving one backwards.

use redis::aio::ConnectionManager;
use redis::Script;
use schema::views::{order_summary_key, OrderSummary};

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
}
