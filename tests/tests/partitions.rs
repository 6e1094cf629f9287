//! Monthly partitions of `customer_order_history` against the real primary
//! and replica: rows of any month are accepted (DEFAULT catches the months
//! without a partition), maintenance moves them into their month's partition,
//! retention removes only what is older than its cutoff, and the
//! customer-history query scans only the months it asks for.
//!
//! The tests call `maintain_once` with dates far from today, as if they ran
//! then. Retention drops every partition older than its cutoff, whoever made
//! it, so the tests take turns ([`exclusive`]) and assert only about the
//! months and customers they made up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use e2e_tests::{eventually, stack};
use projector::partitions::{
    maintain_once, AdoptedRows, MaintenanceError, MaintenanceReport, MaintenanceSettings, Month,
};
use service_runtime::postgres::DbPool;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

const DEFAULT_PARTITION: &str = "customer_order_history_default";
const CONSISTENCY: Duration = Duration::from_secs(30);

/// Held by each test for its whole run; true once the stack's own projector
/// has finished its start-up maintenance run.
static TURN: Mutex<bool> = Mutex::const_new(false);

/// Waits for this test's turn. The first caller also waits for the stack's
/// projector to finish the maintenance run it makes at start (the current
/// month and three ahead, as the harness configures it), so that run cannot
/// interleave with a test's own runs.
async fn exclusive() -> MutexGuard<'static, bool> {
    let mut settled = TURN.lock().await;
    if !*settled {
        let pool = primary().await;
        let current = Month::of(Utc::now());
        let wanted: Vec<String> = (0..=3)
            .map(|n| current.plus(n).unwrap().partition_name())
            .collect();
        eventually(
            "the projector's start-up partition maintenance",
            CONSISTENCY,
            || {
                let (pool, wanted) = (&pool, &wanted);
                async move {
                    let attached = attached(pool).await;
                    wanted.iter().all(|w| attached.contains(w)).then_some(())
                }
            },
        )
        .await;
        *settled = true;
    }
    settled
}

async fn primary() -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(&stack().primary_url)
        .await
        .unwrap()
}

/// [`maintain_once`] over the direct pool the tests read with.
async fn maintain(
    pool: &PgPool,
    settings: &MaintenanceSettings,
    today: NaiveDate,
) -> Result<MaintenanceReport, MaintenanceError> {
    maintain_once(&DbPool::direct(pool.clone()), settings, today).await
}

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn month(year: i32, month: u32) -> Month {
    Month { year, month }
}

fn settings(ahead_months: u32, retention_months: u32) -> MaintenanceSettings {
    MaintenanceSettings {
        ahead_months,
        retention_months,
        interval: Duration::from_secs(3600),
    }
}

/// Months `from..=to`.
fn months(from: Month, to: Month) -> Vec<Month> {
    (0..)
        .map_while(|n| from.plus(n).filter(|m| *m <= to))
        .collect()
}

/// Names of the partitions attached to `customer_order_history`.
async fn attached(pool: &PgPool) -> BTreeSet<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'customer_order_history'::regclass",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

async fn table_exists(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Inserts history rows of `customer` at the given instants the way the
/// projector does (`ON CONFLICT DO NOTHING`, each row its own order); returns
/// the table each row went to.
async fn insert(
    db: impl sqlx::PgExecutor<'_>,
    customer: Uuid,
    instants: &[&str],
) -> Vec<(String, String)> {
    let instants: Vec<String> = instants.iter().map(|s| (*s).to_owned()).collect();
    let rows = sqlx::query(
        "INSERT INTO customer_order_history \
             (customer_id, occurred_at, order_id, version, kind, amount_minor, currency) \
         SELECT $1, at::timestamptz, gen_random_uuid(), 1, 'placed', 100, 'EUR' \
         FROM unnest($2::text[]) AS at \
         ON CONFLICT DO NOTHING \
         RETURNING to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
                   tableoid::regclass::text",
    )
    .bind(customer)
    .bind(&instants)
    .fetch_all(db)
    .await
    .unwrap();
    let mut placed: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
        .collect();
    placed.sort();
    placed
}

/// Every row of `customer`: (UTC month as `YYYY_MM`, UTC instant, table).
async fn placement(pool: &PgPool, customer: Uuid) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY_MM'), \
                to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
                tableoid::regclass::text \
         FROM customer_order_history WHERE customer_id = $1 ORDER BY occurred_at",
    )
    .bind(customer)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Asserts that every row of `customer` sits in its UTC month's partition.
fn assert_in_own_month(rows: &[(String, String, String)]) {
    for (month, at, table) in rows {
        assert_eq!(
            table,
            &format!("customer_order_history_p{month}"),
            "row at {at}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_any_month_are_accepted_and_maintenance_moves_them_into_their_partitions() {
    let _turn = exclusive().await;
    let pool = primary().await;
    let customer = Uuid::new_v4();

    // Partitions for January to March 2012, as a run in mid-January would make.
    let report = maintain(&pool, &settings(2, 0), day(2012, 1, 15))
        .await
        .unwrap();
    let q1 = months(month(2012, 1), month(2012, 3));
    assert!(q1.iter().all(|m| report.created.contains(m)), "{report:?}");
    assert!(report.detached.is_empty() && report.dropped.is_empty());

    // Rows across eight months, five of them without a partition, including
    // both edges of a month. No insert fails; months without a partition
    // land in DEFAULT. The maintenance lock is held meanwhile so that no run
    // can adopt the stragglers before they are looked at.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('customer_order_history partitions'))")
        .execute(&mut *tx)
        .await
        .unwrap();
    let placed = insert(
        &mut *tx,
        customer,
        &[
            "2011-11-11T11:11:11Z",
            "2012-01-01T00:00:00Z",
            "2012-01-31T23:59:59.999999Z",
            "2012-02-29T12:00:00Z",
            "2012-03-01T00:00:00Z",
            "2012-04-30T23:59:59.999999Z",
            "2012-05-01T00:00:00Z",
            "2012-05-17T08:00:00Z",
            "2012-12-31T23:59:59Z",
            // 2013-01-01 in UTC, whatever the offset says
            "2012-12-31T23:30:00-01:00",
        ],
    )
    .await;
    tx.commit().await.unwrap();
    let expected: Vec<(String, String)> = [
        ("2011-11-11 11:11:11.000000", DEFAULT_PARTITION),
        (
            "2012-01-01 00:00:00.000000",
            "customer_order_history_p2012_01",
        ),
        (
            "2012-01-31 23:59:59.999999",
            "customer_order_history_p2012_01",
        ),
        (
            "2012-02-29 12:00:00.000000",
            "customer_order_history_p2012_02",
        ),
        (
            "2012-03-01 00:00:00.000000",
            "customer_order_history_p2012_03",
        ),
        ("2012-04-30 23:59:59.999999", DEFAULT_PARTITION),
        ("2012-05-01 00:00:00.000000", DEFAULT_PARTITION),
        ("2012-05-17 08:00:00.000000", DEFAULT_PARTITION),
        ("2012-12-31 23:59:59.000000", DEFAULT_PARTITION),
        ("2013-01-01 00:30:00.000000", DEFAULT_PARTITION),
    ]
    .iter()
    .map(|(a, t)| ((*a).to_owned(), (*t).to_owned()))
    .collect();
    assert_eq!(placed, expected);
    let before = placement(&pool, customer).await;
    assert_eq!(before.len(), 10);

    // Maintenance gives every straggler month its partition and moves the
    // rows in; the months that already had one are left alone.
    let report = maintain(&pool, &settings(2, 0), day(2012, 1, 15))
        .await
        .unwrap();
    for (m, rows) in [
        (month(2011, 11), 1),
        (month(2012, 4), 1),
        (month(2012, 5), 2),
        (month(2012, 12), 1),
        (month(2013, 1), 1),
    ] {
        assert!(report.created.contains(&m), "{m}: {report:?}");
        assert!(
            report.adopted.contains(&AdoptedRows { month: m, rows }),
            "{m}: {report:?}"
        );
    }
    assert!(!report.created.iter().any(|m| q1.contains(m)), "{report:?}");
    assert!(report.detached.is_empty() && report.dropped.is_empty());
    assert_eq!(report.stragglers_deleted, 0);

    let after = placement(&pool, customer).await;
    assert_eq!(after.len(), before.len(), "no row lost or duplicated");
    assert_in_own_month(&after);
    let instants = |rows: &[(String, String, String)]| -> Vec<String> {
        rows.iter().map(|(_, at, _)| at.clone()).collect()
    };
    assert_eq!(instants(&after), instants(&before));

    // A redelivered row now meets its original in the new partition and
    // changes nothing; a new row of that month goes straight there; a month
    // still without a partition keeps using DEFAULT.
    let again = sqlx::query(
        "INSERT INTO customer_order_history \
             (customer_id, occurred_at, order_id, version, kind, amount_minor, currency) \
         SELECT customer_id, occurred_at, order_id, version, kind, amount_minor, currency \
         FROM customer_order_history WHERE customer_id = $1 \
         ON CONFLICT DO NOTHING",
    )
    .bind(customer)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(again.rows_affected(), 0);
    let placed = insert(
        &pool,
        customer,
        &["2012-05-20T00:00:00Z", "2012-07-04T00:00:00Z"],
    )
    .await;
    assert_eq!(placed[0].1, "customer_order_history_p2012_05");
    assert_eq!(placed[1].1, DEFAULT_PARTITION);

    // Idempotent: a second run finds nothing to do for these months but the
    // new straggler.
    let report = maintain(&pool, &settings(2, 0), day(2012, 1, 15))
        .await
        .unwrap();
    assert!(
        report
            .created
            .iter()
            .all(|m| !(month(2011, 1)..=month(2013, 12)).contains(m) || *m == month(2012, 7)),
        "{report:?}"
    );
    assert!(report.adopted.contains(&AdoptedRows {
        month: month(2012, 7),
        rows: 1
    }));
    let last = placement(&pool, customer).await;
    assert_eq!(last.len(), 12);
    assert_in_own_month(&last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_detaches_and_drops_only_what_is_older_than_its_cutoff() {
    let _turn = exclusive().await;
    let pool = primary().await;
    let customer = Uuid::new_v4();

    // A year of partitions, October 2030 to September 2031, one row in each.
    let year = months(month(2030, 10), month(2031, 9));
    maintain(&pool, &settings(11, 0), day(2030, 10, 15))
        .await
        .unwrap();
    let names = attached(&pool).await;
    assert!(year.iter().all(|m| names.contains(&m.partition_name())));
    let instants: Vec<String> = year.iter().map(|m| format!("{m}-15T12:00:00Z")).collect();
    let instants: Vec<&str> = instants.iter().map(String::as_str).collect();
    insert(&pool, customer, &instants).await;

    // Retention 0 keeps everything, however old.
    let report = maintain(&pool, &settings(3, 0), day(2031, 6, 15))
        .await
        .unwrap();
    assert!(report.detached.is_empty(), "{report:?}");
    assert!(report.dropped.is_empty(), "{report:?}");
    assert_eq!(report.stragglers_deleted, 0);
    let names = attached(&pool).await;
    assert!(year.iter().all(|m| names.contains(&m.partition_name())));
    assert_eq!(placement(&pool, customer).await.len(), 12);

    // Stragglers in DEFAULT on both sides of the cutoff (2031-03-01 for
    // 2031-06-15 and 3 months), plus what an earlier run could have left:
    // a detached partition it did not get to drop, a detached one that is
    // not expired, and a table whose name only resembles a partition's.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('customer_order_history partitions'))")
        .execute(&mut *tx)
        .await
        .unwrap();
    let stragglers = insert(
        &mut *tx,
        customer,
        &[
            "2029-05-20T00:00:00Z",
            "2030-09-30T23:59:59.999999Z",
            "2031-11-11T00:00:00Z",
        ],
    )
    .await;
    assert!(stragglers.iter().all(|(_, t)| t == DEFAULT_PARTITION));
    for table in [
        "customer_order_history_p2030_05",
        "customer_order_history_p2032_02",
        "customer_order_history_p2030_04_archive",
    ] {
        sqlx::query(&format!(
            "CREATE TABLE {table} (LIKE customer_order_history INCLUDING DEFAULTS)"
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();

    let report = maintain(&pool, &settings(3, 3), day(2031, 6, 15))
        .await
        .unwrap();
    let expired = months(month(2030, 10), month(2031, 2));
    let kept = months(month(2031, 3), month(2031, 9));
    for m in &expired {
        assert!(report.detached.contains(m), "{m}: {report:?}");
        assert!(report.dropped.contains(m), "{m}: {report:?}");
        assert!(!table_exists(&pool, &m.partition_name()).await, "{m}");
    }
    assert!(report.dropped.contains(&month(2030, 5)), "{report:?}");
    assert!(!table_exists(&pool, "customer_order_history_p2030_05").await);
    assert!(
        report
            .detached
            .iter()
            .chain(&report.dropped)
            .all(|m| *m < month(2031, 3)),
        "{report:?}"
    );
    assert!(report.stragglers_deleted >= 2, "{report:?}");
    assert!(report.created.contains(&month(2031, 11)), "{report:?}");
    assert!(report.adopted.contains(&AdoptedRows {
        month: month(2031, 11),
        rows: 1
    }));
    let names = attached(&pool).await;
    for m in &kept {
        assert!(names.contains(&m.partition_name()), "{m} kept");
    }
    assert!(
        names.contains(DEFAULT_PARTITION),
        "DEFAULT is never dropped"
    );
    assert!(table_exists(&pool, "customer_order_history_p2032_02").await);
    assert!(table_exists(&pool, "customer_order_history_p2030_04_archive").await);

    // Rows of kept months (and the newer straggler, now in its partition)
    // remain; everything before the cutoff is gone.
    let rows = placement(&pool, customer).await;
    assert_in_own_month(&rows);
    let remaining: Vec<&str> = rows.iter().map(|(m, _, _)| m.as_str()).collect();
    assert_eq!(
        remaining,
        ["2031_03", "2031_04", "2031_05", "2031_06", "2031_07", "2031_08", "2031_09", "2031_11"]
    );

    // Nothing is left to do, and however long the retention, the current
    // month and later stay.
    let report = maintain(&pool, &settings(3, 3), day(2031, 6, 15))
        .await
        .unwrap();
    assert!(report.is_empty(), "{report:?}");
    let report = maintain(&pool, &settings(0, 1), day(2031, 6, 30))
        .await
        .unwrap();
    let names = attached(&pool).await;
    for m in months(month(2031, 5), month(2031, 9)) {
        assert!(names.contains(&m.partition_name()), "{m} kept: {report:?}");
    }

    for table in [
        "customer_order_history_p2032_02",
        "customer_order_history_p2030_04_archive",
    ] {
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&pool)
            .await
            .unwrap();
    }
}

/// The customer-history query of query-service, bounded by literals.
fn history_query(from: &str, to: &str) -> String {
    format!(
        "SELECT occurred_at, order_id, version, kind, amount_minor, currency \
         FROM customer_order_history \
         WHERE customer_id = '00000000-0000-0000-0000-000000000001' \
           AND occurred_at >= '{from}' AND occurred_at < '{to}' \
         ORDER BY occurred_at, order_id, version LIMIT 100"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_query_prunes_to_the_requested_months() {
    let _turn = exclusive().await;
    let primary = primary().await;
    // January to March 2014 get partitions; April 2014 has none, so its
    // rows would be in DEFAULT.
    maintain(&primary, &settings(2, 0), day(2014, 1, 15))
        .await
        .unwrap();
    let replica = PgPoolOptions::new()
        .max_connections(2)
        .connect(&stack().replica_url)
        .await
        .unwrap();
    let explain = |from: &'static str, to: &'static str| {
        let replica = replica.clone();
        async move {
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("EXPLAIN {}", history_query(from, to)))
                    .fetch_all(&replica)
                    .await
                    .unwrap();
            rows.join("\n")
        }
    };
    eventually("partitions replicated", CONSISTENCY, || async {
        explain("2014-03-05T00:00:00Z", "2014-03-20T00:00:00Z")
            .await
            .contains("p2014_03")
            .then_some(())
    })
    .await;
    let current = format!("p{}", Utc::now().format("%Y_%m"));

    let plan = explain("2014-01-05T00:00:00Z", "2014-01-20T00:00:00Z").await;
    assert!(plan.contains("customer_order_history_p2014_01"), "{plan}");
    for other in ["p2014_02", "p2014_03", DEFAULT_PARTITION, current.as_str()] {
        assert!(!plan.contains(other), "{other} scanned:\n{plan}");
    }

    // Months that all have a partition: DEFAULT is pruned too.
    let plan = explain("2014-01-05T00:00:00Z", "2014-03-20T00:00:00Z").await;
    for scanned in ["p2014_01", "p2014_02", "p2014_03"] {
        assert!(plan.contains(scanned), "{scanned} missing:\n{plan}");
    }
    assert!(
        !plan.contains(DEFAULT_PARTITION),
        "DEFAULT scanned:\n{plan}"
    );

    // A month without a partition is looked for in DEFAULT.
    let plan = explain("2014-03-05T00:00:00Z", "2014-04-20T00:00:00Z").await;
    assert!(plan.contains("p2014_03"), "{plan}");
    assert!(plan.contains(DEFAULT_PARTITION), "{plan}");
    assert!(!plan.contains("p2014_01"), "{plan}");

    // query-service binds the range as parameters; a pooled prepared
    // statement may end up with a generic plan, which prunes at executor
    // start instead of at planning.
    let mut conn = replica.acquire().await.unwrap();
    sqlx::raw_sql(
        "SET plan_cache_mode = force_generic_plan; \
         PREPARE history(uuid, timestamptz, timestamptz, bigint) AS \
         SELECT occurred_at, order_id, version, kind, amount_minor, currency \
         FROM customer_order_history \
         WHERE customer_id = $1 AND occurred_at >= $2 AND occurred_at < $3 \
         ORDER BY occurred_at, order_id, version LIMIT $4",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let rows = sqlx::raw_sql(
        "EXPLAIN EXECUTE history('00000000-0000-0000-0000-000000000001', \
         '2014-01-05T00:00:00Z', '2014-01-20T00:00:00Z', 100)",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
    let plan = plan.join("\n");
    assert!(plan.contains("Subplans Removed"), "{plan}");
    assert!(plan.contains("customer_order_history_p2014_01"), "{plan}");
    for other in ["p2014_02", "p2014_03", DEFAULT_PARTITION] {
        assert!(!plan.contains(other), "{other} scanned:\n{plan}");
    }
    sqlx::raw_sql("DEALLOCATE history; RESET plan_cache_mode")
        .execute(&mut *conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_create_each_partition_once_and_all_succeed() {
    let _turn = exclusive().await;
    let pool = primary().await;
    let customer = Uuid::new_v4();
    // Stragglers in three months beyond the ahead window of the runs below.
    insert(
        &pool,
        customer,
        &[
            "2016-09-01T00:00:00Z",
            "2016-10-10T00:00:00Z",
            "2016-10-11T00:00:00Z",
            "2016-12-31T23:59:59Z",
        ],
    )
    .await;

    // As four projector instances starting at once would.
    let settings = settings(3, 0);
    let runs =
        futures::future::join_all((0..4).map(|_| maintain(&pool, &settings, day(2016, 1, 15))))
            .await;
    let mut created = Vec::new();
    let mut adopted = 0;
    for run in runs {
        let report = run.unwrap();
        created.extend(report.created);
        adopted += report
            .adopted
            .iter()
            .filter(|a| a.month.year == 2016)
            .map(|a| a.rows)
            .sum::<u64>();
    }
    created.retain(|m| m.year == 2016);
    created.sort();
    let mut expected = months(month(2016, 1), month(2016, 4));
    expected.extend([month(2016, 9), month(2016, 10), month(2016, 12)]);
    assert_eq!(
        created, expected,
        "each partition created by exactly one run"
    );
    assert_eq!(adopted, 4);
    let rows = placement(&pool, customer).await;
    assert_eq!(rows.len(), 4);
    assert_in_own_month(&rows);
}
