//! Lag-aware routing of reads over the read replicas, with the primary as a
//! configurable fallback (docs/adr/0012).
//!
//! Every database (each replica and the primary) has its own pool, so one
//! that stops answering holds only its own connections, and its own monitor
//! task. The primary's monitor samples its WAL position into an
//! [`LsnTimeline`]; a replica's monitor reads how far it has replayed and
//! looks that position up in the timeline: the replica's lag is the age of
//! the newest primary sample it has fully replayed (zero when it has
//! replayed the newest). Unlike `now() - pg_last_xact_replay_timestamp()`
//! this does not grow while the primary is idle, and unlike
//! `pg_stat_replication` it needs no way to match replicas to walsenders.
//! The monitors also read each database's copy of the projector checkpoints
//! (`projector_offsets`): how many projected messages a replica trails.
//!
//! A read goes to a replica that is healthy and within the lag bound, round
//! robin; an attempt that fails or outlives its budget counts against that
//! database and the read moves on to the next one, within the read's
//! deadline. Reads carrying a consistency token use
//! [`ReadRouter::read_consistent`] instead, which ignores the lag bound and
//! asks each database whether it has the data.
//!
//! Every database, the primary included, has its own circuit breaker
//! (`db-replica-1`, ..., `db-primary`; [`service_runtime::breaker`],
//! settings [`Config::db_breaker`]). A database is a candidate only if its
//! monitor found it healthy (and, for plain reads, within the lag bound)
//! *and* its breaker permits a call. Read attempts feed the breaker: a
//! retryable failure (unreachable, pool exhausted, slower than the attempt
//! budget) is a failure, anything the database answered (data, "not fresh
//! enough", a non-retryable error) a success; a timeout only counts when the
//! attempt had its whole budget, not the remains of the read's deadline. By
//! default one failure opens the breaker for 1 s, so a database that stops
//! answering stops getting reads after the first attempt that found out.
//! After the open period the next read that picks it is the one probe (a
//! real read; the others skip it meanwhile): success closes the breaker,
//! failure re-opens it for twice as long (up to the maximum). The monitor's
//! checks do not close a breaker: a database whose one-connection health
//! check passes can still fail reads (a saturated pool, slow queries), and
//! only a read shows that it serves reads again. Its checks still decide
//! health: while they fail, the database is not a candidate, so no probe is
//! spent on it; once they pass again, the probe follows at the next read
//! (the open period being long over after any real outage).
//!
//! The primary has a breaker too: it serves the writes, so a primary that
//! struggles must not also be handed every fallback and consistent read,
//! each waiting out its attempt budget. With its breaker open, fallback
//! reads get a fast 503 (`Retry-After`) instead of piling onto it.
//!
//! The primary may sit behind PgBouncer in transaction mode
//! ([`Config::primary_transaction_pooler`]; replicas never do). Each
//! database is a [`DbPool`], and every statement, reads and checks alike,
//! runs on [`DbPool::acquire`]: a transaction of its own behind the pooler,
//! a plain pooled connection (no extra round trip) directly.

use std::collections::VecDeque;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use service_runtime::breaker::{Breaker, BreakerMetrics};
use service_runtime::postgres::{pool_options, DbPool, Limits};
use service_runtime::shutdown::CancellationToken;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

use crate::config::{Config, PrimaryFallback};
use crate::error::QueryError;

/// Pause between the rounds of a consistent read that found no database
/// fresh enough.
const CONSISTENT_READ_POLL: Duration = Duration::from_millis(20);
/// Primary WAL samples kept: at the default 250 ms interval, ten minutes.
/// A replica behind the oldest sample is reported as lagging by its age.
const TIMELINE_SAMPLES: usize = 2400;

/// Whether a database is a replica or the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Replica,
    Primary,
}

/// What the monitor last learned about one database.
#[derive(Debug, Clone, Copy, Default)]
pub struct Health {
    /// The monitor's last check succeeded. (Failed reads feed the
    /// database's breaker instead.)
    pub healthy: bool,
    /// Age of the newest primary write this database has not replayed
    /// (zero for the primary); `None` until measured.
    pub lag: Option<Duration>,
    /// Projector messages (summed over partitions) the primary's checkpoints
    /// are ahead of this database's copy of them.
    pub checkpoint_lag: Option<i64>,
}

/// One database reads can go to.
pub struct Database {
    name: Arc<str>,
    role: Role,
    /// Pool for reads.
    pool: DbPool,
    /// One connection for the monitor, so that a pool full of stuck reads
    /// cannot keep the monitor from noticing.
    probe: DbPool,
    health: Mutex<Health>,
    /// `db-<name>`: fed by read attempts, see the module documentation.
    breaker: Breaker,
}

impl Database {
    fn new(
        name: String,
        role: Role,
        url: &str,
        pool_size: u32,
        config: &Config,
        breakers: &BreakerMetrics,
    ) -> Result<Self, sqlx::Error> {
        let connect = PgConnectOptions::from_str(url)?.application_name("query-service");
        // Replicas are always connected directly (see
        // `Config::primary_transaction_pooler`).
        let transaction_pooler = role == Role::Primary && config.primary_transaction_pooler;
        let limits = Limits {
            statement_timeout: Some(config.read_statement_timeout),
            // A replica refuses writes anyway; this makes the primary
            // (fallback) and a development set-up refuse them too.
            read_only: true,
        };
        let pool = |size| {
            DbPool::connect_lazy(
                connect.clone(),
                transaction_pooler,
                limits,
                pool_options(size, config.read_attempt_timeout),
            )
        };
        Ok(Self {
            breaker: Breaker::new(&format!("db-{name}"), config.db_breaker, breakers),
            name: name.into(),
            role,
            pool: pool(pool_size),
            probe: pool(1),
            health: Mutex::new(Health::default()),
        })
    }

    /// The pool reads use, for its connection counts in `/metrics`.
    pub fn pool(&self) -> &PgPool {
        self.pool.pool()
    }

    /// `replica-1`, `replica-2`, ... or `primary`: the `x-read-source`
    /// header and the metric label.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn health(&self) -> Health {
        *self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The database's circuit breaker (`db-<name>`).
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    fn record(&self, observed: Health) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if observed.healthy != health.healthy {
            tracing::info!(database = %self.name, healthy = observed.healthy, lag = ?observed.lag, "database health changed");
        }
        *health = observed;
    }
}

/// A value and the database (or cache tier) it was read from.
#[derive(Debug, Clone)]
pub struct Served<T> {
    pub value: T,
    pub from: Arc<str>,
}

impl<T> Served<T> {
    /// The same source, the value transformed.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Served<U> {
        Served {
            value: f(self.value),
            from: self.from,
        }
    }
}

/// Chooses the database for each read; see the module documentation.
pub struct ReadRouter {
    replicas: Vec<Arc<Database>>,
    primary: Arc<Database>,
    timeline: Mutex<LsnTimeline>,
    next: AtomicUsize,
    max_lag: Duration,
    fallback: PrimaryFallback,
    attempt_timeout: Duration,
    deadline: Duration,
    check_interval: Duration,
    consistent_replica_wait: Duration,
    consistent_timeout: Duration,
}

impl ReadRouter {
    /// Pools for every database, connecting lazily, their breakers
    /// reporting to metrics no registry holds (their state is still
    /// exported by [`crate::metrics::Metrics`] at scrape time). Fails only
    /// on a malformed URL.
    pub fn new(config: &Config) -> Result<Self, sqlx::Error> {
        Self::with_breaker_metrics(config, &BreakerMetrics::new())
    }

    /// [`ReadRouter::new`] with the databases' breakers reporting to
    /// `breakers` (the application's).
    pub fn with_breaker_metrics(
        config: &Config,
        breakers: &BreakerMetrics,
    ) -> Result<Self, sqlx::Error> {
        let replicas = config
            .replica_database_urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                Database::new(
                    format!("replica-{}", i + 1),
                    Role::Replica,
                    url,
                    config.replica_pool_size,
                    config,
                    breakers,
                )
                .map(Arc::new)
            })
            .collect::<Result<_, _>>()?;
        let primary = Arc::new(Database::new(
            "primary".to_owned(),
            Role::Primary,
            &config.primary_database_url,
            config.primary_pool_size,
            config,
            breakers,
        )?);
        Ok(Self {
            replicas,
            primary,
            timeline: Mutex::new(LsnTimeline::new(TIMELINE_SAMPLES)),
            next: AtomicUsize::new(0),
            max_lag: config.replica_max_lag,
            fallback: config.primary_fallback,
            attempt_timeout: config.read_attempt_timeout,
            deadline: config.read_deadline,
            check_interval: config.replica_check_interval,
            consistent_replica_wait: config.consistent_read_replica_wait,
            consistent_timeout: config.consistent_read_timeout,
        })
    }

    /// Every database, replicas first.
    pub fn databases(&self) -> impl Iterator<Item = &Arc<Database>> {
        self.replicas.iter().chain(std::iter::once(&self.primary))
    }

    /// Runs `read` on a replica that is healthy, within the lag bound and
    /// permitted by its breaker (round robin), moving on to the next one
    /// when an attempt fails with a retryable error or outlives its budget,
    /// then on the primary if allowed. 503 ([`QueryError::NoDatabase`]) if
    /// none qualifies. `read` gets the database's [`DbPool`] and runs its
    /// statements on [`DbPool::acquire`] (see [`crate::read_model`]).
    pub async fn read<T, F, Fut>(&self, read: F) -> Result<Served<T>, QueryError>
    where
        F: Fn(DbPool) -> Fut,
        Fut: Future<Output = Result<T, QueryError>>,
    {
        let deadline = Instant::now() + self.deadline;
        let mut last_error = None;
        for database in self.candidates() {
            let Some(result) = self.attempt(&database, deadline, &read).await else {
                continue;
            };
            match result {
                Ok(value) => {
                    return Ok(Served {
                        value,
                        from: Arc::clone(&database.name),
                    })
                }
                Err(error) if error.is_retryable() => last_error = Some(error),
                Err(error) => return Err(error),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(last_error.unwrap_or(QueryError::NoDatabase))
    }

    /// Read-your-writes: runs `read` until it returns `Some` (the database
    /// has data at least as fresh as the client asked for) on some healthy
    /// database whose breaker permits a call, lag bound ignored. Replicas
    /// are polled first; the primary joins once
    /// [`Config::consistent_read_replica_wait`] has passed (or when no
    /// replica qualifies), if fallback is allowed. Past
    /// [`Config::consistent_read_timeout`] the answer is
    /// [`QueryError::NotYetConsistent`]: never a silently stale one.
    pub async fn read_consistent<T, F, Fut>(&self, read: F) -> Result<Served<T>, QueryError>
    where
        F: Fn(DbPool) -> Fut,
        Fut: Future<Output = Result<Option<T>, QueryError>>,
    {
        let started = Instant::now();
        let deadline = started + self.consistent_timeout;
        let mut asked_any = false;
        loop {
            let mut round: Vec<Arc<Database>> = self.rotated(
                self.replicas
                    .iter()
                    .filter(|r| r.health().healthy && r.breaker.is_call_permitted()),
            );
            let replica_wait_over = started.elapsed() >= self.consistent_replica_wait;
            if self.fallback == PrimaryFallback::Allow
                && (replica_wait_over || round.is_empty())
                && self.primary.health().healthy
                && self.primary.breaker.is_call_permitted()
            {
                round.push(Arc::clone(&self.primary));
            }
            for database in round {
                let Some(result) = self.attempt(&database, deadline, &read).await else {
                    continue;
                };
                asked_any = true;
                match result {
                    Ok(Some(value)) => {
                        return Ok(Served {
                            value,
                            from: Arc::clone(&database.name),
                        })
                    }
                    Ok(None) => {}
                    Err(error) if error.is_retryable() => {}
                    Err(error) => return Err(error),
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
            if Instant::now() + CONSISTENT_READ_POLL >= deadline {
                return Err(if asked_any {
                    QueryError::NotYetConsistent
                } else {
                    QueryError::NoDatabase
                });
            }
            tokio::time::sleep(CONSISTENT_READ_POLL).await;
        }
    }

    /// One attempt on one database within its budget, if its breaker
    /// permits (`None`: skipped, as if unhealthy). The outcome is the
    /// breaker's verdict: a retryable failure counts against the database,
    /// except a timeout of an attempt that did not have its whole budget
    /// (the read's deadline cut it short), which records nothing.
    async fn attempt<T, F, Fut>(
        &self,
        database: &Database,
        deadline: Instant,
        read: &F,
    ) -> Option<Result<T, QueryError>>
    where
        F: Fn(DbPool) -> Fut,
        Fut: Future<Output = Result<T, QueryError>>,
    {
        let Some(permit) = database.breaker.try_acquire() else {
            tracing::debug!(database = %database.name, "circuit breaker open; skipping the database");
            return None;
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let budget = self.attempt_timeout.min(remaining);
        let result = match tokio::time::timeout(budget, read(database.pool.clone())).await {
            Ok(result) => result,
            Err(_) if budget < self.attempt_timeout => {
                drop(permit);
                return Some(Err(QueryError::DeadlineExceeded {
                    database: database.name.to_string(),
                }));
            }
            Err(_) => Err(QueryError::DeadlineExceeded {
                database: database.name.to_string(),
            }),
        };
        match &result {
            Err(error) if error.is_retryable() => {
                tracing::warn!(database = %database.name, %error, probe = permit.is_probe(), "read attempt failed; trying the next database");
                permit.failure();
            }
            _ => permit.success(),
        }
        Some(result)
    }

    /// Healthy replicas within the lag bound whose breakers permit a call,
    /// rotated, then the primary if fallback is allowed (and it qualifies
    /// likewise). The breakers are only asked here, not entered: the probe
    /// of a half-open one is taken by the attempt that uses it.
    fn candidates(&self) -> Vec<Arc<Database>> {
        let primary_healthy = self.primary.health().healthy;
        let mut candidates = self.rotated(self.replicas.iter().filter(|replica| {
            let health = replica.health();
            // Lag is measured against the primary: while it has never been
            // seen, the replicas are the best there is.
            health.healthy
                && match health.lag {
                    Some(lag) => lag <= self.max_lag,
                    None => !primary_healthy,
                }
                && replica.breaker.is_call_permitted()
        }));
        if self.fallback == PrimaryFallback::Allow
            && primary_healthy
            && self.primary.breaker.is_call_permitted()
        {
            candidates.push(Arc::clone(&self.primary));
        }
        candidates
    }

    fn rotated<'a>(
        &self,
        databases: impl Iterator<Item = &'a Arc<Database>>,
    ) -> Vec<Arc<Database>> {
        let mut list: Vec<Arc<Database>> = databases.cloned().collect();
        if !list.is_empty() {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % list.len();
            list.rotate_left(start);
        }
        list
    }

    /// Whether a read without a consistency token would find a database
    /// now (readiness): breakers count, a database whose breaker is open is
    /// not one.
    pub fn can_serve(&self) -> bool {
        !self.candidates().is_empty()
    }

    /// Checks every database once, the primary first (the replicas' lag is
    /// measured against it). Used at start-up so the first requests are
    /// routed on facts.
    pub async fn check_all(&self) {
        self.check(&self.primary).await;
        futures::future::join_all(self.replicas.iter().map(|r| self.check(r))).await;
    }

    /// One health and lag check of `database`.
    async fn check(&self, database: &Database) {
        let observed =
            match tokio::time::timeout(self.attempt_timeout, probe(&database.probe)).await {
                Ok(Ok(position)) => Some(position),
                Ok(Err(error)) => {
                    tracing::debug!(database = %database.name, %error, "health check failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(database = %database.name, "health check timed out");
                    None
                }
            };
        let Some(position) = observed else {
            let last = database.health();
            database.record(Health {
                healthy: false,
                ..last
            });
            return;
        };
        let now = Instant::now();
        let mut timeline = self.timeline.lock().unwrap_or_else(PoisonError::into_inner);
        let health = match database.role {
            Role::Primary => {
                if let Some(lsn) = position.lsn {
                    timeline.push(now, lsn, position.projected);
                }
                Health {
                    healthy: true,
                    lag: Some(Duration::ZERO),
                    checkpoint_lag: Some(0),
                }
            }
            Role::Replica => Health {
                healthy: true,
                lag: position.lsn.and_then(|lsn| timeline.lag(lsn, now)),
                checkpoint_lag: timeline
                    .latest_projected()
                    .map(|p| (p - position.projected).max(0)),
            },
        };
        drop(timeline);
        database.record(health);
    }

    /// One monitor task per database, each checking every
    /// [`Config::replica_check_interval`] until `stop` is cancelled. Separate
    /// tasks, so a database that hangs delays only its own checks.
    pub async fn monitor(self: Arc<Self>, stop: CancellationToken) {
        let tasks = self.databases().cloned().map(|database| {
            let router = Arc::clone(&self);
            let stop = stop.clone();
            async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(router.check_interval) => {}
                    }
                    router.check(&database).await;
                }
            }
        });
        futures::future::join_all(tasks).await;
    }
}

/// What one check reads.
struct Position {
    /// WAL replayed (replica) or written (primary), in bytes.
    lsn: Option<i64>,
    /// Sum of this database's copy of the projector checkpoints.
    projected: i64,
}

async fn probe(db: &DbPool) -> Result<Position, sqlx::Error> {
    let mut connection = db.acquire().await?;
    let row = sqlx::query!(
        r#"
        SELECT
            pg_wal_lsn_diff(
                CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                     ELSE pg_current_wal_lsn() END,
                '0/0')::bigint AS lsn,
            (SELECT coalesce(sum(next_offset), 0) FROM projector_offsets)::bigint AS "projected!"
        "#
    )
    .fetch_one(&mut *connection)
    .await?;
    connection.finish().await?;
    Ok(Position {
        lsn: row.lsn,
        projected: row.projected,
    })
}

/// The primary's WAL position over time, to turn a replica's replay
/// position into a lag in seconds.
#[derive(Debug)]
pub struct LsnTimeline {
    samples: VecDeque<(Instant, i64)>,
    capacity: usize,
    projected: Option<i64>,
}

impl LsnTimeline {
    pub fn new(capacity: usize) -> Self {
        Self {
            samples: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            projected: None,
        }
    }

    /// Records the primary at `lsn` (and its checkpoints at `projected`) at
    /// `at`.
    pub fn push(&mut self, at: Instant, lsn: i64, projected: i64) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back((at, lsn));
        self.projected = Some(projected);
    }

    pub fn latest_projected(&self) -> Option<i64> {
        self.projected
    }

    /// How stale a database that replayed up to `replayed` is at `now`:
    /// zero if it has the newest sample, else the age of the newest sample
    /// it has (or of the oldest sample, a lower bound, if it has none);
    /// `None` before the first sample.
    pub fn lag(&self, replayed: i64, now: Instant) -> Option<Duration> {
        let &(_, newest) = self.samples.back()?;
        if replayed >= newest {
            return Some(Duration::ZERO);
        }
        let since = self
            .samples
            .iter()
            .rev()
            .find(|(_, lsn)| *lsn <= replayed)
            .or_else(|| self.samples.front())
            .map(|(at, _)| *at)?;
        Some(now.saturating_duration_since(since))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use service_runtime::breaker::{BreakerSettings, BreakerState};

    use super::*;

    const OPEN: Duration = Duration::from_millis(50);

    /// A router over databases on ports 1 (primary), 2, 3, ... (replicas)
    /// that nothing listens on: the tests' reads never touch the pools, they
    /// only look at which database they were given. Every database is
    /// reported healthy and current, as the monitor would.
    fn router(replicas: u16, fallback: PrimaryFallback, deadline: Duration) -> ReadRouter {
        let config = Config {
            primary_fallback: fallback,
            read_attempt_timeout: Duration::from_millis(100),
            read_deadline: deadline,
            db_breaker: BreakerSettings {
                failures_to_open: 1,
                open_for: OPEN,
                max_open_for: OPEN * 4,
            },
            ..Config::new(
                "postgres://app:app@127.0.0.1:1/app",
                (2..2 + replicas)
                    .map(|port| format!("postgres://app:app@127.0.0.1:{port}/app"))
                    .collect(),
                "redis://127.0.0.1:1/",
                crate::config::test_auth(),
            )
        };
        let router = ReadRouter::new(&config).expect("valid urls");
        for database in router.databases() {
            database.record(Health {
                healthy: true,
                lag: Some(Duration::ZERO),
                checkpoint_lag: Some(0),
            });
        }
        router
    }

    fn port(db: &DbPool) -> u16 {
        db.pool().connect_options().get_port()
    }

    fn unavailable() -> QueryError {
        QueryError::Unavailable(sqlx::Error::PoolTimedOut)
    }

    fn state(router: &ReadRouter, name: &str) -> BreakerState {
        router
            .databases()
            .find(|d| d.name().as_ref() == name)
            .expect("database")
            .breaker()
            .state()
    }

    #[tokio::test]
    async fn a_failed_attempt_takes_the_database_out_until_its_probe_succeeds() {
        let router = router(2, PrimaryFallback::Deny, Duration::from_secs(1));
        let replica_1_down = AtomicBool::new(true);
        let attempts_on_replica_1 = AtomicUsize::new(0);
        let read = |db: DbPool| {
            let port = port(&db);
            if port == 2 {
                attempts_on_replica_1.fetch_add(1, Ordering::SeqCst);
            }
            let down = port == 2 && replica_1_down.load(Ordering::SeqCst);
            async move {
                if down {
                    Err(unavailable())
                } else {
                    Ok(port)
                }
            }
        };
        for _ in 0..10 {
            let served = router.read(&read).await.expect("replica-2 answers");
            assert_eq!(served.value, 3);
        }
        assert_eq!(
            attempts_on_replica_1.load(Ordering::SeqCst),
            1,
            "only the first attempt finds out"
        );
        assert_eq!(state(&router, "replica-1"), BreakerState::Open);
        assert_eq!(state(&router, "replica-2"), BreakerState::Closed);

        // Recovered; after the open period the next read that picks it is
        // the probe, and it closes the breaker.
        replica_1_down.store(false, Ordering::SeqCst);
        tokio::time::sleep(OPEN + Duration::from_millis(10)).await;
        let mut sources = Vec::new();
        for _ in 0..4 {
            sources.push(router.read(&read).await.expect("read").value);
        }
        assert!(sources.contains(&2), "replica-1 serves again: {sources:?}");
        assert_eq!(state(&router, "replica-1"), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_failed_probe_keeps_the_database_out() {
        let router = router(1, PrimaryFallback::Allow, Duration::from_secs(1));
        let read = |db: DbPool| {
            let port = port(&db);
            async move {
                if port == 2 {
                    Err(unavailable())
                } else {
                    Ok(port)
                }
            }
        };
        assert_eq!(router.read(&read).await.expect("primary").value, 1);
        assert_eq!(state(&router, "replica-1"), BreakerState::Open);
        tokio::time::sleep(OPEN + Duration::from_millis(10)).await;
        // The probe fails; the read still gets its answer from the primary.
        assert_eq!(router.read(&read).await.expect("primary").value, 1);
        assert_eq!(state(&router, "replica-1"), BreakerState::Open);
        let remaining = router.replicas[0].breaker().open_remaining().expect("open");
        assert!(remaining > OPEN, "open for longer: {remaining:?}");
    }

    #[tokio::test]
    async fn an_open_primary_breaker_sheds_fallback_reads() {
        let router = router(0, PrimaryFallback::Allow, Duration::from_secs(1));
        let attempts = AtomicUsize::new(0);
        let failing = |_db: DbPool| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(unavailable()) }
        };
        assert!(router.can_serve());
        assert!(router.read(&failing).await.is_err());
        assert_eq!(state(&router, "primary"), BreakerState::Open);
        assert!(!router.can_serve(), "readiness follows the breaker");
        assert!(matches!(
            router.read(&failing).await,
            Err(QueryError::NoDatabase)
        ));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);

        tokio::time::sleep(OPEN + Duration::from_millis(10)).await;
        assert!(router.can_serve(), "a probe is due");
        let ok = |_db: DbPool| async { Ok(()) };
        router.read(&ok).await.expect("the probe");
        assert_eq!(state(&router, "primary"), BreakerState::Closed);
    }

    #[tokio::test]
    async fn answers_count_as_successes_and_truncated_timeouts_not_at_all() {
        // Deadline shorter than the attempt budget: the timeout is the
        // read's, not the database's.
        let short = router(1, PrimaryFallback::Deny, Duration::from_millis(30));
        let hanging = |_db: DbPool| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        };
        assert!(matches!(
            short.read(&hanging).await,
            Err(QueryError::DeadlineExceeded { .. })
        ));
        assert_eq!(state(&short, "replica-1"), BreakerState::Closed);

        // A non-retryable error is the database answering.
        let not_found = |_db: DbPool| async {
            Err::<(), _>(QueryError::NotFound {
                resource: "product",
                id: "x".to_owned(),
            })
        };
        assert!(short.read(&not_found).await.is_err());
        assert_eq!(state(&short, "replica-1"), BreakerState::Closed);

        // With its whole budget, a timeout counts.
        let full = router(1, PrimaryFallback::Deny, Duration::from_secs(1));
        assert!(full.read(&hanging).await.is_err());
        assert_eq!(state(&full, "replica-1"), BreakerState::Open);
    }

    #[tokio::test]
    async fn consistent_reads_skip_open_breakers_and_ask_the_primary() {
        let router = router(1, PrimaryFallback::Allow, Duration::from_secs(1));
        let failing = |_db: DbPool| async { Err::<Option<u16>, _>(unavailable()) };
        // Opens replica-1's breaker (and the primary's).
        let _ = router.read_consistent(&failing).await;
        router.primary.breaker().reset();
        assert_eq!(state(&router, "replica-1"), BreakerState::Open);
        let fresh = |db: DbPool| {
            let port = port(&db);
            async move { Ok(Some(port)) }
        };
        // No replica qualifies, so the primary is asked at once rather than
        // after the replica wait.
        let started = Instant::now();
        let served = router.read_consistent(&fresh).await.expect("primary");
        assert_eq!(served.value, 1);
        assert!(started.elapsed() < router.consistent_replica_wait);
    }

    #[tokio::test]
    async fn only_the_primary_goes_through_the_transaction_pooler() {
        let config = Config {
            primary_transaction_pooler: true,
            read_statement_timeout: Duration::from_millis(1500),
            ..Config::new(
                "postgres://app:app@127.0.0.1:1/app",
                vec!["postgres://app:app@127.0.0.1:2/app".to_owned()],
                "redis://127.0.0.1:1/",
                crate::config::test_auth(),
            )
        };
        let router = ReadRouter::new(&config).expect("valid urls");
        let startup_options =
            |db: &DbPool| db.pool().connect_options().get_options().map(str::to_owned);
        // Directly, the limits are startup parameters; PgBouncer would drop
        // them, so behind it they open each transaction instead.
        for db in [&router.replicas[0].pool, &router.replicas[0].probe] {
            let options = startup_options(db).expect("limits as startup parameters");
            assert!(options.contains("statement_timeout=1500ms"), "{options}");
            assert!(
                options.contains("default_transaction_read_only=on"),
                "{options}"
            );
        }
        for db in [&router.primary.pool, &router.primary.probe] {
            assert_eq!(startup_options(db), None);
        }
        for database in router.databases() {
            assert_eq!(
                database.pool().connect_options().get_application_name(),
                Some("query-service")
            );
        }
    }

    #[test]
    fn no_lag_when_the_newest_primary_position_is_replayed() {
        let t0 = Instant::now();
        let mut timeline = LsnTimeline::new(10);
        assert_eq!(timeline.lag(0, t0), None);
        timeline.push(t0, 100, 0);
        timeline.push(t0 + Duration::from_secs(1), 100, 0);
        // An idle primary: the replica stays current however old the write.
        assert_eq!(
            timeline.lag(100, t0 + Duration::from_secs(60)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn lag_is_the_age_of_the_newest_sample_replayed() {
        let t0 = Instant::now();
        let mut timeline = LsnTimeline::new(10);
        for (s, lsn) in [(0, 100), (1, 200), (2, 300), (3, 400)] {
            timeline.push(t0 + Duration::from_secs(s), lsn, 0);
        }
        let now = t0 + Duration::from_secs(4);
        assert_eq!(timeline.lag(250, now), Some(Duration::from_secs(3)));
        assert_eq!(timeline.lag(300, now), Some(Duration::from_secs(2)));
        // Behind every sample kept: the oldest one's age, a lower bound.
        assert_eq!(timeline.lag(50, now), Some(Duration::from_secs(4)));
    }

    #[test]
    fn old_samples_are_dropped_at_capacity() {
        let t0 = Instant::now();
        let mut timeline = LsnTimeline::new(2);
        for (s, lsn) in [(0, 100), (1, 200), (2, 300)] {
            timeline.push(t0 + Duration::from_secs(s), lsn, s as i64);
        }
        assert_eq!(timeline.samples.len(), 2);
        assert_eq!(timeline.latest_projected(), Some(2));
        assert_eq!(
            timeline.lag(100, t0 + Duration::from_secs(3)),
            Some(Duration::from_secs(2))
        );
    }
}
