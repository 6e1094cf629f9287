//! The projector catch-up benchmark: how fast the projector applies a
//! backlog of events already in Kafka, against pgbench 100-row transactions
//! on the same Postgres in the same run, and against the sustained append
//! rate of the write-path section.
//!
//! The backlog is made without the HTTP API: one SQL statement writes a
//! realistic mix of events straight into the `events` table (the command
//! side's rules hold: products before the orders that reference them, every
//! aggregate's sequence contiguous, only legal status changes), and
//! command-service's outbox relay publishes them to Kafka topics of their own
//! (`<prefix>-<run>.order` / `.product`), so no earlier event of the run is
//! in them. Each repetition then truncates the read models, the projector's
//! bookkeeping and Redis, starts the projector with a fresh consumer group
//! (so it starts at offset 0) and measures from the first applied batch to
//! the last message: process start, migrations and the group join are not
//! in the window. pgbench runs between repetitions, never beside the
//! projector.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::machine::Machine;
use crate::pgbench::{self, HUNDRED_ROW_INSERT};
use crate::procfs::{self, CpuSnapshot, CpuUsage, Processes};
use crate::relay::{self, Drain};
use crate::report;
use crate::service::Service;
use crate::sql;
use crate::stats::Measurement;
use crate::write_path::WritePathResults;

/// Name of the catch-up measurement in reports.
pub const NAME: &str = "projector_catchup";

#[derive(Debug, Clone)]
pub struct CatchupOptions {
    pub database_url: String,
    pub redis_url: String,
    pub command_bin: PathBuf,
    pub command_url: String,
    pub projector_bin: PathBuf,
    pub projector_url: String,
    /// The stack's directory (pidfiles of the broker and Redis, the broker's
    /// storage engine); without it their CPU is not reported.
    pub stack_dir: Option<PathBuf>,
    /// Smallest backlog, in events.
    pub events: u64,
    pub repetitions: usize,
    /// pgbench client counts; the first is the one the verdict uses.
    pub baseline_clients: Vec<usize>,
    pub warmup: Duration,
    pub duration: Duration,
    /// Topics are `<prefix>-<run id>.<aggregate>`.
    pub topic_prefix: String,
    /// Longest wait for one catch-up (and for the relay to publish the backlog).
    pub timeout: Duration,
    /// The write-path results of the same run, for the sustained append rate.
    pub write_path_json: Option<PathBuf>,
    pub work_dir: PathBuf,
}

/// What the backlog is made of. Orders follow [`ORDER_PATTERNS`] by their
/// number modulo 10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BacklogPlan {
    pub products: u64,
    /// `ProductPriceChanged` events per product, after its `ProductCreated`.
    pub price_changes_per_product: u64,
    pub orders: u64,
    /// Orders are spread over this many customers.
    pub customers: u64,
    /// The orders' business time runs from the first day of the month this
    /// many months back to two days ago, so that several monthly history
    /// partitions are written.
    pub history_months: u32,
}

/// The events of order number `i` are `ORDER_PATTERNS[i % 10]`: 60 %
/// confirmed and shipped, 10 % confirmed then cancelled by the merchant,
/// 10 % cancelled by the customer while placed, 10 % given one more line
/// then confirmed, 10 % left placed.
pub const ORDER_PATTERNS: [&[&str]; 10] = [
    SHIPPED,
    SHIPPED,
    SHIPPED,
    SHIPPED,
    SHIPPED,
    SHIPPED,
    &["OrderPlaced", "OrderConfirmed", "OrderCancelled"],
    &["OrderPlaced", "OrderCancelled"],
    &["OrderPlaced", "OrderLineAdded", "OrderConfirmed"],
    &["OrderPlaced"],
];
const SHIPPED: &[&str] = &["OrderPlaced", "OrderConfirmed", "OrderShipped"];

impl BacklogPlan {
    /// The smallest plan of the standard mix with at least `target` events:
    /// up to 2,000 products with 4 price changes each, 1,000 customers, 3
    /// months of history, and as many orders as the rest needs.
    pub fn for_events(target: u64) -> Self {
        let products = (target / 100).clamp(300, 2_000);
        let mut plan = Self {
            products,
            price_changes_per_product: 4,
            orders: 0,
            customers: 1_000,
            history_months: 3,
        };
        let rest = target.saturating_sub(plan.product_events());
        // Average events per order over the ten patterns, then step up.
        let per_ten: u64 = ORDER_PATTERNS.iter().map(|p| p.len() as u64).sum();
        plan.orders = rest * 10 / per_ten;
        while plan.order_events() < rest {
            plan.orders += 1;
        }
        plan
    }

    pub fn product_events(&self) -> u64 {
        self.products * (1 + self.price_changes_per_product)
    }

    /// How many of the orders 1..=orders have `i % 10 == pattern`.
    fn orders_with_pattern(&self, pattern: usize) -> u64 {
        let (full, partial) = (self.orders / 10, self.orders % 10);
        full + u64::from(pattern != 0 && pattern as u64 <= partial)
    }

    pub fn order_events(&self) -> u64 {
        (0..10)
            .map(|p| self.orders_with_pattern(p) * ORDER_PATTERNS[p].len() as u64)
            .sum()
    }

    pub fn events(&self) -> u64 {
        self.product_events() + self.order_events()
    }

    /// Events of each type the plan writes.
    pub fn events_by_type(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::from([
            ("ProductCreated".to_owned(), self.products),
            (
                "ProductPriceChanged".to_owned(),
                self.products * self.price_changes_per_product,
            ),
        ]);
        for (p, events) in ORDER_PATTERNS.iter().enumerate() {
            for event in *events {
                *counts.entry((*event).to_owned()).or_default() += self.orders_with_pattern(p);
            }
        }
        counts
    }

    /// One statement that inserts the plan's events into `events`, in
    /// business-time order (so positions follow it, as they would have),
    /// and returns what it wrote as JSON: `{"xid", "by_type", "first", "last"}`.
    /// `tag` (hex) makes the ids of this backlog unique in the store.
    pub fn sql(&self, tag: &str) -> String {
        let Self {
            products,
            price_changes_per_product: changes,
            orders,
            customers,
            history_months: months,
        } = *self;
        let product = |index: &str| format!("md5('{tag}-product-' || ({index}))::uuid");
        let price = |index: &str| format!("500 + (({index}) * 37) % 5000");
        let line_product = |j: &str| format!("(o.i * 31 + {j} * 97) % {products}");
        format!(
            r#"SET TimeZone = 'UTC';
SET work_mem = '256MB';
WITH span AS (
    SELECT date_trunc('month', now() - interval '{months} months') AS start_at,
           now() - interval '2 days' AS end_at
), products AS (
    SELECT p, {product_p} AS id FROM generate_series(0, {products} - 1) AS p
), orders AS (
    SELECT i, md5('{tag}-order-' || i)::uuid AS id,
           md5('{tag}-customer-' || (i::bigint * 7919) % {customers})::uuid AS customer_id,
           span.start_at + (span.end_at - span.start_at) * (i - 1) / {orders} AS placed_at
      FROM generate_series(1, {orders}) AS i, span
), all_events (aggregate_type, id, sequence, event_type, event_version, payload, at) AS (
    SELECT 'Product', pr.id, 1, 'ProductCreated', '1',
           json_build_object('ProductCreated', json_build_object(
               'sku', 'BENCH-{tag}-' || pr.p, 'name', 'Bench product ' || pr.p,
               'price', json_build_object('amount_minor', {price_p}, 'currency', 'EUR'))),
           span.start_at - interval '1 day' + pr.p * interval '1 second'
      FROM products pr, span
    UNION ALL
    SELECT 'Product', pr.id, 1 + k, 'ProductPriceChanged', '1',
           json_build_object('ProductPriceChanged', json_build_object(
               'price', json_build_object('amount_minor', 500 + (pr.p * 37 + k * 11) % 5000,
                                          'currency', 'EUR'))),
           span.start_at + (span.end_at - span.start_at) * k / ({changes} + 1) + pr.p * interval '1 second'
      FROM products pr, span, generate_series(1, {changes}) AS k
    UNION ALL
    SELECT 'Order', o.id, 1, 'OrderPlaced', '1',
           json_build_object('OrderPlaced', json_build_object(
               'customer_id', o.customer_id,
               'lines', (SELECT json_agg(json_build_object(
                                   'product_id', {product_line},
                                   'quantity', 1 + (o.i + j) % 5,
                                   'unit_price', json_build_object('amount_minor', {price_line},
                                                                   'currency', 'EUR')) ORDER BY j)
                           FROM generate_series(0, o.i % 3) AS j))),
           o.placed_at
      FROM orders o
    UNION ALL
    SELECT 'Order', o.id, 2, 'OrderLineAdded', '1',
           json_build_object('OrderLineAdded', json_build_object('line', json_build_object(
               'product_id', {product_added}, 'quantity', 1,
               'unit_price', json_build_object('amount_minor', {price_added}, 'currency', 'EUR')))),
           o.placed_at + interval '30 seconds'
      FROM orders o WHERE o.i % 10 = 8
    UNION ALL
    SELECT 'Order', o.id, CASE WHEN o.i % 10 = 8 THEN 3 ELSE 2 END, 'OrderConfirmed', '1',
           json_build_object('OrderConfirmed', json_build_object()),
           o.placed_at + (1 + o.i % 50) * interval '1 minute'
      FROM orders o WHERE o.i % 10 IN (0, 1, 2, 3, 4, 5, 6, 8)
    UNION ALL
    SELECT 'Order', o.id, 3, 'OrderShipped', '1',
           json_build_object('OrderShipped', json_build_object()),
           o.placed_at + interval '1 day' + (o.i % 24) * interval '1 hour'
      FROM orders o WHERE o.i % 10 <= 5
    UNION ALL
    SELECT 'Order', o.id, 3, 'OrderCancelled', '2',
           json_build_object('OrderCancelled', json_build_object(
               'reason', 'out of stock', 'cancelled_by', 'merchant')),
           o.placed_at + interval '2 hours'
      FROM orders o WHERE o.i % 10 = 6
    UNION ALL
    SELECT 'Order', o.id, 2, 'OrderCancelled', '2',
           json_build_object('OrderCancelled', json_build_object(
               'reason', 'changed my mind', 'cancelled_by', 'customer')),
           o.placed_at + interval '30 minutes'
      FROM orders o WHERE o.i % 10 = 7
), inserted AS (
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
    SELECT aggregate_type, id::text, sequence, event_type, event_version, payload,
           json_build_object('command_id', gen_random_uuid(),
                             'occurred_at', to_char(at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
      FROM all_events
     ORDER BY at, aggregate_type, id, sequence
    RETURNING event_type, metadata ->> 'occurred_at' AS at
)
SELECT json_build_object(
           'xid', pg_current_xact_id()::text,
           'first', (SELECT min(at) FROM inserted),
           'last', (SELECT max(at) FROM inserted),
           'by_type', (SELECT json_object_agg(event_type, n)
                         FROM (SELECT event_type, count(*) AS n FROM inserted GROUP BY 1) AS c));"#,
            product_p = product("p"),
            price_p = price("pr.p"),
            product_line = product(&line_product("j")),
            price_line = price(&line_product("j")),
            product_added = product(&line_product("3")),
            price_added = price(&line_product("3")),
        )
    }

    /// One row per month of the backlog's history in `customer_order_history`
    /// (rows of a month without a partition land in DEFAULT), so that the
    /// projector's partition maintenance creates those months' partitions
    /// the way it adopts stragglers. Removed again before every repetition.
    pub fn placeholder_sql(&self) -> String {
        format!(
            "SET TimeZone = 'UTC';
             INSERT INTO customer_order_history
                    (customer_id, occurred_at, order_id, version, kind, amount_minor, currency)
             SELECT '{NIL}', m, '{NIL}', 0, 'bench-placeholder', 0, 'EUR'
               FROM generate_series(date_trunc('month', now() - interval '{} months'),
                                    date_trunc('month', now()), interval '1 month') AS m
             ON CONFLICT DO NOTHING",
            self.history_months
        )
    }
}

const NIL: &str = "00000000-0000-0000-0000-000000000000";

/// The backlog as made and published.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backlog {
    pub plan: BacklogPlan,
    pub topic_prefix: String,
    /// Events written by the generating statement, by type.
    pub inserted_by_type: BTreeMap<String, u64>,
    /// Business time of the first and the last event.
    pub first_occurred_at: String,
    pub last_occurred_at: String,
    /// Seconds the generating statement took.
    pub insert_seconds: f64,
    /// Partitions of `customer_order_history` when the backlog was made.
    pub history_partitions: Vec<String>,
    /// Messages the relay published into the backlog's topics: the backlog.
    pub events: u64,
    pub relay: Drain,
    pub relay_failed_batches: u64,
    /// `BROKER_STORAGE` of the stack (`sqlite` or `memory`), if known.
    pub broker_storage: Option<String>,
}

/// One statement's share of a catch-up (from `pg_stat_statements`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    pub query: String,
    pub calls: u64,
    pub total_ms: f64,
    pub rows: u64,
}

/// One catch-up from the backlog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Catchup {
    pub name: String,
    pub group: String,
    /// Messages applied between the first sample that showed an applied
    /// batch and the first that showed the whole backlog applied.
    pub events: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    /// Every message the projector applied (the backlog).
    pub applied_total: u64,
    /// Process start to the first applied batch (not measured above).
    pub startup_seconds: f64,
    /// Batch transactions in the window and the time spent inside them
    /// (`projector_batch_seconds`: apply + commit, not the Kafka fetch or
    /// the Redis writes that follow).
    pub batches: u64,
    pub batch_seconds: f64,
    /// Peak resident set size of the projector (VmHWM), KiB.
    pub peak_rss_kib: Option<u64>,
    pub cpu: CpuUsage,
    /// Kafka partitions the projector reported lag for.
    pub partitions: usize,
    /// Every statement Postgres ran for the database during the projector's
    /// life (pg_stat_statements), the costliest first (top 8 kept).
    pub statements: Vec<Statement>,
    pub statement_calls: u64,
    pub statement_ms: f64,
    /// Calls of each Redis command during the projector's life (`INFO
    /// commandstats`; commands run inside a Lua script count too).
    pub redis_calls: BTreeMap<String, u64>,
    /// Row counts of the read models afterwards (the same every repetition).
    pub read_models: BTreeMap<String, u64>,
    /// Rows of `customer_order_history` per partition afterwards.
    pub history_by_partition: BTreeMap<String, u64>,
}

/// The sustained append rate the catch-up is held against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SustainedAppend {
    /// Where it was read from.
    pub source: String,
    /// When that write-path run started.
    pub run_date: String,
    pub clients: usize,
    pub ops_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatchupResults {
    pub machine: Machine,
    pub command: String,
    pub repetitions: usize,
    /// Projector settings that shape a catch-up (environment, or "default").
    pub settings: BTreeMap<String, String>,
    pub backlog: Backlog,
    /// pgbench 100-row transactions (ops = transactions).
    pub baselines: Vec<Measurement>,
    pub catchups: Vec<Catchup>,
    pub sustained_append: Option<SustainedAppend>,
}

/// Environment variables recorded with the results.
const SETTINGS: [&str; 5] = [
    "PROJECTOR_BATCH_SIZE",
    "PROJECTOR_BATCH_TIMEOUT_MS",
    "PROJECTOR_POOL_SIZE",
    "KAFKA_TOPIC_PARTITIONS",
    "PARTITIONS_AHEAD_MONTHS",
];

/// Read models and bookkeeping emptied before every repetition.
const RESET_SQL: &str = "TRUNCATE product_catalog, order_summary, customer_order_history, \
     daily_sales, projector_offsets, projector_message_counts, projector_dead_letters";

pub async fn run(options: &CatchupOptions, command: String) -> anyhow::Result<CatchupResults> {
    std::fs::create_dir_all(&options.work_dir)?;
    let log = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(options.work_dir.join(name))
    };
    let command_log = log("command-service.log")?;
    let projector_log = log("projector.log")?;
    let machine = Machine::read(&options.database_url).await;
    let sustained_append = match &options.write_path_json {
        Some(path) => Some(read_sustained(path)?),
        None => None,
    };
    pgbench::setup(&options.database_url, &HUNDRED_ROW_INSERT).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let prefix = format!("{}-{run_id}", options.topic_prefix);
    let plan = BacklogPlan::for_events(options.events);
    let settings = SETTINGS
        .iter()
        .map(|name| {
            let value = std::env::var(name).unwrap_or_else(|_| "default".to_owned());
            ((*name).to_owned(), value)
        })
        .collect();

    // 0. A fresh stack has no schema yet: the services migrate at start.
    let migrated: bool = sql::json(
        &options.database_url,
        "SELECT to_json(to_regclass('projector_offsets') IS NOT NULL)",
    )
    .await?;
    if !migrated {
        eprintln!("== schema: starting command-service once to migrate");
        Service::start(
            options.command_bin.clone(),
            &[("RELAY_ENABLED", "false"), ("RUST_LOG", "warn")],
            &command_log,
            &options.command_url,
        )
        .await?
        .stop()
        .await?;
    }

    // Projections that are not 'live' (a rebuild in progress) are skipped
    // by the projector: the catch-up would measure nothing.
    let building: u64 = sql::json(
        &options.database_url,
        "SELECT count(*) FROM projections WHERE state <> 'live'",
    )
    .await?;
    if building > 0 {
        bail!("{building} projection(s) are not 'live' (a rebuild is in progress?)");
    }

    // 1. History partitions for the backlog's months, made by the projector.
    eprintln!(
        "== backlog: history partitions for {} months back",
        plan.history_months
    );
    reset(options).await?;
    sql::run(&options.database_url, &plan.placeholder_sql()).await?;
    let projector = start_projector(options, &projector_log, &prefix, "prep").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: u64 = sql::json(
            &options.database_url,
            "SELECT count(*) FROM customer_order_history_default",
        )
        .await?;
        if left == 0 {
            break;
        }
        if Instant::now() >= deadline {
            bail!("partition maintenance left {left} rows in customer_order_history_default");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    projector.stop().await?;
    let history_partitions: Vec<String> = sql::json(
        &options.database_url,
        "SELECT coalesce(json_agg(c.relname::text ORDER BY c.relname), '[]')
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'customer_order_history'::regclass",
    )
    .await?;

    // 2. The events, straight into the event store.
    eprintln!(
        "== backlog: {} events ({} products, {} orders) into the event store",
        plan.events(),
        plan.products,
        plan.orders
    );
    let started = Instant::now();
    let inserted: Inserted = sql::json(&options.database_url, &plan.sql(&run_id)).await?;
    let insert_seconds = started.elapsed().as_secs_f64();
    if inserted.by_type != plan.events_by_type() {
        bail!(
            "the backlog statement wrote {:?}, the plan says {:?}",
            inserted.by_type,
            plan.events_by_type()
        );
    }
    let out_of_order: u64 = sql::json(
        &options.database_url,
        &format!(
            "SELECT count(*) FROM events a JOIN events b
                ON b.aggregate_type = a.aggregate_type AND b.aggregate_id = a.aggregate_id
               AND b.sequence = a.sequence + 1
             WHERE a.transaction_id = '{}'::xid8 AND b.position < a.position",
            inserted.xid
        ),
    )
    .await?;
    if out_of_order > 0 {
        bail!("{out_of_order} backlog events have a position before their predecessor's");
    }
    eprintln!("   {insert_seconds:.1} s");

    // 3. Published by the relay into the backlog's own topics.
    eprintln!("== backlog: relay to topics {prefix}.*");
    let service = Service::command_relaying(
        options.command_bin.clone(),
        &prefix,
        &command_log,
        &options.command_url,
    )
    .await?;
    let drain = relay::measure_drain(
        &options.command_url,
        Duration::from_millis(100),
        options.timeout,
    )
    .await?;
    let metrics = scrape(&options.command_url).await?;
    service.stop().await?;
    let published = relay::sample(&metrics, "relay_published_events_total").unwrap_or(0.0) as u64;
    let relay_failed_batches =
        relay::sample(&metrics, "relay_failed_batches_total").unwrap_or(0.0) as u64;
    eprintln!(
        "   {published} events published, {:.0} events/s, {relay_failed_batches} failed batches",
        drain.events_per_s
    );
    if published < plan.events() {
        bail!(
            "the relay published {published} events, fewer than the {} of the backlog",
            plan.events()
        );
    }
    let backlog = Backlog {
        plan,
        topic_prefix: prefix.clone(),
        inserted_by_type: inserted.by_type,
        first_occurred_at: inserted.first,
        last_occurred_at: inserted.last,
        insert_seconds,
        history_partitions,
        events: published,
        relay: drain,
        relay_failed_batches,
        broker_storage: options.stack_dir.as_ref().and_then(|dir| {
            std::fs::read_to_string(dir.join("run/broker.storage"))
                .ok()
                .map(|s| s.trim().to_owned())
        }),
    };

    // 4. Repetitions: baselines, then a catch-up from offset 0.
    let ticks = procfs::clock_ticks().await;
    let postmaster = postmaster_pid(&options.database_url).await;
    let mut baselines = Vec::new();
    let mut catchups = Vec::new();
    for repetition in 1..=options.repetitions {
        for &clients in &options.baseline_clients {
            eprintln!(
                "== repetition {repetition}/{}: pgbench 100-row transactions, {clients} client(s)",
                options.repetitions
            );
            let baseline = pgbench::run(
                &options.database_url,
                &HUNDRED_ROW_INSERT,
                clients,
                options.warmup,
                options.duration,
                &options.work_dir,
                &[],
            )
            .await?;
            eprintln!(
                "   {:.0} rows/s ({:.0} transactions/s, p50 {:.2} ms)",
                baseline.ops_per_s * HUNDRED_ROW_INSERT.rows_per_transaction as f64,
                baseline.ops_per_s,
                baseline.latency.p50_ms
            );
            baselines.push(baseline);
        }
        eprintln!(
            "== repetition {repetition}/{}: projector catch-up of {} events",
            options.repetitions, backlog.events
        );
        let catchup = catch_up(
            options,
            &projector_log,
            &prefix,
            repetition,
            &backlog,
            ticks,
            postmaster,
            machine.cpus,
        )
        .await?;
        eprintln!(
            "   {} events in {:.1} s = {:.0} events/s (start-up {:.1} s, {} batches, {:.0} % of the window in batch transactions)",
            catchup.events,
            catchup.seconds,
            catchup.events_per_s,
            catchup.startup_seconds,
            catchup.batches,
            100.0 * catchup.batch_seconds / catchup.seconds
        );
        catchups.push(catchup);
    }

    Ok(CatchupResults {
        machine,
        command,
        repetitions: options.repetitions,
        settings,
        backlog,
        baselines,
        catchups,
        sustained_append,
    })
}

#[derive(Debug, Deserialize)]
struct Inserted {
    xid: String,
    first: String,
    last: String,
    by_type: BTreeMap<String, u64>,
}

/// The 16-client (most clients) append median of a write-path run.
fn read_sustained(path: &Path) -> anyhow::Result<SustainedAppend> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let results: WritePathResults =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let (clients, ops_per_s) = report::sustained_append(&results.measurements)
        .with_context(|| format!("{} has no command_append measurement", path.display()))?;
    Ok(SustainedAppend {
        source: path.display().to_string(),
        run_date: results.machine.date,
        clients,
        ops_per_s,
    })
}

/// Empties the read models, the projector's bookkeeping and Redis.
async fn reset(options: &CatchupOptions) -> anyhow::Result<()> {
    sql::run(&options.database_url, RESET_SQL).await?;
    let output = Command::new("redis-cli")
        .args(["-u", &options.redis_url, "FLUSHDB"])
        .output()
        .await
        .context("running redis-cli")?;
    if !output.status.success() || !String::from_utf8_lossy(&output.stdout).contains("OK") {
        bail!(
            "redis-cli FLUSHDB failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

async fn start_projector(
    options: &CatchupOptions,
    log: &std::fs::File,
    prefix: &str,
    group: &str,
) -> anyhow::Result<Service> {
    Ok(Service::projector(
        options.projector_bin.clone(),
        prefix,
        &format!("{prefix}-{group}"),
        log,
        &options.projector_url,
    )
    .await?)
}

/// The postmaster of the database (on this machine): the parent that its
/// other processes share. (Their `backend_type` is hidden from a
/// non-superuser, their pids are not.)
pub(crate) async fn postmaster_pid(database_url: &str) -> Option<u32> {
    let pids: Vec<u32> = sql::json(
        database_url,
        "SELECT coalesce(json_agg(pid), '[]') FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
    )
    .await
    .ok()?;
    most_common(
        pids.into_iter()
            .filter_map(|pid| procfs::read_stat(pid).map(|s| s.ppid)),
    )
}

fn most_common(values: impl IntoIterator<Item = u32>) -> Option<u32> {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map(|(value, _)| value)
}

/// The projector's counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    applied: u64,
    batches: u64,
    batch_seconds: f64,
}

#[allow(clippy::too_many_arguments)]
async fn catch_up(
    options: &CatchupOptions,
    log: &std::fs::File,
    prefix: &str,
    repetition: usize,
    backlog: &Backlog,
    ticks: f64,
    postmaster: Option<u32>,
    cpus: usize,
) -> anyhow::Result<Catchup> {
    reset(options).await?;
    let group = format!("{prefix}-run{repetition}");
    let before = statements(&options.database_url).await;
    let redis_before = redis_calls(&options.redis_url).await;
    let spawned = Instant::now();
    let mut projector = start_projector(options, log, prefix, &format!("run{repetition}")).await?;
    let mut groups = vec![("loadgen".to_owned(), Processes::One(std::process::id()))];
    if let Some(pid) = projector.pid() {
        groups.push(("projector".to_owned(), Processes::One(pid)));
    }
    if let Some(pid) = postmaster {
        groups.push(("postgres".to_owned(), Processes::WithChildren(pid)));
    }
    if let Some(dir) = &options.stack_dir {
        for name in ["broker", "redis"] {
            if let Some(pid) = procfs::pid_from_file(&dir.join(format!("run/{name}.pid"))) {
                groups.push((name.to_owned(), Processes::One(pid)));
            }
        }
    }

    let deadline = spawned + options.timeout;
    let mut first: Option<(Sample, CpuSnapshot)> = None;
    let (last, metrics) = loop {
        let sampled = Instant::now();
        let metrics = scrape(&options.projector_url).await?;
        let value = |name: &str| relay::sample(&metrics, name).unwrap_or(0.0);
        let sample = Sample {
            at: sampled,
            applied: value("projector_applied_events_total") as u64,
            batches: value("projector_batch_seconds_count") as u64,
            batch_seconds: value("projector_batch_seconds_sum"),
        };
        let parked = value("projector_parked_events_total") as u64;
        if parked > 0 {
            bail!("the projector parked {parked} backlog events as dead letters (see its log)");
        }
        if first.is_none() && sample.applied > 0 {
            first = Some((sample, CpuSnapshot::take(&groups)));
        }
        if sample.applied >= backlog.events {
            break (sample, metrics);
        }
        if let Some(status) = projector.exited() {
            bail!("the projector exited during the catch-up ({status})");
        }
        if Instant::now() >= deadline {
            bail!(
                "the projector applied {} of {} events within {:?}",
                sample.applied,
                backlog.events,
                options.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(100).saturating_sub(sampled.elapsed())).await;
    };
    let end_cpu = CpuSnapshot::take(&groups);
    let after = statements(&options.database_url).await;
    let redis_after = redis_calls(&options.redis_url).await;
    let peak_rss_kib = projector.pid().and_then(procfs::vm_hwm_kib);
    let Some((first, start_cpu)) = first else {
        bail!("the projector applied the whole backlog before the first sample");
    };
    let window = window(&first, &last)?;
    let partitions = relay::labelled_samples(&metrics, "projector_lag_events").len();
    projector.stop().await?;

    let check: Check = sql::json(
        &options.database_url,
        &format!(
            "SELECT json_build_object(
                 'next_offsets', (SELECT coalesce(sum(next_offset), 0) FROM projector_offsets
                                   WHERE consumer_group = '{group}'),
                 'counted', (SELECT coalesce(sum(applied), 0) FROM projector_message_counts
                              WHERE consumer_group = '{group}'),
                 'read_models', json_build_object(
                     'product_catalog', (SELECT count(*) FROM product_catalog),
                     'order_summary', (SELECT count(*) FROM order_summary),
                     'customer_order_history', (SELECT count(*) FROM customer_order_history),
                     'daily_sales', (SELECT count(*) FROM daily_sales)),
                 'history_by_partition', (SELECT coalesce(json_object_agg(p, n), '{{}}')
                     FROM (SELECT tableoid::regclass::text AS p, count(*) AS n
                             FROM customer_order_history GROUP BY 1) AS h))"
        ),
    )
    .await?;
    let plan = &backlog.plan;
    let expected = BTreeMap::from([
        ("product_catalog".to_owned(), plan.products),
        ("order_summary".to_owned(), plan.orders),
        ("customer_order_history".to_owned(), plan.order_events()),
    ]);
    for (table, rows) in &expected {
        let found = check.read_models.get(table).copied().unwrap_or(0);
        if found < *rows {
            bail!("after the catch-up {table} has {found} rows, the backlog makes {rows}");
        }
    }
    if check.next_offsets != backlog.events || check.counted != backlog.events {
        eprintln!(
            "   warning: stored offsets sum to {}, message counts to {}, the relay published {}",
            check.next_offsets, check.counted, backlog.events
        );
    }
    let (statement_calls, statement_ms, statements) = statement_diff(&before, &after, 8);
    Ok(Catchup {
        name: NAME.to_owned(),
        group,
        events: window.events,
        seconds: window.seconds,
        events_per_s: window.events_per_s,
        applied_total: last.applied,
        startup_seconds: first.at.duration_since(spawned).as_secs_f64(),
        batches: last.batches.saturating_sub(first.batches),
        batch_seconds: last.batch_seconds - first.batch_seconds,
        peak_rss_kib,
        cpu: start_cpu.usage_until(&end_cpu, ticks, cpus),
        partitions,
        statements,
        statement_calls,
        statement_ms,
        redis_calls: redis_after
            .into_iter()
            .map(|(command, calls)| {
                let before = redis_before.get(&command).copied().unwrap_or(0);
                (command, calls.saturating_sub(before))
            })
            .filter(|&(_, calls)| calls > 0)
            .collect(),
        read_models: check.read_models,
        history_by_partition: check.history_by_partition,
    })
}

#[derive(Debug, Deserialize)]
struct Check {
    next_offsets: u64,
    counted: u64,
    read_models: BTreeMap<String, u64>,
    history_by_partition: BTreeMap<String, u64>,
}

/// Events applied between two samples and the rate.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Window {
    events: u64,
    seconds: f64,
    events_per_s: f64,
}

fn window(first: &Sample, last: &Sample) -> anyhow::Result<Window> {
    let events = last.applied.saturating_sub(first.applied);
    let seconds = last.at.duration_since(first.at).as_secs_f64();
    if events == 0 || seconds <= 0.0 {
        bail!(
            "nothing to measure: {events} events in {seconds:.3} s between the first applied batch and the end"
        );
    }
    Ok(Window {
        events,
        seconds,
        events_per_s: events as f64 / seconds,
    })
}

async fn scrape(base_url: &str) -> anyhow::Result<String> {
    let url = format!("{}/metrics", base_url.trim_end_matches('/'));
    Ok(reqwest::Client::new()
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("reading {url}"))?
        .text()
        .await?)
}

/// Calls per command since Redis started (`INFO commandstats`); empty if
/// redis-cli fails.
pub(crate) async fn redis_calls(redis_url: &str) -> BTreeMap<String, u64> {
    match Command::new("redis-cli")
        .args(["-u", redis_url, "INFO", "commandstats"])
        .output()
        .await
    {
        Ok(output) if output.status.success() => {
            parse_commandstats(&String::from_utf8_lossy(&output.stdout))
        }
        _ => BTreeMap::new(),
    }
}

/// `cmdstat_evalsha:calls=120247,usec=...` lines → {"evalsha": 120247}.
fn parse_commandstats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// `pg_stat_statements` of the current database, by statement; empty (with
/// a warning) when the extension is not there.
pub(crate) async fn statements(database_url: &str) -> BTreeMap<String, Statement> {
    #[derive(Deserialize)]
    struct Row {
        key: String,
        #[serde(flatten)]
        statement: Statement,
    }
    let rows: Result<Vec<Row>, _> = sql::json(
        database_url,
        r"SELECT coalesce(json_agg(json_build_object(
                     'key', s.userid || '/' || s.queryid || '/' || s.toplevel,
                     'query', left(regexp_replace(s.query, '\s+', ' ', 'g'), 200),
                     'calls', s.calls, 'total_ms', s.total_exec_time, 'rows', s.rows)), '[]')
            FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
           WHERE d.datname = current_database() AND s.queryid IS NOT NULL",
    )
    .await;
    match rows {
        Ok(rows) => rows.into_iter().map(|r| (r.key, r.statement)).collect(),
        Err(error) => {
            eprintln!("   warning: no pg_stat_statements: {error}");
            BTreeMap::new()
        }
    }
}

/// What ran between two `pg_stat_statements` snapshots: total calls, total
/// milliseconds, and the `top` costliest statements.
pub(crate) fn statement_diff(
    before: &BTreeMap<String, Statement>,
    after: &BTreeMap<String, Statement>,
    top: usize,
) -> (u64, f64, Vec<Statement>) {
    let mut ran: Vec<Statement> = after
        .iter()
        .filter_map(|(key, a)| {
            let (calls, ms, rows) = before
                .get(key)
                .map_or((0, 0.0, 0), |b| (b.calls, b.total_ms, b.rows));
            // A reset in between shows as fewer calls: count from zero.
            let (calls, ms, rows) = if a.calls >= calls {
                (
                    a.calls - calls,
                    a.total_ms - ms,
                    a.rows.saturating_sub(rows),
                )
            } else {
                (a.calls, a.total_ms, a.rows)
            };
            (calls > 0).then(|| Statement {
                query: a.query.clone(),
                calls,
                total_ms: ms,
                rows,
            })
        })
        .collect();
    let calls = ran.iter().map(|s| s.calls).sum();
    let ms = ran.iter().map(|s| s.total_ms).sum();
    ran.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    ran.truncate(top);
    (calls, ms, ran)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_reaches_the_target_with_the_standard_mix() {
        let plan = BacklogPlan::for_events(200_000);
        assert_eq!(plan.products, 2_000);
        assert_eq!(plan.product_events(), 10_000);
        assert!(plan.events() >= 200_000, "{plan:?}");
        assert!(
            plan.events() < 200_004,
            "{plan:?}: the smallest plan, not more"
        );
        // 27 events per 10 orders.
        assert_eq!(plan.orders, 70_371);
        let by_type = plan.events_by_type();
        assert_eq!(by_type.values().sum::<u64>(), plan.events());
        assert_eq!(by_type["OrderPlaced"], plan.orders);
        assert_eq!(by_type["ProductPriceChanged"], 8_000);
        // Confirmed: patterns 0-6 and 8 = 80 %.
        let confirmed = by_type["OrderConfirmed"] as f64 / plan.orders as f64;
        assert!((confirmed - 0.8).abs() < 0.001, "{confirmed}");
    }

    #[test]
    fn order_event_counts_match_a_literal_count() {
        for orders in [0, 1, 9, 10, 11, 19, 1234] {
            let plan = BacklogPlan {
                orders,
                ..BacklogPlan::for_events(1)
            };
            let literal: u64 = (1..=orders)
                .map(|i| ORDER_PATTERNS[(i % 10) as usize].len() as u64)
                .sum();
            assert_eq!(plan.order_events(), literal, "{orders} orders");
        }
    }

    #[test]
    fn small_targets_keep_enough_products_for_distinct_lines() {
        // Lines use products i*31 + {0, 97, 194} and the added line + 291,
        // distinct only with more than 291 products.
        let plan = BacklogPlan::for_events(1_000);
        assert_eq!(plan.products, 300);
        assert!(plan.events() >= 1_000);
    }

    #[test]
    fn the_sql_is_parameterised_by_the_plan() {
        let plan = BacklogPlan::for_events(200_000);
        let sql = plan.sql("abcd1234");
        assert!(sql.contains("generate_series(1, 70371)"), "{sql}");
        assert!(sql.contains("md5('abcd1234-order-' || i)"), "{sql}");
        assert!(sql.contains("interval '3 months'"), "{sql}");
        assert!(!sql.contains("{"), "no unfilled placeholder: {sql}");
    }

    #[test]
    fn the_rate_excludes_what_was_applied_before_the_first_sample() {
        let base = Instant::now();
        let sample = |secs, applied| Sample {
            at: base + Duration::from_secs(secs),
            applied,
            batches: 0,
            batch_seconds: 0.0,
        };
        let (first, last) = (sample(0, 500), sample(10, 200_500));
        let w = window(&first, &last).unwrap();
        assert_eq!(w.events, 200_000);
        assert!((w.events_per_s - 20_000.0).abs() < 1e-6, "{w:?}");
        assert!(window(&first, &first).is_err());
    }

    #[test]
    fn reads_redis_commandstats() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=120247,usec=1235782,usec_per_call=10.28,rejected_calls=0,failed_calls=1\r\ncmdstat_script|load:calls=1,usec=35\r\nother:1\r\n";
        let calls = parse_commandstats(info);
        assert_eq!(calls.get("evalsha"), Some(&120_247));
        assert_eq!(calls.get("script|load"), Some(&1));
        assert_eq!(calls.len(), 2);
    }

    #[test]
    fn the_postmaster_is_the_parent_most_processes_share() {
        assert_eq!(most_common([7, 7, 1, 7, 1]), Some(7));
        assert_eq!(most_common([]), None);
    }

    #[test]
    fn statements_are_diffed_and_ranked() {
        let s = |calls, total_ms| Statement {
            query: "q".to_owned(),
            calls,
            total_ms,
            rows: calls,
        };
        let before = BTreeMap::from([("a".to_owned(), s(10, 5.0)), ("b".to_owned(), s(1, 1.0))]);
        let after = BTreeMap::from([
            ("a".to_owned(), s(110, 55.0)),
            ("b".to_owned(), s(1, 1.0)),
            ("c".to_owned(), s(5, 70.0)),
        ]);
        let (calls, ms, top) = statement_diff(&before, &after, 1);
        assert_eq!(calls, 105);
        assert!((ms - 120.0).abs() < 1e-9);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].calls, 5, "c cost the most");
    }
}
