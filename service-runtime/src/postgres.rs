//! The one way the services build a Postgres pool.

use std::time::Duration;

use std::ops::{Deref, DerefMut};
use std::str::FromStr;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool, Postgres, Transaction};

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

/// Pooled connections to the primary that work the same whether the URL
/// points at Postgres itself or at PgBouncer in transaction mode.
///
/// PgBouncer before 1.21 (Debian 12 ships 1.18) hands a client a server
/// connection for one transaction only, and knows nothing of prepared
/// statements. sqlx prepares a statement in one protocol exchange (Parse,
/// Describe, Sync) and executes it in the next (Bind, Execute, Sync); outside
/// a transaction PgBouncer may give those two exchanges *different* server
/// connections, and the second fails with "prepared statement does not
/// exist". So behind a transaction pooler:
/// - statements run inside an explicit transaction ([`Primary::acquire`]
///   begins one; [`Acquired::finish`] commits it), which pins one server
///   connection for both exchanges;
/// - sqlx's statement cache is off (`statement_cache_capacity(0)`): a cached
///   statement lives on a server connection the next transaction may not get;
/// - PgBouncer runs `DEALLOCATE ALL` after every transaction
///   (`server_reset_query_always = 1`), since sqlx names each statement it
///   prepares and two clients would otherwise collide on one server
///   connection (deploy/local/stack writes that configuration).
///
/// Session state (advisory locks, `LISTEN`, `SET`, the migrator's lock)
/// does not survive a transaction there: those connections bypass the
/// pooler (see docs/adr/0016-pgbouncer-transaction-mode.md). Directly
/// connected, `acquire` is a plain pooled connection and each statement
/// commits on its own, at no extra round trip.
#[derive(Clone, Debug)]
pub struct Primary {
    pool: PgPool,
    transaction_pooler: bool,
}

impl Primary {
    /// Connects a pool of `options` to `url`; `transaction_pooler` says that
    /// `url` is PgBouncer (or another pooler) in transaction mode.
    pub async fn connect(
        url: &str,
        transaction_pooler: bool,
        options: PgPoolOptions,
    ) -> Result<Self, sqlx::Error> {
        let mut connect = PgConnectOptions::from_str(url)?;
        if transaction_pooler {
            connect = connect.statement_cache_capacity(0);
        }
        Ok(Self {
            pool: options.connect_with(connect).await?,
            transaction_pooler,
        })
    }

    /// A pool connected straight to the primary (tests, tools).
    pub fn direct(pool: PgPool) -> Self {
        Self {
            pool,
            transaction_pooler: false,
        }
    }

    /// The pool itself, for what needs no statements of ours (its size for
    /// the metrics) or opens its own transactions ([`sqlx::Pool::begin`]
    /// works the same behind a transaction pooler).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection to run statements on (`&mut *acquired`); call
    /// [`Acquired::finish`] after the last one. Behind a transaction pooler
    /// they run in one transaction, so a dropped, unfinished `Acquired` rolls
    /// its writes back: finish it on every successful path.
    pub async fn acquire(&self) -> Result<Acquired, sqlx::Error> {
        Ok(Acquired(if self.transaction_pooler {
            Held::Transaction(self.pool.begin().await?)
        } else {
            Held::Connection(self.pool.acquire().await?)
        }))
    }
}

/// A connection from [`Primary::acquire`].
pub struct Acquired(Held);

enum Held {
    Connection(PoolConnection<Postgres>),
    Transaction(Transaction<'static, Postgres>),
}

impl Acquired {
    /// Commits the statements' transaction behind a transaction pooler;
    /// returns the connection to the pool either way.
    pub async fn finish(self) -> Result<(), sqlx::Error> {
        match self.0 {
            Held::Connection(_) => Ok(()),
            Held::Transaction(transaction) => transaction.commit().await,
        }
    }
}

impl Deref for Acquired {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match &self.0 {
            Held::Connection(connection) => connection,
            Held::Transaction(transaction) => transaction,
        }
    }
}

impl DerefMut for Acquired {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match &mut self.0 {
            Held::Connection(connection) => connection,
            Held::Transaction(transaction) => transaction,
        }
    }
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
