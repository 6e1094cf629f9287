//! What the doctor saw during one window, already reduced to window-level
//! facts: deltas of counters between the first and the last snapshot, and
//! the series of gauge samples taken in between. [`crate::diagnosis`] is a
//! pure function of this, so it is tested with synthetic values, and `--json`
//! prints it next to the findings as the raw evidence.

use serde::{Deserialize, Serialize};

/// Everything observed in one window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Observations {
    /// Seconds between the first and the last counter snapshot.
    pub window_secs: f64,
    /// Gauge sampling rounds taken in the window.
    pub rounds: usize,
    pub databases: Vec<DatabaseObservation>,
    pub services: Vec<ServiceObservation>,
    /// The projector's consumer group on the broker, if brokers were given.
    pub consumer: Option<ConsumerObservation>,
    pub redis: Option<RedisObservation>,
    /// Sources that were configured but did not answer.
    pub unreachable: Vec<UnreachableSource>,
    /// Things worth knowing that are not findings (a statistics view
    /// missing, a source not configured).
    pub notes: Vec<String>,
}

/// Primary or streaming replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseRole {
    Primary,
    Replica,
}

/// One Postgres server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseObservation {
    /// `primary`, `replica-1`, `replica-2`, ...: the names query-service
    /// gives them (replicas numbered in `REPLICA_DATABASE_URLS` order).
    pub name: String,
    /// `host:port/database`, no credentials.
    pub address: String,
    pub role: DatabaseRole,
    /// `pg_stat_statements` deltas, most total time first.
    pub statements: Vec<StatementActivity>,
    /// `pg_stat_user_tables` deltas per table (partitions folded into their
    /// partitioned root), tables with any scan in the window only.
    pub tables: Vec<TableActivity>,
    /// Most client connections seen in one sample.
    pub peak_connections: Option<i64>,
    pub max_connections: Option<i64>,
    /// Replicas only.
    pub replication: Option<ReplicationObservation>,
}

/// One normalised statement's work in the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementActivity {
    pub query: String,
    pub calls: i64,
    pub total_ms: f64,
    pub rows: i64,
    /// Shared blocks hit plus read.
    pub blocks: i64,
}

impl StatementActivity {
    /// Mean execution time of one call.
    pub fn mean_ms(&self) -> f64 {
        if self.calls > 0 {
            self.total_ms / self.calls as f64
        } else {
            0.0
        }
    }
}

/// Scans of one table in the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableActivity {
    /// The table as queries name it: a partitioned table's root.
    pub table: String,
    /// Partitions that were scanned sequentially (empty for a plain table).
    pub partitions: Vec<String>,
    pub seq_scans: i64,
    /// Rows read by those sequential scans.
    pub seq_rows: i64,
    pub index_scans: i64,
}

/// A replica's position against the primary, sampled every round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicationObservation {
    /// Seconds of primary commits not yet visible on the replica (0 when it
    /// had replayed everything the primary had written just before).
    pub lag_secs: Vec<f64>,
    /// WAL bytes received but not yet replayed: replay held back or slow.
    pub unreplayed_bytes: Vec<i64>,
    /// WAL bytes the primary had written that the replica had not received.
    pub unreceived_bytes: Vec<i64>,
    /// The replica's `recovery_min_apply_delay`, milliseconds.
    pub apply_delay_ms: Option<i64>,
}

/// One service's `/metrics`, sampled every round.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceObservation {
    /// `command-service`, `query-service` or `projector`.
    pub service: String,
    pub url: String,
    pub scrapes: usize,
    pub failed_scrapes: usize,
    pub pools: Vec<PoolObservation>,
    /// Requests per route in the window (the doctor's own `/metrics` and
    /// health probes left out).
    pub routes: Vec<RouteActivity>,
    pub breakers: Vec<BreakerObservation>,
    /// query-service: reads per endpoint and source (`local`, `redis`,
    /// `replica-N`, `primary`).
    pub reads: Vec<ReadSourceActivity>,
    /// query-service: its own view of each database's lag.
    pub database_lag: Vec<DatabaseLagView>,
    /// command-service: `outbox_lag_seconds` per sample.
    pub outbox_lag_secs: Vec<f64>,
    /// projector: events applied in the window.
    pub applied_events: Option<f64>,
    /// Requests shed (503) by the in-flight limit in the window.
    pub shed_requests: Option<f64>,
}

/// A connection pool's occupancy, sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolObservation {
    pub pool: String,
    pub max: i64,
    /// Connections in use at each sample.
    pub in_use: Vec<i64>,
}

impl PoolObservation {
    /// Samples with every connection in use.
    pub fn saturated_samples(&self) -> usize {
        self.in_use
            .iter()
            .filter(|&&n| self.max > 0 && n >= self.max)
            .count()
    }
}

/// One route's requests in the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteActivity {
    pub method: String,
    pub route: String,
    pub requests: f64,
    pub server_errors: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// How often a circuit breaker was not closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerObservation {
    pub breaker: String,
    pub samples: usize,
    /// Samples in which it was open or half-open.
    pub open_samples: usize,
}

/// Reads of one endpoint answered from one source in the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadSourceActivity {
    pub endpoint: String,
    pub source: String,
    pub reads: f64,
}

/// query-service's view of one database, sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseLagView {
    pub database: String,
    pub lag_secs: Vec<f64>,
    pub healthy: Vec<bool>,
}

/// The consumer group's position against the partitions' ends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsumerObservation {
    pub group: String,
    pub topics: Vec<String>,
    pub partitions: usize,
    /// Members of the group, if the broker tells.
    pub members: Option<usize>,
    pub samples: Vec<ConsumerSample>,
}

/// Sums over every partition of the group's topics at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConsumerSample {
    /// Seconds since the window started.
    pub at_secs: f64,
    /// Offsets the group has applied (its next offsets).
    pub committed: i64,
    /// High watermarks.
    pub end: i64,
}

impl ConsumerSample {
    /// Messages not yet applied.
    pub fn lag(&self) -> i64 {
        (self.end - self.committed).max(0)
    }
}

/// Redis keyspace counters in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisObservation {
    pub hits: i64,
    pub misses: i64,
    pub evicted: i64,
}

/// A configured source that did not answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnreachableSource {
    /// `postgres replica-1`, `projector /metrics`, `kafka`, `redis`, ...
    pub source: String,
    pub address: String,
    pub error: String,
}

/// The median of `values`, None if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    Some(sorted[sorted.len() / 2])
}
