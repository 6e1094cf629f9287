//! pgbench baselines, run against the same Postgres primary in the same run
//! as the workloads they are compared with.
//!
//! pgbench is run with `-M prepared` (as sqlx prepares its statements) and a
//! per-transaction log (`-l`), from which the same warm-up-excluded window
//! and the same HDR percentiles are computed as for the project's workloads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::stats::{latency_histogram, Latency, Measurement};

/// A pgbench workload: its setup SQL and its one-transaction script.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    pub name: &'static str,
    /// Run once with psql before the first run (idempotent).
    pub setup: &'static str,
    pub script: &'static str,
    /// Rows one transaction of `script` writes (rows/s = tps × this).
    pub rows_per_transaction: u64,
}

/// One autocommitted single-row INSERT into a table shaped like `events`
/// (identity key, text id, json payload, timestamp): the cheapest durable
/// write Postgres offers, and what a command's append is held against.
pub const SINGLE_INSERT: Baseline = Baseline {
    name: "pgbench_single_insert",
    setup: "CREATE TABLE IF NOT EXISTS bench_single_insert (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                aggregate_id text NOT NULL,
                payload json NOT NULL,
                recorded_at timestamptz NOT NULL DEFAULT now())",
    script: "INSERT INTO bench_single_insert (aggregate_id, payload) \
             VALUES (:client_id, '{\"price\":{\"amount_minor\":101,\"currency\":\"EUR\"}}');\n",
    rows_per_transaction: 1,
};

/// One transaction inserting 100 rows with one `INSERT … SELECT` into a table
/// of the same shape: the cheapest way to write rows in bulk short of COPY,
/// and what the projector's batch transactions are held against (a batch
/// writes several hundred read-model rows in one transaction).
pub const HUNDRED_ROW_INSERT: Baseline = Baseline {
    name: "pgbench_100_row_insert",
    setup: "CREATE TABLE IF NOT EXISTS bench_rows (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                aggregate_id text NOT NULL,
                payload json NOT NULL,
                recorded_at timestamptz NOT NULL DEFAULT now())",
    script: "INSERT INTO bench_rows (aggregate_id, payload) \
             SELECT (:client_id)::text || '-' || g, \
                    '{\"price\":{\"amount_minor\":101,\"currency\":\"EUR\"}}' \
               FROM generate_series(1, 100) AS g;\n",
    rows_per_transaction: 100,
};

/// One primary-key lookup of a row shaped like `order_summary` (the same
/// nine columns, `lines` as jsonb), read-only: what query-service's
/// uncached `GET /orders/{id}` is held against. Run on the replica, where
/// query-service reads. The table is filled by the caller with copies of
/// real `order_summary` rows numbered 1..`rows` (`n` replaces the uuid key
/// so pgbench can pick a random row); pass `-D rows=N` (see [`run`]).
pub const PK_SELECT: Baseline = Baseline {
    name: "pgbench_pk_select",
    setup: "CREATE TABLE IF NOT EXISTS bench_order_summary (
                n           integer PRIMARY KEY,
                order_id    uuid        NOT NULL,
                customer_id uuid        NOT NULL,
                status      text        NOT NULL,
                lines       jsonb       NOT NULL,
                total_minor bigint      NOT NULL,
                currency    text        NOT NULL,
                placed_at   timestamptz NOT NULL,
                updated_at  timestamptz NOT NULL,
                version     bigint      NOT NULL)",
    script: "\\set n random(1, :rows)\n\
             SELECT order_id, customer_id, status, lines, total_minor, currency, \
                    placed_at, updated_at, version \
               FROM bench_order_summary WHERE n = :n;\n",
    rows_per_transaction: 1,
};

#[derive(Debug, thiserror::Error)]
pub enum PgbenchError {
    #[error("running {program}: {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("reading pgbench's transaction log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pgbench's transaction log has no transaction in the measured window")]
    EmptyWindow,
}

/// Creates the baseline's table (once per run is enough).
pub async fn setup(database_url: &str, baseline: &Baseline) -> Result<(), PgbenchError> {
    run_tool(
        "psql",
        Command::new("psql").arg(database_url).args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            baseline.setup,
        ]),
    )
    .await
}

/// Runs `baseline` at `clients` for warm-up + duration and measures the
/// window after the warm-up. `variables` are the script's pgbench variables
/// (`-D name=value`), if it has any.
pub async fn run(
    database_url: &str,
    baseline: &Baseline,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    work_dir: &Path,
    variables: &[(&str, String)],
) -> Result<Measurement, PgbenchError> {
    let log_error = |path: &Path| {
        let path = path.to_owned();
        move |source| PgbenchError::Log { path, source }
    };
    let run_dir = work_dir.join(format!("{}-c{clients}-{}", baseline.name, uuid_suffix()));
    std::fs::create_dir_all(&run_dir).map_err(log_error(&run_dir))?;
    let script = run_dir.join("script.sql");
    std::fs::write(&script, baseline.script).map_err(log_error(&script))?;
    let total = (warmup + duration).as_secs().max(1);
    let threads = clients.clamp(1, 2);
    run_tool(
        "pgbench",
        Command::new("pgbench")
            .args(["-n", "-M", "prepared", "-l", "--log-prefix"])
            .arg(run_dir.join("tx"))
            .arg("-f")
            .arg(&script)
            .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
            .args(["-T", &total.to_string()])
            .args(
                variables
                    .iter()
                    .flat_map(|(name, value)| ["-D".to_owned(), format!("{name}={value}")]),
            )
            .arg(database_url),
    )
    .await?;

    let mut lines = Vec::new();
    let entries = std::fs::read_dir(&run_dir).map_err(log_error(&run_dir))?;
    for entry in entries {
        let path = entry.map_err(log_error(&run_dir))?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("tx."))
        {
            let text = std::fs::read_to_string(&path).map_err(log_error(&path))?;
            lines.extend(text.lines().filter_map(parse_log_line));
        }
    }
    let measurement = window(baseline.name, clients, &lines, warmup, duration)?;
    std::fs::remove_dir_all(&run_dir).ok();
    Ok(measurement)
}

fn uuid_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

async fn run_tool(program: &'static str, command: &mut Command) -> Result<(), PgbenchError> {
    let output = command
        .output()
        .await
        .map_err(|source| PgbenchError::Spawn { program, source })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(PgbenchError::Failed {
            program,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// One line of pgbench's per-transaction log: when the transaction ended
/// (µs since the epoch) and how long it took (µs). Failed transactions
/// (`failed`/`skipped` instead of a latency) are not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Transaction {
    ended_us: u64,
    latency_us: u64,
}

/// `client_id transaction_no time script_no time_epoch time_us [...]`.
fn parse_log_line(line: &str) -> Option<Transaction> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let latency_us = fields.get(2)?.parse().ok()?;
    let epoch: u64 = fields.get(4)?.parse().ok()?;
    let micros: u64 = fields.get(5)?.parse().ok()?;
    Some(Transaction {
        ended_us: epoch * 1_000_000 + micros,
        latency_us,
    })
}

/// The transactions that started after the warm-up and ended within
/// `duration` of it: the same window the HTTP workloads measure.
fn window(
    name: &str,
    clients: usize,
    transactions: &[Transaction],
    warmup: Duration,
    duration: Duration,
) -> Result<Measurement, PgbenchError> {
    let first_start = transactions
        .iter()
        .map(|t| t.ended_us.saturating_sub(t.latency_us))
        .min()
        .ok_or(PgbenchError::EmptyWindow)?;
    let from = first_start + warmup.as_micros() as u64;
    let to = from + duration.as_micros() as u64;
    let mut histogram = latency_histogram();
    for t in transactions {
        if t.ended_us.saturating_sub(t.latency_us) >= from && t.ended_us <= to {
            histogram.saturating_record(t.latency_us.max(1));
        }
    }
    if histogram.is_empty() {
        return Err(PgbenchError::EmptyWindow);
    }
    let seconds = duration.as_secs_f64();
    Ok(Measurement {
        name: name.to_owned(),
        clients,
        seconds,
        ops: histogram.len(),
        ops_per_s: histogram.len() as f64 / seconds,
        latency: Latency::from_histogram(&histogram),
        errors: BTreeMap::new(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_transaction_log_lines() {
        assert_eq!(
            parse_log_line("0 199 2241 0 1175850568 995598"),
            Some(Transaction {
                ended_us: 1_175_850_568_995_598,
                latency_us: 2241
            })
        );
        assert_eq!(parse_log_line("3 7 failed 0 1175850569 2663"), None);
        assert_eq!(parse_log_line(""), None);
    }

    #[test]
    fn only_the_window_after_the_warmup_is_measured() {
        // One transaction per millisecond for 3 s, each taking 500 µs.
        let transactions: Vec<Transaction> = (0..3000)
            .map(|i| Transaction {
                ended_us: 1_000_000_000 + i * 1000 + 500,
                latency_us: 500,
            })
            .collect();
        let m = window(
            "b",
            1,
            &transactions,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(m.ops, 1000);
        assert!((m.ops_per_s - 1000.0).abs() < f64::EPSILON);
        assert!((m.latency.p50_ms - 0.5).abs() < 0.001, "{:?}", m.latency);
    }
}
