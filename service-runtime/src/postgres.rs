//! The one way the services build a Postgres pool.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::Connection;

/// A pooled connection idle for longer than this is pinged before use.
///
/// sqlx's default pings *every* connection on every acquire: one extra
/// round trip per statement, which on the command path doubled the round
/// trips of a command (see docs/BENCHMARKS.md). A connection that was in use
/// a moment ago is almost certainly alive, and if it is not, the statement
/// fails with an I/O error that the services already map to a retryable
/// 503; a connection that sat idle (a Postgres restart, a failover, a
/// firewall dropping idle flows) is the one worth checking.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(10);

/// Pool options shared by every service: `max_connections`,
/// `acquire_timeout` (how long a request waits for a connection before it
/// fails fast), and pings only for connections idle longer than
/// [`PING_IF_IDLE_FOR`].
pub fn pool_options(max_connections: u32, acquire_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}
