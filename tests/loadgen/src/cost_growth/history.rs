//! The customer-history read: `GET /customers/{id}/orders` through
//! query-service from a replica (closed loop, a few clients), and the SQL of
//! the same query on the replica under `EXPLAIN (ANALYZE, BUFFERS)`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{SubsecRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::data;
use crate::auth;
use crate::sql::{self, SqlError};
use crate::stats::{latency_histogram, median, Latency, Measurement};

/// Name of the HTTP measurement in reports.
pub const NAME: &str = "query_customer_history_uncached";
/// query-service's default page size (`routes::customers::DEFAULT_LIMIT`);
/// it asks for one row more to know whether another page exists.
pub const DEFAULT_LIMIT: u32 = 500;
/// query-service's default range: the 90 days up to one day from now
/// (`params::TimeRange::resolve`).
const DEFAULT_RANGE_DAYS: i64 = 90;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("http client: {0}")]
    Client(#[from] reqwest::Error),
    #[error(transparent)]
    Token(#[from] auth::TokenError),
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error("GET {url} answered {status} from {read_source:?}: {body}")]
    Unexpected {
        url: String,
        status: reqwest::StatusCode,
        /// Its `x-read-source`.
        read_source: Option<String>,
        body: String,
    },
    #[error("EXPLAIN output without {0}")]
    Explain(&'static str),
}

/// The URL of a customer's history with query-service's defaults.
fn history_url(base: &str, customer: &str) -> String {
    format!("{}/customers/{customer}/orders", base.trim_end_matches('/'))
}

/// One client per measured connection: keep-alive, loadgen's token.
pub fn client() -> Result<reqwest::Client, HistoryError> {
    Ok(auth::authorized_client()?
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Reads `customer`'s first page once from a replica and returns how many
/// items it had; anything but a 200 from a replica is an error.
pub async fn check(
    client: &reqwest::Client,
    base: &str,
    customer: &str,
) -> Result<usize, HistoryError> {
    let url = history_url(base, customer);
    let response = client
        .get(&url)
        .header("cache-control", "no-cache")
        .send()
        .await?;
    let status = response.status();
    let source = read_source(&response);
    let body = response.text().await?;
    let items = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["items"].as_array().map(Vec::len));
    match items {
        Some(items)
            if status == reqwest::StatusCode::OK
                && source.as_deref().is_some_and(|s| s.starts_with("replica")) =>
        {
            Ok(items)
        }
        _ => Err(HistoryError::Unexpected {
            url,
            status,
            read_source: source,
            body: body.chars().take(500).collect(),
        }),
    }
}

fn read_source(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-read-source")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `clients` closed-loop clients reading the histories of `customers` in
/// turn for `warmup + duration`; the latency of the answers inside the
/// measured window. A 200 not served by a replica counts as an error
/// (`source:<x-read-source>`).
pub async fn measure(
    base: &str,
    customers: &[String],
    clients: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Measurement, HistoryError> {
    let started = Instant::now();
    let window_start = started + warmup;
    let window_end = window_start + duration;
    let mut tasks = Vec::with_capacity(clients);
    for n in 0..clients {
        let client = client()?;
        let urls: Vec<String> = customers.iter().map(|c| history_url(base, c)).collect();
        tasks.push(tokio::spawn(drive(
            client,
            urls,
            n,
            window_start,
            window_end,
        )));
    }
    let mut histogram = latency_histogram();
    let mut errors = BTreeMap::new();
    for result in futures::future::join_all(tasks).await {
        // A panicking client task is a bug in this tool: surface it.
        let (h, e) = result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        histogram.add(&h).ok();
        for (cause, count) in e {
            *errors.entry(cause).or_default() += count;
        }
    }
    let seconds = duration.as_secs_f64();
    Ok(Measurement {
        name: NAME.to_owned(),
        clients,
        seconds,
        ops: histogram.len(),
        ops_per_s: histogram.len() as f64 / seconds,
        latency: Latency::from_histogram(&histogram),
        errors,
    })
}

async fn drive(
    client: reqwest::Client,
    urls: Vec<String>,
    offset: usize,
    window_start: Instant,
    window_end: Instant,
) -> (hdrhistogram::Histogram<u64>, BTreeMap<String, u64>) {
    let mut histogram = latency_histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut n = offset;
    loop {
        let sent = Instant::now();
        if sent >= window_end || urls.is_empty() {
            return (histogram, errors);
        }
        let url = &urls[n % urls.len()];
        n += 1;
        let outcome = match client
            .get(url)
            .header("cache-control", "no-cache")
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status();
                let source = read_source(&response).unwrap_or_default();
                // Read the body so the connection can be reused.
                match response.bytes().await {
                    Ok(_) if status == reqwest::StatusCode::OK && source.starts_with("replica") => {
                        Ok(())
                    }
                    Ok(_) if status == reqwest::StatusCode::OK => Err(format!("source:{source}")),
                    Ok(_) => Err(status.as_u16().to_string()),
                    Err(_) => Err("io".to_owned()),
                }
            }
            Err(_) => Err("io".to_owned()),
        };
        let answered = Instant::now();
        if sent < window_start || answered > window_end {
            continue;
        }
        match outcome {
            Ok(()) => {
                let micros = answered.duration_since(sent).as_micros();
                histogram.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
            }
            Err(cause) => *errors.entry(cause).or_default() += 1,
        }
    }
}

/// The history query's time in the replica's executor, the median of
/// several `EXPLAIN ANALYZE` runs, and what the plan looked like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlTiming {
    pub customer: String,
    /// Execution time of each run, ms.
    pub runs_ms: Vec<f64>,
    pub execution_ms: f64,
    pub planning_ms: f64,
    /// Of the last run.
    pub rows: u64,
    pub shared_hit: u64,
    pub shared_read: u64,
    /// Node types, identical siblings folded
    /// (`Limit > Sort > Append > 4× Seq Scan`).
    pub shape: String,
    /// Leaf scans in the plan (partitions not pruned).
    pub scans: u64,
}

/// One `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` of the history query.
#[derive(Debug, Clone, PartialEq)]
struct Explained {
    execution_ms: f64,
    planning_ms: f64,
    rows: u64,
    shared_hit: u64,
    shared_read: u64,
    shape: String,
    scans: u64,
}

/// Runs the history query of `customer` with query-service's default range
/// and page size `runs` times on `replica_url` (one session each, as pooled
/// connections are) after one unmeasured run.
pub async fn explain(
    replica_url: &str,
    customer: &str,
    runs: usize,
) -> Result<SqlTiming, HistoryError> {
    let to = Utc::now().trunc_subsecs(6) + TimeDelta::days(1);
    let from = to - TimeDelta::days(DEFAULT_RANGE_DAYS);
    let statement = data::explain_history_sql(customer, from, to, DEFAULT_LIMIT + 1);
    let mut all = Vec::with_capacity(runs);
    for run in 0..=runs {
        let value: serde_json::Value = sql::json(replica_url, &statement).await?;
        if run > 0 {
            all.push(parse_explain(&value)?);
        }
    }
    let last = all.last().cloned().ok_or(HistoryError::Explain("a run"))?;
    Ok(SqlTiming {
        customer: customer.to_owned(),
        runs_ms: all.iter().map(|e| e.execution_ms).collect(),
        execution_ms: median(all.iter().map(|e| e.execution_ms)).unwrap_or(f64::NAN),
        planning_ms: median(all.iter().map(|e| e.planning_ms)).unwrap_or(f64::NAN),
        rows: last.rows,
        shared_hit: last.shared_hit,
        shared_read: last.shared_read,
        shape: last.shape,
        scans: last.scans,
    })
}

fn parse_explain(value: &serde_json::Value) -> Result<Explained, HistoryError> {
    let top = value.get(0).ok_or(HistoryError::Explain("a plan"))?;
    let plan = top.get("Plan").ok_or(HistoryError::Explain("\"Plan\""))?;
    let number = |v: &serde_json::Value, key: &'static str| {
        v.get(key)
            .and_then(serde_json::Value::as_f64)
            .ok_or(HistoryError::Explain(key))
    };
    let scans = count_scans(plan);
    Ok(Explained {
        execution_ms: number(top, "Execution Time")?,
        planning_ms: number(top, "Planning Time")?,
        rows: number(plan, "Actual Rows")? as u64,
        shared_hit: number(plan, "Shared Hit Blocks")? as u64,
        shared_read: number(plan, "Shared Read Blocks")? as u64,
        shape: shape(plan),
        scans,
    })
}

fn node_type(node: &serde_json::Value) -> &str {
    node.get("Node Type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("?")
}

fn children(node: &serde_json::Value) -> &[serde_json::Value] {
    node.get("Plans")
        .and_then(serde_json::Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Scan nodes in the plan: one per partition not pruned (two for a bitmap
/// scan).
fn count_scans(node: &serde_json::Value) -> u64 {
    u64::from(node_type(node).contains("Scan"))
        + children(node).iter().map(count_scans).sum::<u64>()
}

/// `Limit > Sort > Append > 4× (Bitmap Heap Scan > Bitmap Index Scan)`:
/// the plan as node types, identical consecutive siblings folded, so that
/// one more partition scanned changes a count, not the shape; siblings
/// that differ are listed in brackets.
fn shape(node: &serde_json::Value) -> String {
    let mut groups: Vec<(String, usize)> = Vec::new();
    for child in children(node) {
        let child = shape(child);
        match groups.last_mut() {
            Some((last, n)) if *last == child => *n += 1,
            _ => groups.push((child, 1)),
        }
    }
    let kind = node_type(node);
    if groups.is_empty() {
        return kind.to_owned();
    }
    let listed: Vec<String> = groups
        .iter()
        .map(|(child, n)| match n {
            1 => child.clone(),
            n if child.contains(" > ") => format!("{n}× ({child})"),
            n => format!("{n}× {child}"),
        })
        .collect();
    if listed.len() == 1 {
        format!("{kind} > {}", listed[0])
    } else {
        format!("{kind} > [{}]", listed.join(", "))
    }
}

/// The customers of the probe step, as the primary has them.
pub async fn customers_of(database_url: &str) -> Result<Vec<String>, SqlError> {
    sql::json(
        database_url,
        "SELECT coalesce(json_agg(c ORDER BY c), '[]')
           FROM (SELECT DISTINCT customer_id::text AS c FROM order_summary) AS s",
    )
    .await
}

/// A customer of step `step` with the standard history: customer 0.
pub async fn step_customer(database_url: &str, tag: &str, step: u32) -> Result<String, SqlError> {
    sql::run(
        database_url,
        &format!("SELECT md5('{tag}-{step}-customer-' || 0)::uuid"),
    )
    .await
}

/// A fresh tag for the ids of one run: 8 hex digits.
pub fn run_tag() -> String {
    Uuid::new_v4().simple().to_string()[..8].to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PLAN: &str = r#"[{"Plan": {"Node Type": "Limit", "Actual Rows": 27,
        "Shared Hit Blocks": 31, "Shared Read Blocks": 2,
        "Plans": [{"Node Type": "Append", "Plans": [
            {"Node Type": "Index Scan", "Index Name": "customer_order_history_p2026_09_pkey"},
            {"Node Type": "Index Scan", "Index Name": "customer_order_history_p2026_10_pkey"},
            {"Node Type": "Index Scan", "Index Name": "customer_order_history_p2026_11_pkey"},
            {"Node Type": "Bitmap Heap Scan", "Plans": [{"Node Type": "Bitmap Index Scan"}]}]}]},
        "Planning Time": 0.41, "Execution Time": 0.093}]"#;

    #[test]
    fn explain_output_gives_time_buffers_and_shape() {
        let value: serde_json::Value = serde_json::from_str(PLAN).unwrap();
        let e = parse_explain(&value).unwrap();
        assert!((e.execution_ms - 0.093).abs() < 1e-9);
        assert!((e.planning_ms - 0.41).abs() < 1e-9);
        assert_eq!(e.rows, 27);
        assert_eq!((e.shared_hit, e.shared_read), (31, 2));
        assert_eq!(
            e.shape,
            "Limit > Append > [3× Index Scan, Bitmap Heap Scan > Bitmap Index Scan]"
        );
        assert_eq!(e.scans, 5);
    }

    #[test]
    fn identical_partition_scans_fold_into_a_count() {
        let scan =
            r#"{"Node Type": "Bitmap Heap Scan", "Plans": [{"Node Type": "Bitmap Index Scan"}]}"#;
        let plan: serde_json::Value = serde_json::from_str(&format!(
            r#"{{"Node Type": "Limit", "Plans": [{{"Node Type": "Sort", "Plans": [
                {{"Node Type": "Append", "Plans": [{scan}, {scan}, {scan}, {scan}]}}]}}]}}"#
        ))
        .unwrap();
        assert_eq!(
            shape(&plan),
            "Limit > Sort > Append > 4× (Bitmap Heap Scan > Bitmap Index Scan)"
        );
        assert_eq!(count_scans(&plan), 8);
    }

    #[test]
    fn explain_output_without_times_is_an_error() {
        let value: serde_json::Value =
            serde_json::from_str(r#"[{"Plan": {"Node Type": "Limit"}}]"#).unwrap();
        assert!(matches!(
            parse_explain(&value),
            Err(HistoryError::Explain(_))
        ));
    }
}
