//! Monthly partitions of `customer_order_history`, kept by a maintenance task
//! instead of the apply path (ADR 8).
//!
//! The projector only inserts. A row whose month has no partition lands in the
//! DEFAULT partition `customer_order_history_default` instead of failing its
//! batch. [`maintain_once`] then, in this order:
//! 1. creates the partitions of the current month and the next
//!    [`MaintenanceSettings::ahead_months`] months;
//! 2. adopts stragglers: a month with rows in DEFAULT gets its partition, and
//!    the rows move into it in the same transaction;
//! 3. applies retention: partitions of months before the cutoff are detached,
//!    then dropped, and DEFAULT rows before the cutoff are deleted.
//!
//! Every step holds a transaction-scoped advisory lock, so several projector
//! instances can run the task at once; each step re-reads the catalog under
//! that lock and is idempotent, so a failed run is simply repeated.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use service_runtime::backoff::Backoff;
use service_runtime::postgres::DbPool;
use service_runtime::shutdown::{sleep_or_shutdown, CancellationToken};
use sqlx::{PgConnection, PgExecutor};

/// How the partition maintenance task keeps `customer_order_history`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceSettings {
    /// `PARTITIONS_AHEAD_MONTHS`: months after the current one whose
    /// partitions exist in advance.
    pub ahead_months: u32,
    /// `HISTORY_RETENTION_MONTHS`: full months kept before the current one;
    /// older partitions are detached, then dropped. 0 keeps everything.
    pub retention_months: u32,
    /// `PARTITION_MAINTENANCE_INTERVAL_S`: time between maintenance runs.
    pub interval: Duration,
}

const PARTITION_PREFIX: &str = "customer_order_history_p";

/// Longest wait for a table lock once the advisory lock is held. DETACH needs
/// an ACCESS EXCLUSIVE lock on the parent and ATTACH one on the DEFAULT
/// partition; while such a request waits behind a long reader, every later
/// insert and select on that table queues behind it. Giving up quickly and
/// retrying later stalls the projector for at most this long.
const LOCK_TIMEOUT: &str = "3s";

/// Shortest pause between runs, whatever `PARTITION_MAINTENANCE_INTERVAL_S`
/// says, so that 0 cannot turn the task into a busy loop.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Longest pause between retries of a failing run.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// A calendar month in UTC, the unit of partitioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    /// The month `at` falls in.
    pub fn of(at: DateTime<Utc>) -> Self {
        Self {
            year: at.year(),
            month: at.month(),
        }
    }

    /// The month `day` falls in.
    pub fn containing(day: NaiveDate) -> Self {
        Self {
            year: day.year(),
            month: day.month(),
        }
    }

    /// `customer_order_history_p2026_11`
    pub fn partition_name(self) -> String {
        format!("{PARTITION_PREFIX}{:04}_{:02}", self.year, self.month)
    }

    /// The month of a name written by [`Month::partition_name`]; None for any
    /// other name. Strict (exactly four year digits and two month digits, a
    /// real month), because retention drops what this accepts.
    pub fn from_partition_name(name: &str) -> Option<Self> {
        let (year, month) = name.strip_prefix(PARTITION_PREFIX)?.split_once('_')?;
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(year, 4) || !digits(month, 2) {
            return None;
        }
        let parsed = Self {
            year: year.parse().ok()?,
            month: month.parse().ok()?,
        };
        parsed.is_partitionable().then_some(parsed)
    }

    /// The month `months` after this one; None past year 9999.
    pub fn plus(self, months: u32) -> Option<Self> {
        Self::from_index(self.index()? + i64::from(months))
    }

    /// The month `months` before this one; None before year 1.
    pub fn minus(self, months: u32) -> Option<Self> {
        Self::from_index(self.index()? - i64::from(months))
    }

    /// The first day of the month; None if it is not a real month.
    pub fn first_day(self) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(self.year, self.month, 1)
    }

    /// Months that can have a partition: the name needs a four-digit year and
    /// the bound literals must be plain ISO dates.
    fn is_partitionable(self) -> bool {
        (1..=9999).contains(&self.year) && (1..=12).contains(&self.month)
    }

    /// Months since year 0, for arithmetic; None if not partitionable.
    fn index(self) -> Option<i64> {
        self.is_partitionable()
            .then(|| i64::from(self.year) * 12 + i64::from(self.month) - 1)
    }

    fn from_index(index: i64) -> Option<Self> {
        let month = Self {
            year: i32::try_from(index.div_euclid(12)).ok()?,
            month: u32::try_from(index.rem_euclid(12) + 1).ok()?,
        };
        month.is_partitionable().then_some(month)
    }

    /// The month after this one, even past year 9999 (for the upper bound of
    /// December 9999).
    fn following(self) -> (i32, u32) {
        if self.month == 12 {
            (self.year + 1, 1)
        } else {
            (self.year, self.month + 1)
        }
    }

    /// `[start of this month, start of the next)` in UTC.
    fn range(self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let (next_year, next_month) = self.following();
        let start = |day: NaiveDate| day.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        Some((
            start(self.first_day()?)?,
            start(NaiveDate::from_ymd_opt(next_year, next_month, 1)?)?,
        ))
    }

    /// The statements that create, attach, detach and drop this month's
    /// partition. Only integers of a partitionable `Month` are formatted into
    /// them, never input: that is what makes building DDL with `format!` safe.
    fn ddl(self) -> Option<PartitionDdl> {
        if !self.is_partitionable() {
            return None;
        }
        let name = self.partition_name();
        let (next_year, next_month) = self.following();
        let from = format!("'{:04}-{:02}-01 00:00:00+00'", self.year, self.month);
        let to = format!("'{next_year:04}-{next_month:02}-01 00:00:00+00'");
        Some(PartitionDdl {
            create: format!(
                "CREATE TABLE {name} \
                 (LIKE customer_order_history INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            ),
            adopt: format!(
                "WITH moved AS (DELETE FROM customer_order_history_default \
                 WHERE occurred_at >= $1 AND occurred_at < $2 RETURNING *) \
                 INSERT INTO {name} SELECT * FROM moved"
            ),
            attach: format!(
                "ALTER TABLE customer_order_history ATTACH PARTITION {name} \
                 FOR VALUES FROM ({from}) TO ({to})"
            ),
            detach: format!("ALTER TABLE customer_order_history DETACH PARTITION {name}"),
            drop: format!("DROP TABLE IF EXISTS {name}"),
            name,
        })
    }
}

impl fmt::Display for Month {
    /// `2026-11`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// DDL of one month's partition (see [`Month::ddl`]).
struct PartitionDdl {
    name: String,
    create: String,
    /// Binds the month's range as `$1`, `$2`.
    adopt: String,
    attach: String,
    detach: String,
    drop: String,
}

/// The first month retention keeps when today is `today`: partitions of
/// earlier months are dropped, DEFAULT rows dated before its first day are
/// deleted. None when nothing is to be dropped (`retention_months` 0, or a
/// cutoff before year 1). Always before the current month.
pub fn retention_cutoff(today: NaiveDate, retention_months: u32) -> Option<Month> {
    if retention_months == 0 {
        return None;
    }
    Month::containing(today).minus(retention_months)
}

/// Months of the partitions among `names` that retention removes: those whose
/// upper bound is on or before the cutoff. Names that are not monthly
/// partition names (the DEFAULT partition, anything else) are never selected.
fn expired_partitions<'a>(
    names: impl IntoIterator<Item = &'a str>,
    today: NaiveDate,
    retention_months: u32,
) -> Vec<Month> {
    let Some(cutoff) = retention_cutoff(today, retention_months) else {
        return Vec::new();
    };
    let current = Month::containing(today);
    let expired: BTreeSet<Month> = names
        .into_iter()
        .filter_map(Month::from_partition_name)
        // `< current` is implied by `< cutoff`; spelled out so that no future
        // change of the cutoff can ever reach the month being written.
        .filter(|&month| month < cutoff && month < current)
        .collect();
    expired.into_iter().collect()
}

/// What one maintenance run changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Partitions created, ahead or for stragglers, oldest first.
    pub created: Vec<Month>,
    /// Rows moved out of the DEFAULT partition into a partition just created
    /// for their month (months that moved no row are not listed).
    pub adopted: Vec<AdoptedRows>,
    /// Partitions detached by retention.
    pub detached: Vec<Month>,
    /// Detached partitions dropped: those detached by this run, plus any left
    /// detached by an earlier run interrupted between the two steps.
    pub dropped: Vec<Month>,
    /// Rows deleted from the DEFAULT partition because they are older than the
    /// retention cutoff.
    pub stragglers_deleted: u64,
}

/// Rows of one month moved from the DEFAULT partition into its new partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdoptedRows {
    pub month: Month,
    pub rows: u64,
}

impl MaintenanceReport {
    /// True when the run changed nothing.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

impl fmt::Display for MaintenanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn months(list: &[Month]) -> String {
            list.iter()
                .map(Month::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
        let adopted: Vec<String> = self
            .adopted
            .iter()
            .map(|a| format!("{}:{}", a.month, a.rows))
            .collect();
        write!(
            f,
            "created [{}], adopted rows [{}], detached [{}], dropped [{}], \
             deleted {} DEFAULT rows older than retention",
            months(&self.created),
            adopted.join(","),
            months(&self.detached),
            months(&self.dropped),
            self.stragglers_deleted
        )
    }
}

/// Why a maintenance run stopped. Everything done before the failure is
/// committed; the next run starts over and skips it.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("starting a maintenance transaction: {0}")]
    Begin(#[source] sqlx::Error),
    #[error("taking the partition maintenance lock: {0}")]
    Lock(#[source] sqlx::Error),
    #[error("listing the partitions of customer_order_history: {0}")]
    ListPartitions(#[source] sqlx::Error),
    #[error("finding the months of the rows in customer_order_history_default: {0}")]
    ListStragglers(#[source] sqlx::Error),
    #[error("month {0} cannot have a partition (years 1 to 9999 only)")]
    MonthOutOfRange(Month),
    #[error("creating partition {partition}: {source}")]
    Create {
        partition: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("detaching partition {partition}: {source}")]
    Detach {
        partition: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("dropping detached partition {partition}: {source}")]
    DropTable {
        partition: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("deleting DEFAULT rows older than {cutoff}: {source}")]
    DeleteStragglers {
        cutoff: NaiveDate,
        #[source]
        source: sqlx::Error,
    },
    #[error("committing a maintenance transaction: {0}")]
    Commit(#[source] sqlx::Error),
}

/// One maintenance run as of `today` (passed in, so tests can pick any date):
/// partitions ahead, stragglers adopted, retention applied (see the module
/// docs). Stops at the first failure.
pub async fn maintain_once(
    pool: &DbPool,
    settings: &MaintenanceSettings,
    today: NaiveDate,
) -> Result<MaintenanceReport, MaintenanceError> {
    let current = Month::containing(today);
    let cutoff = retention_cutoff(today, settings.retention_months);
    let mut report = MaintenanceReport::default();

    let ahead: BTreeSet<Month> = (0..=settings.ahead_months)
        .map_while(|n| current.plus(n))
        .collect();
    let mut connection = pool.acquire().await.map_err(MaintenanceError::Begin)?;
    let found = straggler_months(&mut connection).await?;
    let attached = attached_partitions(&mut *connection).await?;
    connection
        .finish()
        .await
        .map_err(MaintenanceError::Commit)?;
    let mut stragglers = BTreeSet::new();
    for month in found {
        if !month.is_partitionable() {
            tracing::warn!(
                year = month.year,
                month = month.month,
                "customer_order_history_default holds rows of a month that cannot have a partition"
            );
            continue;
        }
        // Retention deletes these below instead of giving them a partition
        // only to drop it.
        if cutoff.is_some_and(|cutoff| month < cutoff) {
            continue;
        }
        stragglers.insert(month);
    }
    let existing: BTreeSet<Month> = attached
        .iter()
        .filter_map(|name| Month::from_partition_name(name))
        .collect();
    // Current and ahead first, so that a straggler month whose adoption keeps
    // failing cannot hold back the partitions the projector is writing to.
    let missing = ahead.difference(&existing).chain(
        stragglers
            .difference(&existing)
            .filter(|m| !ahead.contains(m)),
    );
    for &month in missing {
        if let Some(rows) = create_partition(pool, month).await? {
            report.created.push(month);
            if rows > 0 {
                report.adopted.push(AdoptedRows { month, rows });
            }
        }
    }
    report.created.sort_unstable();
    report.adopted.sort_unstable_by_key(|a| a.month);

    if let Some(cutoff) = cutoff {
        apply_retention(pool, settings, today, cutoff, &mut report).await?;
    }
    Ok(report)
}

/// Runs [`maintain_once`] after `first_run_in` and then every
/// `settings.interval` (at least 1 s) until `shutdown`. A failed run is
/// retried after 1 s, doubling up to five minutes or the interval,
/// whichever is shorter. (`Application::build` makes a run of its own, so
/// a second one right at start would only race it.)
pub async fn run_maintenance(
    pool: DbPool,
    settings: MaintenanceSettings,
    first_run_in: Duration,
    shutdown: CancellationToken,
) {
    let interval = settings.interval.max(MIN_INTERVAL);
    let mut backoff = Backoff::new(MIN_INTERVAL, interval.min(MAX_RETRY_DELAY));
    if sleep_or_shutdown(first_run_in, &shutdown).await {
        return;
    }
    loop {
        let today = Utc::now().date_naive();
        // Abandoning a run on shutdown is safe: dropping its open transaction
        // rolls it back, and every step is all-or-nothing.
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => break,
            outcome = maintain_once(&pool, &settings, today) => outcome,
        };
        let delay = match outcome {
            Ok(report) => {
                backoff.reset();
                if report.is_empty() {
                    tracing::debug!("history partitions up to date");
                } else {
                    tracing::info!(%report, "history partitions maintained");
                }
                interval
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "history partition maintenance failed");
                delay
            }
        };
        if sleep_or_shutdown(delay, &shutdown).await {
            break;
        }
    }
    tracing::info!("partition maintenance stopped");
}

/// Creates `month`'s partition, moving the month's rows out of the DEFAULT
/// partition into it. Returns how many rows moved, or None if another
/// instance created it first.
///
/// A plain `CREATE TABLE ... PARTITION OF` fails as soon as DEFAULT holds a
/// row of the range, so the table is created standalone, filled, and attached,
/// all in one transaction. This is also lighter on readers: ATTACH takes
/// only SHARE UPDATE EXCLUSIVE on the parent, CREATE ... PARTITION OF takes
/// ACCESS EXCLUSIVE.
async fn create_partition(pool: &DbPool, month: Month) -> Result<Option<u64>, MaintenanceError> {
    let ddl = month
        .ddl()
        .ok_or(MaintenanceError::MonthOutOfRange(month))?;
    let (from, to) = month
        .range()
        .ok_or(MaintenanceError::MonthOutOfRange(month))?;
    let failed = |source| MaintenanceError::Create {
        partition: ddl.name.clone(),
        source,
    };
    let mut tx = pool.begin().await.map_err(MaintenanceError::Begin)?;
    lock(&mut tx).await?;
    if attached_partitions(&mut *tx).await?.contains(&ddl.name) {
        return Ok(None);
    }
    // Taken up front rather than by ATTACH: a row of this month inserted into
    // DEFAULT after the move would make ATTACH fail.
    sqlx::query!("LOCK TABLE customer_order_history_default IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    sqlx::query(&ddl.create)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    let moved = sqlx::query(&ddl.adopt)
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await
        .map_err(failed)?
        .rows_affected();
    sqlx::query(&ddl.attach)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    tracing::info!(partition = %ddl.name, adopted_rows = moved, "partition created");
    Ok(Some(moved))
}

/// Detaches the expired partitions and deletes expired DEFAULT rows in one
/// transaction, then drops the detached tables in another.
///
/// Detach first: once DETACH commits, the month is gone from
/// `customer_order_history` atomically (a reader sees all of its rows or none),
/// and the DROP afterwards locks only a table no query of the parent can
/// reach any more. A failed or interrupted DROP leaves an ordinary table
/// behind, never a half-removed partition; the next run finds it by name and
/// drops it.
async fn apply_retention(
    pool: &DbPool,
    settings: &MaintenanceSettings,
    today: NaiveDate,
    cutoff: Month,
    report: &mut MaintenanceReport,
) -> Result<(), MaintenanceError> {
    let cutoff_day = cutoff
        .first_day()
        .ok_or(MaintenanceError::MonthOutOfRange(cutoff))?;
    let (cutoff_at, _) = cutoff
        .range()
        .ok_or(MaintenanceError::MonthOutOfRange(cutoff))?;

    let mut tx = pool.begin().await.map_err(MaintenanceError::Begin)?;
    lock(&mut tx).await?;
    let attached = attached_partitions(&mut *tx).await?;
    for month in expired_partitions(
        attached.iter().map(String::as_str),
        today,
        settings.retention_months,
    ) {
        let ddl = month
            .ddl()
            .ok_or(MaintenanceError::MonthOutOfRange(month))?;
        sqlx::query(&ddl.detach)
            .execute(&mut *tx)
            .await
            .map_err(|source| MaintenanceError::Detach {
                partition: ddl.name.clone(),
                source,
            })?;
        report.detached.push(month);
    }
    report.stragglers_deleted = sqlx::query!(
        "DELETE FROM customer_order_history_default WHERE occurred_at < $1",
        cutoff_at
    )
    .execute(&mut *tx)
    .await
    .map_err(|source| MaintenanceError::DeleteStragglers {
        cutoff: cutoff_day,
        source,
    })?
    .rows_affected();
    tx.commit().await.map_err(MaintenanceError::Commit)?;

    let mut tx = pool.begin().await.map_err(MaintenanceError::Begin)?;
    lock(&mut tx).await?;
    let detached = detached_partitions(&mut *tx).await?;
    for month in expired_partitions(
        detached.iter().map(String::as_str),
        today,
        settings.retention_months,
    ) {
        let ddl = month
            .ddl()
            .ok_or(MaintenanceError::MonthOutOfRange(month))?;
        sqlx::query(&ddl.drop)
            .execute(&mut *tx)
            .await
            .map_err(|source| MaintenanceError::DropTable {
                partition: ddl.name.clone(),
                source,
            })?;
        report.dropped.push(month);
    }
    tx.commit().await.map_err(MaintenanceError::Commit)?;
    Ok(())
}

/// Serialises maintenance across projector instances for the rest of the
/// transaction, then bounds every further lock wait by [`LOCK_TIMEOUT`]
/// (waiting for another instance's run is fine; queueing DDL behind a long
/// reader is not).
async fn lock(tx: &mut PgConnection) -> Result<(), MaintenanceError> {
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtext('customer_order_history partitions'))")
        .execute(&mut *tx)
        .await
        .map_err(MaintenanceError::Lock)?;
    sqlx::query!("SELECT set_config('lock_timeout', $1, true)", LOCK_TIMEOUT)
        .fetch_one(&mut *tx)
        .await
        .map_err(MaintenanceError::Lock)?;
    Ok(())
}

/// Names of the partitions attached to `customer_order_history`, except the
/// DEFAULT one.
async fn attached_partitions<'c>(db: impl PgExecutor<'c>) -> Result<Vec<String>, MaintenanceError> {
    sqlx::query_scalar!(
        r#"SELECT c.relname::text AS "name!"
           FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'customer_order_history'::regclass
             AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'"#
    )
    .fetch_all(db)
    .await
    .map_err(MaintenanceError::ListPartitions)
}

/// Names of plain tables beside `customer_order_history` that look like its
/// monthly partitions but are not attached: what a run interrupted between
/// DETACH and DROP leaves behind.
async fn detached_partitions<'c>(db: impl PgExecutor<'c>) -> Result<Vec<String>, MaintenanceError> {
    sqlx::query_scalar!(
        r#"SELECT c.relname::text AS "name!"
           FROM pg_class c
           JOIN pg_class parent ON parent.oid = 'customer_order_history'::regclass
           WHERE c.relnamespace = parent.relnamespace
             AND c.relkind = 'r'
             AND NOT c.relispartition
             AND c.relname LIKE 'customer\_order\_history\_p%'"#
    )
    .fetch_all(db)
    .await
    .map_err(MaintenanceError::ListPartitions)
}

/// The UTC months of the rows in the DEFAULT partition.
async fn straggler_months(conn: &mut PgConnection) -> Result<Vec<Month>, MaintenanceError> {
    let rows = sqlx::query!(
        r#"SELECT DISTINCT
               EXTRACT(YEAR FROM occurred_at AT TIME ZONE 'UTC')::int4 AS "year!",
               EXTRACT(MONTH FROM occurred_at AT TIME ZONE 'UTC')::int4 AS "month!"
           FROM customer_order_history_default
           WHERE isfinite(occurred_at)"#
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(MaintenanceError::ListStragglers)?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            Some(Month {
                year: row.year,
                month: u32::try_from(row.month).ok()?,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(year: i32, month: u32) -> Month {
        Month { year, month }
    }

    fn day(y: i32, mo: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, mo, d).expect("valid date")
    }

    #[test]
    fn month_arithmetic_crosses_years_and_stops_at_the_supported_range() {
        assert_eq!(m(2026, 12).plus(1), Some(m(2027, 1)));
        assert_eq!(m(2026, 11).plus(3), Some(m(2027, 2)));
        assert_eq!(m(2026, 11).plus(0), Some(m(2026, 11)));
        assert_eq!(m(2026, 1).minus(1), Some(m(2025, 12)));
        assert_eq!(m(2031, 6).minus(3), Some(m(2031, 3)));
        assert_eq!(m(2031, 6).minus(30), Some(m(2028, 12)));
        assert_eq!(m(9999, 12).plus(1), None);
        assert_eq!(m(1, 1).minus(1), None);
        assert_eq!(m(2026, 13).plus(1), None, "not a month");
        assert_eq!(m(2026, 11).plus(u32::MAX), None);
        assert_eq!(Month::containing(day(2026, 11, 30)), m(2026, 11));
        assert_eq!(m(2026, 3).to_string(), "2026-03");
    }

    #[test]
    fn december_rolls_into_next_year() {
        let ddl = m(2026, 12).ddl().expect("ddl");
        assert_eq!(ddl.name, "customer_order_history_p2026_12");
        assert!(ddl
            .attach
            .contains("FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')"));
        let (from, to) = m(2026, 12).range().expect("range");
        assert_eq!(from.to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(to.to_rfc3339(), "2027-01-01T00:00:00+00:00");
    }

    #[test]
    fn ddl_is_only_built_for_partitionable_months() {
        assert!(m(0, 5).ddl().is_none());
        assert!(m(-3, 5).ddl().is_none());
        assert!(m(10000, 1).ddl().is_none());
        assert!(m(2026, 0).ddl().is_none());
        assert!(m(2026, 13).ddl().is_none());
        let last = m(9999, 12).ddl().expect("ddl");
        assert!(last.attach.contains("TO ('10000-01-01 00:00:00+00')"));
    }

    #[test]
    fn partition_names_round_trip_and_nothing_else_parses() {
        for month in [m(1, 1), m(2026, 11), m(9999, 12)] {
            assert_eq!(
                Month::from_partition_name(&month.partition_name()),
                Some(month)
            );
        }
        for name in [
            "customer_order_history_default",
            "customer_order_history",
            "customer_order_history_p2026_1",
            "customer_order_history_p2026_011",
            "customer_order_history_p26_11",
            "customer_order_history_p2026_13",
            "customer_order_history_p2026_00",
            "customer_order_history_p0000_01",
            "customer_order_history_p+026_11",
            "customer_order_history_p2026-11",
            "customer_order_history_p2026_11_old",
            "customer_order_history_p2026_11x",
            "customer_order_history_p２０２６_11",
            "xcustomer_order_history_p2026_11",
            "order_summary_p2026_11",
            "",
        ] {
            assert_eq!(Month::from_partition_name(name), None, "{name}");
        }
    }

    #[test]
    fn the_cutoff_is_the_first_kept_month() {
        assert_eq!(retention_cutoff(day(2031, 6, 15), 0), None);
        assert_eq!(retention_cutoff(day(2031, 6, 15), 3), Some(m(2031, 3)));
        assert_eq!(retention_cutoff(day(2031, 6, 1), 1), Some(m(2031, 5)));
        assert_eq!(retention_cutoff(day(2031, 2, 28), 2), Some(m(2030, 12)));
        assert_eq!(retention_cutoff(day(2031, 6, 15), 12), Some(m(2030, 6)));
        assert_eq!(retention_cutoff(day(2031, 6, 15), u32::MAX), None);
        assert_eq!(
            m(2031, 3).first_day(),
            Some(day(2031, 3, 1)),
            "rows before this day are deleted"
        );
    }

    fn names(months: &[Month]) -> Vec<String> {
        let mut names: Vec<String> = months.iter().map(|m| m.partition_name()).collect();
        names.push("customer_order_history_default".to_owned());
        names.push("customer_order_history_p2001_01_archive".to_owned());
        names
    }

    #[test]
    fn retention_selects_only_partitions_ending_on_or_before_the_cutoff() {
        let all: Vec<Month> = (0..24).filter_map(|n| m(2030, 1).plus(n)).collect();
        let names = names(&all);
        let expired = expired_partitions(names.iter().map(String::as_str), day(2031, 6, 15), 3);
        let expected: Vec<Month> = (0..14).filter_map(|n| m(2030, 1).plus(n)).collect();
        assert_eq!(expired.first(), Some(&m(2030, 1)));
        assert_eq!(expired.last(), Some(&m(2031, 2)));
        assert_eq!(expired, expected);
    }

    #[test]
    fn retention_never_selects_the_current_month_or_later() {
        let all: Vec<Month> = (0..6).filter_map(|n| m(2031, 4).plus(n)).collect();
        let names = names(&all);
        for retention in [1, 2, 3, 100, u32::MAX] {
            let expired = expired_partitions(
                names.iter().map(String::as_str),
                day(2031, 6, 30),
                retention,
            );
            assert!(expired.iter().all(|&m| m < Month {
                year: 2031,
                month: 6
            }));
        }
        let expired = expired_partitions(names.iter().map(String::as_str), day(2031, 6, 30), 1);
        assert_eq!(expired, vec![m(2031, 4)], "May is the one month kept");
    }

    #[test]
    fn retention_zero_selects_nothing() {
        let all: Vec<Month> = (0..120).filter_map(|n| m(2000, 1).plus(n)).collect();
        let names = names(&all);
        assert!(
            expired_partitions(names.iter().map(String::as_str), day(2031, 6, 15), 0).is_empty()
        );
    }

    #[test]
    fn an_empty_report_says_so() {
        assert!(MaintenanceReport::default().is_empty());
        let report = MaintenanceReport {
            created: vec![m(2026, 11)],
            adopted: vec![AdoptedRows {
                month: m(2026, 11),
                rows: 2,
            }],
            ..MaintenanceReport::default()
        };
        assert!(!report.is_empty());
        assert!(report.to_string().contains("2026-11:2"), "{report}");
    }
}
