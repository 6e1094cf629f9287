//! What Postgres says about a measured window: statements run
//! (`pg_stat_statements`, with buffers and WAL per call), autovacuum runs
//! and checkpoints; and waiting for the replicas to replay the primary.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::sql::{self, SqlError};

/// Cumulative counters of one statement (`pg_stat_statements`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub query: String,
    pub toplevel: bool,
    pub calls: u64,
    pub total_ms: f64,
    pub rows: u64,
    pub shared_hit: u64,
    pub shared_read: u64,
    pub wal_bytes: f64,
}

/// One statement's share of a window, per call where it says so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementDelta {
    /// `userid/queryid/toplevel`: the same statement at every size.
    pub key: String,
    pub query: String,
    pub toplevel: bool,
    pub calls: u64,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub rows_per_call: f64,
    /// Shared buffers found in cache / read from the OS, per call.
    pub hit_per_call: f64,
    pub read_per_call: f64,
    pub wal_bytes_per_call: f64,
}

/// The statements of the current database, by key. Statements of other
/// users show without text to a non-superuser; they are dropped.
pub async fn statements(database_url: &str) -> Result<BTreeMap<String, Counters>, SqlError> {
    #[derive(Deserialize)]
    struct Row {
        key: String,
        #[serde(flatten)]
        counters: Counters,
    }
    let rows: Vec<Row> = sql::json(
        database_url,
        r"SELECT coalesce(json_agg(json_build_object(
                     'key', s.userid || '/' || s.queryid || '/' || s.toplevel,
                     'query', left(regexp_replace(s.query, '\s+', ' ', 'g'), 300),
                     'toplevel', s.toplevel, 'calls', s.calls, 'total_ms', s.total_exec_time,
                     'rows', s.rows, 'shared_hit', s.shared_blks_hit,
                     'shared_read', s.shared_blks_read, 'wal_bytes', s.wal_bytes)), '[]')
            FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
           WHERE d.datname = current_database() AND s.queryid IS NOT NULL
             AND s.query NOT LIKE '%pg_stat_statements%'
             AND s.query <> '<insufficient privilege>'",
    )
    .await?;
    Ok(rows.into_iter().map(|r| (r.key, r.counters)).collect())
}

/// What ran between two snapshots (a statement seen only after counts from
/// zero; one whose calls went down was reset and counts from zero too).
pub fn diff(
    before: &BTreeMap<String, Counters>,
    after: &BTreeMap<String, Counters>,
) -> BTreeMap<String, Counters> {
    after
        .iter()
        .filter_map(|(key, a)| {
            let b = before
                .get(key)
                .filter(|b| b.calls <= a.calls)
                .cloned()
                .unwrap_or_default();
            let delta = Counters {
                query: a.query.clone(),
                toplevel: a.toplevel,
                calls: a.calls - b.calls,
                total_ms: (a.total_ms - b.total_ms).max(0.0),
                rows: a.rows.saturating_sub(b.rows),
                shared_hit: a.shared_hit.saturating_sub(b.shared_hit),
                shared_read: a.shared_read.saturating_sub(b.shared_read),
                wal_bytes: (a.wal_bytes - b.wal_bytes).max(0.0),
            };
            (delta.calls > 0).then(|| (key.clone(), delta))
        })
        .collect()
}

/// Adds `more` into `sum`, statement by statement.
pub fn accumulate(sum: &mut BTreeMap<String, Counters>, more: BTreeMap<String, Counters>) {
    for (key, m) in more {
        let s = sum.entry(key).or_insert_with(|| Counters {
            query: m.query.clone(),
            toplevel: m.toplevel,
            ..Counters::default()
        });
        s.calls += m.calls;
        s.total_ms += m.total_ms;
        s.rows += m.rows;
        s.shared_hit += m.shared_hit;
        s.shared_read += m.shared_read;
        s.wal_bytes += m.wal_bytes;
    }
}

/// The `top` statements by total time, per call.
pub fn top(counters: &BTreeMap<String, Counters>, top: usize) -> Vec<StatementDelta> {
    let mut out: Vec<StatementDelta> = counters
        .iter()
        .filter(|(_, c)| c.calls > 0)
        .map(|(key, c)| {
            let per_call = |v: f64| v / c.calls as f64;
            StatementDelta {
                key: key.clone(),
                query: c.query.clone(),
                toplevel: c.toplevel,
                calls: c.calls,
                total_ms: c.total_ms,
                mean_ms: per_call(c.total_ms),
                rows_per_call: per_call(c.rows as f64),
                hit_per_call: per_call(c.shared_hit as f64),
                read_per_call: per_call(c.shared_read as f64),
                wal_bytes_per_call: per_call(c.wal_bytes),
            }
        })
        .collect();
    out.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    out.truncate(top);
    out
}

/// Background work of the primary: autovacuum and autoanalyze runs by
/// table, checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Activity {
    pub autovacuum: BTreeMap<String, u64>,
    pub autoanalyze: BTreeMap<String, u64>,
    pub checkpoints: u64,
}

/// What background work ran during one measured window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Tables autovacuum vacuumed in the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub autovacuumed: Vec<String>,
    /// Tables autovacuum analyzed in the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub autoanalyzed: Vec<String>,
    /// Checkpoints started or finished in the window (timed + requested).
    pub checkpoints: u64,
}

impl Activity {
    pub async fn read(database_url: &str) -> Result<Self, SqlError> {
        sql::json(
            database_url,
            "SELECT json_build_object(
                 'autovacuum', (SELECT coalesce(json_object_agg(relname, autovacuum_count), '{}')
                                  FROM pg_stat_user_tables),
                 'autoanalyze', (SELECT coalesce(json_object_agg(relname, autoanalyze_count), '{}')
                                   FROM pg_stat_user_tables),
                 'checkpoints', (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter))",
        )
        .await
    }

    /// What changed from `self` to `after`.
    pub fn until(&self, after: &Activity) -> Window {
        let grew = |before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>| {
            after
                .iter()
                .filter(|(table, &n)| n > before.get(*table).copied().unwrap_or(0))
                .map(|(table, _)| table.clone())
                .collect()
        };
        Window {
            autovacuumed: grew(&self.autovacuum, &after.autovacuum),
            autoanalyzed: grew(&self.autoanalyze, &after.autoanalyze),
            checkpoints: after.checkpoints.saturating_sub(self.checkpoints),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error("replica {replica} had not replayed the primary's WAL up to {lsn} after {waited:?}")]
    Timeout {
        replica: String,
        lsn: String,
        waited: Duration,
    },
}

/// Waits until every replica has replayed the primary's WAL as of now
/// (`pg_last_wal_replay_lsn() >= pg_current_wal_lsn()`), so that the
/// replicas query-service reads hold all of it. Returns the time waited.
pub async fn wait_for_replicas(
    primary_url: &str,
    replica_urls: &[String],
    timeout: Duration,
) -> Result<Duration, ReplicaError> {
    let started = Instant::now();
    let lsn = sql::run(primary_url, "SELECT pg_current_wal_lsn()").await?;
    for replica in replica_urls {
        loop {
            let caught_up = sql::run(
                replica,
                &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
            )
            .await?;
            if caught_up == "t" {
                break;
            }
            if started.elapsed() >= timeout {
                return Err(ReplicaError::Timeout {
                    replica: redact(replica),
                    lsn,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(started.elapsed())
}

/// `host:port/db` of a database URL, without user or password.
pub fn redact(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.rsplit_once('@')
        .map_or(rest, |(_, host)| host)
        .to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn counters(calls: u64, ms: f64, hit: u64, read: u64) -> Counters {
        Counters {
            query: "SELECT append_events($1)".to_owned(),
            toplevel: true,
            calls,
            total_ms: ms,
            rows: calls,
            shared_hit: hit,
            shared_read: read,
            wal_bytes: calls as f64 * 100.0,
        }
    }

    #[test]
    fn the_diff_counts_the_window_and_survives_a_reset() {
        let before = BTreeMap::from([
            ("a".to_owned(), counters(10, 5.0, 100, 1)),
            ("b".to_owned(), counters(50, 9.0, 10, 0)),
        ]);
        let after = BTreeMap::from([
            ("a".to_owned(), counters(30, 15.0, 400, 3)),
            // Reset in between: fewer calls than before.
            ("b".to_owned(), counters(5, 1.0, 1, 0)),
            ("c".to_owned(), counters(2, 0.5, 2, 0)),
        ]);
        let d = diff(&before, &after);
        assert_eq!(d["a"].calls, 20);
        assert!((d["a"].total_ms - 10.0).abs() < 1e-9);
        assert_eq!(d["a"].shared_hit, 300);
        assert_eq!(d["b"].calls, 5);
        assert_eq!(d["c"].calls, 2);
        let t = top(&d, 2);
        assert_eq!(t[0].key, "a");
        assert!((t[0].mean_ms - 0.5).abs() < 1e-9);
        assert!((t[0].hit_per_call - 15.0).abs() < 1e-9);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn windows_name_the_tables_autovacuum_touched() {
        let before = Activity {
            autovacuum: BTreeMap::from([("events".to_owned(), 1), ("snapshots".to_owned(), 0)]),
            autoanalyze: BTreeMap::from([("events".to_owned(), 2)]),
            checkpoints: 7,
        };
        let after = Activity {
            autovacuum: BTreeMap::from([("events".to_owned(), 2), ("snapshots".to_owned(), 0)]),
            autoanalyze: BTreeMap::from([("events".to_owned(), 2)]),
            checkpoints: 8,
        };
        let w = before.until(&after);
        assert_eq!(w.autovacuumed, vec!["events".to_owned()]);
        assert!(w.autoanalyzed.is_empty());
        assert_eq!(w.checkpoints, 1);
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("postgres://app:secret@127.0.0.1:5433/app"),
            "127.0.0.1:5433/app"
        );
        assert_eq!(redact("127.0.0.1:5433"), "127.0.0.1:5433");
    }
}
