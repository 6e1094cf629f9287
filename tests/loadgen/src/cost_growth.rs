//! The cost-growth benchmark: how command appends and the customer-history
//! query slow down as the store grows: measured with 0 events in bulk, then
//! after growing the store to each larger size (1M by default; 10M opt-in).
//!
//! The store grows without the API: SQL writes events shaped like the
//! command side's and the read-model rows the projector would have made of
//! them, in chunks of about 250k events (one transaction each, so progress
//! shows and the replicas' WAL never falls behind more than a chunk: after
//! each chunk the run waits until every replica has replayed it). The
//! relay's cursor moves past the bulk events in the same transactions
//! ([`data::chunk_sql`] says why); the projector does not run, except once
//! at the start when its binary is given, so that its partition maintenance
//! creates the monthly partitions of `customer_order_history` for the months
//! the data spans (as it does in production; without it the rows land in
//! the DEFAULT partition). After each growth step the grown tables are
//! `VACUUM ANALYZE`d, as autovacuum eventually would: the measurement is of
//! a store that has settled, not of one mid-load.
//!
//! At each size, in every repetition: command appends (price changes) at 16
//! closed-loop clients through command-service with its relay running (so
//! that the relay's reads of the same table are part of the picture, as in
//! production); then `GET /customers/{id}/orders` with `Cache-Control:
//! no-cache` at a few clients through query-service (served by a replica),
//! for the probe customers: customers written before the first measurement
//! with the same standard history as every bulk customer, so the same
//! request returns the same page at every size while the tables around it
//! grow; then the same query's SQL on the replica under `EXPLAIN (ANALYZE,
//! BUFFERS)`, which tells whether a slower history comes from the database
//! or from above it. `pg_stat_statements` deltas over the append windows
//! show what each append costs Postgres at each size (time, buffers, WAL
//! per call), `pg_stat_user_tables` and `pg_stat_bgwriter` whether
//! autovacuum or a checkpoint ran during them.
//!
//! The run starts by emptying the event store and the read models
//! ([`data::RESET_SQL`]): point it at a benchmark stack only.

pub mod data;
pub mod history;
pub mod pg_stats;
mod render;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use self::data::{Span, StepPlan};
use self::history::SqlTiming;
use self::pg_stats::{Activity, Counters, StatementDelta, Window};
use crate::append::{self, AppendOptions};
use crate::catchup::BacklogPlan;
use crate::machine::Machine;
use crate::service::{Service, ServiceError};
use crate::sql::{self, SqlError};
use crate::stats::{median, Measurement};

pub use self::render::render;

/// Closed-loop append clients (the 16).
pub const APPEND_CLIENTS: usize = 16;
/// Closed-loop history readers.
pub const HISTORY_CLIENTS: usize = 4;
/// Customers written before the first measurement and read at every size.
pub const PROBE_CUSTOMERS: u64 = 8;
/// `EXPLAIN ANALYZE` runs per measurement (the median is reported).
pub const EXPLAIN_RUNS: usize = 5;
/// The target: append p99 at [`TARGET_SIZE`] ≤ this × at 0.
pub const TARGET_RATIO: f64 = 1.2;
/// The store size the target names.
pub const TARGET_SIZE: u64 = 10_000_000;
/// Statements kept per size in the results (by total time).
const TOP_STATEMENTS: usize = 8;
/// Postgres settings recorded with the results.
const SETTINGS: [&str; 9] = [
    "shared_buffers",
    "effective_cache_size",
    "work_mem",
    "max_wal_size",
    "checkpoint_timeout",
    "autovacuum",
    "autovacuum_naptime",
    "synchronous_commit",
    "wal_keep_size",
];

#[derive(Debug, Clone)]
pub struct CostGrowthOptions {
    /// The primary.
    pub database_url: String,
    /// The replica the history SQL is explained on.
    pub replica_url: String,
    /// Every replica: query-service reads them, the run waits for them.
    pub replica_urls: Vec<String>,
    pub command_bin: PathBuf,
    pub command_url: String,
    pub query_bin: PathBuf,
    pub query_url: String,
    /// Runs once at the start to create the history partitions; None:
    /// whatever partitions exist are used (new months land in DEFAULT).
    pub projector_bin: Option<PathBuf>,
    pub projector_url: String,
    /// Events written in bulk before each measurement (cumulative).
    pub sizes: Vec<u64>,
    pub repetitions: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Events per bulk statement.
    pub chunk_events: u64,
    /// Longest wait for the replicas after a chunk.
    pub replica_timeout: Duration,
    pub work_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CostGrowthError {
    #[error("{what}: {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: SqlError,
    },
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("appends: {0}")]
    Append(#[from] append::AppendError),
    #[error("history reads: {0}")]
    History(#[from] history::HistoryError),
    #[error(transparent)]
    Replica(#[from] pg_stats::ReplicaError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "partition maintenance left {left} rows in customer_order_history_default after {waited:?}"
    )]
    Partitions { left: u64, waited: Duration },
    #[error("chunk {chunk} of step {step} wrote {written}, the plan says {planned}")]
    ChunkMismatch {
        step: u32,
        chunk: usize,
        written: String,
        planned: String,
    },
    #[error("the probe step wrote no customers")]
    NoProbeCustomers,
    #[error("no sizes to measure")]
    NoSizes,
}

fn sql_error(what: &'static str) -> impl FnOnce(SqlError) -> CostGrowthError {
    move |source| CostGrowthError::Sql { what, source }
}

/// What the generated data is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataShape {
    pub orders_per_customer: u64,
    pub orders_per_product: u64,
    pub price_changes_per_product: u64,
    pub history_months: u32,
    pub chunk_events: u64,
    pub probe_customers: u64,
    /// The probe step (written before the first measurement).
    pub probe: Growth,
    /// Partitions of `customer_order_history` after the partition step.
    pub history_partitions: Vec<String>,
    /// Items on a probe customer's first page (default range and limit).
    pub probe_page_items: Vec<usize>,
}

/// One growth step as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    pub step: u32,
    pub events: u64,
    pub orders: u64,
    pub customers: u64,
    pub products: u64,
    pub history_rows: u64,
    pub chunks: usize,
    /// Writing the chunks (replica waits excluded).
    pub insert_seconds: f64,
    /// Waiting for the replicas after the chunks.
    pub replica_wait_seconds: f64,
    pub events_per_s: f64,
}

/// Everything measured at one size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeResult {
    /// The nominal size: events written in bulk so far.
    pub size: u64,
    pub bulk_events: u64,
    /// Every event stored when the measurements at this size began (bulk,
    /// probe, and the appends measured at smaller sizes).
    pub stored_events: u64,
    pub history_rows: u64,
    pub growth: Option<Growth>,
    pub vacuum_seconds: f64,
    pub replica_wait_seconds: f64,
    /// Bytes of the tables and indexes that grow.
    pub relation_bytes: BTreeMap<String, u64>,
    pub appends: Vec<Measurement>,
    /// Background work during each append window.
    pub append_windows: Vec<Window>,
    /// Statements run during the append windows (all repetitions), the
    /// costliest first.
    pub append_statements: Vec<StatementDelta>,
    pub history: Vec<Measurement>,
    /// The history query of the first probe customer, on the replica.
    pub history_sql: Vec<SqlTiming>,
    /// The same for a customer of the latest bulk step (none at size 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bulk_customer_sql: Vec<SqlTiming>,
}

/// Medians over the repetitions at one size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizeMedians {
    pub append_ops_per_s: f64,
    pub append_p50_ms: f64,
    pub append_p99_ms: f64,
    pub history_p50_ms: f64,
    pub history_p99_ms: f64,
    pub history_sql_ms: f64,
    pub bulk_customer_sql_ms: Option<f64>,
}

impl SizeResult {
    /// None until both workloads have run at least once.
    pub fn medians(&self) -> Option<SizeMedians> {
        Some(SizeMedians {
            append_ops_per_s: median(self.appends.iter().map(|m| m.ops_per_s))?,
            append_p50_ms: median(self.appends.iter().map(|m| m.latency.p50_ms))?,
            append_p99_ms: median(self.appends.iter().map(|m| m.latency.p99_ms))?,
            history_p50_ms: median(self.history.iter().map(|m| m.latency.p50_ms))?,
            history_p99_ms: median(self.history.iter().map(|m| m.latency.p99_ms))?,
            history_sql_ms: median(self.history_sql.iter().map(|s| s.execution_ms))?,
            bulk_customer_sql_ms: median(self.bulk_customer_sql.iter().map(|s| s.execution_ms)),
        })
    }

    /// The append call (`SELECT append_events(...)`) in the windows.
    pub fn append_call(&self) -> Option<&StatementDelta> {
        self.append_statements
            .iter()
            .find(|s| s.toplevel && s.query.contains("append_events"))
    }
}

/// The target read against the smallest and the largest size measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrowthVerdict {
    pub from_size: u64,
    pub to_size: u64,
    pub from_p99_ms: f64,
    pub to_p99_ms: f64,
    pub ratio: f64,
    pub limit: f64,
    pub met: bool,
    /// Whether the largest size reached [`TARGET_SIZE`] (it is opt-in).
    pub at_target_size: bool,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CostGrowthResults {
    pub machine: Machine,
    /// The exact command line that produced these results.
    pub command: String,
    pub repetitions: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub append_clients: usize,
    pub history_clients: usize,
    /// Postgres settings of the primary.
    pub settings: BTreeMap<String, String>,
    pub data: DataShape,
    pub sizes: Vec<SizeResult>,
    pub verdict: Option<GrowthVerdict>,
    /// When the target was missed: where the time went.
    pub bottleneck: Option<String>,
    /// What the measurements say beyond the verdict (history query, plans).
    pub findings: Vec<String>,
}

/// The customer-history query at the smallest and the largest size
/// (medians over the repetitions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryGrowth {
    pub from_size: u64,
    pub to_size: u64,
    /// Through query-service (HTTP p50).
    pub from_p50_ms: f64,
    pub to_p50_ms: f64,
    /// The SQL's execution time on the replica.
    pub from_sql_ms: f64,
    pub to_sql_ms: f64,
}

impl CostGrowthResults {
    /// The history query at the smallest and the largest size; None with
    /// fewer than two sizes measured.
    pub fn history_growth(&self) -> Option<HistoryGrowth> {
        let (first, last) = (self.sizes.first()?, self.sizes.last()?);
        if self.sizes.len() < 2 {
            return None;
        }
        let (a, b) = (first.medians()?, last.medians()?);
        Some(HistoryGrowth {
            from_size: first.size,
            to_size: last.size,
            from_p50_ms: a.history_p50_ms,
            to_p50_ms: b.history_p50_ms,
            from_sql_ms: a.history_sql_ms,
            to_sql_ms: b.history_sql_ms,
        })
    }
}

impl crate::report::Section for CostGrowthResults {
    const MARKER: &'static str = "cost-growth";
    fn render(&self) -> String {
        render(self)
    }
}

/// The append target read against the smallest and the largest size; None
/// with fewer than two sizes measured.
pub fn verdict(sizes: &[SizeResult]) -> Option<GrowthVerdict> {
    let (first, last) = (sizes.first()?, sizes.last()?);
    if sizes.len() < 2 {
        return None;
    }
    let from = median(first.appends.iter().map(|m| m.latency.p99_ms))?;
    let to = median(last.appends.iter().map(|m| m.latency.p99_ms))?;
    let ratio = to / from;
    Some(GrowthVerdict {
        from_size: first.size,
        to_size: last.size,
        from_p99_ms: from,
        to_p99_ms: to,
        ratio,
        limit: TARGET_RATIO,
        met: ratio.is_finite() && ratio <= TARGET_RATIO,
        at_target_size: last.size >= TARGET_SIZE,
    })
}

/// `1M`, `10k`, `250`: sizes as the report names them.
pub fn size_label(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 100_000 == 0 => {
            format!("{}M", trim(n as f64 / 1_000_000.0))
        }
        n if n >= 1_000 && n % 100 == 0 => format!("{}k", trim(n as f64 / 1_000.0)),
        n => n.to_string(),
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map_or(s.clone(), str::to_owned)
}

/// Where the append p99 growth comes from, from the evidence of the
/// smallest and the largest size: the append statement's time and buffers
/// per call, other statements that grew, autovacuum and checkpoints in the
/// windows, and the runs' spread. Meant for a missed target.
pub fn bottleneck(sizes: &[SizeResult], settings: &BTreeMap<String, String>) -> Option<String> {
    let (first, last) = (sizes.first()?, sizes.last()?);
    if sizes.len() < 2 {
        return None;
    }
    let (from, to) = (size_label(first.size), size_label(last.size));
    let mut causes = Vec::new();
    // Whether something in the database explains the growth.
    let mut in_database = false;
    let indexes_mb = ["events_pkey", "events_position_key", "events_outbox_order"]
        .iter()
        .filter_map(|name| last.relation_bytes.get(*name))
        .sum::<u64>() as f64
        / 1_048_576.0;
    let shared_buffers = settings
        .get("shared_buffers")
        .map_or("?", String::as_str)
        .to_owned();
    if let (Some(a), Some(b)) = (first.append_call(), last.append_call()) {
        let growth = b.mean_ms / a.mean_ms;
        let per_call = format!(
            "`append_events` took {:.3} → {:.3} ms per call ({from} → {to}), \
             {:.1} → {:.1} buffer hits and {:.2} → {:.2} reads per call",
            a.mean_ms, b.mean_ms, a.hit_per_call, b.hit_per_call, a.read_per_call, b.read_per_call
        );
        if growth >= TARGET_RATIO {
            in_database = true;
            if b.read_per_call - a.read_per_call >= 0.5 {
                causes.push(format!(
                    "cache misses in the events indexes: {per_call}; the three events \
                     indexes are {indexes_mb:.0} MB at {to} against shared_buffers = \
                     {shared_buffers}, so index pages an append touches are no longer cached"
                ));
            } else if b.hit_per_call - a.hit_per_call >= 1.0 {
                causes.push(format!(
                    "index depth: {per_call}; more btree levels to descend in the events \
                     indexes ({indexes_mb:.0} MB at {to})"
                ));
            } else {
                causes.push(format!(
                    "the append statement is slower with the same buffers: {per_call}; \
                     waits (WAL flush, locks), not the size of the indexes"
                ));
            }
        } else {
            causes.push(format!(
                "not the append statement: {per_call}, within {TARGET_RATIO}×"
            ));
        }
    }
    if let Some(grown) = grown_statement(first, last) {
        in_database = true;
        causes.push(grown);
    }
    let vacuumed: Vec<String> = last
        .append_windows
        .iter()
        .flat_map(|w| w.autovacuumed.iter().chain(&w.autoanalyzed).cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !vacuumed.is_empty() {
        in_database = true;
        causes.push(format!(
            "autovacuum/autoanalyze ran during the append windows at {to} on {}",
            vacuumed.join(", ")
        ));
    }
    let checkpoints = |s: &SizeResult| s.append_windows.iter().map(|w| w.checkpoints).sum::<u64>();
    if checkpoints(last) > checkpoints(first) {
        in_database = true;
        causes.push(format!(
            "checkpoints during the append windows: {} at {from}, {} at {to}",
            checkpoints(first),
            checkpoints(last)
        ));
    }
    let spread = |s: &SizeResult| {
        let p99: Vec<f64> = s.appends.iter().map(|m| m.latency.p99_ms).collect();
        let min = p99.iter().copied().fold(f64::INFINITY, f64::min);
        let max = p99.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    };
    let ((a_min, a_max), (b_min, b_max)) = (spread(first), spread(last));
    if first.appends.len() > 1 && b_min <= a_max {
        causes.push(format!(
            "the runs overlap: append p99 ranged {a_min:.2}–{a_max:.2} ms at {from} and \
             {b_min:.2}–{b_max:.2} ms at {to}, so part of the gap is run-to-run noise"
        ));
    }
    if !in_database {
        causes.push(
            "nothing in Postgres grew with the store (statements, autovacuum, checkpoints), \
             so the growth is above it: command-service, the HTTP path or the machine, whose \
             two cores the database, the services and the load generator share"
                .to_owned(),
        );
    }
    Some(causes.join("; "))
}

/// The statement (other than the append call) whose time per append call
/// grew the most from `first` to `last`, if it grew by more than 0.05 ms
/// per append.
fn grown_statement(first: &SizeResult, last: &SizeResult) -> Option<String> {
    let per_append = |s: &SizeResult| {
        let calls = s.append_call().map_or(0, |c| c.calls).max(1) as f64;
        s.append_statements
            .iter()
            .filter(|st| !(st.toplevel && st.query.contains("append_events")))
            .map(|st| (st.key.clone(), (st.query.clone(), st.total_ms / calls)))
            .collect::<BTreeMap<_, _>>()
    };
    let (a, b) = (per_append(first), per_append(last));
    let (query, before, after) = b
        .iter()
        .map(|(key, (query, ms))| (query, a.get(key).map_or(0.0, |x| x.1), *ms))
        .max_by(|x, y| (x.2 - x.1).total_cmp(&(y.2 - y.1)))?;
    (after - before > 0.05).then(|| {
        format!(
            "`{}` grew from {before:.3} to {after:.3} ms per append call",
            query.chars().take(80).collect::<String>()
        )
    })
}

/// What the history measurements say: whether the query got slower, and
/// whether in the database or above it; plan changes.
pub fn findings(sizes: &[SizeResult]) -> Vec<String> {
    let mut out = Vec::new();
    let (Some(first), Some(last)) = (sizes.first(), sizes.last()) else {
        return out;
    };
    if sizes.len() < 2 {
        return out;
    }
    let (from, to) = (size_label(first.size), size_label(last.size));
    if let (Some(a), Some(b)) = (first.medians(), last.medians()) {
        let http = b.history_p50_ms / a.history_p50_ms;
        let sql = b.history_sql_ms / a.history_sql_ms;
        let delta_http = b.history_p50_ms - a.history_p50_ms;
        let delta_sql = b.history_sql_ms - a.history_sql_ms;
        let where_ = if http < TARGET_RATIO {
            "no growth worth naming".to_owned()
        } else if delta_sql >= 0.5 * delta_http {
            format!("the growth is in the database ({delta_sql:+.2} ms of the {delta_http:+.2} ms)")
        } else {
            format!(
                "the growth is above the database (SQL {delta_sql:+.2} ms of the \
                 {delta_http:+.2} ms): query-service, the network path or the machine"
            )
        };
        out.push(format!(
            "Customer history {from} → {to}: HTTP p50 {:.2} → {:.2} ms ({http:.2}×), SQL on \
             the replica {:.3} → {:.3} ms ({sql:.2}×): {where_}.",
            a.history_p50_ms, b.history_p50_ms, a.history_sql_ms, b.history_sql_ms
        ));
    }
    let shapes: Vec<(u64, &str)> = sizes
        .iter()
        .filter_map(|s| s.history_sql.last().map(|t| (s.size, t.shape.as_str())))
        .collect();
    if let Some((_, first_shape)) = shapes.first() {
        for (size, shape) in &shapes[1..] {
            if shape != first_shape {
                out.push(format!(
                    "The history plan changed at {}: `{first_shape}` → `{shape}`.",
                    size_label(*size)
                ));
                break;
            }
        }
    }
    out
}

pub async fn run(
    options: &CostGrowthOptions,
    command: String,
) -> Result<CostGrowthResults, CostGrowthError> {
    let mut sizes = options.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        return Err(CostGrowthError::NoSizes);
    }
    let io = |path: PathBuf| move |source| CostGrowthError::Io { path, source };
    std::fs::create_dir_all(&options.work_dir).map_err(io(options.work_dir.clone()))?;
    let log = |name: &str| {
        let path = options.work_dir.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(path))
    };
    let command_log = log("command-service.log")?;
    let query_log = log("query-service.log")?;
    let projector_log = log("projector.log")?;
    let machine = Machine::read(&options.database_url).await;
    let tag = history::run_tag();
    let prefix = format!("cost-growth-{tag}");
    let primary = options.database_url.as_str();

    // 1. The schema (command-service migrates at start) and an empty store.
    eprintln!("== cost-growth: schema, empty event store and read models");
    Service::start(
        options.command_bin.clone(),
        &[("RELAY_ENABLED", "false"), ("RUST_LOG", "warn")],
        &command_log,
        &options.command_url,
    )
    .await?
    .stop()
    .await?;
    let settings: BTreeMap<String, String> = sql::json(
        primary,
        &format!(
            "SELECT json_object_agg(name, current_setting(name)) FROM unnest(ARRAY['{}']) AS name",
            SETTINGS.join("','")
        ),
    )
    .await
    .map_err(sql_error("reading the settings"))?;
    sql::run(primary, data::RESET_SQL)
        .await
        .map_err(sql_error("emptying the store"))?;

    // 2. Monthly history partitions for the data's months.
    if let Some(bin) = &options.projector_bin {
        eprintln!(
            "== cost-growth: history partitions for {} months back (projector)",
            data::HISTORY_MONTHS
        );
        make_partitions(options, bin, &prefix, &projector_log).await?;
    }
    let history_partitions: Vec<String> = sql::json(
        primary,
        "SELECT coalesce(json_agg(c.relname::text ORDER BY c.relname), '[]')
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'customer_order_history'::regclass",
    )
    .await
    .map_err(sql_error("listing the history partitions"))?;

    // 3. The probe customers.
    let span = Span::ending(chrono::Utc::now());
    eprintln!(
        "== cost-growth: {PROBE_CUSTOMERS} probe customers, {} .. {}",
        span.start, span.end
    );
    let probe = grow(options, &tag, &StepPlan::probe(0, PROBE_CUSTOMERS), &span).await?;
    let customers = history::customers_of(primary)
        .await
        .map_err(sql_error("reading the probe customers"))?;
    let Some(probe_customer) = customers.first().cloned() else {
        return Err(CostGrowthError::NoProbeCustomers);
    };

    let replicas = options.replica_urls.join(",");
    let query = Service::start(
        options.query_bin.clone(),
        &[
            ("REPLICA_DATABASE_URLS", replicas.as_str()),
            ("RUST_LOG", "warn"),
        ],
        &query_log,
        &options.query_url,
    )
    .await?;

    // 4. Each size: grow, settle, measure.
    let mut results = Vec::new();
    let mut bulk = 0;
    let mut step = 0;
    let mut probe_page_items = Vec::new();
    for &size in &sizes {
        let growth = if size > bulk {
            step += 1;
            let plan = StepPlan::for_events(step, size - bulk, options.chunk_events);
            eprintln!(
                "== cost-growth: growing to {} bulk events: {} events ({} orders of {} customers) in {} chunks",
                size_label(size),
                plan.events(),
                plan.orders,
                plan.customers,
                plan.chunks.len()
            );
            let growth = grow(options, &tag, &plan, &span).await?;
            bulk += growth.events;
            Some(growth)
        } else {
            None
        };
        let (vacuum_seconds, replica_wait) = settle(options).await?;
        let (stored_events, history_rows) = counts(primary).await?;
        let relation_bytes: BTreeMap<String, u64> = sql::json(primary, data::RELATION_SIZES_SQL)
            .await
            .map_err(sql_error("reading relation sizes"))?;
        eprintln!(
            "== cost-growth: size {}: {stored_events} events stored, {history_rows} history rows \
             (VACUUM ANALYZE {vacuum_seconds:.1} s, replicas {:.1} s)",
            size_label(size),
            replica_wait.as_secs_f64()
        );
        let bulk_customer = if step > 0 {
            Some(
                history::step_customer(primary, &tag, step)
                    .await
                    .map_err(sql_error("naming a bulk customer"))?,
            )
        } else {
            None
        };
        let writer = Service::command_relaying(
            options.command_bin.clone(),
            &prefix,
            &command_log,
            &options.command_url,
        )
        .await?;
        let client = history::client()?;
        probe_page_items.clear();
        for customer in &customers {
            probe_page_items.push(history::check(&client, &options.query_url, customer).await?);
        }
        if let Some(customer) = &bulk_customer {
            history::check(&client, &options.query_url, customer).await?;
        }
        let mut result = SizeResult {
            size,
            bulk_events: bulk,
            stored_events,
            history_rows,
            growth,
            vacuum_seconds,
            replica_wait_seconds: replica_wait.as_secs_f64(),
            relation_bytes,
            appends: Vec::new(),
            append_windows: Vec::new(),
            append_statements: Vec::new(),
            history: Vec::new(),
            history_sql: Vec::new(),
            bulk_customer_sql: Vec::new(),
        };
        let mut statements = BTreeMap::new();
        for repetition in 1..=options.repetitions {
            let (appends, window, ran) = measure_appends(options).await?;
            pg_stats::accumulate(&mut statements, ran);
            let reads = history::measure(
                &options.query_url,
                &customers,
                HISTORY_CLIENTS,
                options.warmup,
                options.duration,
            )
            .await?;
            let sql = history::explain(&options.replica_url, &probe_customer, EXPLAIN_RUNS).await?;
            eprintln!(
                "   [{}/{}] appends {:.0}/s p99 {:.2} ms; history p50 {:.2} ms p99 {:.2} ms; SQL {:.3} ms",
                repetition,
                options.repetitions,
                appends.ops_per_s,
                appends.latency.p99_ms,
                reads.latency.p50_ms,
                reads.latency.p99_ms,
                sql.execution_ms
            );
            if let Some(customer) = &bulk_customer {
                result
                    .bulk_customer_sql
                    .push(history::explain(&options.replica_url, customer, EXPLAIN_RUNS).await?);
            }
            result.appends.push(appends);
            result.append_windows.push(window);
            result.history.push(reads);
            result.history_sql.push(sql);
        }
        result.append_statements = pg_stats::top(&statements, TOP_STATEMENTS);
        writer.stop().await?;
        results.push(result);
    }
    query.stop().await?;

    let verdict = verdict(&results);
    let bottleneck = verdict
        .as_ref()
        .filter(|v| !v.met)
        .and_then(|_| bottleneck(&results, &settings));
    let findings = findings(&results);
    Ok(CostGrowthResults {
        machine,
        command,
        repetitions: options.repetitions,
        warmup_s: options.warmup.as_secs_f64(),
        duration_s: options.duration.as_secs_f64(),
        append_clients: APPEND_CLIENTS,
        history_clients: HISTORY_CLIENTS,
        settings,
        data: DataShape {
            orders_per_customer: data::ORDERS_PER_CUSTOMER,
            orders_per_product: data::ORDERS_PER_PRODUCT,
            price_changes_per_product: data::PRICE_CHANGES_PER_PRODUCT,
            history_months: data::HISTORY_MONTHS,
            chunk_events: options.chunk_events,
            probe_customers: PROBE_CUSTOMERS,
            probe,
            history_partitions,
            probe_page_items,
        },
        sizes: results,
        verdict,
        bottleneck,
        findings,
    })
}

/// Placeholder rows for every month of the data (they land in DEFAULT), the
/// projector started once so that its partition maintenance gives those
/// months their partitions and adopts the rows, then the rows deleted.
async fn make_partitions(
    options: &CostGrowthOptions,
    bin: &std::path::Path,
    prefix: &str,
    log: &std::fs::File,
) -> Result<(), CostGrowthError> {
    let primary = options.database_url.as_str();
    let placeholders = BacklogPlan {
        history_months: data::HISTORY_MONTHS,
        ..BacklogPlan::for_events(0)
    };
    sql::run(primary, &placeholders.placeholder_sql())
        .await
        .map_err(sql_error("writing partition placeholders"))?;
    let projector = Service::projector(
        bin.to_path_buf(),
        prefix,
        &format!("{prefix}-partitions"),
        log,
        &options.projector_url,
    )
    .await?;
    let started = Instant::now();
    let waited = Duration::from_secs(60);
    loop {
        let left: u64 = sql::json(
            primary,
            "SELECT count(*) FROM customer_order_history_default",
        )
        .await
        .map_err(sql_error("counting DEFAULT rows"))?;
        if left == 0 {
            break;
        }
        if started.elapsed() >= waited {
            projector.stop().await?;
            return Err(CostGrowthError::Partitions { left, waited });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    projector.stop().await?;
    sql::run(
        primary,
        "DELETE FROM customer_order_history WHERE kind = 'bench-placeholder'",
    )
    .await
    .map_err(sql_error("deleting partition placeholders"))?;
    Ok(())
}

/// Writes `plan` chunk by chunk, each checked against the plan and
/// replayed by every replica before the next.
async fn grow(
    options: &CostGrowthOptions,
    tag: &str,
    plan: &StepPlan,
    span: &Span,
) -> Result<Growth, CostGrowthError> {
    let mut insert = Duration::ZERO;
    let mut replica_wait = Duration::ZERO;
    let mut events = 0;
    for (n, chunk) in plan.chunks.iter().enumerate() {
        let started = Instant::now();
        let written: data::ChunkWritten = sql::json(
            &options.database_url,
            &data::chunk_sql(tag, plan, chunk, span),
        )
        .await
        .map_err(sql_error("writing a chunk of events"))?;
        insert += started.elapsed();
        let planned: BTreeMap<String, u64> = chunk
            .events_by_type()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        if written.by_type != planned
            || written.history_rows != chunk.order_events()
            || written.summaries != chunk.orders()
            || written.products != chunk.products
        {
            return Err(CostGrowthError::ChunkMismatch {
                step: plan.step,
                chunk: n,
                written: format!(
                    "{:?}, {} history rows, {} summaries, {} products",
                    written.by_type, written.history_rows, written.summaries, written.products
                ),
                planned: format!(
                    "{planned:?}, {} history rows, {} summaries, {} products",
                    chunk.order_events(),
                    chunk.orders(),
                    chunk.products
                ),
            });
        }
        replica_wait += pg_stats::wait_for_replicas(
            &options.database_url,
            &options.replica_urls,
            options.replica_timeout,
        )
        .await?;
        events += chunk.events();
        if plan.chunks.len() > 1 {
            eprintln!(
                "   chunk {}/{}: {events} events in {:.1} s ({:.0} events/s), replicas {:.1} s",
                n + 1,
                plan.chunks.len(),
                insert.as_secs_f64(),
                events as f64 / insert.as_secs_f64(),
                replica_wait.as_secs_f64()
            );
        }
    }
    Ok(Growth {
        step: plan.step,
        events,
        orders: plan.orders,
        customers: plan.customers,
        products: plan.products(),
        history_rows: plan.history_rows(),
        chunks: plan.chunks.len(),
        insert_seconds: insert.as_secs_f64(),
        replica_wait_seconds: replica_wait.as_secs_f64(),
        events_per_s: events as f64 / insert.as_secs_f64().max(1e-9),
    })
}

/// `VACUUM ANALYZE` of the grown tables, then the replicas caught up.
async fn settle(options: &CostGrowthOptions) -> Result<(f64, Duration), CostGrowthError> {
    let started = Instant::now();
    for table in data::VACUUMED {
        sql::run(&options.database_url, &format!("VACUUM (ANALYZE) {table}"))
            .await
            .map_err(sql_error("VACUUM ANALYZE"))?;
    }
    let vacuum = started.elapsed().as_secs_f64();
    let waited = pg_stats::wait_for_replicas(
        &options.database_url,
        &options.replica_urls,
        options.replica_timeout,
    )
    .await?;
    Ok((vacuum, waited))
}

/// Events stored and history rows, exactly.
async fn counts(primary: &str) -> Result<(u64, u64), CostGrowthError> {
    #[derive(Deserialize)]
    struct Counts {
        events: u64,
        history: u64,
    }
    let c: Counts = sql::json(
        primary,
        "SELECT json_build_object('events', (SELECT count(*) FROM events),
                                  'history', (SELECT count(*) FROM customer_order_history))",
    )
    .await
    .map_err(sql_error("counting events"))?;
    Ok((c.events, c.history))
}

/// One append run at [`APPEND_CLIENTS`], with the statements and the
/// background work of the primary around it. The statistics are best
/// effort: without `pg_stat_statements` the run still measures.
async fn measure_appends(
    options: &CostGrowthOptions,
) -> Result<(Measurement, Window, BTreeMap<String, Counters>), CostGrowthError> {
    let primary = options.database_url.as_str();
    let statements_before = pg_stats::statements(primary).await;
    let activity_before = Activity::read(primary).await;
    let measurement = append::run(&AppendOptions {
        url: options.command_url.clone(),
        clients: APPEND_CLIENTS,
        warmup: options.warmup,
        duration: options.duration,
        progress: false,
    })
    .await?;
    let statements_after = pg_stats::statements(primary).await;
    let activity_after = Activity::read(primary).await;
    let ran = match (statements_before, statements_after) {
        (Ok(before), Ok(after)) => pg_stats::diff(&before, &after),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("   warning: no pg_stat_statements: {error}");
            BTreeMap::new()
        }
    };
    let window = match (activity_before, activity_after) {
        (Ok(before), Ok(after)) => before.until(&after),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("   warning: no autovacuum/checkpoint counters: {error}");
            Window::default()
        }
    };
    Ok((measurement, window, ran))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::Latency;

    pub fn measurement(name: &str, ops_per_s: f64, p50_ms: f64, p99_ms: f64) -> Measurement {
        Measurement {
            name: name.to_owned(),
            clients: 16,
            seconds: 10.0,
            ops: (ops_per_s * 10.0) as u64,
            ops_per_s,
            latency: Latency {
                p50_ms,
                p95_ms: p99_ms * 0.8,
                p99_ms,
                max_ms: p99_ms * 3.0,
            },
            errors: BTreeMap::new(),
        }
    }

    pub fn append_call(mean_ms: f64, hit: f64, read: f64) -> StatementDelta {
        StatementDelta {
            key: "10/42/true".to_owned(),
            query: "SELECT append_events($1, $2)".to_owned(),
            toplevel: true,
            calls: 10_000,
            total_ms: mean_ms * 10_000.0,
            mean_ms,
            rows_per_call: 1.0,
            hit_per_call: hit,
            read_per_call: read,
            wal_bytes_per_call: 900.0,
        }
    }

    pub fn timing(ms: f64, shape: &str) -> SqlTiming {
        SqlTiming {
            customer: "c".to_owned(),
            runs_ms: vec![ms],
            execution_ms: ms,
            planning_ms: 0.2,
            rows: 27,
            shared_hit: 40,
            shared_read: 0,
            shape: shape.to_owned(),
            scans: 4,
        }
    }

    pub fn size(size: u64, p99: &[f64], call: StatementDelta, history_p50: f64) -> SizeResult {
        SizeResult {
            size,
            bulk_events: size,
            stored_events: size + 500,
            history_rows: size,
            growth: None,
            vacuum_seconds: 0.1,
            replica_wait_seconds: 0.0,
            relation_bytes: BTreeMap::from([
                ("events".to_owned(), size * 400),
                ("events_pkey".to_owned(), size * 100),
                ("events_position_key".to_owned(), size * 20),
                ("events_outbox_order".to_owned(), size * 30),
            ]),
            appends: p99
                .iter()
                .map(|&p| measurement(append::NAME, 3000.0, 4.0, p))
                .collect(),
            append_windows: vec![Window::default(); p99.len()],
            append_statements: vec![call],
            history: vec![measurement(
                history::NAME,
                900.0,
                history_p50,
                history_p50 * 3.0,
            )],
            history_sql: vec![timing(0.1, "Limit > Append > Index Scan ×4")],
            bulk_customer_sql: Vec::new(),
        }
    }

    #[test]
    fn the_verdict_compares_the_median_p99_of_the_largest_size_with_the_smallest() {
        let sizes = vec![
            size(0, &[10.0, 12.0, 11.0], append_call(0.3, 20.0, 0.0), 2.0),
            size(
                1_000_000,
                &[13.0, 14.0, 12.5],
                append_call(0.3, 20.0, 0.0),
                2.0,
            ),
        ];
        let v = verdict(&sizes).unwrap();
        assert_eq!((v.from_size, v.to_size), (0, 1_000_000));
        assert!((v.from_p99_ms - 11.0).abs() < 1e-9);
        assert!((v.to_p99_ms - 13.0).abs() < 1e-9);
        assert!((v.ratio - 13.0 / 11.0).abs() < 1e-9);
        assert!(v.met, "1.18 ≤ 1.2");
        assert!(!v.at_target_size);
        assert!(verdict(&sizes[..1]).is_none());
    }

    #[test]
    fn a_missed_target_names_cache_misses_when_reads_per_append_grew() {
        let sizes = vec![
            size(0, &[10.0], append_call(0.30, 20.0, 0.0), 2.0),
            size(10_000_000, &[20.0], append_call(0.60, 22.0, 3.0), 2.0),
        ];
        let v = verdict(&sizes).unwrap();
        assert!(!v.met && v.at_target_size);
        let settings = BTreeMap::from([("shared_buffers".to_owned(), "128MB".to_owned())]);
        let text = bottleneck(&sizes, &settings).unwrap();
        assert!(
            text.starts_with("cache misses in the events indexes"),
            "{text}"
        );
        assert!(text.contains("shared_buffers = 128MB"), "{text}");
        assert!(
            text.contains("0.300 → 0.600 ms per call (0 → 10M)"),
            "{text}"
        );
    }

    #[test]
    fn a_missed_target_names_index_depth_when_only_hits_grew() {
        let sizes = vec![
            size(0, &[10.0], append_call(0.30, 20.0, 0.0), 2.0),
            size(1_000_000, &[20.0], append_call(0.45, 24.0, 0.1), 2.0),
        ];
        let text = bottleneck(&sizes, &BTreeMap::new()).unwrap();
        assert!(text.starts_with("index depth"), "{text}");
    }

    #[test]
    fn a_missed_target_with_a_steady_statement_points_above_the_database() {
        let mut last = size(
            1_000_000,
            &[20.0, 9.0, 21.0],
            append_call(0.31, 20.0, 0.0),
            2.0,
        );
        last.append_windows[1].autovacuumed = vec!["events".to_owned()];
        last.append_windows[2].checkpoints = 1;
        let sizes = vec![
            size(0, &[10.0, 11.0, 10.5], append_call(0.30, 20.0, 0.0), 2.0),
            last,
        ];
        let text = bottleneck(&sizes, &BTreeMap::new()).unwrap();
        assert!(text.starts_with("not the append statement"), "{text}");
        assert!(
            text.contains("autovacuum/autoanalyze ran during the append windows at 1M on events"),
            "{text}"
        );
        assert!(
            text.contains("checkpoints during the append windows: 0 at 0, 1 at 1M"),
            "{text}"
        );
        assert!(text.contains("the runs overlap"), "{text}");
    }

    #[test]
    fn a_missed_target_with_nothing_grown_in_postgres_is_placed_above_it() {
        let sizes = vec![
            size(0, &[10.0], append_call(0.30, 20.0, 0.0), 2.0),
            size(1_000_000, &[15.0], append_call(0.31, 20.0, 0.0), 2.0),
        ];
        let text = bottleneck(&sizes, &BTreeMap::new()).unwrap();
        assert!(text.contains("so the growth is above it"), "{text}");
    }

    #[test]
    fn a_statement_that_grew_per_append_is_named() {
        let mut first = size(0, &[10.0], append_call(0.30, 20.0, 0.0), 2.0);
        let mut last = size(1_000_000, &[20.0], append_call(0.30, 20.0, 0.0), 2.0);
        let relay = |ms: f64| StatementDelta {
            key: "10/7/true".to_owned(),
            query: "SELECT transaction_id::text AS \"transaction_id!\", position FROM events"
                .to_owned(),
            toplevel: true,
            calls: 500,
            total_ms: ms,
            mean_ms: ms / 500.0,
            rows_per_call: 10.0,
            hit_per_call: 5.0,
            read_per_call: 0.0,
            wal_bytes_per_call: 0.0,
        };
        first.append_statements.push(relay(100.0));
        last.append_statements.push(relay(2_000.0));
        let text = bottleneck(&[first, last], &BTreeMap::new()).unwrap();
        assert!(
            text.contains("grew from 0.010 to 0.200 ms per append call"),
            "{text}"
        );
    }

    #[test]
    fn findings_place_history_growth_in_the_database_or_above_it() {
        let first = size(0, &[10.0], append_call(0.3, 20.0, 0.0), 2.0);
        let mut last = size(1_000_000, &[10.0], append_call(0.3, 20.0, 0.0), 3.0);
        last.history_sql = vec![timing(0.9, "Limit > Append > Index Scan ×4")];
        let text = findings(&[first.clone(), last.clone()]).join("\n");
        assert!(
            text.contains("the growth is in the database (+0.80 ms of the +1.00 ms)"),
            "{text}"
        );
        last.history_sql = vec![timing(0.15, "Limit > Append > Seq Scan ×4")];
        let text = findings(&[first, last]).join("\n");
        assert!(text.contains("the growth is above the database"), "{text}");
        assert!(text.contains("The history plan changed at 1M"), "{text}");
    }

    #[test]
    fn sizes_are_labelled_compactly() {
        assert_eq!(size_label(0), "0");
        assert_eq!(size_label(10_000), "10k");
        assert_eq!(size_label(1_000_000), "1M");
        assert_eq!(size_label(2_500_000), "2.5M");
        assert_eq!(size_label(10_000_000), "10M");
        assert_eq!(size_label(1_234), "1234");
    }

    #[test]
    fn results_round_trip_through_json() {
        let sizes = vec![
            size(0, &[10.0], append_call(0.3, 20.0, 0.0), 2.0),
            size(1_000_000, &[11.0], append_call(0.3, 20.0, 0.0), 2.0),
        ];
        let results = render::tests::results(sizes);
        let json = serde_json::to_string(&results).unwrap();
        let back: CostGrowthResults = serde_json::from_str(&json).unwrap();
        assert_eq!(back.sizes, results.sizes);
        assert_eq!(back.verdict, results.verdict);
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        let history = back.history_growth().unwrap();
        assert_eq!((history.from_size, history.to_size), (0, 1_000_000));
        assert!((history.to_p50_ms - 2.0).abs() < 1e-9);
        assert!((history.to_sql_ms - 0.1).abs() < 1e-9);
    }
}
