//! The one way the services build a Postgres pool.

use std::time::Duration;

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;

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

/// Pooled connections to one database (the primary, a replica) that work
/// the same whether the URL points at Postgres itself or at PgBouncer in
/// transaction mode.
///
/// PgBouncer before 1.21 (Debian 12 ships 1.18) hands a client a server
/// connection for one transaction only, and knows nothing of prepared
/// statements. sqlx prepares a statement in one protocol exchange (Parse,
/// Describe, Sync) and executes it in the next (Bind, Execute, Sync); outside
/// a transaction PgBouncer may give those two exchanges *different* server
/// connections, and the second fails with "prepared statement does not
/// exist". So behind a transaction pooler:
/// - statements run inside an explicit transaction ([`DbPool::acquire`]
///   begins one; [`Acquired::finish`] commits it), which pins one server
///   connection for both exchanges;
/// - sqlx's statement cache is off (`statement_cache_capacity(0)`): a cached
///   statement lives on a server connection the next transaction may not get;
/// - PgBouncer runs `DEALLOCATE ALL` after every transaction
///   (`server_reset_query_always = 1`), since sqlx names each statement it
///   prepares and two clients would otherwise collide on one server
///   connection (deploy/local/stack writes that configuration);
/// - the [`Limits`] are set per transaction, not per session: PgBouncer
///   drops the `options` startup parameter that carries them directly.
///
/// Session state (advisory locks, `LISTEN`, `SET`, the migrator's lock)
/// does not survive a transaction there: those connections bypass the
/// pooler (see docs/adr/0016-pgbouncer-transaction-mode.md). Directly
/// connected, `acquire` is a plain pooled connection and each statement
/// commits on its own, at no extra round trip.
#[derive(Clone, Debug)]
pub struct DbPool {
    pool: PgPool,
    /// Behind a transaction pooler: the simple-query statement that opens
    /// every transaction, `BEGIN` plus the [`Limits`].
    pooled_begin: Option<Arc<str>>,
}

/// What every statement on a [`DbPool`] runs under, whichever way it is
/// connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Postgres cancels a statement running longer (`statement_timeout`).
    pub statement_timeout: Option<Duration>,
    /// Writes are refused (`default_transaction_read_only`, or
    /// `BEGIN READ ONLY` behind a pooler): a read path pointed at the
    /// primary cannot change it by mistake.
    pub read_only: bool,
}

impl Limits {
    /// Startup parameters that set the limits for a whole session.
    fn startup_options(self) -> Vec<(&'static str, String)> {
        let mut options = Vec::new();
        if let Some(timeout) = self.statement_timeout {
            options.push(("statement_timeout", format!("{}ms", timeout.as_millis())));
        }
        if self.read_only {
            options.push(("default_transaction_read_only", "on".to_owned()));
        }
        options
    }

    /// One simple query that opens a transaction with the limits in force
    /// (one round trip, like a bare `BEGIN`).
    fn begin_statement(self) -> String {
        let mut statement = if self.read_only {
            "BEGIN READ ONLY".to_owned()
        } else {
            "BEGIN".to_owned()
        };
        if let Some(timeout) = self.statement_timeout {
            statement.push_str(&format!(
                "; SET LOCAL statement_timeout = {}",
                timeout.as_millis()
            ));
        }
        statement
    }
}

impl DbPool {
    /// Connects a pool of `options` to `url`; `transaction_pooler` says that
    /// `url` is PgBouncer (or another pooler) in transaction mode.
    pub async fn connect(
        url: &str,
        transaction_pooler: bool,
        options: PgPoolOptions,
    ) -> Result<Self, sqlx::Error> {
        let (connect, pooled_begin) = Self::settings(
            PgConnectOptions::from_str(url)?,
            transaction_pooler,
            Limits::default(),
        );
        Ok(Self {
            pool: options.connect_with(connect).await?,
            pooled_begin,
        })
    }

    /// A pool of `options` that opens its connections when first used (a
    /// database that is down at start-up does not stop the service), every
    /// statement under `limits`.
    pub fn connect_lazy(
        connect: PgConnectOptions,
        transaction_pooler: bool,
        limits: Limits,
        options: PgPoolOptions,
    ) -> Self {
        let (connect, pooled_begin) = Self::settings(connect, transaction_pooler, limits);
        Self {
            pool: options.connect_lazy_with(connect),
            pooled_begin,
        }
    }

    fn settings(
        connect: PgConnectOptions,
        transaction_pooler: bool,
        limits: Limits,
    ) -> (PgConnectOptions, Option<Arc<str>>) {
        if transaction_pooler {
            (
                connect.statement_cache_capacity(0),
                Some(limits.begin_statement().into()),
            )
        } else {
            (connect.options(limits.startup_options()), None)
        }
    }

    /// A pool connected straight to the primary (tests, tools).
    pub fn direct(pool: PgPool) -> Self {
        Self {
            pool,
            pooled_begin: None,
        }
    }

    /// The pool itself: for what runs no statements (its size for the
    /// metrics, closing it), and, connected directly, for code that takes a
    /// plain pool (the migrator, the relay's session pool).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection to run statements on (`&mut *acquired`); call
    /// [`Acquired::finish`] after the last one. Behind a transaction pooler
    /// they run in one transaction, so a dropped, unfinished `Acquired` rolls
    /// its writes back: finish it on every successful path.
    pub async fn acquire(&self) -> Result<Acquired, sqlx::Error> {
        Ok(Acquired(match &self.pooled_begin {
            Some(begin) => Held::Transaction(self.begin_pooled(begin).await?),
            None => Held::Connection(self.pool.acquire().await?),
        }))
    }

    /// Whether the database answers a statement, the way every other
    /// statement reaches it (through the pooler, if there is one): the
    /// services' readiness check.
    pub async fn answers(&self) -> Result<(), sqlx::Error> {
        let mut connection = self.acquire().await?;
        sqlx::query!("SELECT 1 AS one")
            .fetch_one(&mut *connection)
            .await?;
        connection.finish().await
    }

    /// A transaction, for statements that must commit together; the same
    /// either way, with the [`Limits`] in force.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        match &self.pooled_begin {
            Some(begin) => self.begin_pooled(begin).await,
            None => self.pool.begin().await,
        }
    }

    async fn begin_pooled(
        &self,
        begin: &Arc<str>,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin_with(begin.to_string()).await
    }
}

/// A connection from [`DbPool::acquire`].
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

#[cfg(test)]
mod tests {
    use super::*;

    // What the limits do against a real Postgres and PgBouncer is
    // tests/tests/pgbouncer.rs; these pin the one-round-trip statement.
    #[test]
    fn behind_a_pooler_the_limits_open_every_transaction_in_one_simple_query() {
        assert_eq!(Limits::default().begin_statement(), "BEGIN");
        let limits = Limits {
            statement_timeout: Some(Duration::from_millis(1500)),
            read_only: true,
        };
        assert_eq!(
            limits.begin_statement(),
            "BEGIN READ ONLY; SET LOCAL statement_timeout = 1500"
        );
    }

    #[test]
    fn directly_the_limits_are_startup_parameters() {
        let limits = Limits {
            statement_timeout: Some(Duration::from_millis(1500)),
            read_only: true,
        };
        assert_eq!(
            limits.startup_options(),
            [
                ("statement_timeout", "1500ms".to_owned()),
                ("default_transaction_read_only", "on".to_owned()),
            ]
        );
        assert!(Limits::default().startup_options().is_empty());
    }
}
