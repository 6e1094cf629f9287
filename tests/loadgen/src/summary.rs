//! The suite's summary (`loadgen summary`): every workload of the issue
//! beside the baseline it is read against, the ratio, the target, met or
//! missed (and, when missed, the bottleneck the step names), then the start
//! and end baselines with their drift. Reads whichever step results exist
//! in a directory (`docs/benchmarks/*.json`); a workload whose step did not
//! run is listed as not measured, never left out.
//!
//! The ratios are recomputed here from each step's measurements with the
//! same medians and the same thresholds as the step's own verdicts (a test
//! holds them to it), because the summary also records the numbers, not
//! only the verdict text.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::append;
use crate::baselines::{self, BaselineResults, Drift, Rate, DRIFT_LIMIT_PCT};
use crate::catchup::CatchupResults;
use crate::cost_growth::{self, CostGrowthResults, GrowthVerdict};
use crate::freshness::{FreshnessResults, SERVICES};
use crate::machine::Machine;
use crate::pgbench::{HUNDRED_ROW_INSERT, PK_SELECT, SINGLE_INSERT};
use crate::query_reads::{self, QueryReadsResults};
use crate::report::{self, MissingMarkers};
use crate::stats::{median, Measurement};
use crate::write_path::{self, WritePathResults};

/// Marker of the summary block in `docs/BENCHMARKS.md`.
pub const SUMMARY_MARKER: &str = "summary";
/// Marker of the start/end baselines block.
pub const BASELINES_MARKER: &str = "baselines";

/// Result files the summary reads, by step.
pub const FILES: [(&str, &str); 7] = [
    ("baselines start", "baselines-start.json"),
    ("write-path", "write-path.json"),
    ("projector-catchup", "projector-catchup.json"),
    ("query-reads", "query-reads.json"),
    ("freshness", "freshness.json"),
    ("cost-growth", "cost-growth.json"),
    ("baselines end", "baselines-end.json"),
];

/// Every service's resident set size under load must stay at or below this.
pub const RSS_LIMIT_MIB: f64 = 64.0;

#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Markers(#[from] MissingMarkers),
    #[error("serializing the summary: {0}")]
    Json(#[from] serde_json::Error),
}

/// Whether a workload met its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Met,
    Missed,
    /// Measured, quoted for context: no target of its own.
    Context,
    /// Its step did not run (or its results lack the numbers).
    NotMeasured,
}

/// One workload of the issue against its baseline and target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// Stable id (`appends@16`, `rss_projector`, ...).
    pub key: String,
    pub workload: String,
    /// The step whose results it comes from.
    pub step: String,
    pub measured: Option<f64>,
    pub measured_text: String,
    /// What it is read against.
    pub baseline: String,
    pub baseline_value: Option<f64>,
    pub baseline_text: String,
    /// measured / baseline.
    pub ratio: Option<f64>,
    pub target: String,
    pub status: Status,
    /// Where the time went, as the step names it (missed targets only).
    pub bottleneck: Option<String>,
}

impl SummaryRow {
    fn new(key: &str, workload: &str, step: &str, baseline: &str, target: &str) -> Self {
        Self {
            key: key.to_owned(),
            workload: workload.to_owned(),
            step: step.to_owned(),
            measured: None,
            measured_text: format!("not measured ({step} did not run)"),
            baseline: baseline.to_owned(),
            baseline_value: None,
            baseline_text: String::new(),
            ratio: None,
            target: target.to_owned(),
            status: Status::NotMeasured,
            bottleneck: None,
        }
    }

    fn measured(mut self, value: f64, text: String) -> Self {
        self.measured = Some(value);
        self.measured_text = text;
        self
    }

    fn against(mut self, value: f64, text: String) -> Self {
        self.baseline_value = Some(value);
        self.baseline_text = text;
        if let Some(measured) = self.measured {
            if value > 0.0 {
                self.ratio = Some(measured / value);
            }
        }
        self
    }

    /// Met when `met` holds; Context when there is nothing to judge.
    fn judged(mut self, met: Option<bool>) -> Self {
        self.status = match (self.measured, met) {
            (None, _) => Status::NotMeasured,
            (Some(_), None) => Status::Context,
            (Some(_), Some(true)) => Status::Met,
            (Some(_), Some(false)) => Status::Missed,
        };
        self
    }

    /// Met when the ratio is at least `min`.
    fn at_least(self, min: f64) -> Self {
        let met = self.ratio.map(|r| r >= min);
        self.judged(met)
    }

    /// Met when the ratio is at most `max`.
    fn at_most(self, max: f64) -> Self {
        let met = self.ratio.map(|r| r <= max);
        self.judged(met)
    }

    fn missing_because(mut self, why: &str) -> Self {
        if self.measured.is_none() {
            self.measured_text = format!("not measured ({why})");
        }
        self
    }

    fn bottleneck(mut self, text: impl FnOnce() -> Option<String>) -> Self {
        if self.status == Status::Missed {
            self.bottleneck = text();
        }
        self
    }
}

/// A step's result file and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub step: String,
    pub file: String,
    /// `read`, `missing`, or `unreadable: …`.
    pub status: String,
    /// When that step ran (its machine facts' date).
    pub date: Option<String>,
    /// The exact command that produced the file.
    pub command: Option<String>,
}

/// The start and end baselines side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineDrift {
    pub limit_pct: f64,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub broker_storage: Option<String>,
    pub start: Option<Vec<Rate>>,
    pub end: Option<Vec<Rate>>,
    /// Every baseline either snapshot measured.
    pub drift: Vec<Drift>,
    /// Some drift exceeds the limit.
    pub flagged: bool,
}

/// Everything `loadgen summary` writes to `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryResults {
    /// The command the suite was run with (`make bench`, ...).
    pub command: String,
    /// Machine facts of the run (the start baselines', else a step's).
    pub machine: Option<Machine>,
    /// The run's ratios are suspect: see `flags`.
    pub flagged: bool,
    pub flags: Vec<String>,
    pub met: usize,
    pub missed: usize,
    pub not_measured: usize,
    pub rows: Vec<SummaryRow>,
    pub baselines: BaselineDrift,
    pub sources: Vec<Source>,
}

/// The step results found in a directory.
#[derive(Debug, Default)]
pub struct Inputs {
    pub baselines_start: Option<BaselineResults>,
    pub baselines_end: Option<BaselineResults>,
    pub write_path: Option<WritePathResults>,
    pub catchup: Option<CatchupResults>,
    pub query_reads: Option<QueryReadsResults>,
    pub freshness: Option<FreshnessResults>,
    pub cost_growth: Option<CostGrowthResults>,
    pub sources: Vec<Source>,
}

impl Inputs {
    /// Reads every file of [`FILES`] that exists in `dir`; a file that does
    /// not parse is recorded as unreadable in `sources` and skipped.
    pub fn read(dir: &Path) -> Result<Self, SummaryError> {
        let mut inputs = Self::default();
        for (step, file) in FILES {
            let path = dir.join(file);
            let mut source = Source {
                step: step.to_owned(),
                file: file.to_owned(),
                status: "missing".to_owned(),
                date: None,
                command: None,
            };
            if path.exists() {
                let text = std::fs::read_to_string(&path).map_err(|source| SummaryError::Read {
                    path: path.clone(),
                    source,
                })?;
                source.status = match inputs.parse(file, &text) {
                    Ok((date, command)) => {
                        source.date = Some(date);
                        source.command = Some(command);
                        "read".to_owned()
                    }
                    Err(error) => format!("unreadable: {error}"),
                };
            }
            inputs.sources.push(source);
        }
        inputs.mark_older_results();
        Ok(inputs)
    }

    /// Parses one file into its slot; returns its date and command.
    fn parse(&mut self, file: &str, text: &str) -> Result<(String, String), serde_json::Error> {
        fn load<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
            serde_json::from_str(text)
        }
        let facts = |m: &Machine, c: &str| (m.date.clone(), c.to_owned());
        Ok(match file {
            "baselines-start.json" => {
                let r: BaselineResults = load(text)?;
                let f = facts(&r.machine, &r.command);
                self.baselines_start = Some(r);
                f
            }
            "baselines-end.json" => {
                let r: BaselineResults = load(text)?;
                let f = facts(&r.machine, &r.command);
                self.baselines_end = Some(r);
                f
            }
            "write-path.json" => {
                let r: WritePathResults = load(text)?;
                let f = facts(&r.machine, &r.command);
                self.write_path = Some(r);
                f
            }
            "projector-catchup.json" => {
                let r: CatchupResults = load(text)?;
                let f = facts(&r.machine, &r.command);
                self.catchup = Some(r);
                f
            }
            "query-reads.json" => {
                let r: QueryReadsResults = load(text)?;
                let f = facts(&r.machine, &r.command);
                self.query_reads = Some(r);
                f
            }
            "freshness.json" => {
                let r: FreshnessResults = load(text)?;
                let f = facts(&r.machine, &r.command);
                self.freshness = Some(r);
                f
            }
            "cost-growth.json" => {
                let r: CostGrowthResults = load(text)?;
                let f = facts(&r.machine, &r.command);
                self.cost_growth = Some(r);
                f
            }
            _ => return Err(serde::de::Error::custom("not a result file of the suite")),
        })
    }

    /// Results that ran before the start baselines are from an earlier run
    /// (`BENCH_STEPS` left their step out): said so beside them.
    fn mark_older_results(&mut self) {
        let Some(start) = self
            .baselines_start
            .as_ref()
            .map(|r| r.machine.date.clone())
        else {
            return;
        };
        for source in &mut self.sources {
            // RFC 3339 UTC dates of the same format compare as text.
            if source.date.as_ref().is_some_and(|d| *d < start) {
                source.status = "read, from an earlier run than the start baselines".to_owned();
            }
        }
    }

    fn machine(&self) -> Option<Machine> {
        self.baselines_start
            .as_ref()
            .map(|r| r.machine.clone())
            .or_else(|| self.write_path.as_ref().map(|r| r.machine.clone()))
            .or_else(|| self.catchup.as_ref().map(|r| r.machine.clone()))
            .or_else(|| self.query_reads.as_ref().map(|r| r.machine.clone()))
            .or_else(|| self.freshness.as_ref().map(|r| r.machine.clone()))
            .or_else(|| self.cost_growth.as_ref().map(|r| r.machine.clone()))
            .or_else(|| self.baselines_end.as_ref().map(|r| r.machine.clone()))
    }

    fn source(&self, step: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.step == step)
    }

    /// Why a step's rows are not measured, from its file's status.
    fn why_missing(&self, step: &str) -> String {
        match self.source(step) {
            Some(s) if s.status.starts_with("unreadable") => format!("{} {}", s.file, s.status),
            Some(s) => format!("{} {}", s.file, s.status),
            None => format!("{step} did not run"),
        }
    }
}

/// Builds the summary of `inputs`; `command` is the suite's command line.
pub fn summarize(inputs: &Inputs, command: String) -> SummaryResults {
    let mut rows = write_path_rows(inputs);
    rows.extend(catchup_rows(inputs));
    rows.extend(query_reads_rows(inputs));
    rows.extend(freshness_rows(inputs));
    rows.extend(cost_growth_rows(inputs));
    let baselines = baseline_drift(inputs);
    let mut flags = Vec::new();
    if baselines.flagged {
        let worst: Vec<String> = baselines
            .drift
            .iter()
            .filter(|d| d.flagged)
            .map(|d| format!("{} {:+.0} %", d.label, d.drift_pct.unwrap_or(0.0)))
            .collect();
        flags.push(format!(
            "baselines drifted more than {DRIFT_LIMIT_PCT:.0} % between the start and the end \
             of the run ({}): the machine changed under the run, so ratios may compare \
             different machine states; re-run",
            worst.join(", ")
        ));
    }
    let count = |status: Status| rows.iter().filter(|r| r.status == status).count();
    SummaryResults {
        command,
        machine: inputs.machine(),
        flagged: !flags.is_empty(),
        flags,
        met: count(Status::Met),
        missed: count(Status::Missed),
        not_measured: count(Status::NotMeasured),
        rows,
        baselines,
        sources: inputs.sources.clone(),
    }
}

/// Medians of one (name, clients) series: ops/s, p50 ms, p99 ms.
fn medians(measurements: &[Measurement], name: &str, clients: usize) -> Option<(f64, f64, f64)> {
    let runs: Vec<&Measurement> = measurements
        .iter()
        .filter(|m| m.name == name && m.clients == clients)
        .collect();
    Some((
        median(runs.iter().map(|m| m.ops_per_s))?,
        median(runs.iter().map(|m| m.latency.p50_ms))?,
        median(runs.iter().map(|m| m.latency.p99_ms))?,
    ))
}

fn write_path_rows(inputs: &Inputs) -> Vec<SummaryRow> {
    const STEP: &str = "write-path";
    let r = inputs.write_path.as_ref();
    let m = r.map_or(&[][..], |r| &r.measurements[..]);
    let why = inputs.why_missing(STEP);

    let series = |clients: usize| {
        (
            medians(m, append::NAME, clients),
            medians(m, SINGLE_INSERT.name, clients),
        )
    };
    let latency_note = |clients: usize| {
        let (app, pg) = series(clients);
        let ((_, ap50, ap99), (_, pp50, pp99)) = (app?, pg?);
        let latencies = format!(
            "at {clients} client(s) append p50 {ap50:.2} ms / p99 {ap99:.2} ms against pgbench \
             p50 {pp50:.2} ms / p99 {pp99:.2} ms"
        );
        Some(
            match r.and_then(|r| write_path::appends_bottleneck(r, clients)) {
                Some(named) => format!("{latencies}; {named}"),
                None => format!(
                    "not named by the write-path step; {latencies} \
                     (see \"Where the time goes\" under Write path)"
                ),
            },
        )
    };
    // Results written before the step profiled its runs name nothing.
    let throughput_note = |clients: usize| {
        r.and_then(|r| write_path::appends_bottleneck(r, clients))
            .or_else(|| latency_note(clients))
    };

    let mut one = SummaryRow::new(
        "appends@1",
        "command appends, 1 client",
        STEP,
        "pgbench single-row insert, 1 client",
        "p50 ≤ baseline p50 + 1 ms",
    );
    let (app, pg) = series(1);
    if let Some((ops, p50, p99)) = app {
        one = one.measured(
            ops,
            format!("{ops:.0} appends/s, p50 {p50:.2} ms, p99 {p99:.2} ms"),
        );
    }
    let mut met = None;
    if let Some((ops, p50, p99)) = pg {
        one = one.against(
            ops,
            format!("{ops:.0} tx/s, p50 {p50:.2} ms, p99 {p99:.2} ms"),
        );
        met = app.map(|(_, a50, _)| a50 - p50 <= 1.0);
    }
    let one = one
        .judged(met)
        .missing_because(&why)
        .bottleneck(|| latency_note(1));

    let mut sixteen = SummaryRow::new(
        "appends@16",
        "command appends, 16 clients",
        STEP,
        "pgbench single-row insert, 16 clients",
        "≥ 0.6 × baseline",
    );
    let (app, pg) = series(16);
    if let Some((ops, p50, p99)) = app {
        sixteen = sixteen.measured(
            ops,
            format!("{ops:.0} appends/s, p50 {p50:.2} ms, p99 {p99:.2} ms"),
        );
    }
    if let Some((ops, p50, p99)) = pg {
        sixteen = sixteen.against(
            ops,
            format!("{ops:.0} tx/s, p50 {p50:.2} ms, p99 {p99:.2} ms"),
        );
    }
    let sixteen = sixteen
        .at_least(0.6)
        .missing_because(&why)
        .bottleneck(|| throughput_note(16));

    let mut relay = SummaryRow::new(
        "relay_rate",
        "relay publish rate (draining a backlog)",
        STEP,
        "sustained append rate",
        "≥ 3 × baseline",
    );
    if let Some(rate) = r.and_then(|r| median(r.drains.iter().map(|d| d.events_per_s))) {
        relay = relay.measured(rate, format!("{rate:.0} events/s"));
    }
    if let Some((clients, ops)) = report::sustained_append(m) {
        relay = relay.against(ops, format!("{ops:.0} appends/s at {clients} clients"));
    }
    let relay = relay.at_least(3.0).missing_because(&why).bottleneck(|| {
        r.and_then(write_path::relay_bottleneck).or_else(|| {
            Some(
                "not named by the write-path step (the relay's batches: see \"Where the time \
                 goes\" under Write path)"
                    .to_owned(),
            )
        })
    });
    vec![one, sixteen, relay]
}

fn catchup_rows(inputs: &Inputs) -> Vec<SummaryRow> {
    const STEP: &str = "projector-catchup";
    let r = inputs.catchup.as_ref();
    let why = inputs.why_missing(STEP);
    let rate = r.and_then(|r| median(r.catchups.iter().map(|c| c.events_per_s)));
    let measured = |row: SummaryRow| match rate {
        Some(rate) => row.measured(rate, format!("{rate:.0} events/s")),
        None => row,
    };
    let bottleneck = || r.and_then(report::catchup_bottleneck);

    let mut rows_row = measured(SummaryRow::new(
        "catchup",
        "projector catch-up from a backlog",
        STEP,
        "pgbench 100-row transactions (rows/s, fewest clients)",
        "≥ 0.5 × baseline",
    ));
    if let Some((clients, rows)) = r.and_then(hundred_row_baseline) {
        rows_row = rows_row.against(rows, format!("{rows:.0} rows/s at {clients} client(s)"));
    }
    let rows_row = rows_row
        .at_least(0.5)
        .missing_because(&why)
        .bottleneck(bottleneck);

    let mut appends_row = measured(SummaryRow::new(
        "catchup_vs_appends",
        "projector catch-up from a backlog",
        STEP,
        "sustained append rate",
        "≥ 3 × baseline",
    ));
    let sustained = r
        .and_then(|r| r.sustained_append.as_ref())
        .map(|s| (s.clients, s.ops_per_s))
        .or_else(|| {
            inputs
                .write_path
                .as_ref()
                .and_then(|w| report::sustained_append(&w.measurements))
        });
    if let Some((clients, ops)) = sustained {
        appends_row = appends_row.against(ops, format!("{ops:.0} appends/s at {clients} clients"));
    }
    let appends_row = appends_row
        .at_least(3.0)
        .missing_because(&why)
        .bottleneck(bottleneck);
    vec![rows_row, appends_row]
}

/// pgbench 100-row transactions at the fewest clients measured, as
/// (clients, median rows/s): the catch-up verdict's baseline.
fn hundred_row_baseline(results: &CatchupResults) -> Option<(usize, f64)> {
    let name = HUNDRED_ROW_INSERT.name;
    let clients = results
        .baselines
        .iter()
        .filter(|m| m.name == name)
        .map(|m| m.clients)
        .min()?;
    let (tps, _, _) = medians(&results.baselines, name, clients)?;
    Some((
        clients,
        tps * HUNDRED_ROW_INSERT.rows_per_transaction as f64,
    ))
}

fn query_reads_rows(inputs: &Inputs) -> Vec<SummaryRow> {
    const STEP: &str = "query-reads";
    let r = inputs.query_reads.as_ref();
    let why = inputs.why_missing(STEP);
    let c = r.map_or(64, |r| r.connections);
    let m = r.map_or(&[][..], |r| &r.measurements[..]);

    let mut cached = SummaryRow::new(
        "cached_reads",
        &format!("cached `GET /orders/{{id}}`, {c} connections"),
        STEP,
        &format!("bare actix-web handler, {c} connections"),
        "≥ 0.5 × baseline",
    );
    if let Some((ops, p50, p99)) = medians(m, query_reads::CACHED, c) {
        cached = cached.measured(
            ops,
            format!("{ops:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms"),
        );
    }
    if let Some((ops, _, _)) = medians(m, query_reads::BARE, c) {
        cached = cached.against(ops, format!("{ops:.0} req/s"));
    }
    let cached = cached
        .at_least(0.5)
        .missing_because(&why)
        .bottleneck(|| r.and_then(|r| report::query_reads_bottleneck(r, query_reads::CACHED)));

    // The uncached target's pgbench client count: the first measured.
    let pg_clients = m
        .iter()
        .find(|x| x.name == PK_SELECT.name)
        .map_or(16, |x| x.clients);
    let mut uncached = SummaryRow::new(
        "uncached_reads",
        &format!("uncached `GET /orders/{{id}}` (replica), {c} connections"),
        STEP,
        &format!("pgbench primary-key select on the replica, {pg_clients} clients"),
        "≥ 0.4 × baseline",
    );
    if let Some((ops, p50, p99)) = medians(m, query_reads::UNCACHED, c) {
        uncached = uncached.measured(
            ops,
            format!("{ops:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms"),
        );
    }
    if let Some((ops, _, _)) = medians(m, PK_SELECT.name, pg_clients) {
        uncached = uncached.against(ops, format!("{ops:.0} tx/s"));
    }
    let uncached = uncached
        .at_least(0.4)
        .missing_because(&why)
        .bottleneck(|| r.and_then(|r| report::query_reads_bottleneck(r, query_reads::UNCACHED)));
    vec![cached, uncached]
}

fn freshness_rows(inputs: &Inputs) -> Vec<SummaryRow> {
    const STEP: &str = "freshness";
    let r = inputs.freshness.as_ref();
    let why = inputs.why_missing(STEP);
    let load = r.map_or(String::new(), |r| {
        format!(
            " at {:.0} commands/s ({:.0} % of the max command rate)",
            r.command_rate_per_s,
            100.0 * r.load_fraction
        )
    });
    let command_p50 = r.and_then(|r| {
        median(
            r.runs
                .iter()
                .filter_map(|run| run.mix.commands.latency.map(|l| l.p50_ms)),
        )
    });

    let mut p50 = SummaryRow::new(
        "freshness_p50",
        "freshness p50 (202 → visible through query-service on a replica)",
        STEP,
        "command p50 at the same load",
        "context",
    );
    if let Some(ms) = r.and_then(|r| r.freshness_p50_ms) {
        p50 = p50.measured(ms, format!("{ms:.1} ms{load}"));
    }
    if let Some(ms) = command_p50 {
        p50 = p50.against(ms, format!("{ms:.1} ms"));
    }
    let p50 = p50.judged(None).missing_because(&why);

    let mut p99 = SummaryRow::new(
        "freshness_p99",
        "freshness p99 (202 → visible through query-service on a replica)",
        STEP,
        "command p99 at the same load",
        "≤ 5 × baseline (at 50 % of the max command rate)",
    );
    if let Some(ms) = r.and_then(|r| r.freshness_p99_ms) {
        p99 = p99.measured(ms, format!("{ms:.1} ms{load}"));
    }
    if let Some(ms) = r.and_then(|r| r.command_p99_ms) {
        p99 = p99.against(ms, format!("{ms:.1} ms"));
    }
    let p99 = p99
        .at_most(5.0)
        .missing_because(&why)
        .bottleneck(|| r.and_then(|r| r.bottleneck.clone()));

    let mut rows = vec![p50, p99];
    for service in SERVICES {
        let kib = r.and_then(|r| r.peak_rss_kib.get(service)).copied();
        rows.push(rss_row(service, kib, &why));
    }
    rows
}

/// A service's peak resident set size (KiB) against the limit.
fn rss_row(service: &str, kib: Option<u64>, why: &str) -> SummaryRow {
    let mut row = SummaryRow::new(
        &format!("rss_{service}"),
        &format!("{service} peak resident memory (VmHWM) under the mix"),
        "freshness",
        "limit",
        &format!("≤ {RSS_LIMIT_MIB:.0} MiB"),
    );
    if let Some(kib) = kib {
        let mib = kib as f64 / 1024.0;
        row = row
            .measured(mib, format!("{mib:.1} MiB"))
            .against(RSS_LIMIT_MIB, format!("{RSS_LIMIT_MIB:.0} MiB"));
    }
    row.at_most(1.0).missing_because(why).bottleneck(|| {
        Some(format!(
            "{service} holds more than {RSS_LIMIT_MIB:.0} MiB at its peak under the mix \
             (see the freshness section)"
        ))
    })
}

fn cost_growth_rows(inputs: &Inputs) -> Vec<SummaryRow> {
    const STEP: &str = "cost-growth";
    let r = inputs.cost_growth.as_ref();
    let why = inputs.why_missing(STEP);

    let append = append_growth_row(
        r.and_then(|r| r.verdict.as_ref()),
        r.and_then(|r| r.bottleneck.clone()),
        &why,
    );

    let growth = r.and_then(CostGrowthResults::history_growth);
    let mut history = SummaryRow::new(
        "cost_growth_history_query",
        &match growth {
            Some(g) => format!(
                "customer-history query p50 at {} stored events",
                cost_growth::size_label(g.to_size)
            ),
            None => "customer-history query p50 at the largest stored-event count".to_owned(),
        },
        STEP,
        &match growth {
            Some(g) => format!(
                "the same query at {} stored events",
                cost_growth::size_label(g.from_size)
            ),
            None => "the same query at 0 stored events".to_owned(),
        },
        "context",
    );
    if let Some(g) = growth {
        history = history
            .measured(
                g.to_p50_ms,
                format!("{:.2} ms (SQL {:.2} ms)", g.to_p50_ms, g.to_sql_ms),
            )
            .against(
                g.from_p50_ms,
                format!("{:.2} ms (SQL {:.2} ms)", g.from_p50_ms, g.from_sql_ms),
            );
    }
    let history = history.judged(None).missing_because(&why);
    vec![append, history]
}

/// The append target: p99 at the largest size against the smallest.
fn append_growth_row(
    verdict: Option<&GrowthVerdict>,
    bottleneck: Option<String>,
    why: &str,
) -> SummaryRow {
    let mut append = SummaryRow::new(
        "cost_growth_append_p99",
        &match verdict {
            Some(v) => format!(
                "append p99 at {} stored events",
                cost_growth::size_label(v.to_size)
            ),
            None => "append p99 at the largest stored-event count".to_owned(),
        },
        "cost-growth",
        &match verdict {
            Some(v) => format!(
                "append p99 at {} stored events",
                cost_growth::size_label(v.from_size)
            ),
            None => "append p99 at 0 stored events".to_owned(),
        },
        "≤ 1.2 × baseline at 10M stored events",
    );
    if let Some(v) = verdict {
        let note = if v.at_target_size {
            String::new()
        } else {
            " (10M is opt-in: BENCH_COST_GROWTH_SIZES=0,1000000,10000000)".to_owned()
        };
        append = append
            .measured(v.to_p99_ms, format!("{:.2} ms{note}", v.to_p99_ms))
            .against(v.from_p99_ms, format!("{:.2} ms", v.from_p99_ms));
    }
    append
        .at_most(1.2)
        .missing_because(why)
        .bottleneck(|| bottleneck)
}

fn baseline_drift(inputs: &Inputs) -> BaselineDrift {
    let start = inputs.baselines_start.as_ref();
    let end = inputs.baselines_end.as_ref();
    let drift = baselines::drift(start, end);
    BaselineDrift {
        limit_pct: DRIFT_LIMIT_PCT,
        start_date: start.map(|r| r.machine.date.clone()),
        end_date: end.map(|r| r.machine.date.clone()),
        broker_storage: start
            .and_then(|r| r.broker_storage.clone())
            .or_else(|| end.and_then(|r| r.broker_storage.clone())),
        start: start.map(BaselineResults::rates),
        end: end.map(BaselineResults::rates),
        flagged: drift.iter().any(|d| d.flagged),
        drift,
    }
}

/// Text safe inside a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

impl SummaryResults {
    /// The summary block of `docs/BENCHMARKS.md` (without markers).
    pub fn render_summary(&self) -> String {
        let mut out = String::new();
        if let Some(machine) = &self.machine {
            out.push_str(&machine.run_line());
        }
        out.push_str(&format!(
            "Command: `{}`. {} met, {} missed, {} not measured.\n\n",
            self.command, self.met, self.missed, self.not_measured
        ));
        for flag in &self.flags {
            out.push_str(&format!("> **FLAG:** {flag}.\n\n"));
        }
        out.push_str(
            "| workload | measured | baseline | ratio | target | result | bottleneck (missed) |\n\
             |---|---|---|---:|---|---|---|\n",
        );
        for row in &self.rows {
            let ratio = row.ratio.map_or(String::new(), |r| format!("{r:.2}×"));
            let baseline = if row.baseline_text.is_empty() {
                row.baseline.clone()
            } else {
                format!("{}: {}", row.baseline, row.baseline_text)
            };
            let status = match row.status {
                Status::Met => "met",
                Status::Missed => "**missed**",
                Status::Context => "context",
                Status::NotMeasured => "not measured",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {ratio} | {} | {status} | {} |\n",
                cell(&row.workload),
                cell(&row.measured_text),
                cell(&baseline),
                cell(&row.target),
                cell(row.bottleneck.as_deref().unwrap_or("")),
            ));
        }
        out.push_str("\nResults read:\n\n");
        for s in &self.sources {
            let when = s
                .date
                .as_deref()
                .map_or(String::new(), |d| format!(", {d}"));
            let command = s
                .command
                .as_deref()
                .map_or(String::new(), |c| format!(": `{}`", c.replace('`', "'")));
            out.push_str(&format!(
                "- {} (`{}`, {}{when}){command}\n",
                s.step, s.file, s.status
            ));
        }
        out
    }

    /// The baselines block (without markers): start against end.
    pub fn render_baselines(&self) -> String {
        let b = &self.baselines;
        let mut out = String::new();
        let date = |d: &Option<String>| d.clone().unwrap_or_else(|| "not measured".to_owned());
        out.push_str(&format!(
            "Start {}, end {}; broker storage {}. Drift = (end − start) / start; \
             beyond ±{:.0} % is flagged.\n\n",
            date(&b.start_date),
            date(&b.end_date),
            b.broker_storage.as_deref().unwrap_or("unknown"),
            b.limit_pct
        ));
        if b.flagged {
            out.push_str(&format!(
                "> **FLAG:** some baseline drifted more than {:.0} %: this run's ratios may \
                 compare measurements taken on different machine states.\n\n",
                b.limit_pct
            ));
        }
        out.push_str("| baseline | start | end | drift | |\n|---|---:|---:|---:|---|\n");
        for d in &b.drift {
            let unit = &d.unit;
            let value = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.0} {unit}"));
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                cell(&d.label),
                value(d.start),
                value(d.end),
                d.drift_pct.map_or("–".to_owned(), |p| format!("{p:+.1} %")),
                if d.flagged { "**FLAG**" } else { "" }
            ));
        }
        out
    }

    /// Writes the JSON and splices both blocks into `markdown`.
    pub fn publish(
        &self,
        json: Option<&Path>,
        markdown: Option<&Path>,
    ) -> Result<(), SummaryError> {
        if let Some(path) = json {
            let text = serde_json::to_string_pretty(self)?;
            std::fs::write(path, text).map_err(|source| SummaryError::Write {
                path: path.to_owned(),
                source,
            })?;
        }
        if let Some(path) = markdown {
            let doc = std::fs::read_to_string(path).map_err(|source| SummaryError::Read {
                path: path.to_owned(),
                source,
            })?;
            let doc = report::splice(&doc, SUMMARY_MARKER, &self.render_summary())?;
            let doc = report::splice(&doc, BASELINES_MARKER, &self.render_baselines())?;
            std::fs::write(path, doc).map_err(|source| SummaryError::Write {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Workload keys every complete run has a measured row for (the issue's
/// list), in report order.
pub const WORKLOAD_KEYS: [&str; 14] = [
    "appends@1",
    "appends@16",
    "relay_rate",
    "catchup",
    "catchup_vs_appends",
    "cached_reads",
    "uncached_reads",
    "freshness_p50",
    "freshness_p99",
    "rss_command-service",
    "rss_projector",
    "rss_query-service",
    "cost_growth_append_p99",
    "cost_growth_history_query",
];

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::baselines::Label;
    use crate::relay::Drain;
    use crate::stats::Latency;

    fn m(name: &str, clients: usize, ops_per_s: f64, p50_ms: f64) -> Measurement {
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
            errors: BTreeMap::new(),
        }
    }

    fn baselines(label: Label, insert16: f64, bare: f64) -> BaselineResults {
        BaselineResults {
            label,
            machine: Machine {
                date: format!("2026-01-01T00:00:0{}Z", label as u8),
                ..Machine::default()
            },
            command: "make bench".to_owned(),
            warmup_s: 2.0,
            duration_s: 10.0,
            broker_storage: Some("memory".to_owned()),
            tools: BTreeMap::new(),
            measurements: vec![
                m(SINGLE_INSERT.name, 1, 500.0, 1.5),
                m(SINGLE_INSERT.name, 16, insert16, 1.5),
                m(query_reads::BARE, 64, bare, 1.0),
            ],
            kafka: None,
            failures: BTreeMap::new(),
        }
    }

    fn write_path(append16: [f64; 3], pg16: f64, relay: f64) -> WritePathResults {
        let mut measurements = vec![
            m(SINGLE_INSERT.name, 1, 500.0, 1.6),
            m(append::NAME, 1, 300.0, 3.0),
        ];
        for ops in append16 {
            measurements.push(m(SINGLE_INSERT.name, 16, pg16, 1.8));
            measurements.push(m(append::NAME, 16, ops, 4.0));
        }
        WritePathResults {
            machine: Machine::default(),
            command: "make bench".to_owned(),
            repetitions: 3,
            measurements,
            drains: vec![Drain {
                name: crate::relay::NAME.to_owned(),
                events: 10_000,
                seconds: 10_000.0 / relay,
                events_per_s: relay,
            }],
            profiles: vec![],
        }
    }

    fn row<'a>(summary: &'a SummaryResults, key: &str) -> &'a SummaryRow {
        summary.rows.iter().find(|r| r.key == key).unwrap()
    }

    #[test]
    fn every_workload_has_a_row_even_when_nothing_ran() {
        let summary = summarize(&Inputs::default(), "make bench".to_owned());
        let keys: Vec<&str> = summary.rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, WORKLOAD_KEYS);
        assert!(summary
            .rows
            .iter()
            .all(|r| r.status == Status::NotMeasured && r.measured.is_none()));
        assert_eq!(summary.not_measured, WORKLOAD_KEYS.len());
        assert!(!summary.flagged);
        let text = summary.render_summary();
        assert!(
            text.contains("| command appends, 16 clients | not measured"),
            "{text}"
        );
    }

    #[test]
    fn a_drift_beyond_25_percent_flags_the_run() {
        let inputs = Inputs {
            baselines_start: Some(baselines(Label::Start, 10_000.0, 40_000.0)),
            baselines_end: Some(baselines(Label::End, 7_400.0, 41_000.0)),
            ..Inputs::default()
        };
        let summary = summarize(&inputs, "make bench".to_owned());
        assert!(summary.flagged, "-26 % must flag the run");
        assert!(summary.baselines.flagged);
        assert_eq!(summary.flags.len(), 1);
        assert!(summary.flags[0].contains("pgbench single-row insert, 16 clients -26 %"));
        let flagged: Vec<&Drift> = summary
            .baselines
            .drift
            .iter()
            .filter(|d| d.flagged)
            .collect();
        assert_eq!(flagged.len(), 1);
        assert!((flagged[0].drift_pct.unwrap() + 26.0).abs() < 1e-9);
        assert!(summary.render_summary().contains("**FLAG:**"));
        let baselines_block = summary.render_baselines();
        assert!(
            baselines_block.contains("| -26.0 % | **FLAG** |"),
            "{baselines_block}"
        );
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["flagged"], true);
    }

    #[test]
    fn a_drift_within_25_percent_does_not_flag() {
        let inputs = Inputs {
            baselines_start: Some(baselines(Label::Start, 10_000.0, 40_000.0)),
            baselines_end: Some(baselines(Label::End, 12_500.0, 30_000.0)),
            ..Inputs::default()
        };
        let summary = summarize(&inputs, "make bench".to_owned());
        assert!(!summary.flagged, "+25 % and -25 % are within the limit");
        assert!(!summary.render_summary().contains("FLAG"));
        assert!(summary.render_baselines().contains("| +25.0 % |"));
    }

    #[test]
    fn one_snapshot_alone_is_listed_without_drift() {
        let inputs = Inputs {
            baselines_start: Some(baselines(Label::Start, 10_000.0, 40_000.0)),
            ..Inputs::default()
        };
        let summary = summarize(&inputs, "make bench".to_owned());
        assert!(!summary.flagged);
        assert!(summary.baselines.end.is_none());
        let text = summary.render_baselines();
        assert!(
            text.contains("| pgbench single-row insert, 16 clients | 10000 tx/s | – | – |"),
            "{text}"
        );
    }

    #[test]
    fn write_path_rows_agree_with_the_steps_own_verdicts() {
        for (append16, relay) in [
            ([7000.0, 6500.0, 8000.0], 25_000.0),
            ([4000.0, 5000.0, 4500.0], 10_000.0),
        ] {
            let results = write_path(append16, 10_000.0, relay);
            let verdicts = report::write_path_verdicts(&results);
            let inputs = Inputs {
                write_path: Some(results),
                ..Inputs::default()
            };
            let summary = summarize(&inputs, "make bench".to_owned());
            let met = |key: &str| row(&summary, key).status == Status::Met;
            assert_eq!(met("appends@16"), verdicts[0].met, "{verdicts:?}");
            assert_eq!(met("appends@1"), verdicts[1].met, "{verdicts:?}");
            assert_eq!(met("relay_rate"), verdicts[2].met, "{verdicts:?}");
        }
    }

    #[test]
    fn ratios_targets_and_bottlenecks_are_rendered() {
        let inputs = Inputs {
            write_path: Some(write_path([4000.0, 5000.0, 4500.0], 10_000.0, 10_000.0)),
            ..Inputs::default()
        };
        let summary = summarize(&inputs, "make bench".to_owned());
        let sixteen = row(&summary, "appends@16");
        assert_eq!(sixteen.status, Status::Missed);
        assert!((sixteen.ratio.unwrap() - 0.45).abs() < 1e-9);
        assert_eq!(sixteen.baseline_value, Some(10_000.0));
        assert!(sixteen
            .bottleneck
            .as_deref()
            .unwrap()
            .contains("append p50 4.00 ms"));
        let relay = row(&summary, "relay_rate");
        assert!((relay.ratio.unwrap() - 10_000.0 / 4500.0).abs() < 1e-9);
        assert_eq!(
            row(&summary, "appends@1").status,
            Status::Missed,
            "3.0 > 1.6 + 1 ms"
        );
        let text = summary.render_summary();
        assert!(
            text.contains("| command appends, 16 clients | 4500 appends/s, p50 4.00 ms, p99 12.00 ms | pgbench single-row insert, 16 clients: 10000 tx/s"),
            "{text}"
        );
        assert!(
            text.contains("| 0.45× | ≥ 0.6 × baseline | **missed** |"),
            "{text}"
        );
        assert_eq!(summary.missed, 3);
    }

    #[test]
    fn profiled_write_path_rows_name_the_steps_bottleneck() {
        let mut results = write_path([4000.0, 5000.0, 4500.0], 10_000.0, 10_000.0);
        results.machine.cpus = 2;
        for (name, clients, per_s) in [
            (append::NAME, 16, 4500.0),
            (append::NAME, 1, 300.0),
            (crate::relay::NAME, 1, 10_000.0),
        ] {
            results.profiles.push(write_path::Profile {
                repetition: 1,
                name: name.to_owned(),
                clients,
                per_s,
                cpu: crate::procfs::CpuUsage {
                    seconds: 8.0,
                    cores: BTreeMap::from([("postgres primary".to_owned(), 0.8)]),
                    machine_busy_cores: 1.0,
                },
                primary: Default::default(),
            });
        }
        let summary = summarize(
            &Inputs {
                write_path: Some(results),
                ..Inputs::default()
            },
            "make bench".to_owned(),
        );
        let named = |key: &str| row(&summary, key).bottleneck.clone().unwrap();
        assert_eq!(
            named("appends@16"),
            "postgres primary 0.80 cores, the rest 0.20; the machine was not CPU-bound \
             (1.00 of 2 busy)"
        );
        assert!(
            named("appends@1").starts_with("at 1 client(s) append p50 3.00 ms")
                && named("appends@1").ends_with("; postgres primary 0.80 cores, the rest 0.20; the machine was not CPU-bound (1.00 of 2 busy)"),
            "{}",
            named("appends@1")
        );
        assert!(
            named("relay_rate").starts_with("during the drain postgres primary 0.80 cores"),
            "{}",
            named("relay_rate")
        );
        assert!(!summary.render_summary().contains("not named by"));
    }

    #[test]
    fn rss_rows_are_read_against_64_mib() {
        let under = rss_row("projector", Some(40 * 1024), "x");
        assert_eq!(under.status, Status::Met);
        assert_eq!(under.measured_text, "40.0 MiB");
        let over = rss_row("projector", Some(65 * 1024), "x");
        assert_eq!(over.status, Status::Missed);
        assert!(over.bottleneck.unwrap().contains("more than 64 MiB"));
        let missing = rss_row("projector", None, "freshness.json missing");
        assert_eq!(missing.status, Status::NotMeasured);
        assert_eq!(
            missing.measured_text,
            "not measured (freshness.json missing)"
        );
    }

    #[test]
    fn append_growth_agrees_with_the_cost_growth_verdict() {
        for (to_p99_ms, at_target_size) in [(11.0, true), (13.0, true), (12.5, false)] {
            let ratio = to_p99_ms / 10.0;
            let verdict = GrowthVerdict {
                from_size: 0,
                to_size: if at_target_size {
                    10_000_000
                } else {
                    1_000_000
                },
                from_p99_ms: 10.0,
                to_p99_ms,
                ratio,
                limit: 1.2,
                met: ratio <= 1.2,
                at_target_size,
            };
            let row = append_growth_row(Some(&verdict), Some("vacuum".to_owned()), "x");
            assert_eq!(row.status == Status::Met, verdict.met, "{row:?}");
            assert!((row.ratio.unwrap() - ratio).abs() < 1e-9);
            assert_eq!(row.bottleneck.is_some(), !verdict.met);
            assert_eq!(row.measured_text.contains("opt-in"), !at_target_size);
        }
        let row = append_growth_row(None, None, "cost-growth.json missing");
        assert_eq!(row.status, Status::NotMeasured);
    }

    #[test]
    fn unreadable_and_missing_files_are_reported_not_fatal() {
        let dir = std::env::temp_dir().join(format!("summary-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("write-path.json"), "{\"not\": \"it\"}").unwrap();
        let start = baselines(Label::Start, 10_000.0, 40_000.0);
        std::fs::write(
            dir.join("baselines-start.json"),
            serde_json::to_string(&start).unwrap(),
        )
        .unwrap();
        let inputs = Inputs::read(&dir).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let status = |file: &str| {
            inputs
                .sources
                .iter()
                .find(|s| s.file == file)
                .unwrap()
                .status
                .clone()
        };
        assert_eq!(status("baselines-start.json"), "read");
        assert!(status("write-path.json").starts_with("unreadable"));
        assert_eq!(status("query-reads.json"), "missing");
        let summary = summarize(&inputs, "make bench".to_owned());
        assert!(row(&summary, "appends@16")
            .measured_text
            .contains("write-path.json unreadable"));
        assert_eq!(summary.machine.unwrap().date, start.machine.date);
    }

    #[test]
    fn results_older_than_the_start_baselines_are_marked() {
        let dir = std::env::temp_dir().join(format!("summary-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let start = baselines(Label::Start, 10_000.0, 40_000.0);
        let mut old = write_path([7000.0; 3], 10_000.0, 25_000.0);
        old.machine.date = "2025-12-31T23:59:59Z".to_owned();
        std::fs::write(
            dir.join("baselines-start.json"),
            serde_json::to_string(&start).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join("write-path.json"),
            serde_json::to_string(&old).unwrap(),
        )
        .unwrap();
        let inputs = Inputs::read(&dir).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let source = inputs.source("write-path").unwrap();
        assert!(source.status.contains("earlier run"), "{source:?}");
        assert_eq!(inputs.source("baselines start").unwrap().status, "read");
        assert!(inputs.write_path.is_some(), "still read");
    }

    #[test]
    fn publish_splices_both_blocks() {
        let summary = summarize(&Inputs::default(), "make bench".to_owned());
        let dir = std::env::temp_dir().join(format!("summary-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let md = dir.join("B.md");
        std::fs::write(
            &md,
            "# B\n<!-- summary:begin -->\nold\n<!-- summary:end -->\n\
             <!-- baselines:begin -->\nold\n<!-- baselines:end -->\nrest\n",
        )
        .unwrap();
        summary
            .publish(Some(&dir.join("s.json")), Some(&md))
            .unwrap();
        let doc = std::fs::read_to_string(&md).unwrap();
        let json = std::fs::read_to_string(dir.join("s.json")).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert!(!doc.contains("old"), "{doc}");
        assert!(doc.contains("| workload | measured |") && doc.ends_with("rest\n"));
        let back: SummaryResults = serde_json::from_str(&json).unwrap();
        assert_eq!(back.rows, summary.rows);
    }
}
