//! `docs/BENCHMARKS.md`: generated sections between markers, so that the
//! hand-written analysis around them survives a re-run.

use crate::stats::{median, Measurement};
use crate::write_path::{WritePathResults, APPEND_RELAY_OFF};
use crate::{append, pgbench};

/// The medians of one (name, clients) series over the repetitions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Series {
    pub ops_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn series(measurements: &[Measurement], name: &str, clients: usize) -> Option<Series> {
    let runs: Vec<&Measurement> = measurements
        .iter()
        .filter(|m| m.name == name && m.clients == clients)
        .collect();
    Some(Series {
        ops_per_s: median(runs.iter().map(|m| m.ops_per_s))?,
        p50_ms: median(runs.iter().map(|m| m.latency.p50_ms))?,
        p99_ms: median(runs.iter().map(|m| m.latency.p99_ms))?,
    })
}

/// A target of the issue, read against one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub target: &'static str,
    pub measured: String,
    pub met: bool,
}

/// The write-path targets: appends at 16 clients ≥ 0.6 × pgbench single
/// inserts at 16; append p50 at 1 client ≤ pgbench p50 + 1 ms; relay publish
/// rate ≥ 3 × the sustained append rate.
pub fn write_path_verdicts(results: &WritePathResults) -> Vec<Verdict> {
    let m = &results.measurements;
    let mut verdicts = Vec::new();
    if let (Some(app), Some(pg)) = (
        series(m, append::NAME, 16),
        series(m, pgbench::SINGLE_INSERT.name, 16),
    ) {
        let ratio = app.ops_per_s / pg.ops_per_s;
        verdicts.push(Verdict {
            target: "command appends/s at 16 clients ≥ 0.6 × pgbench single-row inserts/s at 16",
            measured: format!("{ratio:.2}× ({:.0} / {:.0})", app.ops_per_s, pg.ops_per_s),
            met: ratio >= 0.6,
        });
    }
    if let (Some(app), Some(pg)) = (
        series(m, append::NAME, 1),
        series(m, pgbench::SINGLE_INSERT.name, 1),
    ) {
        let over = app.p50_ms - pg.p50_ms;
        verdicts.push(Verdict {
            target: "command append p50 at 1 client ≤ pgbench single-row insert p50 + 1 ms",
            measured: format!(
                "{:.2} ms vs {:.2} ms (+{over:.2} ms)",
                app.p50_ms, pg.p50_ms
            ),
            met: over <= 1.0,
        });
    }
    let sustained = m
        .iter()
        .filter(|m| m.name == append::NAME)
        .map(|m| m.clients)
        .max()
        .and_then(|c| series(m, append::NAME, c));
    if let (Some(relay), Some(app)) = (
        median(results.drains.iter().map(|d| d.events_per_s)),
        sustained,
    ) {
        let ratio = relay / app.ops_per_s;
        verdicts.push(Verdict {
            target: "relay publish rate ≥ 3 × the sustained append rate",
            measured: format!("{ratio:.1}× ({relay:.0} / {:.0} events/s)", app.ops_per_s),
            met: ratio >= 3.0,
        });
    }
    verdicts
}

fn label(name: &str) -> &str {
    match name {
        n if n == pgbench::SINGLE_INSERT.name => "pgbench single-row insert (baseline)",
        n if n == append::NAME => "command append over HTTP, relay running",
        APPEND_RELAY_OFF => "command append over HTTP, relay off (backlog)",
        other => other,
    }
}

/// The write-path section's body (without markers).
pub fn render_write_path(results: &WritePathResults) -> String {
    let machine = &results.machine;
    let mut out = String::new();
    out.push_str(&format!(
        "Run {} at commit `{}`: {} CPUs ({}), {} GiB, Linux {}, PostgreSQL {}.\n\n",
        machine.date,
        machine.git_commit,
        machine.cpus,
        machine.cpu_model,
        machine.memory_gib,
        machine.kernel,
        machine.postgres
    ));
    out.push_str(&format!(
        "Command: `{}` ({} repetitions, interleaved; medians over them).\n\n",
        results.command, results.repetitions
    ));
    out.push_str("| measurement | clients | ops/s | p50 ms | p99 ms | ops/s of each run |\n");
    out.push_str("|---|---:|---:|---:|---:|---|\n");
    let mut keys: Vec<(&str, usize)> = Vec::new();
    for m in &results.measurements {
        if !keys.contains(&(m.name.as_str(), m.clients)) {
            keys.push((m.name.as_str(), m.clients));
        }
    }
    keys.sort_by_key(|&(name, clients)| (clients, name != pgbench::SINGLE_INSERT.name, name));
    for (name, clients) in keys {
        let Some(s) = series(&results.measurements, name, clients) else {
            continue;
        };
        let runs: Vec<String> = results
            .measurements
            .iter()
            .filter(|m| m.name == name && m.clients == clients)
            .map(|m| {
                let errors: u64 = m.errors.values().sum();
                if errors > 0 {
                    format!("{:.0} ({errors} errors)", m.ops_per_s)
                } else {
                    format!("{:.0}", m.ops_per_s)
                }
            })
            .collect();
        out.push_str(&format!(
            "| {} | {clients} | {:.0} | {:.2} | {:.2} | {} |\n",
            label(name),
            s.ops_per_s,
            s.p50_ms,
            s.p99_ms,
            runs.join(", ")
        ));
    }
    if let Some(rate) = median(results.drains.iter().map(|d| d.events_per_s)) {
        let runs: Vec<String> = results
            .drains
            .iter()
            .map(|d| {
                format!(
                    "{:.0} ({} events in {:.1} s)",
                    d.events_per_s, d.events, d.seconds
                )
            })
            .collect();
        out.push_str(&format!(
            "| relay publish, draining a backlog | | {rate:.0} events/s | | | {} |\n",
            runs.join(", ")
        ));
    }
    out.push_str("\n| target | measured | |\n|---|---|---|\n");
    for v in write_path_verdicts(results) {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            v.target,
            v.measured,
            if v.met { "met" } else { "**missed**" }
        ));
    }
    out
}

#[derive(Debug, thiserror::Error)]
#[error("docs/BENCHMARKS.md has no `<!-- {0}:begin -->` … `<!-- {0}:end -->` markers")]
pub struct MissingMarkers(pub String);

/// Replaces the text between `<!-- {section}:begin -->` and
/// `<!-- {section}:end -->` in `doc` with `body`.
pub fn splice(doc: &str, section: &str, body: &str) -> Result<String, MissingMarkers> {
    let begin = format!("<!-- {section}:begin -->");
    let end = format!("<!-- {section}:end -->");
    let missing = || MissingMarkers(section.to_owned());
    let start = doc.find(&begin).ok_or_else(missing)? + begin.len();
    let stop = start + doc[start..].find(&end).ok_or_else(missing)?;
    Ok(format!("{}\n{}{}", &doc[..start], body, &doc[stop..]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::machine::Machine;
    use crate::relay::Drain;
    use crate::stats::Latency;

    fn measurement(name: &str, clients: usize, ops_per_s: f64, p50_ms: f64) -> Measurement {
        Measurement {
            name: name.to_owned(),
            clients,
            seconds: 10.0,
            ops: (ops_per_s * 10.0) as u64,
            ops_per_s,
            latency: Latency {
                p50_ms,
                p95_ms: p50_ms * 2.0,
                p99_ms: p50_ms * 3.0,
                max_ms: p50_ms * 10.0,
            },
            errors: Default::default(),
        }
    }

    fn results(append16: [f64; 3], relay: f64) -> WritePathResults {
        let pg = pgbench::SINGLE_INSERT.name;
        let mut measurements = vec![];
        for (i, a) in append16.into_iter().enumerate() {
            measurements.push(measurement(pg, 1, 400.0, 2.0 + i as f64 * 0.1));
            measurements.push(measurement(append::NAME, 1, 350.0, 2.5));
            measurements.push(measurement(pg, 16, 10_000.0, 1.5));
            measurements.push(measurement(append::NAME, 16, a, 2.0));
        }
        WritePathResults {
            machine: Machine::default(),
            command: "make bench".to_owned(),
            repetitions: 3,
            measurements,
            drains: vec![Drain {
                name: "relay_publish".to_owned(),
                events: 1000,
                seconds: 1.0,
                events_per_s: relay,
            }],
        }
    }

    #[test]
    fn targets_are_read_against_medians() {
        // Median of 5k, 7k, 9k is 7k = 0.7 × 10k: met, although one run missed.
        let verdicts = write_path_verdicts(&results([5_000.0, 7_000.0, 9_000.0], 30_000.0));
        assert_eq!(verdicts.len(), 3);
        assert!(verdicts.iter().all(|v| v.met), "{verdicts:?}");
        assert!(verdicts[0].measured.starts_with("0.70×"), "{verdicts:?}");
        // p50 2.5 ms vs pgbench median 2.1 ms.
        assert!(verdicts[1].measured.contains("+0.40 ms"), "{verdicts:?}");
    }

    #[test]
    fn missed_targets_are_reported_as_missed() {
        let verdicts = write_path_verdicts(&results([5_000.0, 5_500.0, 9_000.0], 10_000.0));
        assert!(!verdicts[0].met, "0.55× must miss 0.6×");
        assert!(!verdicts[2].met, "10k / 5.5k = 1.8× must miss 3×");
        let table = render_write_path(&results([5_000.0, 5_500.0, 9_000.0], 10_000.0));
        assert!(table.contains("**missed**"), "{table}");
    }

    #[test]
    fn splice_replaces_only_the_marked_section() {
        let doc = "intro\n<!-- w:begin -->\nold\n<!-- w:end -->\noutro\n";
        assert_eq!(
            splice(doc, "w", "new\n").unwrap(),
            "intro\n<!-- w:begin -->\nnew\n<!-- w:end -->\noutro\n"
        );
        assert!(splice(doc, "x", "new").is_err());
    }
}
