//! The report: ranked findings, then what else was seen, as text for people
//! and as JSON (findings plus the observations behind them) for tools.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::diagnosis::{diagnose, Finding, Severity, Thresholds};
use crate::observations::{median, DatabaseRole, Observations};

/// Everything `doctor` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Ranked, most pressing first.
    pub findings: Vec<Finding>,
    pub thresholds: Thresholds,
    pub observations: Observations,
}

impl Report {
    /// Diagnoses `observations`.
    pub fn new(observations: Observations, thresholds: Thresholds) -> Self {
        Self {
            findings: diagnose(&observations, &thresholds),
            thresholds,
            observations,
        }
    }

    /// The text form.
    pub fn render(&self) -> String {
        let o = &self.observations;
        let mut out = String::new();
        let mut seen: Vec<String> = o.databases.iter().map(|d| d.name.clone()).collect();
        seen.extend(o.services.iter().map(|s| s.service.clone()));
        if let Some(c) = &o.consumer {
            seen.push(format!("kafka group {}", c.group));
        }
        if o.redis.is_some() {
            seen.push("redis".to_owned());
        }
        let _ = writeln!(
            out,
            "doctor: {:.1} s window, {} sampling rounds; read {}",
            o.window_secs,
            o.rounds,
            if seen.is_empty() {
                "nothing".to_owned()
            } else {
                seen.join(", ")
            }
        );
        let _ = writeln!(out);
        if self.findings.is_empty() {
            let _ = writeln!(
                out,
                "No bottleneck above the thresholds in this window (is load running?)."
            );
        }
        for f in &self.findings {
            let severity = match f.severity {
                Severity::Critical => "CRITICAL",
                Severity::High => "HIGH",
                Severity::Warning => "warning",
            };
            let category = serde_json::to_value(f.category)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let kind = serde_json::to_value(f.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{}. [{severity}, {category}] {kind}: {} (score {:.1})",
                f.rank, f.subject, f.score
            );
            let _ = writeln!(out, "   slow:  {}", f.slow);
            let _ = writeln!(out, "   why:   {}", f.why);
            for e in &f.evidence {
                let _ = writeln!(out, "   seen:  {e}");
            }
            let _ = writeln!(out, "   lever: {}", f.lever);
            let _ = writeln!(out);
        }
        self.render_context(&mut out);
        out
    }

    /// What was seen besides the findings: busiest routes, statements,
    /// replica lag, consumer lag; notes.
    fn render_context(&self, out: &mut String) {
        let o = &self.observations;
        let window = o.window_secs.max(0.001);
        let mut routes: Vec<(String, &crate::observations::RouteActivity)> = o
            .services
            .iter()
            .flat_map(|s| s.routes.iter().map(move |r| (s.service.clone(), r)))
            .collect();
        routes.sort_by(|a, b| b.1.requests.total_cmp(&a.1.requests));
        if !routes.is_empty() {
            let _ = writeln!(out, "Requests in the window (busiest first):");
            for (service, r) in routes.iter().take(12) {
                let _ = writeln!(
                    out,
                    "  {service:<16} {:<6} {:<34} {:>7.1}/s  p50 {:>7}  p99 {:>7}  5xx {:.0}",
                    r.method,
                    r.route,
                    r.requests / window,
                    ms(r.p50_ms),
                    ms(r.p99_ms),
                    r.server_errors
                );
            }
            let _ = writeln!(out);
        }
        for db in &o.databases {
            let top: Vec<_> = db.statements.iter().take(3).collect();
            if top.is_empty() && db.replication.is_none() {
                continue;
            }
            let _ = write!(out, "{} ({})", db.name, db.address);
            if let (Some(peak), Some(max)) = (db.peak_connections, db.max_connections) {
                let _ = write!(out, ": {peak}/{max} connections");
            }
            if db.role == DatabaseRole::Replica {
                if let Some(r) = &db.replication {
                    let _ = write!(
                        out,
                        ", replay lag median {:.2} s, recovery_min_apply_delay {} ms",
                        median(&r.lag_secs).unwrap_or(0.0),
                        r.apply_delay_ms.unwrap_or(0)
                    );
                }
            }
            let _ = writeln!(out);
            for s in top {
                let query: String = s
                    .query
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .chars()
                    .take(90)
                    .collect();
                let _ = writeln!(
                    out,
                    "  {:>8.1} ms total {:>6} calls {:>7.2} ms mean  {query}",
                    s.total_ms,
                    s.calls,
                    s.mean_ms()
                );
            }
        }
        if let Some(c) = &o.consumer {
            if let (Some(first), Some(last)) = (c.samples.first(), c.samples.last()) {
                let _ = writeln!(
                    out,
                    "kafka group {}: lag {} → {} over {} partitions",
                    c.group,
                    first.lag(),
                    last.lag(),
                    c.partitions
                );
            }
        }
        if let Some(r) = &o.redis {
            let _ = writeln!(
                out,
                "redis: {} keyspace hits, {} misses, {} evicted",
                r.hits, r.misses, r.evicted
            );
        }
        if !o.notes.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "Notes:");
            for note in &o.notes {
                let _ = writeln!(out, "  {note}");
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Counters are deltas over the window only; gauges were sampled every round. \
             The doctor cannot see CPU, disk or network directly: see docs/adr/0015-bottleneck-doctor.md."
        );
    }
}

fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v >= 100.0 => format!("{v:.0}ms"),
        Some(v) => format!("{v:.1}ms"),
        None => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observations::{PoolObservation, ServiceObservation};

    #[test]
    fn text_names_rank_subject_and_lever_and_json_round_trips() {
        let observations = Observations {
            window_secs: 5.0,
            rounds: 10,
            services: vec![ServiceObservation {
                service: "query-service".to_owned(),
                pools: vec![PoolObservation {
                    pool: "replica-1".to_owned(),
                    max: 1,
                    in_use: vec![1; 10],
                }],
                ..ServiceObservation::default()
            }],
            ..Observations::default()
        };
        let report = Report::new(observations, Thresholds::default());
        let text = report.render();
        assert!(
            text.contains("1. [HIGH, pool] pool_saturated: query-service pool replica-1"),
            "{text}"
        );
        assert!(text.contains("lever: resize the pool"), "{text}");
        let json = serde_json::to_string(&report).expect("json");
        let back: Report = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.findings, report.findings);
    }
}
