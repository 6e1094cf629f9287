//! Postgres: `pg_stat_statements` and `pg_stat_user_tables` snapshots
//! (counters, diffed over the window), client connections and, on replicas,
//! their replay position against the primary (gauges, sampled).
//!
//! Runtime queries on purpose: the doctor reads statistics views, not the
//! application schema, and must work as the application's role (no
//! superuser), on a primary and on hot standbys alike.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::observations::{StatementActivity, TableActivity};

/// A failed statistics query.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("invalid database URL: {0}")]
    Url(#[source] sqlx::Error),
    #[error("connecting: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{what}: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

/// One open connection to one server.
pub struct Server {
    connection: PgConnection,
    timeout: Duration,
}

/// `host:port/database` of a URL, without credentials.
pub fn address(url: &str) -> String {
    match url.parse::<PgConnectOptions>() {
        Ok(options) => format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        ),
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

/// Cumulative counters of one server at one moment.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// By (user, query id, top level).
    pub statements: HashMap<String, StatementActivity>,
    /// By relation: (root table, the relation itself, counters).
    pub tables: HashMap<String, (String, TableActivity)>,
    /// Why `pg_stat_statements` could not be read, if so.
    pub statements_error: Option<String>,
}

/// A replica's replay state, one sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayState {
    pub lag_secs: f64,
    pub unreplayed_bytes: i64,
    pub unreceived_bytes: i64,
}

impl Server {
    /// Connects with `timeout` for the connection and each statement.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, PostgresError> {
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .map_err(PostgresError::Url)?
            .application_name("doctor")
            .options([("statement_timeout", format!("{}", timeout.as_millis()))])
            .disable_statement_logging();
        let connection = tokio::time::timeout(timeout, PgConnection::connect_with(&options))
            .await
            .map_err(|_| PostgresError::Timeout(timeout))?
            .map_err(PostgresError::Connect)?;
        Ok(Self {
            connection,
            timeout,
        })
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        let _ = tokio::time::timeout(self.timeout, self.connection.close()).await;
    }

    /// The statement and table counters as of now.
    pub async fn counters(&mut self) -> Result<Counters, PostgresError> {
        let mut counters = Counters::default();
        let timeout = self.timeout;
        let statements = tokio::time::timeout(
            timeout,
            sqlx::query_as::<_, (String, String, i64, f64, i64, i64)>(
                "/* doctor */ SELECT s.userid::text || '/' || s.queryid::text || '/' || s.toplevel::text,
                        s.query, s.calls, s.total_exec_time, s.rows,
                        s.shared_blks_hit + s.shared_blks_read
                   FROM pg_stat_statements s
                  WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND s.queryid IS NOT NULL",
            )
            .fetch_all(&mut self.connection),
        )
        .await;
        match statements {
            Ok(Ok(rows)) => {
                for (key, query, calls, total_ms, rows, blocks) in rows {
                    counters.statements.insert(
                        key,
                        StatementActivity {
                            query,
                            calls,
                            total_ms,
                            rows,
                            blocks,
                        },
                    );
                }
            }
            // Missing extension or library: report it, read the rest.
            Ok(Err(error)) => counters.statements_error = Some(error.to_string()),
            Err(_) => return Err(PostgresError::Timeout(timeout)),
        }
        let tables = sqlx::query_as::<_, (String, String, i64, i64, i64)>(
            "/* doctor */ SELECT coalesce(pg_partition_root(s.relid), s.relid)::regclass::text,
                    s.relid::regclass::text,
                    coalesce(s.seq_scan, 0), coalesce(s.seq_tup_read, 0), coalesce(s.idx_scan, 0)
               FROM pg_stat_user_tables s",
        )
        .fetch_all(&mut self.connection);
        let tables = within(self.timeout, "reading pg_stat_user_tables", tables).await?;
        for (root, relation, seq_scans, seq_rows, index_scans) in tables {
            counters.tables.insert(
                relation.clone(),
                (
                    root.clone(),
                    TableActivity {
                        table: root,
                        partitions: Vec::new(),
                        seq_scans,
                        seq_rows,
                        index_scans,
                    },
                ),
            );
        }
        Ok(counters)
    }

    /// Client connections now, and `max_connections`.
    pub async fn connections(&mut self) -> Result<(i64, i64), PostgresError> {
        let query = sqlx::query_as::<_, (i64, i64)>(
            "/* doctor */ SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
                    current_setting('max_connections')::bigint",
        )
        .fetch_one(&mut self.connection);
        within(self.timeout, "counting connections", query).await
    }

    /// The primary's current WAL position (as text, `pg_lsn` syntax).
    pub async fn wal_position(&mut self) -> Result<String, PostgresError> {
        let query =
            sqlx::query_scalar::<_, String>("/* doctor */ SELECT pg_current_wal_lsn()::text")
                .fetch_one(&mut self.connection);
        within(self.timeout, "reading the primary's WAL position", query).await
    }

    /// This replica's replay state against `primary_lsn`, read just before.
    pub async fn replay_state(&mut self, primary_lsn: &str) -> Result<ReplayState, PostgresError> {
        let query = sqlx::query_as::<_, (f64, f64, f64, f64)>(
            "/* doctor */ SELECT coalesce(($1::pg_lsn - pg_last_wal_replay_lsn())::float8, 0),
                    coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, 0),
                    coalesce((pg_last_wal_receive_lsn() - pg_last_wal_replay_lsn())::float8, 0),
                    coalesce(($1::pg_lsn - pg_last_wal_receive_lsn())::float8, 0)",
        )
        .bind(primary_lsn)
        .fetch_one(&mut self.connection);
        let (behind, age, unreplayed, unreceived) =
            within(self.timeout, "reading the replay position", query).await?;
        Ok(ReplayState {
            // Everything the primary had written is replayed: no lag, however
            // long ago its last commit was.
            lag_secs: if behind > 0.0 { age.max(0.0) } else { 0.0 },
            unreplayed_bytes: unreplayed.max(0.0) as i64,
            unreceived_bytes: unreceived.max(0.0) as i64,
        })
    }

    /// `recovery_min_apply_delay` in milliseconds.
    pub async fn apply_delay_ms(&mut self) -> Result<i64, PostgresError> {
        let query = sqlx::query_scalar::<_, String>(
            "/* doctor */ SELECT setting FROM pg_settings WHERE name = 'recovery_min_apply_delay'",
        )
        .fetch_one(&mut self.connection);
        let setting = within(self.timeout, "reading recovery_min_apply_delay", query).await?;
        Ok(setting.trim().parse().unwrap_or(0))
    }

    /// The consumer group's next offsets as the projector stores them
    /// (`projector_offsets`, the truth; Kafka's committed offsets are only a
    /// hint): `(topic, partition) → next offset`. Empty if the table is not
    /// there.
    pub async fn projector_offsets(
        &mut self,
        group: &str,
    ) -> Result<HashMap<(String, i32), i64>, PostgresError> {
        let exists = sqlx::query_scalar::<_, bool>(
            "/* doctor */ SELECT to_regclass('projector_offsets') IS NOT NULL",
        )
        .fetch_one(&mut self.connection);
        if !within(self.timeout, "looking for projector_offsets", exists).await? {
            return Ok(HashMap::new());
        }
        let query = sqlx::query_as::<_, (String, i32, i64)>(
            "/* doctor */ SELECT topic, partition, next_offset FROM projector_offsets WHERE consumer_group = $1",
        )
        .bind(group)
        .fetch_all(&mut self.connection);
        let rows = within(self.timeout, "reading projector_offsets", query).await?;
        Ok(rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
    }
}

/// Runs `query` within `timeout`.
async fn within<T>(
    timeout: Duration,
    what: &'static str,
    query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, PostgresError> {
    tokio::time::timeout(timeout, query)
        .await
        .map_err(|_| PostgresError::Timeout(timeout))?
        .map_err(|source| PostgresError::Query { what, source })
}

/// Statement deltas between two snapshots, most total time first. A
/// statement first seen in `end` counts whole (it appeared in the window).
pub fn statement_deltas(start: &Counters, end: &Counters) -> Vec<StatementActivity> {
    let mut deltas: Vec<StatementActivity> = end
        .statements
        .iter()
        .filter_map(|(key, e)| {
            let s = start.statements.get(key);
            let delta = StatementActivity {
                query: e.query.clone(),
                calls: e.calls - s.map_or(0, |s| s.calls),
                total_ms: e.total_ms - s.map_or(0.0, |s| s.total_ms),
                rows: e.rows - s.map_or(0, |s| s.rows),
                blocks: e.blocks - s.map_or(0, |s| s.blocks),
            };
            // A reset or an evicted entry shows as a negative delta: skip it.
            (delta.calls > 0 && delta.total_ms >= 0.0).then_some(delta)
        })
        .filter(|s| !is_own_statement(&s.query))
        .collect();
    deltas.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    deltas
}

/// Marks every query the doctor sends (`pg_stat_statements` keeps the
/// comment in the text), so its own reads are not counted as load.
pub const OWN_QUERY_TAG: &str = "/* doctor */";

/// The doctor's own queries, and reads of the statistics views by anyone
/// (`pg_stat_statements` keeps the text of a statement's first run: one
/// without the tag, e.g. from an older doctor, would otherwise count).
fn is_own_statement(query: &str) -> bool {
    query.contains(OWN_QUERY_TAG)
        || query.contains("pg_stat_statements")
        || query.contains("pg_stat_user_tables")
}

/// Table deltas between two snapshots, folded into partition roots; tables
/// without scans in the window are left out.
pub fn table_deltas(start: &Counters, end: &Counters) -> Vec<TableActivity> {
    let mut roots: Vec<TableActivity> = Vec::new();
    let mut relations: Vec<&String> = end.tables.keys().collect();
    relations.sort();
    for relation in relations {
        let Some((root, e)) = end.tables.get(relation) else {
            continue;
        };
        let s = start.tables.get(relation).map(|(_, s)| s);
        let seq_scans = (e.seq_scans - s.map_or(0, |s| s.seq_scans)).max(0);
        let seq_rows = (e.seq_rows - s.map_or(0, |s| s.seq_rows)).max(0);
        let index_scans = (e.index_scans - s.map_or(0, |s| s.index_scans)).max(0);
        if seq_scans == 0 && index_scans == 0 {
            continue;
        }
        let index = match roots.iter().position(|t| &t.table == root) {
            Some(i) => i,
            None => {
                roots.push(TableActivity {
                    table: root.clone(),
                    partitions: Vec::new(),
                    seq_scans: 0,
                    seq_rows: 0,
                    index_scans: 0,
                });
                roots.len() - 1
            }
        };
        let table = &mut roots[index];
        table.seq_scans += seq_scans;
        table.seq_rows += seq_rows;
        table.index_scans += index_scans;
        if relation != root && seq_scans > 0 {
            table.partitions.push(relation.clone());
        }
    }
    roots.sort_by_key(|t| std::cmp::Reverse(t.seq_rows));
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(
        root: &str,
        seq_scans: i64,
        seq_rows: i64,
        index_scans: i64,
    ) -> (String, TableActivity) {
        (
            root.to_owned(),
            TableActivity {
                table: root.to_owned(),
                partitions: Vec::new(),
                seq_scans,
                seq_rows,
                index_scans,
            },
        )
    }

    #[test]
    fn partitions_fold_into_their_root_and_only_the_window_counts() {
        let mut start = Counters::default();
        start
            .tables
            .insert("h_p1".to_owned(), table("h", 100, 1_000_000, 5));
        start.tables.insert("h_p2".to_owned(), table("h", 0, 0, 0));
        start
            .tables
            .insert("idle".to_owned(), table("idle", 9, 9, 9));
        let mut end = start.clone();
        end.tables
            .insert("h_p1".to_owned(), table("h", 110, 1_500_000, 5));
        end.tables.insert("h_p2".to_owned(), table("h", 10, 200, 3));
        let deltas = table_deltas(&start, &end);
        assert_eq!(deltas.len(), 1);
        assert_eq!(deltas[0].table, "h");
        assert_eq!(deltas[0].seq_scans, 20);
        assert_eq!(deltas[0].seq_rows, 500_200);
        assert_eq!(deltas[0].index_scans, 3);
        assert_eq!(deltas[0].partitions, vec!["h_p1", "h_p2"]);
    }

    #[test]
    fn statement_deltas_skip_history_and_the_doctors_own_queries() {
        let statement = |query: &str, calls, total_ms| StatementActivity {
            query: query.to_owned(),
            calls,
            total_ms,
            rows: calls,
            blocks: 0,
        };
        let mut start = Counters::default();
        start
            .statements
            .insert("a".to_owned(), statement("SELECT a", 1000, 90_000.0));
        let mut end = start.clone();
        end.statements
            .insert("a".to_owned(), statement("SELECT a", 1010, 90_010.0));
        end.statements
            .insert("b".to_owned(), statement("SELECT b", 5, 500.0));
        end.statements.insert(
            "c".to_owned(),
            statement("/* doctor */ SELECT * FROM pg_stat_user_tables", 2, 9.0),
        );
        let deltas = statement_deltas(&start, &end);
        assert_eq!(
            deltas,
            vec![
                statement("SELECT b", 5, 500.0),
                statement("SELECT a", 10, 10.0)
            ]
        );
    }
}
