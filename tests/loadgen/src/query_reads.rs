//! The query-side read benchmark: `GET /orders/{id}` from query-service,
//! cached (Redis) and uncached (`Cache-Control: no-cache`, the replica),
//! each beside the baseline it is read against, measured in the same run:
//!
//! - cached reads against a bare actix-web handler that answers the same
//!   route with a fixed body of the same size (what the HTTP framework
//!   itself costs on this machine), and against `redis-benchmark GET` on the
//!   stack's Redis (what the cache store itself serves);
//! - uncached reads against pgbench primary-key selects of rows shaped like
//!   `order_summary` on the same replica.
//!
//! Every HTTP measurement uses the same load tool, `wrk` (C, event loop, two
//! threads): a load generator written with this crate's async client would
//! need about a core of its own for this request rate, on a 2-core machine
//! that also runs the server under test. A Lua script picks a random order
//! of the seeded set for every request. Every request carries loadgen's
//! bearer token (`wrk -H`), the bare handler's too, so both servers parse the
//! same request; only query-service verifies it (and meters it against its
//! rate limit, set far above this load: see [`crate::service::RATE_LIMITS`]).
//!
//! The orders are placed through command-service and projected by the
//! projector (topics of their own, a fresh consumer group), so Redis and the
//! replica hold exactly what the stack writes. The writers are stopped
//! before measuring; query-service, the bare server, Redis, both Postgres
//! clusters and the load tools are then all that runs. Baselines and
//! workloads alternate in every repetition (redis-benchmark, bare handler,
//! cached, pgbench, uncached), so the machine's drift spreads over both
//! sides of every ratio; the report quotes medians.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use actix_web::http::header::ContentType;
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::{bail, Context};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::auth;
use crate::machine::Machine;
use crate::pgbench::{self, PK_SELECT};
use crate::procfs::{self, CpuSnapshot, CpuUsage, Processes};
use crate::service::Service;
use crate::sql;
use crate::stats::{Latency, Measurement};

/// `GET /orders/{id}` from query-service, answered from Redis.
pub const CACHED: &str = "query_get_order_cached";
/// The same request with `Cache-Control: no-cache`: read from the replica.
pub const UNCACHED: &str = "query_get_order_uncached";
/// The bare actix-web handler (baseline of [`CACHED`]).
pub const BARE: &str = "bare_actix_get_order";
/// `redis-benchmark -t get` on the stack's Redis (context for [`CACHED`]).
pub const REDIS_GET: &str = "redis_benchmark_get";

/// Environment variables of query-service recorded with the results.
const SETTINGS: [&str; 6] = [
    "REPLICA_POOL_SIZE",
    "READ_ATTEMPT_TIMEOUT_MS",
    "REPLICA_MAX_LAG_MS",
    "REDIS_TIMEOUT_MS",
    "LOCAL_CACHE_CAPACITY",
    "LOCAL_CACHE_TTL_MS",
];

/// `x-read-source` values of query-service's cache tiers (in-process, Redis).
const CACHE_TIERS: [&str; 2] = ["local", "redis"];

/// Products the seeded orders are made of.
const PRODUCTS: usize = 24;
/// Customers the seeded orders are spread over.
const CUSTOMERS: usize = 20;
/// Concurrent requests while seeding and warming.
const SETUP_CONCURRENCY: usize = 16;

#[derive(Debug, Clone)]
pub struct QueryReadsOptions {
    pub primary_url: String,
    pub replica_url: String,
    pub redis_url: String,
    pub command_bin: PathBuf,
    pub command_url: String,
    pub projector_bin: PathBuf,
    pub projector_url: String,
    pub query_bin: PathBuf,
    pub query_url: String,
    /// The replicas query-service reads (`REPLICA_DATABASE_URLS`,
    /// comma-separated); None: `replica_url` only.
    pub query_replica_urls: Option<String>,
    /// The stack's directory: pidfiles of Redis, the broker and both
    /// Postgres clusters, for CPU per process. Without it only query-service,
    /// the bare server and the whole machine are reported.
    pub stack_dir: Option<PathBuf>,
    /// Orders seeded; every request reads a random one of them.
    pub orders: usize,
    /// HTTP connections (and redis-benchmark clients).
    pub connections: usize,
    /// wrk threads (and redis-benchmark threads).
    pub threads: usize,
    /// pgbench client counts; the first is the uncached verdict's baseline.
    pub pgbench_clients: Vec<usize>,
    pub repetitions: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Longest wait for the projector to project the seeded orders.
    pub timeout: Duration,
    pub work_dir: PathBuf,
}

/// What was seeded and how the read paths answered before measuring.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Seed {
    pub orders: usize,
    pub products: usize,
    pub customers: usize,
    /// Kafka topics of the run (`<prefix>.order` / `.product`).
    pub topic_prefix: String,
    /// Placing the orders through command-service.
    pub place_seconds: f64,
    /// From the last order placed until all of them were in Redis and on the
    /// replica.
    pub projected_seconds: f64,
    /// Sizes of the order summaries query-service returned.
    pub body_bytes_min: usize,
    pub body_bytes_median: usize,
    pub body_bytes_max: usize,
    /// The body the bare handler answers with (the median-size summary).
    pub bare_body_bytes: usize,
    /// Where each order was read from (`x-read-source`) in one pass over
    /// all of them just before the first measurement, with and without
    /// `Cache-Control: no-cache`.
    pub warm_cached: BTreeMap<String, usize>,
    pub warm_uncached: BTreeMap<String, usize>,
}

/// CPU and memory over the window of one measurement and, for
/// query-service's runs, what its requests cost Redis and the replica.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub repetition: usize,
    pub name: String,
    pub clients: usize,
    pub ops_per_s: f64,
    pub cpu: CpuUsage,
    /// query-service's resident set size at the end of the window (KiB).
    pub query_rss_kib: Option<u64>,
    /// Requests answered (successes and errors) in the measured run the
    /// counters below cover (query-service's runs only).
    #[serde(default)]
    pub requests: u64,
    /// Redis calls by command over the measured run (`INFO commandstats`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub redis_calls: BTreeMap<String, u64>,
    /// Statements the replica ran over the measured run
    /// (`pg_stat_statements`), most calls first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_statements: Vec<Statement>,
}

/// One statement's calls and execution time over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    pub query: String,
    pub calls: u64,
    pub total_ms: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryReadsResults {
    pub machine: Machine,
    /// The exact command line that produced these results.
    pub command: String,
    pub repetitions: usize,
    pub connections: usize,
    pub threads: usize,
    /// Versions of wrk, redis-benchmark and pgbench.
    pub tools: BTreeMap<String, String>,
    /// query-service settings (environment, or "default").
    pub settings: BTreeMap<String, String>,
    pub seed: Seed,
    pub measurements: Vec<Measurement>,
    pub runs: Vec<Run>,
    /// query-service's peak resident set size (VmHWM) at the end, KiB.
    pub query_peak_rss_kib: Option<u64>,
}

pub async fn run(
    options: &QueryReadsOptions,
    command: String,
) -> anyhow::Result<QueryReadsResults> {
    std::fs::create_dir_all(&options.work_dir)?;
    let work_dir = std::path::absolute(&options.work_dir)?;
    let log = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work_dir.join(name))
    };
    let command_log = log("command-service.log")?;
    let projector_log = log("projector.log")?;
    let query_log = log("query-service.log")?;
    let machine = Machine::read(&options.primary_url).await;
    let tools = tool_versions().await;
    // query-service reads the replicas it is given; by default the one
    // replica pgbench runs on.
    let replicas = options
        .query_replica_urls
        .clone()
        .filter(|urls| !urls.trim().is_empty())
        .unwrap_or_else(|| options.replica_url.clone());
    let mut settings: BTreeMap<String, String> = SETTINGS
        .iter()
        .map(|name| {
            let value = std::env::var(name).unwrap_or_else(|_| "default".to_owned());
            ((*name).to_owned(), value)
        })
        .collect();
    let replica_list: Vec<String> = replicas
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    settings.insert("replicas".to_owned(), replica_list.len().to_string());
    settings.insert(
        "RATE_LIMIT_READS".to_owned(),
        crate::service::UNLIMITED_RATE.to_owned(),
    );
    let run_id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let prefix = format!("query-reads-{run_id}");

    // 1. Writers and query-service up; the orders placed and projected.
    eprintln!("== seed: {} orders through command-service", options.orders);
    let writer = Service::command_relaying(
        options.command_bin.clone(),
        &prefix,
        &command_log,
        &options.command_url,
    )
    .await?;
    let projector = Service::projector(
        options.projector_bin.clone(),
        &prefix,
        &format!("{prefix}-projector"),
        &projector_log,
        &options.projector_url,
    )
    .await?;
    let mut query = Service::start(
        options.query_bin.clone(),
        &[
            ("REPLICA_DATABASE_URLS", replicas.as_str()),
            ("RUST_LOG", "warn"),
        ],
        &query_log,
        &options.query_url,
    )
    .await?;

    let client = auth::authorized_client()?
        .timeout(Duration::from_secs(30))
        .build()?;
    let customers: Vec<Uuid> = (0..CUSTOMERS).map(|_| Uuid::new_v4()).collect();
    let started = Instant::now();
    let ids = place_orders(&client, &options.command_url, &customers, options.orders).await?;
    let place_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "   {} orders in {place_seconds:.1} s; waiting for the projector",
        ids.len()
    );
    let placed = Instant::now();
    let deadline = placed + options.timeout;
    wait_on_replica(options, &customers, ids.len(), deadline).await?;
    // Redis is written by the projector after its Postgres commit: wait
    // until every order is answered from a cache tier.
    let bodies = loop {
        let (sources, bodies) = read_all(&client, &options.query_url, &ids, true).await?;
        if sources
            .iter()
            .all(|(source, _)| CACHE_TIERS.contains(&source.as_str()))
        {
            break bodies;
        }
        if Instant::now() >= deadline {
            bail!(
                "after {:?} not every seeded order is in Redis (sources {sources:?}); see {}",
                options.timeout,
                work_dir.join("projector.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let projected_seconds = placed.elapsed().as_secs_f64();
    eprintln!("   projected into the replica and Redis in {projected_seconds:.1} s");
    projector.stop().await?;
    writer.stop().await?;

    let (warm_uncached, _) = read_all(&client, &options.query_url, &ids, false).await?;
    if !warm_uncached
        .keys()
        .all(|source| source.starts_with("replica"))
    {
        bail!("uncached reads did not all come from a replica: {warm_uncached:?}");
    }
    let (warm_cached, _) = read_all(&client, &options.query_url, &ids, true).await?;
    if !warm_cached
        .keys()
        .all(|source| CACHE_TIERS.contains(&source.as_str()))
    {
        bail!("cached reads did not all come from a cache tier: {warm_cached:?}");
    }
    let mut sizes: Vec<usize> = bodies.iter().map(Vec::len).collect();
    sizes.sort_unstable();
    let median_size = sizes[sizes.len() / 2];
    let bare_body = bodies
        .iter()
        .find(|b| b.len() == median_size)
        .cloned()
        .unwrap_or_default();

    // 2. Baselines' data: the same bodies in Redis under redis-benchmark's
    //    key names, copies of the seeded rows for pgbench.
    eprintln!("== baselines: redis-benchmark keys, pgbench table, bare server");
    redis_seed(&options.redis_url, ids.len(), &bare_body).await?;
    pgbench::setup(&options.primary_url, &PK_SELECT).await?;
    sql::run(&options.primary_url, &fill_pk_table_sql(&customers)).await?;
    wait_for_rows(&options.replica_url, ids.len(), deadline).await?;

    let ids_file = work_dir.join("query-reads-ids.txt");
    std::fs::write(
        &ids_file,
        ids.iter().map(|id| format!("{id}\n")).collect::<String>(),
    )?;
    let script = work_dir.join("query-reads.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    let body_file = work_dir.join("query-reads-bare-body.json");
    std::fs::write(&body_file, &bare_body)?;
    let bare = BareServer::start(&body_file, &work_dir.join("bare-server.log")).await?;
    let seed = Seed {
        orders: ids.len(),
        products: PRODUCTS,
        customers: CUSTOMERS,
        topic_prefix: prefix,
        place_seconds,
        projected_seconds,
        body_bytes_min: sizes.first().copied().unwrap_or(0),
        body_bytes_median: median_size,
        body_bytes_max: sizes.last().copied().unwrap_or(0),
        bare_body_bytes: bare_body.len(),
        warm_cached,
        warm_uncached,
    };

    // 3. Interleaved repetitions.
    let mut groups = vec![];
    if let Some(pid) = query.pid() {
        groups.push(("query-service".to_owned(), Processes::One(pid)));
    }
    if let Some(pid) = bare.child.id() {
        groups.push(("bare server".to_owned(), Processes::One(pid)));
    }
    groups.extend(stack_processes(options.stack_dir.as_deref()));
    let meter = Meter {
        groups,
        ticks: procfs::clock_ticks().await,
        cpus: machine.cpus.max(1),
        query_pid: query.pid(),
    };
    let wrk = Wrk {
        script: script.clone(),
        ids_file: ids_file.clone(),
        connections: options.connections,
        threads: options.threads,
        authorization: auth::authorization()?,
    };
    let mut reps = Repetitions::new(options.repetitions);
    for repetition in 1..=options.repetitions {
        reps.current = repetition;
        reps.step("redis-benchmark GET");
        let redis = RedisBenchmark {
            url: &options.redis_url,
            keys: ids.len(),
            clients: options.connections,
            threads: options.threads,
        };
        let requests = redis.requests_for(options.warmup, options.duration).await?;
        let (m, cpu) = meter
            .during(
                redis.get(requests),
                Duration::ZERO,
                options.duration.mul_f64(0.8),
            )
            .await;
        reps.record(m?, cpu, None);

        reps.step("bare actix handler");
        wrk.warm(&bare.url, false, options.warmup).await?;
        let (m, cpu) = meter
            .during(
                wrk.measure(BARE, &bare.url, false, options.duration),
                Duration::ZERO,
                options.duration,
            )
            .await;
        reps.record(m?, cpu, None);

        reps.step("query-service, cached");
        query_run(options, &replica_list, &meter, &wrk, false, &mut reps).await?;

        for &clients in &options.pgbench_clients {
            reps.step(&format!("pgbench primary-key select, {clients} clients"));
            let (m, cpu) = meter
                .during(
                    pgbench::run(
                        &options.replica_url,
                        &PK_SELECT,
                        clients,
                        options.warmup,
                        options.duration,
                        &work_dir,
                        &[("rows", ids.len().to_string())],
                    ),
                    options.warmup,
                    options.duration,
                )
                .await;
            reps.record(m?, cpu, None);
        }

        reps.step("query-service, uncached (Cache-Control: no-cache)");
        query_run(options, &replica_list, &meter, &wrk, true, &mut reps).await?;
    }

    let query_peak_rss_kib = query.pid().and_then(procfs::vm_hwm_kib);
    if let Some(status) = query.exited() {
        bail!("query-service exited during the benchmark ({status})");
    }
    bare.stop().await;
    query.stop().await?;
    redis_unseed(&options.redis_url, ids.len()).await?;

    Ok(QueryReadsResults {
        machine,
        command,
        repetitions: options.repetitions,
        connections: options.connections,
        threads: options.threads,
        tools,
        settings,
        seed,
        measurements: reps.measurements,
        runs: reps.runs,
        query_peak_rss_kib,
    })
}

/// The interleaved repetitions: the one being measured, and the
/// measurements and runs so far, in the order they were taken.
#[derive(Debug)]
struct Repetitions {
    total: usize,
    /// 1-based.
    current: usize,
    measurements: Vec<Measurement>,
    runs: Vec<Run>,
}

impl Repetitions {
    fn new(total: usize) -> Self {
        Self {
            total,
            current: 0,
            measurements: Vec::new(),
            runs: Vec::new(),
        }
    }

    /// Announces the next measurement of the current repetition.
    fn step(&self, what: &str) {
        eprintln!("== repetition {}/{}: {what}", self.current, self.total);
    }

    fn record(
        &mut self,
        measurement: Measurement,
        (cpu, query_rss_kib): (CpuUsage, Option<u64>),
        counters: Option<(Counters, Counters)>,
    ) {
        eprintln!("   {}", crate::write_path::one_line(&measurement));
        let mut run = Run {
            repetition: self.current,
            name: measurement.name.clone(),
            clients: measurement.clients,
            ops_per_s: measurement.ops_per_s,
            cpu,
            query_rss_kib,
            ..Run::default()
        };
        if let Some((before, after)) = counters {
            run.requests = measurement.ops + measurement.errors.values().sum::<u64>();
            (run.redis_calls, run.replica_statements) = before.until(&after);
        }
        self.runs.push(run);
        self.measurements.push(measurement);
    }
}

/// Redis' and the replica's cumulative counters at one moment.
#[derive(Debug, Clone, Default)]
struct Counters {
    redis: BTreeMap<String, u64>,
    /// Query text → (calls, total execution ms).
    statements: BTreeMap<String, (u64, f64)>,
}

impl Counters {
    /// Best effort: a counter that cannot be read is left out. Statements
    /// are summed over `replica_urls` by query text.
    async fn read(redis_url: &str, replica_urls: &[String]) -> Self {
        let redis = crate::catchup::redis_calls(redis_url).await;
        let mut statements: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for url in replica_urls {
            let rows: Vec<Statement> = sql::json(
                url,
                "SELECT coalesce(json_agg(json_build_object(
                            'query', query, 'calls', calls, 'total_ms', total_exec_time)), '[]')
                   FROM pg_stat_statements
                  WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .await
            .unwrap_or_default();
            for row in rows {
                let entry = statements.entry(row.query).or_default();
                entry.0 += row.calls;
                entry.1 += row.total_ms;
            }
        }
        Self { redis, statements }
    }

    /// What happened between `self` and `after`: Redis calls by command and
    /// the replica's statements (most calls first, the top 8), both without
    /// the counter reads themselves.
    fn until(&self, after: &Counters) -> (BTreeMap<String, u64>, Vec<Statement>) {
        let redis = after
            .redis
            .iter()
            .filter(|(command, _)| command.as_str() != "info")
            .map(|(command, &calls)| {
                let before = self.redis.get(command).copied().unwrap_or(0);
                (command.clone(), calls.saturating_sub(before))
            })
            .filter(|&(_, calls)| calls > 0)
            .collect();
        let mut statements: Vec<Statement> = after
            .statements
            .iter()
            .filter(|(query, _)| !query.contains("pg_stat_statements"))
            .map(|(query, &(calls, total_ms))| {
                let (c0, t0) = self.statements.get(query).copied().unwrap_or((0, 0.0));
                Statement {
                    query: query.clone(),
                    calls: calls.saturating_sub(c0),
                    total_ms: (total_ms - t0).max(0.0),
                }
            })
            .filter(|s| s.calls > 0)
            .collect();
        statements.sort_by_key(|s| std::cmp::Reverse(s.calls));
        statements.truncate(8);
        (redis, statements)
    }
}

/// One measured wrk run against query-service ([`UNCACHED`] with
/// `no_cache`, else [`CACHED`]) after an unmeasured one, recorded in the
/// current repetition with Redis' and the replica's counters read around
/// the measured run.
async fn query_run(
    options: &QueryReadsOptions,
    replicas: &[String],
    meter: &Meter,
    wrk: &Wrk,
    no_cache: bool,
    reps: &mut Repetitions,
) -> anyhow::Result<()> {
    let name = if no_cache { UNCACHED } else { CACHED };
    wrk.warm(&options.query_url, no_cache, options.warmup)
        .await?;
    let before = Counters::read(&options.redis_url, replicas).await;
    let (m, cpu) = meter
        .during(
            wrk.measure(name, &options.query_url, no_cache, options.duration),
            Duration::ZERO,
            options.duration,
        )
        .await;
    let after = Counters::read(&options.redis_url, replicas).await;
    reps.record(m?, cpu, Some((before, after)));
    Ok(())
}

/// `1 + i % 3` lines of distinct products per order, at the products'
/// prices, `SETUP_CONCURRENCY` requests at a time. Returns the order ids.
async fn place_orders(
    client: &reqwest::Client,
    command_url: &str,
    customers: &[Uuid],
    orders: usize,
) -> anyhow::Result<Vec<Uuid>> {
    let base = command_url.trim_end_matches('/');
    let mut products = Vec::with_capacity(PRODUCTS);
    for i in 0..PRODUCTS {
        let price = 250 + 125 * i as i64;
        let body = json!({
            "sku": format!("READS-{}", Uuid::new_v4().simple()),
            "name": format!("Read benchmark product {i}"),
            "price": {"amount_minor": price, "currency": "EUR"},
        });
        let id = accepted_id(client, &format!("{base}/products"), &body).await?;
        products.push((id, price));
    }
    let bodies: Vec<serde_json::Value> = (0..orders)
        .map(|i| {
            let lines: Vec<serde_json::Value> = (0..1 + i % 3)
                .map(|k| {
                    let (product, price) = products[(i + 7 * k) % PRODUCTS];
                    json!({
                        "product_id": product,
                        "quantity": 1 + i % 4,
                        "unit_price": {"amount_minor": price, "currency": "EUR"},
                    })
                })
                .collect();
            json!({"customer_id": customers[i % customers.len()], "lines": lines})
        })
        .collect();
    let url = format!("{base}/orders");
    futures::stream::iter(bodies)
        .map(|body| {
            let url = &url;
            async move { accepted_id(client, url, &body).await }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// POSTs `body` and returns the `aggregate_id` of the 202 answer.
async fn accepted_id(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> anyhow::Result<Uuid> {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response.text().await?;
    let id = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["aggregate_id"].as_str().and_then(|s| s.parse().ok()));
    match (status, id) {
        (reqwest::StatusCode::ACCEPTED, Some(id)) => Ok(id),
        _ => bail!("POST {url} answered {status}: {text}"),
    }
}

/// Waits until the replica's `order_summary` holds `orders` rows of the
/// run's customers.
async fn wait_on_replica(
    options: &QueryReadsOptions,
    customers: &[Uuid],
    orders: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    let sql = format!(
        "SELECT count(*) FROM order_summary WHERE customer_id = ANY({})",
        uuid_array(customers)
    );
    loop {
        let count: usize = sql::json(&options.replica_url, &sql).await?;
        if count >= orders {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "after {:?} the replica has {count} of the {orders} seeded orders in \
                 order_summary (is the projector running, are the projections 'live'?)",
                options.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the pgbench table has reached the replica.
async fn wait_for_rows(replica_url: &str, rows: usize, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let count: usize = sql::json(
            replica_url,
            "SELECT count(*) FROM bench_order_summary WHERE n IS NOT NULL",
        )
        .await
        .unwrap_or(0);
        if count == rows {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the replica has {count} of {rows} rows in bench_order_summary");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn uuid_array(ids: &[Uuid]) -> String {
    let list: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    format!("'{{{}}}'::uuid[]", list.join(","))
}

/// The seeded orders' rows, numbered 1..N, into pgbench's table.
fn fill_pk_table_sql(customers: &[Uuid]) -> String {
    format!(
        "TRUNCATE bench_order_summary;
         INSERT INTO bench_order_summary
         SELECT row_number() OVER (ORDER BY order_id), order_id, customer_id, status, lines,
                total_minor, currency, placed_at, updated_at, version
           FROM order_summary WHERE customer_id = ANY({});
         ANALYZE bench_order_summary;",
        uuid_array(customers)
    )
}

/// One GET of every order (`SETUP_CONCURRENCY` at a time), with or without
/// the cache: how many came from each source (`x-read-source`, or the
/// status if not 200), and the bodies.
async fn read_all(
    client: &reqwest::Client,
    query_url: &str,
    ids: &[Uuid],
    cached: bool,
) -> anyhow::Result<(BTreeMap<String, usize>, Vec<Vec<u8>>)> {
    let base = query_url.trim_end_matches('/');
    let answers: Vec<anyhow::Result<(String, Vec<u8>)>> = futures::stream::iter(ids)
        .map(|id| async move {
            let mut request = client.get(format!("{base}/orders/{id}"));
            if !cached {
                request = request.header("cache-control", "no-cache");
            }
            let response = request.send().await?;
            let status = response.status();
            let source = response
                .headers()
                .get("x-read-source")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.bytes().await?.to_vec();
            Ok(match (status, source) {
                (reqwest::StatusCode::OK, Some(source)) => (source, body),
                (status, _) => (status.as_u16().to_string(), body),
            })
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    let mut sources = BTreeMap::new();
    let mut bodies = Vec::with_capacity(ids.len());
    for answer in answers {
        let (source, body) = answer?;
        *sources.entry(source).or_default() += 1;
        bodies.push(body);
    }
    Ok((sources, bodies))
}

/// Measures a future while sampling CPU over most of its measured window.
struct Meter {
    groups: Vec<(String, Processes)>,
    ticks: f64,
    cpus: usize,
    query_pid: Option<u32>,
}

impl Meter {
    /// Runs `measure`; from `warmup` + 10 % of `window` to 90 % of it, reads
    /// the CPU of every group (and query-service's RSS at the end).
    async fn during<T>(
        &self,
        measure: impl std::future::Future<Output = T>,
        warmup: Duration,
        window: Duration,
    ) -> (T, (CpuUsage, Option<u64>)) {
        let sample = async {
            tokio::time::sleep(warmup + window.mul_f64(0.1)).await;
            let start = CpuSnapshot::take(&self.groups);
            tokio::time::sleep(window.mul_f64(0.8)).await;
            let end = CpuSnapshot::take(&self.groups);
            let rss = self.query_pid.and_then(vm_rss_kib);
            (start.usage_until(&end, self.ticks, self.cpus), rss)
        };
        tokio::join!(measure, sample)
    }
}

/// Redis, the broker and both Postgres clusters (postmaster and children),
/// from the stack's pidfiles.
pub(crate) fn stack_processes(stack_dir: Option<&Path>) -> Vec<(String, Processes)> {
    let Some(dir) = stack_dir else {
        return vec![];
    };
    let mut groups = vec![];
    for (name, file, children) in [
        ("redis", "run/redis.pid", false),
        ("postgres replica", "pg-replica/postmaster.pid", true),
        ("postgres replica2", "pg-replica2/postmaster.pid", true),
        ("postgres primary", "pg-primary/postmaster.pid", true),
        ("broker", "run/broker.pid", false),
    ] {
        if let Some(pid) = procfs::pid_from_file(&dir.join(file)) {
            let processes = if children {
                Processes::WithChildren(pid)
            } else {
                Processes::One(pid)
            };
            groups.push((name.to_owned(), processes));
        }
    }
    groups
}

/// Resident set size (`VmRSS`) of `pid` in KiB.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    parse_status_kib(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmRSS:",
    )
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

pub(crate) async fn tool_versions() -> BTreeMap<String, String> {
    let mut tools = BTreeMap::new();
    for (name, args) in [
        ("wrk", &["-v"][..]),
        ("redis-benchmark", &["--version"][..]),
        ("pgbench", &["--version"][..]),
    ] {
        let version = match Command::new(name).args(args).output().await {
            Ok(out) => {
                // wrk -v prints its version and usage, and exits 1.
                let text = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                text.lines().next().unwrap_or_default().trim().to_owned()
            }
            Err(_) => String::new(),
        };
        tools.insert(name.to_owned(), version);
    }
    tools
}

// ------------------------------------------------------------------ wrk

/// Picks a random order of the ids file (first argument) for every request;
/// with `no-cache` (second argument) every request carries
/// `Cache-Control: no-cache`. Every request carries the `-H` headers
/// (`Authorization`): `wrk.format` only adds `wrk.headers` when it is given
/// no header table of its own, so the script starts from a copy of them.
/// Requests are formatted once per thread. At the end one JSON line with
/// the counts and the latency percentiles (µs).
pub(crate) const WRK_SCRIPT: &str = r#"-- written by `loadgen query-reads`
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

local prepared = {}
function init(args)
  local headers = {}
  for name, value in pairs(wrk.headers) do
    headers[name] = value
  end
  if args[2] == "no-cache" then
    headers["Cache-Control"] = "no-cache"
  end
  for id in io.lines(args[1]) do
    prepared[#prepared + 1] = wrk.format("GET", "/orders/" .. id, headers)
  end
  math.randomseed(os.time() * 1000 + thread_no)
end

function request()
  return prepared[math.random(#prepared)]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'LOADGEN_WRK {"requests":%.0f,"duration_us":%.0f,"connect":%.0f,"read":%.0f,' ..
    '"write":%.0f,"status":%.0f,"timeout":%.0f,"p50_us":%.0f,"p95_us":%.0f,' ..
    '"p99_us":%.0f,"max_us":%.0f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max))
end
"#;

/// What the script's `done` prints.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
struct WrkSummary {
    requests: u64,
    duration_us: u64,
    connect: u64,
    read: u64,
    write: u64,
    /// Answers that were not 2xx or 3xx.
    status: u64,
    timeout: u64,
    p50_us: f64,
    p95_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl WrkSummary {
    fn parse(stdout: &str) -> Option<Self> {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("LOADGEN_WRK "))
            .and_then(|json| serde_json::from_str(json).ok())
    }

    fn measurement(&self, name: &str, connections: usize) -> Measurement {
        let seconds = self.duration_us as f64 / 1e6;
        let ops = self.requests.saturating_sub(self.status);
        let errors = [
            ("non-2xx", self.status),
            ("connect", self.connect),
            ("read", self.read),
            ("write", self.write),
            ("timeout", self.timeout),
        ]
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(cause, n)| (cause.to_owned(), n))
        .collect();
        Measurement {
            name: name.to_owned(),
            clients: connections,
            seconds,
            ops,
            ops_per_s: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            latency: Latency {
                p50_ms: self.p50_us / 1000.0,
                p95_ms: self.p95_us / 1000.0,
                p99_ms: self.p99_us / 1000.0,
                max_ms: self.max_us / 1000.0,
            },
            errors,
        }
    }
}

pub(crate) struct Wrk {
    pub(crate) script: PathBuf,
    pub(crate) ids_file: PathBuf,
    pub(crate) connections: usize,
    pub(crate) threads: usize,
    /// The `Authorization` header's value, sent to every server measured.
    pub(crate) authorization: String,
}

impl Wrk {
    /// An unmeasured run (none if `warmup` is zero).
    pub(crate) async fn warm(
        &self,
        base_url: &str,
        no_cache: bool,
        warmup: Duration,
    ) -> anyhow::Result<()> {
        if !warmup.is_zero() {
            self.once(base_url, no_cache, warmup).await?;
        }
        Ok(())
    }

    pub(crate) async fn measure(
        &self,
        name: &str,
        base_url: &str,
        no_cache: bool,
        duration: Duration,
    ) -> anyhow::Result<Measurement> {
        Ok(self
            .once(base_url, no_cache, duration)
            .await?
            .measurement(name, self.connections))
    }

    async fn once(
        &self,
        base_url: &str,
        no_cache: bool,
        duration: Duration,
    ) -> anyhow::Result<WrkSummary> {
        let output = Command::new("wrk")
            .args(["-t", &self.threads.to_string()])
            .args(["-c", &self.connections.to_string()])
            .args(["-d", &format!("{}s", duration.as_secs().max(1))])
            .args(["-H", &format!("Authorization: {}", self.authorization)])
            .args(["--timeout", "10s", "-s"])
            .arg(&self.script)
            .arg(base_url.trim_end_matches('/'))
            .arg("--")
            .arg(&self.ids_file)
            .arg(if no_cache { "no-cache" } else { "cache" })
            .output()
            .await
            .context("running wrk (apt-get install wrk)")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        match WrkSummary::parse(&stdout) {
            Some(summary) if output.status.success() => Ok(summary),
            _ => bail!(
                "wrk failed ({}): {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }
}

// ------------------------------------------------------------------ redis-benchmark

/// `n` keys named as redis-benchmark's `-r n` names them
/// (`key:000000000000` …), each holding `body`.
pub(crate) async fn redis_seed(redis_url: &str, n: usize, body: &[u8]) -> anyhow::Result<()> {
    let script = "for i = 0, tonumber(ARGV[1]) - 1 do \
                  redis.call('SET', string.format('key:%012d', i), ARGV[2]) end \
                  return tonumber(ARGV[1])";
    redis_cli(
        redis_url,
        &[
            "EVAL",
            script,
            "0",
            &n.to_string(),
            &String::from_utf8_lossy(body),
        ],
    )
    .await
}

pub(crate) async fn redis_unseed(redis_url: &str, n: usize) -> anyhow::Result<()> {
    let script = "for i = 0, tonumber(ARGV[1]) - 1 do \
                  redis.call('DEL', string.format('key:%012d', i)) end \
                  return tonumber(ARGV[1])";
    redis_cli(redis_url, &["EVAL", script, "0", &n.to_string()]).await
}

async fn redis_cli(redis_url: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("redis-cli")
        .args(["-u", redis_url])
        .args(args)
        .output()
        .await
        .context("running redis-cli")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || stdout.starts_with("ERR") || stdout.contains("(error)") {
        bail!(
            "redis-cli {} failed: {stdout}{}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// `redis-benchmark -t get` over the seeded keys, with as many clients
/// and threads as wrk has connections and threads.
pub(crate) struct RedisBenchmark<'a> {
    pub(crate) url: &'a str,
    pub(crate) keys: usize,
    pub(crate) clients: usize,
    pub(crate) threads: usize,
}

impl RedisBenchmark<'_> {
    /// redis-benchmark runs a number of requests, not a time: an unmeasured
    /// run of about `warmup` tells the rate, and the measured run gets rate ×
    /// `duration` requests.
    pub(crate) async fn requests_for(
        &self,
        warmup: Duration,
        duration: Duration,
    ) -> anyhow::Result<u64> {
        let probe = ((50_000.0 * warmup.as_secs_f64()) as u64).max(20_000);
        let rate = self.get(probe).await?.ops_per_s.max(1_000.0);
        Ok(((rate * duration.as_secs_f64()) as u64).max(1_000))
    }

    pub(crate) async fn get(&self, requests: u64) -> anyhow::Result<Measurement> {
        let mut command = Command::new("redis-benchmark");
        command
            .args(["-u", self.url, "-t", "get", "--csv"])
            .args(["-c", &self.clients.to_string()])
            .args(["-n", &requests.to_string()])
            .args(["-r", &self.keys.to_string()]);
        if self.threads > 1 {
            command.args(["--threads", &self.threads.to_string()]);
        }
        let output = command
            .stdin(Stdio::null())
            .output()
            .await
            .context("running redis-benchmark (apt-get install redis-tools)")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        match parse_redis_csv(&stdout) {
            Some(row) if output.status.success() => Ok(row.measurement(self.clients, requests)),
            _ => bail!(
                "redis-benchmark failed ({}): {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }
}

/// The GET row of redis-benchmark's `--csv` output (latencies in ms).
#[derive(Debug, Clone, Copy, PartialEq)]
struct RedisRow {
    rps: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl RedisRow {
    fn measurement(&self, clients: usize, requests: u64) -> Measurement {
        Measurement {
            name: REDIS_GET.to_owned(),
            clients,
            seconds: requests as f64 / self.rps.max(f64::MIN_POSITIVE),
            ops: requests,
            ops_per_s: self.rps,
            latency: Latency {
                p50_ms: self.p50_ms,
                p95_ms: self.p95_ms,
                p99_ms: self.p99_ms,
                max_ms: self.max_ms,
            },
            errors: BTreeMap::new(),
        }
    }
}

/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",
/// "p95_latency_ms","p99_latency_ms","max_latency_ms"` then one row per test.
fn parse_redis_csv(text: &str) -> Option<RedisRow> {
    let mut lines = text.lines().map(|l| {
        l.split(',')
            .map(|f| f.trim().trim_matches('"').to_owned())
            .collect::<Vec<_>>()
    });
    let header = lines.next()?;
    let row = lines.find(|fields| fields.first().is_some_and(|t| t == "GET"))?;
    let field = |name: &str| -> Option<f64> {
        let i = header.iter().position(|h| h == name)?;
        row.get(i)?.parse().ok()
    };
    Some(RedisRow {
        rps: field("rps")?,
        p50_ms: field("p50_latency_ms")?,
        p95_ms: field("p95_latency_ms")?,
        p99_ms: field("p99_latency_ms")?,
        max_ms: field("max_latency_ms")?,
    })
}

// ------------------------------------------------------------------ bare server

/// The bare actix-web baseline: `GET /orders/{id}` (the id parsed as a
/// UUID, as query-service's route does) answered with `body` as JSON, no
/// middleware, no I/O; actix's default worker count (one per core), as
/// query-service. It gets the same requests, `Authorization` header
/// included, but does not verify the token: that and the rate limit are
/// part of what query-service costs over it. Run as `loadgen bare-server` in
/// a process of its own.
pub async fn bare_server(addr: SocketAddr, body: Vec<u8>) -> anyhow::Result<()> {
    let body = web::Bytes::from(body);
    HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(body.clone()))
            .route("/orders/{id}", web::get().to(bare_order))
            .route(
                "/health/ready",
                web::get().to(|| async { HttpResponse::Ok().finish() }),
            )
    })
    .bind(addr)
    .with_context(|| format!("binding {addr}"))?
    .run()
    .await?;
    Ok(())
}

async fn bare_order(id: web::Path<Uuid>, body: web::Data<web::Bytes>) -> HttpResponse {
    let _ = id.into_inner();
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body.get_ref().clone())
}

/// `loadgen bare-server` as a child process on a free port.
pub(crate) struct BareServer {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl BareServer {
    pub(crate) async fn start(body_file: &Path, log: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bare-server", "--addr", &addr, "--body-file"])
            .arg(body_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting loadgen bare-server")?;
        let url = format!("http://{addr}");
        let client = reqwest::Client::builder().no_proxy().build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("loadgen bare-server exited during startup ({status})");
            }
            if let Ok(response) = client.get(format!("{url}/health/ready")).send().await {
                if response.status().is_success() {
                    return Ok(Self { child, url });
                }
            }
            if Instant::now() >= deadline {
                bail!("loadgen bare-server was not ready at {url} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn stop(mut self) {
        self.child.kill().await.ok();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_wrk_script_summary_line() {
        let stdout = "Running 10s test @ http://127.0.0.1:1\n  2 threads and 64 connections\n\
            LOADGEN_WRK {\"requests\":200000,\"duration_us\":10000000,\"connect\":0,\"read\":0,\
            \"write\":0,\"status\":10,\"timeout\":2,\"p50_us\":1500,\"p95_us\":3000,\
            \"p99_us\":4500,\"max_us\":20000}\n";
        let summary = WrkSummary::parse(stdout).unwrap();
        let m = summary.measurement(CACHED, 64);
        assert_eq!(m.ops, 199_990, "non-2xx answers are not successes");
        assert!((m.ops_per_s - 19_999.0).abs() < 1e-6, "{m:?}");
        assert!((m.latency.p99_ms - 4.5).abs() < 1e-9);
        assert_eq!(m.errors.get("non-2xx"), Some(&10));
        assert_eq!(m.errors.get("timeout"), Some(&2));
        assert_eq!(m.errors.get("read"), None);
        assert_eq!(WrkSummary::parse("Running 10s test\n"), None);
    }

    #[test]
    fn parses_redis_benchmark_csv() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
            \"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
            \"GET\",\"53333.33\",\"0.784\",\"0.216\",\"0.751\",\"1.247\",\"1.567\",\"4.695\"\n";
        let row = parse_redis_csv(csv).unwrap();
        assert!((row.rps - 53_333.33).abs() < 1e-6);
        assert!((row.p99_ms - 1.567).abs() < 1e-9);
        let m = row.measurement(64, 100_000);
        assert_eq!(m.name, REDIS_GET);
        assert!((m.seconds - 1.875).abs() < 0.001, "{m:?}");
        assert_eq!(parse_redis_csv("garbage"), None);
    }

    #[test]
    fn counters_are_diffed_without_their_own_reads() {
        let before = Counters {
            redis: BTreeMap::from([("get".to_owned(), 10), ("info".to_owned(), 1)]),
            statements: BTreeMap::from([
                ("SELECT a".to_owned(), (5, 1.0)),
                ("SELECT x FROM pg_stat_statements".to_owned(), (1, 0.1)),
            ]),
        };
        let after = Counters {
            redis: BTreeMap::from([
                ("get".to_owned(), 15),
                ("info".to_owned(), 2),
                ("set".to_owned(), 3),
            ]),
            statements: BTreeMap::from([
                ("SELECT a".to_owned(), (105, 11.0)),
                ("SELECT b".to_owned(), (200, 4.0)),
                ("SELECT x FROM pg_stat_statements".to_owned(), (2, 0.2)),
            ]),
        };
        let (redis, statements) = before.until(&after);
        assert_eq!(
            redis,
            BTreeMap::from([("get".to_owned(), 5), ("set".to_owned(), 3)])
        );
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0].query, "SELECT b");
        assert_eq!(statements[1].calls, 100);
        assert!((statements[1].total_ms - 10.0).abs() < 1e-9);
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tquery-service\nVmHWM:\t   48212 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(40_000));
        assert_eq!(parse_status_kib("Name: x\n", "VmRSS:"), None);
    }

    #[test]
    fn uuid_arrays_are_postgres_literals() {
        let ids = [Uuid::from_u128(1), Uuid::from_u128(2)];
        assert_eq!(
            uuid_array(&ids),
            "'{00000000-0000-0000-0000-000000000001,00000000-0000-0000-0000-000000000002}'::uuid[]"
        );
    }

    #[actix_web::test]
    async fn the_bare_handler_answers_the_body_for_a_uuid_only() {
        use actix_web::test;
        let body = web::Bytes::from_static(b"{\"order_id\":\"x\"}");
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(body.clone()))
                .route("/orders/{id}", web::get().to(bare_order)),
        )
        .await;
        let ok = test::TestRequest::get()
            .uri("/orders/00000000-0000-0000-0000-000000000001")
            .to_request();
        let response = test::call_service(&app, ok).await;
        assert!(response.status().is_success());
        assert_eq!(test::read_body(response).await, body);
        let bad = test::TestRequest::get()
            .uri("/orders/not-a-uuid")
            .to_request();
        assert!(test::call_service(&app, bad)
            .await
            .status()
            .is_client_error());
    }
}
