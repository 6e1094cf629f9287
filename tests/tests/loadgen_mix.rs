//! `loadgen mix` against the real stack, as the built binary: an open-loop
//! run where every operation of the default mix succeeds at least once, no
//! request meets a 5xx, and freshness is measured; and a run stopped by
//! SIGTERM that still exits 0 with what it measured.
//!
//! Needs `target/debug/loadgen` (`cargo build -p loadgen --bin loadgen`;
//! `make test` builds every binary first).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{stack, workspace_binary, JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET};
use serde_json::Value;

/// `loadgen mix` against the test stack, with its token settings and a
/// small seed.
fn loadgen_mix(args: &[&str], json: &Path) -> Command {
    let stack = stack();
    let mut command = Command::new(workspace_binary("loadgen"));
    command
        .arg("mix")
        .args(["--command-url", &stack.command_url])
        .args(["--query-url", &stack.query_url])
        .args([
            "--products",
            "20",
            "--customers",
            "50",
            "--seed-orders",
            "40",
        ])
        .args(args)
        .arg("--json")
        .arg(json)
        .env("JWT_ALGORITHM", "HS256")
        .env("JWT_SECRET", JWT_SECRET)
        .env("JWT_ISSUER", JWT_ISSUER)
        .env("JWT_AUDIENCE", JWT_AUDIENCE)
        .env_remove("JWT_SECRET_FILE")
        .env_remove("COMMAND_URL")
        .env_remove("QUERY_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn json_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-mix-{name}-{}.json", uuid::Uuid::new_v4()))
}

/// Waits for `child` at most `limit`, killing it after that.
fn wait(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "loadgen mix did not finish within {limit:?}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn read_results(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::remove_file(path).ok();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn an_open_loop_run_succeeds_at_every_operation_and_measures_freshness() {
    let json = json_path("open-loop");
    let child = loadgen_mix(
        &["--rate", "40", "--duration", "3", "--freshness-sample", "1"],
        &json,
    )
    .spawn()
    .unwrap();
    let output = wait(child, Duration::from_secs(90));
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    let log = format!("{table}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{log}");
    eprintln!("{table}");
    let results = read_results(&json);

    assert_eq!(results["mode"], "open-loop");
    assert_eq!(results["interrupted"], false, "{log}");
    let measured = results["measured_s"].as_f64().unwrap();
    assert!((2.5..=3.5).contains(&measured), "{measured}");
    // Every operation of the default mix (all twelve) got through.
    let mix = results["mix"].as_object().unwrap();
    assert_eq!(mix.len(), 12, "{mix:?}");
    let operations = results["operations"].as_object().unwrap();
    for op in mix.keys() {
        let stats = &operations[op];
        assert!(
            stats["ok"].as_u64().unwrap() >= 1,
            "{op} never succeeded: {stats}\n{log}"
        );
        let server_errors: Vec<&String> = stats["errors"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|key| key.starts_with('5'))
            .collect();
        assert!(server_errors.is_empty(), "{op}: {stats}\n{log}");
    }
    // 40/s for 3 s: every arrival is accounted for, sent or not.
    let scheduled: u64 = operations
        .values()
        .map(|s| s["scheduled"].as_u64().unwrap())
        .sum();
    assert_eq!(scheduled, 120, "{log}");
    for kind in ["commands", "reads"] {
        let stats = &results[kind];
        let errors: u64 = stats["errors"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(
            stats["ok"].as_u64().unwrap() + errors,
            stats["scheduled"].as_u64().unwrap(),
            "{kind}: {stats}"
        );
    }

    let freshness = &results["freshness"];
    assert!(
        freshness["samples"].as_u64().unwrap() > 0,
        "{freshness}\n{log}"
    );
    let p50 = freshness["latency"]["p50_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 < 5_000.0, "{freshness}");
    assert_eq!(freshness["poll_interval_ms"].as_f64(), Some(5.0));
    assert!(table.contains("freshness"), "{table}");
    assert!(table.contains("place_order"), "{table}");
}

#[test]
fn sigterm_stops_the_run_promptly_and_still_writes_the_results() {
    let json = json_path("sigterm");
    let mut child = loadgen_mix(&["--rate", "20", "--duration", "120"], &json)
        .spawn()
        .unwrap();
    // Wait for the first progress line: seeding is done, the load runs.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains(" sent ") {
                tx.send(()).ok();
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("a progress line within 60 s");
    std::thread::sleep(Duration::from_secs(1));
    let stopped = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = wait(child, Duration::from_secs(30));
    let log = reader.join().unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        stopped.elapsed()
    );
    assert!(output.status.success(), "{log}");
    let results = read_results(&json);
    assert_eq!(results["interrupted"], true);
    let measured = results["measured_s"].as_f64().unwrap();
    assert!(measured > 0.5 && measured < 30.0, "{measured}");
    assert!(
        results["commands"]["ok"].as_u64().unwrap() + results["reads"]["ok"].as_u64().unwrap() > 0
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("INTERRUPTED"));
}
