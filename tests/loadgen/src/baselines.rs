//! The suite's baselines, measured once at the start and once at the end of
//! `make bench` (`loadgen baselines --label start|end`) on the stack whose
//! environment is loaded: how much the machine itself moved during the run.
//! Every workload step also measures the baseline it is read against,
//! interleaved with it; these two snapshots are what tells whether the
//! machine drifted between steps (see [`drift`]: more than
//! [`DRIFT_LIMIT_PCT`] in either direction flags the run).
//!
//! Measured, each once, with the same tools and the same shapes as the
//! steps: pgbench single-row inserts at 1 and 16 clients and 100-row
//! transactions at 1 client on the primary; pgbench primary-key selects at
//! 16 and 64 clients on replica 1; redis-benchmark GET at 64 clients; the
//! bare actix-web handler under wrk at 64 connections; raw rdkafka produce
//! and consume on the broker ([`kafka`]).

pub mod kafka;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::machine::Machine;
use crate::pgbench::{self, Baseline, HUNDRED_ROW_INSERT, PK_SELECT, SINGLE_INSERT};
use crate::query_reads::{self, BareServer, RedisBenchmark, Wrk};
use crate::stats::Measurement;
use crate::write_path::one_line;
use crate::{auth, sql};

/// A drift beyond this (percent, either direction) between the start and
/// the end baselines flags the run: its ratios may compare a workload with
/// a baseline measured on a different machine state.
pub const DRIFT_LIMIT_PCT: f64 = 25.0;

/// pgbench single-row insert client counts (the write-path step's).
pub const INSERT_CLIENTS: [usize; 2] = [1, 16];
/// pgbench 100-row transaction clients (the catch-up verdict's).
pub const HUNDRED_ROW_CLIENTS: usize = 1;
/// pgbench primary-key select client counts (the query-reads step's).
pub const PK_SELECT_CLIENTS: [usize; 2] = [16, 64];
/// HTTP connections and redis-benchmark clients (the query-reads step's).
pub const CONNECTIONS: usize = 64;
/// wrk and redis-benchmark threads (the query-reads step's).
pub const THREADS: usize = 2;
/// Rows of the primary-key select table, ids of the wrk script and keys of
/// redis-benchmark (the query-reads step's default order count).
pub const ROWS: usize = 2000;

/// Which end of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Start,
    End,
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Start => "start",
            Self::End => "end",
        })
    }
}

#[derive(Debug, Clone)]
pub struct BaselinesOptions {
    pub label: Label,
    pub primary_url: String,
    /// Replica 1: where the primary-key selects run, as in query-reads.
    pub replica_url: String,
    pub redis_url: String,
    /// Bootstrap servers of the stack's broker.
    pub brokers: String,
    /// The broker's storage engine, recorded only (the caller starts it).
    pub broker_storage: Option<String>,
    pub warmup: Duration,
    pub duration: Duration,
    /// Longest wait for replication and for the consumer.
    pub timeout: Duration,
    pub work_dir: PathBuf,
}

/// One snapshot of every baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineResults {
    pub label: Label,
    pub machine: Machine,
    /// The exact command line that produced these results.
    pub command: String,
    pub warmup_s: f64,
    pub duration_s: f64,
    #[serde(default)]
    pub broker_storage: Option<String>,
    /// Versions of wrk, redis-benchmark and pgbench.
    pub tools: BTreeMap<String, String>,
    /// pgbench (ops = transactions), redis-benchmark, wrk and rdkafka
    /// produce, in the order measured.
    pub measurements: Vec<Measurement>,
    pub kafka: Option<kafka::KafkaBaseline>,
    /// Baselines that could not be measured, with why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failures: BTreeMap<String, String>,
}

/// One baseline's rate, in the unit it is read in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Measurement name (`pgbench_single_insert`, ...).
    pub name: String,
    pub clients: usize,
    pub label: String,
    /// `tx/s`, `rows/s`, `req/s` or `msgs/s`.
    pub unit: String,
    pub per_s: f64,
}

impl Rate {
    fn key(&self) -> (&str, usize) {
        (&self.name, self.clients)
    }
}

/// A human name and the unit of a baseline measurement.
pub fn describe(name: &str, clients: usize) -> (String, &'static str) {
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    match name {
        n if n == SINGLE_INSERT.name => (
            format!(
                "pgbench single-row insert, {}",
                plural(clients, "client", "clients")
            ),
            "tx/s",
        ),
        n if n == HUNDRED_ROW_INSERT.name => (
            format!(
                "pgbench 100-row transactions, {}",
                plural(clients, "client", "clients")
            ),
            "rows/s",
        ),
        n if n == PK_SELECT.name => (
            format!(
                "pgbench primary-key select (replica), {}",
                plural(clients, "client", "clients")
            ),
            "tx/s",
        ),
        query_reads::REDIS_GET => (
            format!(
                "redis-benchmark GET, {}",
                plural(clients, "client", "clients")
            ),
            "req/s",
        ),
        query_reads::BARE => (
            format!(
                "bare actix-web handler (wrk), {}",
                plural(clients, "connection", "connections")
            ),
            "req/s",
        ),
        kafka::PRODUCE => (
            "rdkafka produce (idempotent, acks=all)".to_owned(),
            "msgs/s",
        ),
        kafka::CONSUME => ("rdkafka consume (fresh group)".to_owned(), "msgs/s"),
        other => (format!("{other}, {clients}"), "ops/s"),
    }
}

impl BaselineResults {
    /// Every baseline's rate in measurement order (100-row transactions in
    /// rows/s, the consumer last).
    pub fn rates(&self) -> Vec<Rate> {
        let consume = self.kafka.as_ref().map(|k| k.consume_measurement());
        self.measurements
            .iter()
            .chain(consume.as_ref())
            .map(|m| {
                let (label, unit) = describe(&m.name, m.clients);
                let rows = if m.name == HUNDRED_ROW_INSERT.name {
                    HUNDRED_ROW_INSERT.rows_per_transaction as f64
                } else {
                    1.0
                };
                Rate {
                    name: m.name.clone(),
                    clients: m.clients,
                    label,
                    unit: unit.to_owned(),
                    per_s: m.ops_per_s * rows,
                }
            })
            .collect()
    }

    /// A plain-text table of the rates, for the console.
    pub fn table(&self) -> String {
        let mut out = format!("baselines ({}):\n", self.label);
        for m in &self.measurements {
            out.push_str(&format!("  {}\n", one_line(m)));
        }
        if let Some(k) = &self.kafka {
            out.push_str(&format!("  {}\n", consume_line(k)));
        }
        for (what, why) in &self.failures {
            out.push_str(&format!("  FAILED {what}: {why}\n"));
        }
        out
    }
}

fn consume_line(k: &kafka::KafkaBaseline) -> String {
    format!(
        "{} c=1: {:.0} msgs/s ({} messages in {:.2} s, group joined after {:.2} s)",
        kafka::CONSUME,
        k.consume.messages_per_s,
        k.consume.messages,
        k.consume.seconds,
        k.consume.first_message_after_s
    )
}

/// One baseline's start and end rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    pub name: String,
    pub clients: usize,
    pub label: String,
    pub unit: String,
    pub start: Option<f64>,
    pub end: Option<f64>,
    /// (end − start) / start, in percent; None unless both were measured.
    pub drift_pct: Option<f64>,
    /// The drift exceeds [`DRIFT_LIMIT_PCT`] in either direction.
    pub flagged: bool,
}

/// Start against end for every baseline either of them measured (start's
/// order, then any only the end has); a snapshot that is missing leaves
/// its side empty and no drift.
pub fn drift(start: Option<&BaselineResults>, end: Option<&BaselineResults>) -> Vec<Drift> {
    let start_rates = start.map(BaselineResults::rates).unwrap_or_default();
    let end_rates = end.map(BaselineResults::rates).unwrap_or_default();
    let mut rows: Vec<Drift> = start_rates
        .iter()
        .map(|s| {
            let e = end_rates.iter().find(|e| e.key() == s.key());
            drift_row(s, Some(s.per_s), e.map(|e| e.per_s))
        })
        .collect();
    for e in &end_rates {
        if !start_rates.iter().any(|s| s.key() == e.key()) {
            rows.push(drift_row(e, None, Some(e.per_s)));
        }
    }
    rows
}

fn drift_row(rate: &Rate, start: Option<f64>, end: Option<f64>) -> Drift {
    let drift_pct = match (start, end) {
        (Some(s), Some(e)) if s > 0.0 => Some(drift_percent(s, e)),
        _ => None,
    };
    Drift {
        name: rate.name.clone(),
        clients: rate.clients,
        label: rate.label.clone(),
        unit: rate.unit.clone(),
        start,
        end,
        drift_pct,
        flagged: drift_pct.is_some_and(exceeds_limit),
    }
}

/// (end − start) / start in percent.
pub fn drift_percent(start: f64, end: f64) -> f64 {
    (end - start) / start * 100.0
}

/// Whether a drift (percent) is beyond [`DRIFT_LIMIT_PCT`], either way.
pub fn exceeds_limit(drift_pct: f64) -> bool {
    drift_pct.abs() > DRIFT_LIMIT_PCT
}

/// Measures every baseline once. A baseline that fails is recorded in
/// `failures` and the others still run; the caller decides what a failure
/// means.
pub async fn run(options: &BaselinesOptions, command: String) -> anyhow::Result<BaselineResults> {
    std::fs::create_dir_all(&options.work_dir)?;
    let work_dir = std::path::absolute(&options.work_dir)?;
    let machine = Machine::read(&options.primary_url).await;
    let tools = query_reads::tool_versions().await;
    let mut results = BaselineResults {
        label: options.label,
        machine,
        command,
        warmup_s: options.warmup.as_secs_f64(),
        duration_s: options.duration.as_secs_f64(),
        broker_storage: options.broker_storage.clone(),
        tools,
        measurements: Vec::new(),
        kafka: None,
        failures: BTreeMap::new(),
    };
    let run_id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let label = options.label;

    // pgbench on the primary.
    let runs = INSERT_CLIENTS
        .iter()
        .map(|&c| (SINGLE_INSERT, c))
        .chain([(HUNDRED_ROW_INSERT, HUNDRED_ROW_CLIENTS)]);
    for (baseline, clients) in runs {
        let what = format!("{} c={clients}", baseline.name);
        eprintln!("== baselines {label}: {what}");
        let measured = pgbench_run(options, &options.primary_url, &baseline, clients, &[]).await;
        results.record(&what, measured);
    }

    // pgbench primary-key selects on the replica, over synthetic rows
    // shaped like order_summary's.
    eprintln!("== baselines {label}: pgbench primary-key select table ({ROWS} rows)");
    match fill_pk_table(options).await {
        Ok(()) => {
            for clients in PK_SELECT_CLIENTS {
                let what = format!("{} c={clients}", PK_SELECT.name);
                eprintln!("== baselines {label}: {what}");
                let variables = [("rows", ROWS.to_string())];
                let measured = pgbench_run(
                    options,
                    &options.replica_url,
                    &PK_SELECT,
                    clients,
                    &variables,
                )
                .await;
                results.record(&what, measured);
            }
        }
        Err(error) => {
            results
                .failures
                .insert(PK_SELECT.name.to_owned(), format!("{error:#}"));
        }
    }

    // redis-benchmark and the bare handler answer the same body.
    let body = order_body();
    eprintln!("== baselines {label}: redis-benchmark GET c={CONNECTIONS}");
    let measured = redis_get(options, &body).await;
    results.record(query_reads::REDIS_GET, measured);

    eprintln!("== baselines {label}: bare actix-web handler under wrk c={CONNECTIONS}");
    let measured = bare_handler(options, &work_dir, &body).await;
    results.record(query_reads::BARE, measured);

    eprintln!("== baselines {label}: rdkafka produce, then consume with a fresh group");
    let kafka_options = kafka::KafkaOptions {
        brokers: options.brokers.clone(),
        topic_prefix: format!("baselines-{label}-{run_id}"),
        warmup: options.warmup,
        duration: options.duration,
        consume_timeout: options.timeout,
    };
    match kafka::run(&kafka_options).await {
        Ok(k) => {
            eprintln!("   {}", one_line(&k.produce));
            eprintln!("   {}", consume_line(&k));
            results.measurements.push(k.produce.clone());
            results.kafka = Some(k);
        }
        Err(error) => {
            eprintln!("   failed: {error}");
            results
                .failures
                .insert("rdkafka".to_owned(), error.to_string());
        }
    }
    Ok(results)
}

impl BaselineResults {
    fn record(&mut self, what: &str, measured: anyhow::Result<Measurement>) {
        match measured {
            Ok(m) => {
                eprintln!("   {}", one_line(&m));
                self.measurements.push(m);
            }
            Err(error) => {
                eprintln!("   failed: {error:#}");
                self.failures.insert(what.to_owned(), format!("{error:#}"));
            }
        }
    }
}

async fn pgbench_run(
    options: &BaselinesOptions,
    url: &str,
    baseline: &Baseline,
    clients: usize,
    variables: &[(&str, String)],
) -> anyhow::Result<Measurement> {
    pgbench::setup(&options.primary_url, baseline).await?;
    Ok(pgbench::run(
        url,
        baseline,
        clients,
        options.warmup,
        options.duration,
        &options.work_dir,
        variables,
    )
    .await?)
}

/// [`ROWS`] rows numbered 1.. of the shape query-reads copies from
/// `order_summary` (two lines each), on the primary; returns once the
/// replica has them.
async fn fill_pk_table(options: &BaselinesOptions) -> anyhow::Result<()> {
    pgbench::setup(&options.primary_url, &PK_SELECT).await?;
    sql::run(&options.primary_url, &fill_pk_table_sql(ROWS)).await?;
    let deadline = Instant::now() + options.timeout;
    loop {
        let count: usize = sql::json(
            &options.replica_url,
            "SELECT count(*) FROM bench_order_summary WHERE n IS NOT NULL",
        )
        .await
        .unwrap_or(0);
        if count == ROWS {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the replica has {count} of {ROWS} rows in bench_order_summary");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fill_pk_table_sql(rows: usize) -> String {
    format!(
        "TRUNCATE bench_order_summary;
         INSERT INTO bench_order_summary
         SELECT n, gen_random_uuid(), md5('customer' || n % 20)::uuid, 'placed',
                jsonb_build_array(
                  jsonb_build_object('product_id', gen_random_uuid(), 'quantity', 1 + n % 4,
                    'unit_price', jsonb_build_object('amount_minor', 1250, 'currency', 'EUR'),
                    'amount', jsonb_build_object('amount_minor', 1250 * (1 + n % 4),
                                                 'currency', 'EUR')),
                  jsonb_build_object('product_id', gen_random_uuid(), 'quantity', 2,
                    'unit_price', jsonb_build_object('amount_minor', 2590, 'currency', 'EUR'),
                    'amount', jsonb_build_object('amount_minor', 5180, 'currency', 'EUR'))),
                1250 * (1 + n % 4) + 5180, 'EUR', now(), now(), 2
           FROM generate_series(1, {rows}) AS n;
         ANALYZE bench_order_summary;"
    )
}

/// An order summary with two lines, as query-service answers it (about the
/// median body size of the query-reads step's seeded orders).
fn order_body() -> Vec<u8> {
    let money = |minor: i64| json!({"amount_minor": minor, "currency": "EUR"});
    let body = json!({
        "order_id": Uuid::new_v4(),
        "customer_id": Uuid::new_v4(),
        "status": "placed",
        "lines": [
            {"product_id": Uuid::new_v4(), "quantity": 3, "unit_price": money(1250),
             "amount": money(3750)},
            {"product_id": Uuid::new_v4(), "quantity": 2, "unit_price": money(2590),
             "amount": money(5180)},
        ],
        "total": money(8930),
        "placed_at": "2026-01-01T12:00:00.000000Z",
        "updated_at": "2026-01-01T12:00:00.000000Z",
        "version": 2,
    });
    body.to_string().into_bytes()
}

async fn redis_get(options: &BaselinesOptions, body: &[u8]) -> anyhow::Result<Measurement> {
    query_reads::redis_seed(&options.redis_url, ROWS, body).await?;
    let redis = RedisBenchmark {
        url: &options.redis_url,
        keys: ROWS,
        clients: CONNECTIONS,
        threads: THREADS,
    };
    let measured = async {
        let requests = redis.requests_for(options.warmup, options.duration).await?;
        redis.get(requests).await
    }
    .await;
    query_reads::redis_unseed(&options.redis_url, ROWS).await?;
    measured
}

async fn bare_handler(
    options: &BaselinesOptions,
    work_dir: &std::path::Path,
    body: &[u8],
) -> anyhow::Result<Measurement> {
    let ids_file = work_dir.join("baselines-ids.txt");
    std::fs::write(
        &ids_file,
        (0..ROWS)
            .map(|_| format!("{}\n", Uuid::new_v4()))
            .collect::<String>(),
    )?;
    let script = work_dir.join("baselines.lua");
    std::fs::write(&script, query_reads::WRK_SCRIPT)?;
    let body_file = work_dir.join("baselines-bare-body.json");
    std::fs::write(&body_file, body)?;
    let bare = BareServer::start(&body_file, &work_dir.join("bare-server.log")).await?;
    // The same request as query-reads sends both servers, token included.
    let wrk = Wrk {
        script,
        ids_file,
        connections: CONNECTIONS,
        threads: THREADS,
        authorization: auth::authorization()?,
    };
    let measured = async {
        wrk.warm(&bare.url, false, options.warmup).await?;
        wrk.measure(query_reads::BARE, &bare.url, false, options.duration)
            .await
    }
    .await;
    bare.stop().await;
    measured
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stats::Latency;

    fn m(name: &str, clients: usize, ops_per_s: f64) -> Measurement {
        Measurement {
            name: name.to_owned(),
            clients,
            seconds: 1.0,
            ops: ops_per_s as u64,
            ops_per_s,
            latency: Latency {
                p50_ms: 1.0,
                p95_ms: 2.0,
                p99_ms: 3.0,
                max_ms: 4.0,
            },
            errors: BTreeMap::new(),
        }
    }

    fn results(label: Label, measurements: Vec<Measurement>) -> BaselineResults {
        BaselineResults {
            label,
            machine: Machine::default(),
            command: "make bench".to_owned(),
            warmup_s: 2.0,
            duration_s: 10.0,
            broker_storage: Some("memory".to_owned()),
            tools: BTreeMap::new(),
            measurements,
            kafka: None,
            failures: BTreeMap::new(),
        }
    }

    #[test]
    fn drift_is_end_against_start_in_percent() {
        assert!((drift_percent(1000.0, 1100.0) - 10.0).abs() < 1e-9);
        assert!((drift_percent(1000.0, 700.0) + 30.0).abs() < 1e-9);
        assert!(!exceeds_limit(25.0));
        assert!(exceeds_limit(25.1));
        assert!(exceeds_limit(-25.1));
    }

    #[test]
    fn a_drift_beyond_25_percent_either_way_is_flagged() {
        let start = results(
            Label::Start,
            vec![
                m(SINGLE_INSERT.name, 1, 500.0),
                m(SINGLE_INSERT.name, 16, 10_000.0),
                m(HUNDRED_ROW_INSERT.name, 1, 600.0),
                m(query_reads::BARE, 64, 40_000.0),
            ],
        );
        let end = results(
            Label::End,
            vec![
                m(SINGLE_INSERT.name, 1, 520.0),
                m(SINGLE_INSERT.name, 16, 7_000.0),
                m(HUNDRED_ROW_INSERT.name, 1, 800.0),
                m(query_reads::REDIS_GET, 64, 40_000.0),
            ],
        );
        let rows = drift(Some(&start), Some(&end));
        let row = |name: &str, clients: usize| {
            rows.iter()
                .find(|d| d.name == name && d.clients == clients)
                .unwrap()
        };
        assert!(!row(SINGLE_INSERT.name, 1).flagged);
        assert!(row(SINGLE_INSERT.name, 16).flagged, "-30 % is flagged");
        let hundred = row(HUNDRED_ROW_INSERT.name, 1);
        assert!(hundred.flagged, "+33 % is flagged");
        assert_eq!(hundred.unit, "rows/s");
        assert_eq!(hundred.start, Some(60_000.0), "rows/s, not tx/s");
        let bare = row(query_reads::BARE, 64);
        assert_eq!(
            (bare.end, bare.drift_pct, bare.flagged),
            (None, None, false)
        );
        let redis = row(query_reads::REDIS_GET, 64);
        assert_eq!(redis.start, None);
        assert_eq!(rows.len(), 5);
        let alone = drift(Some(&start), None);
        assert_eq!(alone.len(), 4);
        assert!(alone.iter().all(|d| d.end.is_none() && !d.flagged));
    }

    #[test]
    fn results_round_trip_through_json() {
        let r = results(Label::End, vec![m(PK_SELECT.name, 64, 30_000.0)]);
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"label\":\"end\""), "{text}");
        let back: BaselineResults = serde_json::from_str(&text).unwrap();
        assert_eq!(back.rates(), r.rates());
        assert_eq!(
            back.rates()[0].label,
            "pgbench primary-key select (replica), 64 clients"
        );
    }

    #[test]
    fn the_bare_body_is_about_the_median_order_summary() {
        let body = order_body();
        assert!((450..750).contains(&body.len()), "{}", body.len());
    }
}
