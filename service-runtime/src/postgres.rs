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

/// Connection counts of the service's pools, sampled when `/metrics` is
/// scraped: `db_pool_connections{pool, state="in_use"|"idle"}` and
/// `db_pool_max_connections{pool}`. A pool whose `in_use` sits at its max is
/// the one requests wait for (and, past the acquire timeout, fail on with a
/// retryable 503).
#[derive(Clone)]
pub struct PoolMetrics {
    connections: prometheus::IntGaugeVec,
    max: prometheus::IntGaugeVec,
}

impl PoolMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            connections: prometheus::IntGaugeVec::new(
                prometheus::Opts::new("db_pool_connections", "Pooled connections by state"),
                &["pool", "state"],
            )?,
            max: prometheus::IntGaugeVec::new(
                prometheus::Opts::new("db_pool_max_connections", "Size limit of the pool"),
                &["pool"],
            )?,
        })
    }

    /// Registers the collectors in the application's own registry.
    pub fn register(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.connections.clone()))?;
        registry.register(Box::new(self.max.clone()))
    }

    /// Records the current counts of `pool` under the label `name`.
    pub fn observe(&self, name: &str, pool: &sqlx::PgPool) {
        let open = i64::from(pool.size());
        let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
        self.connections
            .with_label_values(&[name, "in_use"])
            .set((open - idle).max(0));
        self.connections
            .with_label_values(&[name, "idle"])
            .set(idle);
        self.max
            .with_label_values(&[name])
            .set(i64::from(pool.options().get_max_connections()));
    }
}

/// Longest a `/metrics` scrape waits for gauges it reads from the database:
/// a hung database must not hang the scrape (that is when the other metrics
/// matter most); the gauges keep their last values instead.
pub const SCRAPE_QUERY_TIMEOUT: Duration = Duration::from_millis(500);
