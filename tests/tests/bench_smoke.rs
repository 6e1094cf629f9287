//! The benchmark suite's CI smoke mode: `deploy/local/bench` with
//! `BENCH_SMOKE=1` runs every step (start baselines, write path, projector
//! catch-up, query reads, freshness, cost growth, end baselines, summary)
//! with tiny sizes on a stack of its own (free ports, temp dirs), using the
//! debug binaries `make test` builds. The numbers mean nothing; what is
//! checked is that the suite runs end to end and that its summary has a
//! measured row for every workload of the issue and both baseline
//! snapshots.
//!
//! Every step must exist for this to pass: the freshness step is
//! `loadgen freshness` (with `loadgen mix`), the cost-growth step is
//! `loadgen cost-growth`. A step that is missing or fails makes the script
//! exit non-zero, and the assertion prints the tail of its output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{free_port, repo_root, workspace_binary};

/// The suite's smoke run takes well under 2 minutes on an idle 2-core
/// machine; this allows for a machine several times slower.
const TIMEOUT: Duration = Duration::from_secs(900);

/// Each workload of the issue and the summary rows (`key`) that measure
/// it, with the step that produces them.
const WORKLOADS: [(&str, &str, &[&str]); 9] = [
    ("appends at 1 client", "write-path", &["appends@1"]),
    ("appends at 16 clients", "write-path", &["appends@16"]),
    ("relay rate", "write-path", &["relay_rate"]),
    (
        "projector catch-up",
        "projector-catchup",
        &["catchup", "catchup_vs_appends"],
    ),
    ("cached reads", "query-reads", &["cached_reads"]),
    ("uncached reads", "query-reads", &["uncached_reads"]),
    (
        "freshness p50/p99",
        "freshness",
        &["freshness_p50", "freshness_p99"],
    ),
    (
        "RSS per service",
        "freshness",
        &["rss_command-service", "rss_projector", "rss_query-service"],
    ),
    (
        "cost growth",
        "cost-growth",
        &["cost_growth_append_p99", "cost_growth_history_query"],
    ),
];

/// Every baseline each snapshot measures: (name, clients).
const BASELINES: [(&str, u64); 9] = [
    ("pgbench_single_insert", 1),
    ("pgbench_single_insert", 16),
    ("pgbench_100_row_insert", 1),
    ("pgbench_pk_select", 16),
    ("pgbench_pk_select", 64),
    ("redis_benchmark_get", 64),
    ("bare_actix_get_order", 64),
    ("rdkafka_produce", 1),
    ("rdkafka_consume", 1),
];

/// Stops and deletes the smoke stack even if the script did not (killed on
/// timeout, or the test panicked), then deletes the temp dirs.
struct Cleanup {
    root: PathBuf,
    stack_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("deploy/local/stack"))
            .arg("clean")
            .env("STACK_DIR", &self.stack_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::env::var_os("BENCH_SMOKE_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn the_benchmark_suite_runs_end_to_end_in_smoke_mode() {
    for bin in ["command-service", "projector", "query-service", "loadgen"] {
        workspace_binary(bin);
    }
    let root = std::env::temp_dir().join(format!("bench-smoke-{}", uuid::Uuid::new_v4()));
    let stack_dir = root.join("stack");
    let out = root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let _cleanup = Cleanup {
        root: root.clone(),
        stack_dir: stack_dir.clone(),
    };

    let log = root.join("bench.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(repo_root().join("deploy/local/bench"));
    // The developer's own BENCH_* settings must not leak into the run.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BENCH_") {
            command.env_remove(name);
        }
    }
    command
        .current_dir(repo_root())
        .env("BENCH_SMOKE", "1")
        .env("SKIP_INSTALL", "1")
        .env("SKIP_BUILD", "1")
        .env("BENCH_STACK_DIR", &stack_dir)
        .env("BENCH_OUTPUT_DIR", &out);
    for port in [
        "BENCH_PG_PRIMARY_PORT",
        "BENCH_PG_REPLICA_PORT",
        "BENCH_PG_REPLICA2_PORT",
        "BENCH_REDIS_PORT",
        "BENCH_BROKER_PORT",
        "BENCH_COMMAND_PORT",
        "BENCH_QUERY_PORT",
        "BENCH_PROJECTOR_PORT",
    ] {
        command.env(port, free_port().to_string());
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("starting deploy/local/bench");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!(
                "deploy/local/bench (smoke) still running after {TIMEOUT:?}; output:\n{}",
                tail(&log, 80)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "bench smoke: {status} after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "deploy/local/bench (smoke) failed ({status}); output:\n{}",
        tail(&log, 80)
    );

    let summary_path = out.join("summary.json");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&summary_path)
            .unwrap_or_else(|e| panic!("{}: {e}", summary_path.display())),
    )
    .unwrap();
    let rows = summary["rows"].as_array().expect("summary rows");
    for (workload, step, keys) in WORKLOADS {
        for key in keys {
            let row = rows
                .iter()
                .find(|r| r["key"] == *key)
                .unwrap_or_else(|| panic!("no summary row {key:?} for {workload}"));
            assert_ne!(
                row["status"], "not_measured",
                "{workload} ({key}) was not measured: the {step} step produced no result \
                 ({}); sources: {}",
                row["measured_text"], summary["sources"]
            );
            assert!(row["measured"].is_number(), "{key}: {row}");
        }
    }
    assert!(summary["flagged"].is_boolean(), "{}", summary["flagged"]);

    for snapshot in ["start", "end"] {
        let rates = summary["baselines"][snapshot]
            .as_array()
            .unwrap_or_else(|| panic!("no {snapshot} baselines in the summary"));
        for (name, clients) in BASELINES {
            let rate = rates
                .iter()
                .find(|r| r["name"] == name && r["clients"] == clients)
                .unwrap_or_else(|| panic!("{snapshot} baselines lack {name} at {clients}"));
            assert!(
                rate["per_s"].as_f64().is_some_and(|v| v > 0.0),
                "{snapshot} {name}: {rate}"
            );
        }
    }
    let drift = summary["baselines"]["drift"].as_array().unwrap();
    assert!(
        drift.len() >= BASELINES.len() && drift.iter().all(|d| d["drift_pct"].is_number()),
        "every baseline has a drift: {drift:?}"
    );

    // The blocks were spliced into the run's own copy, never into docs/.
    let copy = std::fs::read_to_string(out.join("BENCHMARKS.md")).unwrap();
    assert!(copy.contains("Command: `make bench-smoke`"), "{copy}");
    let docs = std::fs::read_to_string(repo_root().join("docs/BENCHMARKS.md")).unwrap();
    assert!(!docs.contains("Command: `make bench-smoke`"));
}
