//! `loadgen mix`: a realistic mix of commands and reads against the running
//! stack, open loop at a target rate or closed loop at a fixed concurrency,
//! with per-operation throughput, latency percentiles and errors, and
//! freshness: how long after a command's 202 its effect is visible through
//! query-service's replica path.
//!
//! - [`ops`]: the operations, their default weights (30 % commands, 70 %
//!   reads) and `--mix` parsing;
//! - [`driver`]: when requests are sent and how they are counted (open loop
//!   at fixed intervals, latency from the scheduled start);
//! - [`stack`]: the requests themselves, the client's model of what it
//!   created, seeding, and the freshness probes.
//!
//! Freshness: for a sampled fraction of the commands (every 1/f-th, the
//! first included), a probe polls `GET /orders/{id}` or `GET
//! /products/{id}` with `Cache-Control: no-cache` (a replica, unless
//! query-service falls back to the primary; the answering source is
//! recorded) every `--freshness-poll-ms` (5 ms) until its `ETag` (`"vN"`)
//! carries the version of the command's 202 or a later one. The time from
//! the 202's arrival to that answer is the sample, so it is late by up to
//! one poll period plus one read. Polls are not counted as reads of the mix.

pub mod driver;
pub mod ops;
pub mod stack;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use self::driver::{DriverOptions, Load, OpStats};
use self::ops::{Mix, MixSpecError, Op, Rng};
use self::stack::{FreshnessStats, SeedSummary, StackExecutor, StackOptions};
use crate::auth::TokenError;
use crate::stats::Latency;

/// Why a mix could not run (failed requests during the run are counted,
/// never an error).
#[derive(Debug, thiserror::Error)]
pub enum MixError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("--mix: {0}")]
    Spec(#[from] MixSpecError),
    #[error("{0}")]
    InvalidOption(String),
    #[error("seeding failed: {url}: {detail}")]
    Seed { url: String, detail: String },
    #[error("seeding needs at least one product (--products)")]
    NoProducts,
    #[error(
        "{missing} seeded entities were not readable on query-service after {timeout:?} \
         (e.g. {example}): are the projector and query-service running on the same stack?"
    )]
    SeedNotVisible {
        missing: usize,
        timeout: Duration,
        example: String,
    },
    #[error("stopped by a signal while seeding")]
    Interrupted,
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serializing the results: {0}")]
    Json(#[from] serde_json::Error),
}

/// Everything a mix run needs.
#[derive(Debug, Clone)]
pub struct MixOptions {
    pub command_url: String,
    pub query_url: String,
    pub load: Load,
    pub duration: Duration,
    pub warmup: Duration,
    pub mix: Mix,
    /// Products created before the run.
    pub products: usize,
    /// Customer ids orders are placed for.
    pub customers: usize,
    /// Orders placed before the run (all left placed, for later commands).
    pub seed_orders: usize,
    pub freshness_sample: f64,
    pub freshness_timeout: Duration,
    pub freshness_poll: Duration,
    /// Most requests outstanding (open loop); arrivals beyond are counted
    /// as [`driver::SATURATED`].
    pub max_in_flight: usize,
    /// Timeout of each request (then counted as `timeout`).
    pub request_timeout: Duration,
    /// A progress line on stderr every second.
    pub progress: bool,
}

impl MixOptions {
    /// The defaults of `loadgen mix` for this load.
    pub fn new(command_url: &str, query_url: &str, load: Load) -> Self {
        Self {
            command_url: command_url.to_owned(),
            query_url: query_url.to_owned(),
            load,
            duration: Duration::from_secs(10),
            warmup: Duration::ZERO,
            mix: Mix::default(),
            products: 100,
            customers: 1000,
            seed_orders: 200,
            freshness_sample: 0.2,
            freshness_timeout: Duration::from_secs(10),
            freshness_poll: Duration::from_millis(5),
            max_in_flight: 2000,
            request_timeout: Duration::from_secs(10),
            progress: true,
        }
    }

    fn validate(&self) -> Result<(), MixError> {
        let invalid = |what: &str| Err(MixError::InvalidOption(what.to_owned()));
        match self.load {
            Load::Rate(rate) if !(rate.is_finite() && rate > 0.0) => {
                return invalid("--rate must be a positive number of operations per second")
            }
            Load::Concurrency(0) => return invalid("--concurrency must be at least 1"),
            _ => {}
        }
        if self.duration.is_zero() {
            return invalid("--duration must be positive");
        }
        if !(0.0..=1.0).contains(&self.freshness_sample) {
            return invalid("--freshness-sample is a fraction from 0 to 1");
        }
        if self.freshness_poll.is_zero() || self.freshness_timeout.is_zero() {
            return invalid("--freshness-poll-ms and --freshness-timeout-ms must be positive");
        }
        if self.max_in_flight == 0 {
            return invalid("--max-in-flight must be at least 1");
        }
        if self.products == 0 {
            return Err(MixError::NoProducts);
        }
        Ok(())
    }
}

/// Everything one mix run measured (the JSON of `--json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixResults {
    /// UTC, RFC 3339, when the measured run started (after seeding).
    pub started_at: String,
    pub command_url: String,
    pub query_url: String,
    /// `open-loop` or `closed-loop`.
    pub mode: String,
    /// Open loop: arrivals per second.
    pub rate_per_s: Option<f64>,
    /// Closed loop: clients.
    pub concurrency: Option<usize>,
    /// How open-loop arrivals are spaced: `fixed-interval` (i / rate after
    /// the start).
    pub arrivals: String,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// The measured window as run (shorter if interrupted).
    pub measured_s: f64,
    /// Stopped early by SIGINT or SIGTERM.
    pub interrupted: bool,
    pub max_in_flight: usize,
    pub peak_in_flight: usize,
    /// Operation → weight.
    pub mix: BTreeMap<String, u32>,
    pub seed: SeedSummary,
    /// By operation name.
    pub operations: BTreeMap<String, OpStats>,
    /// All commands together, and all reads.
    pub commands: OpStats,
    pub reads: OpStats,
    pub freshness: FreshnessStats,
}

impl MixResults {
    /// 5xx answers over all operations.
    pub fn server_errors(&self) -> u64 {
        self.commands.server_errors() + self.reads.server_errors()
    }

    /// The table printed at the end of `loadgen mix`.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let load = match (self.rate_per_s, self.concurrency) {
            (Some(rate), _) => format!("open loop at {rate:.1} ops/s ({} arrivals)", self.arrivals),
            (_, Some(n)) => format!("closed loop, {n} clients"),
            _ => self.mode.clone(),
        };
        out.push_str(&format!(
            "{load}; measured {:.1} s after {:.1} s warm-up{}; peak in flight {} (cap {}); \
             seed {} products, {} orders, {} customers\n",
            self.measured_s,
            self.warmup_s,
            if self.interrupted {
                " (INTERRUPTED)"
            } else {
                ""
            },
            self.peak_in_flight,
            self.max_in_flight,
            self.seed.products,
            self.seed.orders,
            self.seed.customers,
        ));
        out.push_str(&format!(
            "{:<20} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}  errors\n",
            "operation", "sched", "ok", "ok/s", "p50 ms", "p95 ms", "p99 ms", "max ms"
        ));
        let rows = Op::ALL
            .iter()
            .filter_map(|op| self.operations.get(op.name()).map(|s| (op.name(), s)))
            .chain([("all commands", &self.commands), ("all reads", &self.reads)]);
        for (name, stats) in rows {
            out.push_str(&stats_row(name, stats));
        }
        let f = &self.freshness;
        out.push_str(&format!(
            "freshness (202 → visible on query-service with Cache-Control: no-cache; poll every \
             {:.0} ms, so up to one poll + one read late): {} samples ({:.0} % of the commands \
             sampled), {} timeouts (> {:.0} ms), {} skipped (probes busy), {} interrupted, {} polls\n",
            f.poll_interval_ms,
            f.samples,
            100.0 * f.sample_fraction,
            f.timeouts,
            f.timeout_ms,
            f.skipped_busy,
            f.interrupted,
            f.polls,
        ));
        out.push_str(&format!(
            "  {:<18} {}\n",
            "all",
            latency_cells(f.latency.as_ref())
        ));
        for (op, by_op) in &f.by_op {
            out.push_str(&format!(
                "  {:<18} {}  ({} samples, {} timeouts)\n",
                op,
                latency_cells(by_op.latency.as_ref()),
                by_op.samples,
                by_op.timeouts
            ));
        }
        if !f.sources.is_empty() || !f.poll_errors.is_empty() {
            out.push_str(&format!(
                "  seen from {}; poll errors {}\n",
                counts(&f.sources),
                counts(&f.poll_errors)
            ));
        }
        out
    }
}

fn latency_cells(latency: Option<&Latency>) -> String {
    match latency {
        Some(l) => format!(
            "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
        ),
        None => "no samples".to_owned(),
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn stats_row(name: &str, stats: &OpStats) -> String {
    let ms = |f: fn(&Latency) -> f64| {
        stats
            .latency
            .as_ref()
            .map_or_else(|| "-".to_owned(), |l| format!("{:.2}", f(l)))
    };
    format!(
        "{name:<20} {:>7} {:>7} {:>8.1} {:>8} {:>8} {:>8} {:>8}  {}\n",
        stats.scheduled,
        stats.ok,
        stats.ok_per_s,
        ms(|l| l.p50_ms),
        ms(|l| l.p95_ms),
        ms(|l| l.p99_ms),
        ms(|l| l.max_ms),
        if stats.errors.is_empty() {
            "-".to_owned()
        } else {
            counts(&stats.errors)
        }
    )
}

/// Seeds, runs the mix until its duration ends or `stop` completes, waits
/// for the freshness probes still polling, and returns every figure.
pub async fn run(
    options: &MixOptions,
    stop: impl Future<Output = ()>,
) -> Result<MixResults, MixError> {
    options.validate()?;
    let executor = Arc::new(StackExecutor::new(StackOptions {
        command_url: options.command_url.clone(),
        query_url: options.query_url.clone(),
        products: options.products,
        customers: options.customers,
        seed_orders: options.seed_orders,
        request_timeout: options.request_timeout,
        freshness_sample: options.freshness_sample,
        freshness_timeout: options.freshness_timeout,
        freshness_poll: options.freshness_poll,
    })?);
    tokio::pin!(stop);
    if options.progress {
        eprintln!(
            "mix: seeding {} products and {} orders",
            options.products, options.seed_orders
        );
    }
    let seed = tokio::select! {
        seeded = executor.seed() => seeded?,
        () = &mut stop => return Err(MixError::Interrupted),
    };
    if options.progress {
        eprintln!(
            "mix: seeded in {:.1} s, readable after {:.1} s more; running",
            seed.write_seconds, seed.visible_seconds
        );
    }
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let driver_options = DriverOptions {
        load: options.load,
        warmup: options.warmup,
        duration: options.duration,
        max_in_flight: options.max_in_flight,
        drain_timeout: options.request_timeout + Duration::from_secs(1),
        progress: options.progress,
        trace: false,
    };
    let report = driver::run(
        Arc::clone(&executor),
        &options.mix,
        &driver_options,
        &mut Rng::from_entropy(),
        &mut stop,
    )
    .await;
    let deadline = Instant::now() + options.freshness_timeout;
    if report.interrupted {
        executor
            .finish_probes(deadline, std::future::ready(()))
            .await;
    } else {
        executor.finish_probes(deadline, &mut stop).await;
    }
    let (mode, rate_per_s, concurrency) = match options.load {
        Load::Rate(rate) => ("open-loop", Some(rate), None),
        Load::Concurrency(n) => ("closed-loop", None, Some(n)),
    };
    Ok(MixResults {
        started_at,
        command_url: options.command_url.clone(),
        query_url: options.query_url.clone(),
        mode: mode.to_owned(),
        rate_per_s,
        concurrency,
        arrivals: "fixed-interval".to_owned(),
        warmup_s: options.warmup.as_secs_f64(),
        duration_s: options.duration.as_secs_f64(),
        measured_s: report.measured_s,
        interrupted: report.interrupted,
        max_in_flight: options.max_in_flight,
        peak_in_flight: report.peak_in_flight,
        mix: options.mix.weights(),
        seed,
        operations: report
            .ops
            .into_iter()
            .map(|(op, stats)| (op.name().to_owned(), stats))
            .collect(),
        commands: report.commands,
        reads: report.reads,
        freshness: executor.freshness(),
    })
}

/// Completes on SIGINT or SIGTERM (never, if they cannot be listened to).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut interrupt), Ok(mut terminate)) => {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        _ => {
            eprintln!("mix: cannot listen for SIGINT/SIGTERM; run to the end");
            std::future::pending::<()>().await;
        }
    }
}

/// `loadgen mix`: a realistic mix of commands and reads against the running
/// stack. Operations (`--mix` names, default weights): create_product 2,
/// change_price 4, rename_product 2, place_order 10, add_line 4,
/// confirm_order 6, cancel_order 2 (commands, to command-service);
/// get_order 30, get_order_uncached 15 (`Cache-Control: no-cache`),
/// customer_orders 10, get_product 10, list_products 5 (reads, to
/// query-service). Exit 0 even if requests failed (they are counted);
/// non-zero only if it could not run.
#[derive(Debug, Clone, clap::Args)]
pub struct MixArgs {
    #[arg(long, env = "COMMAND_URL", default_value = "http://127.0.0.1:18080")]
    pub command_url: String,
    #[arg(long, env = "QUERY_URL", default_value = "http://127.0.0.1:18081")]
    pub query_url: String,
    /// Open loop: arrivals per second, at fixed intervals; latency is
    /// measured from each arrival's scheduled time.
    #[arg(
        long,
        required_unless_present = "concurrency",
        conflicts_with = "concurrency"
    )]
    pub rate: Option<f64>,
    /// Closed loop: clients, each sending its next request when the last
    /// one is answered.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of the same load first, not measured.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// The whole mix as `op=weight,...` (operations not named are not sent).
    #[arg(long)]
    pub mix: Option<String>,
    /// Products created before the run.
    #[arg(long, default_value_t = 100)]
    pub products: usize,
    /// Size of the pool of customer ids orders are placed for.
    #[arg(long, default_value_t = 1000)]
    pub customers: usize,
    /// Orders placed before the run.
    #[arg(long, default_value_t = 200)]
    pub seed_orders: usize,
    /// Fraction of the commands whose effect is polled for (freshness).
    #[arg(long, default_value_t = 0.2)]
    pub freshness_sample: f64,
    /// A freshness probe gives up after this long (counted as a timeout).
    #[arg(long, default_value_t = 10_000)]
    pub freshness_timeout_ms: u64,
    /// Period of a freshness probe's polls: the measurement's resolution.
    #[arg(long, default_value_t = 5)]
    pub freshness_poll_ms: u64,
    /// Most requests outstanding; arrivals beyond are counted as the error
    /// "not sent: client saturated".
    #[arg(long, default_value_t = 2000)]
    pub max_in_flight: usize,
    /// Timeout of each request.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl MixArgs {
    pub fn options(&self) -> Result<MixOptions, MixError> {
        let load = match (self.rate, self.concurrency) {
            (Some(rate), _) => Load::Rate(rate),
            (None, Some(n)) => Load::Concurrency(n),
            (None, None) => {
                return Err(MixError::InvalidOption(
                    "give --rate or --concurrency".to_owned(),
                ))
            }
        };
        let seconds = |what: &str, s: f64| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| MixError::InvalidOption(format!("{what} must be a number of seconds")))
        };
        let mut options = MixOptions::new(&self.command_url, &self.query_url, load);
        options.duration = seconds("--duration", self.duration)?;
        options.warmup = seconds("--warmup", self.warmup)?;
        if let Some(spec) = &self.mix {
            options.mix = Mix::parse(spec)?;
        }
        options.products = self.products;
        options.customers = self.customers;
        options.seed_orders = self.seed_orders;
        options.freshness_sample = self.freshness_sample;
        options.freshness_timeout = Duration::from_millis(self.freshness_timeout_ms);
        options.freshness_poll = Duration::from_millis(self.freshness_poll_ms);
        options.max_in_flight = self.max_in_flight;
        options.request_timeout = Duration::from_millis(self.timeout_ms);
        options.progress = !self.quiet;
        Ok(options)
    }
}

/// `loadgen mix`: runs until the duration ends or SIGINT/SIGTERM, prints
/// the table, writes the JSON.
pub async fn main(args: &MixArgs) -> Result<(), MixError> {
    let options = args.options()?;
    let results = run(&options, shutdown_signal()).await?;
    print!("{}", results.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?).map_err(|source| {
            MixError::Write {
                path: path.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mix: MixArgs,
    }

    fn parse(args: &[&str]) -> Result<MixOptions, String> {
        let cli = Cli::try_parse_from(std::iter::once("mix").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.mix.options().map_err(|e| e.to_string())
    }

    #[test]
    fn rate_or_concurrency_is_required_and_exclusive() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--rate", "10", "--concurrency", "4"]).is_err());
        assert_eq!(parse(&["--rate", "40"]).unwrap().load, Load::Rate(40.0));
        assert_eq!(
            parse(&["--concurrency", "16"]).unwrap().load,
            Load::Concurrency(16)
        );
    }

    #[test]
    fn flags_reach_the_options() {
        let options = parse(&[
            "--rate",
            "40",
            "--duration",
            "3",
            "--warmup",
            "0.5",
            "--mix",
            "place_order=1,get_order=1",
            "--freshness-sample",
            "1",
            "--quiet",
        ])
        .unwrap();
        assert_eq!(options.duration, Duration::from_secs(3));
        assert_eq!(options.warmup, Duration::from_millis(500));
        assert_eq!(options.mix.spec(), "place_order=1,get_order=1");
        assert!((options.freshness_sample - 1.0).abs() < 1e-9);
        assert!(!options.progress);
        assert!(parse(&["--rate", "40", "--mix", "nope=1"])
            .unwrap_err()
            .contains("unknown operation"));
    }

    #[test]
    fn invalid_values_are_refused_before_anything_is_sent() {
        let check = |args: &[&str]| parse(args).unwrap().validate().unwrap_err().to_string();
        assert!(check(&["--rate", "0"]).contains("--rate"));
        assert!(check(&["--concurrency", "0"]).contains("--concurrency"));
        assert!(check(&["--rate", "5", "--duration", "0"]).contains("--duration"));
        assert!(check(&["--rate", "5", "--freshness-sample", "2"]).contains("fraction"));
        assert!(check(&["--rate", "5", "--products", "0"]).contains("product"));
    }

    fn stats(kind: ops::OpKind, ok: u64, errors: &[(&str, u64)]) -> OpStats {
        OpStats {
            kind,
            scheduled: ok + errors.iter().map(|(_, n)| n).sum::<u64>(),
            ok,
            ok_per_s: ok as f64 / 3.0,
            latency: (ok > 0).then_some(Latency {
                p50_ms: 1.0,
                p95_ms: 2.0,
                p99_ms: 3.0,
                max_ms: 4.0,
            }),
            errors: errors.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
        }
    }

    #[test]
    fn results_round_trip_through_json_and_render() {
        let results = MixResults {
            started_at: "2026-01-01T00:00:00.000Z".to_owned(),
            command_url: "http://c".to_owned(),
            query_url: "http://q".to_owned(),
            mode: "open-loop".to_owned(),
            rate_per_s: Some(40.0),
            concurrency: None,
            arrivals: "fixed-interval".to_owned(),
            warmup_s: 0.0,
            duration_s: 3.0,
            measured_s: 3.0,
            interrupted: false,
            max_in_flight: 2000,
            peak_in_flight: 3,
            mix: Mix::default().weights(),
            seed: SeedSummary::default(),
            operations: BTreeMap::from([
                (
                    "place_order".to_owned(),
                    stats(ops::OpKind::Command, 10, &[("503", 1)]),
                ),
                (
                    "get_order".to_owned(),
                    stats(ops::OpKind::Read, 20, &[(driver::SATURATED, 2)]),
                ),
            ]),
            commands: stats(ops::OpKind::Command, 10, &[("503", 1)]),
            reads: stats(ops::OpKind::Read, 20, &[(driver::SATURATED, 2)]),
            freshness: FreshnessStats::default(),
        };
        let json = serde_json::to_string(&results).unwrap();
        assert_eq!(serde_json::from_str::<MixResults>(&json).unwrap(), results);
        assert_eq!(results.server_errors(), 1);
        let table = results.table();
        assert!(table.contains("place_order"), "{table}");
        assert!(table.contains("503: 1"), "{table}");
        assert!(table.contains("not sent: client saturated: 2"), "{table}");
        assert!(table.contains("poll every 0 ms"), "{table}");
    }
}
