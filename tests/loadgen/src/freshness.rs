//! The freshness benchmark (`loadgen freshness`): the mix of `loadgen mix`
//! at half the maximum command rate, and how long a command's effect takes
//! to be visible through query-service's replica path, against the
//! command's own p99; and the peak memory of the three services under that
//! load.
//!
//! The step starts command-service (relay on), the projector and
//! query-service itself, on Kafka topics of its own (`freshness-<run>.*`,
//! a fresh consumer group). The maximum command rate is the write-path
//! run's sustained append rate (most clients, `--write-path-json`) if given,
//! else the commands/s of a closed-loop probe of the whole mix at 16
//! clients: the mix's reads compete with its commands for the same cores, so
//! only the mix itself says what its maximum is (`make bench` probes; half of
//! write-path's price-change rate overloaded the mix on 2 cores). The
//! measured runs offer the whole mix open loop at `load_fraction` of it in
//! commands, reads in the mix's proportion. While they run, the services'
//! `/metrics` are sampled every [`SAMPLE_EVERY`]: the outbox lag (commit →
//! broker ack), the projector's lag (broker → applied) and the replicas'
//! replay lag, so that a missed target can name the hop that dominated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::mix::driver::Load;
use crate::mix::ops::Mix;
use crate::mix::{self, MixError, MixOptions, MixResults};
use crate::procfs::{self, CpuSnapshot, CpuUsage, Processes};
use crate::relay;
use crate::report::{self, Section, Verdict};
use crate::service::{Service, ServiceError};
use crate::stats::median;
use crate::write_path::WritePathResults;

/// The freshness target: p99 ≤ this × the command p99.
pub const FRESHNESS_RATIO_TARGET: f64 = 5.0;
/// Most arrivals that may fail for the offered load to count as sustained:
/// beyond it the freshness verdict is missed whatever the ratio (a shed or
/// unsent command is neither fast nor fresh).
pub const MAX_FAILED_FRACTION: f64 = 0.01;
/// The memory target of each service, KiB (64 MiB).
pub const RSS_TARGET_KIB: u64 = 64 * 1024;
/// Clients of the closed-loop probe for the maximum command rate.
pub const PROBE_CLIENTS: usize = 16;
/// Period of the `/metrics` samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// The services, in the order reports list them.
pub const SERVICES: [&str; 3] = ["command-service", "projector", "query-service"];

/// Environment variables that shape freshness, recorded with the results.
const SETTINGS: [&str; 8] = [
    "RELAY_POLL_INTERVAL_MS",
    "RELAY_BATCH_SIZE",
    "PROJECTOR_BATCH_SIZE",
    "PROJECTOR_BATCH_TIMEOUT_MS",
    "PROJECTOR_FETCH_WAIT_MS",
    "REPLICA_CHECK_INTERVAL_MS",
    "REPLICA_MAX_LAG_MS",
    "KAFKA_TOPIC_PARTITIONS",
];

#[derive(Debug, Clone)]
pub struct FreshnessOptions {
    /// The primary (machine facts only).
    pub database_url: String,
    pub command_bin: PathBuf,
    pub command_url: String,
    pub projector_bin: PathBuf,
    pub projector_url: String,
    pub query_bin: PathBuf,
    pub query_url: String,
    /// The stack's directory: pidfiles for CPU, the broker's storage.
    pub stack_dir: Option<PathBuf>,
    /// The write-path results of the same run (sustained append rate).
    pub write_path_json: Option<PathBuf>,
    pub repetitions: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Share of the maximum command rate offered (0.5).
    pub load_fraction: f64,
    pub mix: Mix,
    pub work_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum FreshnessError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {}: {source}", path.display())]
    WritePath {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{} has no command_append measurement", .0.display())]
    NoSustainedAppend(PathBuf),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Mix(#[from] MixError),
    #[error("the command probe measured no successful command ({0})")]
    NoCommandRate(String),
    #[error("{0} exited during the benchmark ({1})")]
    Exited(&'static str, std::process::ExitStatus),
    #[error("--repetitions must be at least 1 and --load-fraction in (0, 1]")]
    Invalid,
}

/// Where the maximum command rate came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaxCommandRate {
    /// `write-path` (its sustained append rate) or `probe` (closed loop).
    pub source: String,
    /// The write-path JSON, if that.
    pub path: Option<String>,
    /// When that write-path run started.
    pub run_date: Option<String>,
    pub clients: usize,
    pub commands_per_s: f64,
    /// The probe's full results, if probed.
    pub probe: Option<MixResults>,
}

/// Mean and largest value of one lag gauge over the measured window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HopLag {
    pub mean_ms: f64,
    pub max_ms: f64,
}

/// The pipeline's hops as the services' `/metrics` saw them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hops {
    /// `/metrics` samples in the window (every [`SAMPLE_EVERY`]).
    pub samples: usize,
    /// command-service `outbox_lag_seconds`: age of the oldest committed
    /// event the broker has not acknowledged (relay publish).
    pub relay_publish: HopLag,
    /// projector `projector_lag_seconds`, the largest partition: age of
    /// the oldest message not applied (broker → read model on the primary).
    pub projector_apply: HopLag,
    /// query-service `query_database_lag_seconds`, the most lagging
    /// replica: age of the newest primary write not replayed.
    pub replica_apply: HopLag,
    /// Mean `projector_batch_seconds` of the batches in the window.
    pub projector_batch_mean_ms: Option<f64>,
}

/// One measured repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreshnessRun {
    pub repetition: usize,
    pub mix: MixResults,
    pub hops: Hops,
    /// CPU over the measured window: the services, loadgen, the stack's
    /// processes (with `STACK_DIR`) and the machine.
    pub cpu: CpuUsage,
}

/// Everything one `loadgen freshness` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FreshnessResults {
    pub machine: Machine,
    /// The exact command line that produced these results.
    pub command: String,
    pub repetitions: usize,
    /// Service settings (environment, or "default") and the broker storage.
    pub settings: BTreeMap<String, String>,
    pub topic_prefix: String,
    pub max_command_rate: MaxCommandRate,
    pub load_fraction: f64,
    /// Arrivals per second offered (all operations), and of them commands.
    pub rate_per_s: f64,
    pub command_rate_per_s: f64,
    pub mix: BTreeMap<String, u32>,
    pub runs: Vec<FreshnessRun>,
    /// Peak resident set size (VmHWM) of each service at the end, KiB.
    pub peak_rss_kib: BTreeMap<String, u64>,
    /// Medians over the runs.
    pub freshness_p50_ms: Option<f64>,
    pub freshness_p99_ms: Option<f64>,
    pub command_p99_ms: Option<f64>,
    /// `freshness_p99_ms / command_p99_ms`.
    pub freshness_ratio: Option<f64>,
    /// The largest share of a run's arrivals that failed (any cause).
    #[serde(default)]
    pub failed_fraction: f64,
    /// Which hop dominated, from the `/metrics` samples.
    pub bottleneck: Option<String>,
}

impl Section for FreshnessResults {
    const MARKER: &'static str = "freshness";
    fn render(&self) -> String {
        render(self)
    }
}

pub async fn run(
    options: &FreshnessOptions,
    command: String,
) -> Result<FreshnessResults, FreshnessError> {
    if options.repetitions == 0 || !(options.load_fraction > 0.0 && options.load_fraction <= 1.0) {
        return Err(FreshnessError::Invalid);
    }
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| FreshnessError::Io { what, path, source }
    };
    std::fs::create_dir_all(&options.work_dir).map_err(io("creating", &options.work_dir))?;
    let log = |name: &str| {
        let path = options.work_dir.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("opening", &path))
    };
    let (command_log, projector_log, query_log) = (
        log("command-service.log")?,
        log("projector.log")?,
        log("query-service.log")?,
    );
    let machine = Machine::read(&options.database_url).await;
    let sustained = match &options.write_path_json {
        Some(path) => Some(read_sustained(path)?),
        None => None,
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let prefix = format!("freshness-{run_id}");
    let mut settings: BTreeMap<String, String> = SETTINGS
        .iter()
        .map(|name| {
            let value = std::env::var(name).unwrap_or_else(|_| "default".to_owned());
            ((*name).to_owned(), value)
        })
        .collect();
    if let Some(storage) = options.stack_dir.as_ref().and_then(|dir| {
        std::fs::read_to_string(dir.join("run/broker.storage"))
            .ok()
            .map(|s| s.trim().to_owned())
    }) {
        settings.insert("BROKER_STORAGE".to_owned(), storage);
    }

    eprintln!("== services: command-service (relay), projector, query-service on {prefix}.*");
    let mut writer = Service::command_relaying(
        options.command_bin.clone(),
        &prefix,
        &command_log,
        &options.command_url,
    )
    .await?;
    let mut projector = Service::projector(
        options.projector_bin.clone(),
        &prefix,
        &format!("{prefix}-projector"),
        &projector_log,
        &options.projector_url,
    )
    .await?;
    let mut query = Service::start(
        options.query_bin.clone(),
        &[("RUST_LOG", "warn")],
        &query_log,
        &options.query_url,
    )
    .await?;

    let max_command_rate = match sustained {
        Some(rate) => rate,
        None => {
            eprintln!(
                "== maximum command rate: the whole mix, closed loop, {PROBE_CLIENTS} clients"
            );
            let mut probe = MixOptions::new(
                &options.command_url,
                &options.query_url,
                Load::Concurrency(PROBE_CLIENTS),
            );
            probe.mix = options.mix.clone();
            probe.duration = options.duration;
            probe.warmup = options.warmup;
            let results = mix::run(&probe, std::future::pending()).await?;
            eprint!("{}", results.table());
            if results.commands.ok == 0 {
                return Err(FreshnessError::NoCommandRate(format!(
                    "errors {:?}",
                    results.commands.errors
                )));
            }
            MaxCommandRate {
                source: "probe".to_owned(),
                path: None,
                run_date: Some(results.started_at.clone()),
                clients: PROBE_CLIENTS,
                commands_per_s: results.commands.ok_per_s,
                probe: Some(results),
            }
        }
    };
    let command_rate_per_s = options.load_fraction * max_command_rate.commands_per_s;
    let rate_per_s = command_rate_per_s / options.mix.command_share().max(f64::MIN_POSITIVE);

    let mut groups: Vec<(String, Processes)> = [
        (SERVICES[0], writer.pid()),
        (SERVICES[1], projector.pid()),
        (SERVICES[2], query.pid()),
        ("loadgen", Some(std::process::id())),
    ]
    .into_iter()
    .filter_map(|(name, pid)| pid.map(|pid| (name.to_owned(), Processes::One(pid))))
    .collect();
    groups.extend(stack_processes(options.stack_dir.as_deref()));
    let ticks = procfs::clock_ticks().await;
    let urls = [
        options.command_url.clone(),
        options.projector_url.clone(),
        options.query_url.clone(),
    ];

    let mut runs = Vec::new();
    for repetition in 1..=options.repetitions {
        eprintln!(
            "== repetition {repetition}/{}: mix open loop at {rate_per_s:.0} ops/s \
             ({command_rate_per_s:.0} commands/s = {:.0} % of {:.0})",
            options.repetitions,
            100.0 * options.load_fraction,
            max_command_rate.commands_per_s
        );
        let mut load = MixOptions::new(
            &options.command_url,
            &options.query_url,
            Load::Rate(rate_per_s),
        );
        load.mix = options.mix.clone();
        load.duration = options.duration;
        load.warmup = options.warmup;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sampler = tokio::spawn(sample_metrics(
            urls.clone(),
            groups.clone(),
            Arc::clone(&samples),
        ));
        let results = mix::run(&load, std::future::pending()).await;
        sampler.abort();
        let results = results?;
        eprint!("{}", results.table());
        let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
        let window = measured_window(&results);
        let in_window: Vec<&Sample> = samples
            .iter()
            .filter(|s| window.is_some_and(|(from, to)| s.at >= from && s.at <= to))
            .collect();
        let hops = hops(&in_window);
        let cpu = match (in_window.first(), in_window.last()) {
            (Some(first), Some(last)) => {
                first.cpu.usage_until(&last.cpu, ticks, machine.cpus.max(1))
            }
            _ => CpuUsage::default(),
        };
        for (name, service) in [
            (SERVICES[0], &mut writer),
            (SERVICES[1], &mut projector),
            (SERVICES[2], &mut query),
        ] {
            if let Some(status) = service.exited() {
                return Err(FreshnessError::Exited(name, status));
            }
        }
        runs.push(FreshnessRun {
            repetition,
            mix: results,
            hops,
            cpu,
        });
    }

    let peak_rss_kib: BTreeMap<String, u64> = [
        (SERVICES[0], writer.pid()),
        (SERVICES[1], projector.pid()),
        (SERVICES[2], query.pid()),
    ]
    .into_iter()
    .filter_map(|(name, pid)| Some((name.to_owned(), procfs::vm_hwm_kib(pid?)?)))
    .collect();
    query.stop().await?;
    projector.stop().await?;
    writer.stop().await?;

    let mut results = FreshnessResults {
        machine,
        command,
        repetitions: options.repetitions,
        settings,
        topic_prefix: prefix,
        max_command_rate,
        load_fraction: options.load_fraction,
        rate_per_s,
        command_rate_per_s,
        mix: options.mix.weights(),
        freshness_p50_ms: median(
            runs.iter()
                .filter_map(|r| r.mix.freshness.latency.map(|l| l.p50_ms)),
        ),
        freshness_p99_ms: median(
            runs.iter()
                .filter_map(|r| r.mix.freshness.latency.map(|l| l.p99_ms)),
        ),
        command_p99_ms: median(
            runs.iter()
                .filter_map(|r| r.mix.commands.latency.map(|l| l.p99_ms)),
        ),
        runs,
        peak_rss_kib,
        freshness_ratio: None,
        failed_fraction: 0.0,
        bottleneck: None,
    };
    results.failed_fraction = failed_fraction(&results.runs);
    results.freshness_ratio = results
        .freshness_p99_ms
        .zip(results.command_p99_ms)
        .filter(|&(_, command)| command > 0.0)
        .map(|(freshness, command)| freshness / command);
    results.bottleneck = bottleneck(&results);
    Ok(results)
}

/// The sustained append rate of a write-path run: the median appends/s at
/// its largest client count.
fn read_sustained(path: &Path) -> Result<MaxCommandRate, FreshnessError> {
    let text = std::fs::read_to_string(path).map_err(|source| FreshnessError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    let results: WritePathResults =
        serde_json::from_str(&text).map_err(|source| FreshnessError::WritePath {
            path: path.to_path_buf(),
            source,
        })?;
    let (clients, ops_per_s) = report::sustained_append(&results.measurements)
        .ok_or_else(|| FreshnessError::NoSustainedAppend(path.to_path_buf()))?;
    Ok(MaxCommandRate {
        source: "write-path".to_owned(),
        path: Some(path.display().to_string()),
        run_date: Some(results.machine.date),
        clients,
        commands_per_s: ops_per_s,
        probe: None,
    })
}

/// Redis, the broker and the Postgres clusters (with their children), from
/// the stack's pidfiles.
fn stack_processes(stack_dir: Option<&Path>) -> Vec<(String, Processes)> {
    let Some(dir) = stack_dir else {
        return vec![];
    };
    [
        ("redis", "run/redis.pid", false),
        ("broker", "run/broker.pid", false),
        ("postgres primary", "pg-primary/postmaster.pid", true),
        ("postgres replica", "pg-replica/postmaster.pid", true),
        ("postgres replica2", "pg-replica2/postmaster.pid", true),
    ]
    .into_iter()
    .filter_map(|(name, file, children)| {
        let pid = procfs::pid_from_file(&dir.join(file))?;
        let processes = if children {
            Processes::WithChildren(pid)
        } else {
            Processes::One(pid)
        };
        Some((name.to_owned(), processes))
    })
    .collect()
}

/// One look at the services' lag gauges and everybody's CPU.
#[derive(Debug, Clone)]
struct Sample {
    at: DateTime<Utc>,
    /// Seconds; None if the gauge could not be read.
    relay: Option<f64>,
    projector: Option<f64>,
    replica: Option<f64>,
    /// `projector_batch_seconds` (sum, count) so far.
    batches: Option<(f64, f64)>,
    cpu: CpuSnapshot,
}

/// Samples `/metrics` of command-service, projector and query-service
/// (`urls`, in that order) and the CPU of `groups` every [`SAMPLE_EVERY`],
/// until aborted.
async fn sample_metrics(
    urls: [String; 3],
    groups: Vec<(String, Processes)>,
    into: Arc<Mutex<Vec<Sample>>>,
) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let scrape = |url: &str| {
            let request = client.get(format!("{}/metrics", url.trim_end_matches('/')));
            async move {
                match request.send().await {
                    Ok(response) => response.text().await.ok(),
                    Err(_) => None,
                }
            }
        };
        let (command, projector, query) =
            tokio::join!(scrape(&urls[0]), scrape(&urls[1]), scrape(&urls[2]));
        let largest = |text: &Option<String>, metric: &str, label: Option<&str>| {
            text.as_deref().and_then(|text| {
                relay::labelled_samples(text, metric)
                    .into_iter()
                    .filter(|(labels, _)| label.is_none_or(|l| labels.contains(l)))
                    .map(|(_, v)| v)
                    .reduce(f64::max)
            })
        };
        let sample = Sample {
            at: Utc::now(),
            relay: command
                .as_deref()
                .and_then(|t| relay::sample(t, "outbox_lag_seconds")),
            projector: largest(&projector, "projector_lag_seconds", None),
            replica: largest(
                &query,
                "query_database_lag_seconds",
                Some("database=\"replica"),
            ),
            batches: projector.as_deref().and_then(|t| {
                Some((
                    relay::sample(t, "projector_batch_seconds_sum")?,
                    relay::sample(t, "projector_batch_seconds_count")?,
                ))
            }),
            cpu: CpuSnapshot::take(&groups),
        };
        into.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(sample);
    }
}

/// The measured window of a mix run in wall-clock time.
fn measured_window(results: &MixResults) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let started = DateTime::parse_from_rfc3339(&results.started_at)
        .ok()?
        .with_timezone(&Utc);
    let from =
        started + chrono::Duration::from_std(Duration::from_secs_f64(results.warmup_s)).ok()?;
    let to = from + chrono::Duration::from_std(Duration::from_secs_f64(results.measured_s)).ok()?;
    Some((from, to))
}

fn hops(samples: &[&Sample]) -> Hops {
    let lag = |value: fn(&Sample) -> Option<f64>| {
        let values: Vec<f64> = samples.iter().filter_map(|s| value(s)).collect();
        if values.is_empty() {
            return HopLag::default();
        }
        HopLag {
            mean_ms: 1000.0 * values.iter().sum::<f64>() / values.len() as f64,
            max_ms: 1000.0 * values.iter().copied().fold(0.0, f64::max),
        }
    };
    let batch = |s: &&Sample| s.batches;
    let projector_batch_mean_ms = samples
        .first()
        .and_then(batch)
        .zip(samples.last().and_then(batch))
        .and_then(|((sum0, n0), (sum1, n1))| (n1 > n0).then(|| 1000.0 * (sum1 - sum0) / (n1 - n0)));
    Hops {
        samples: samples.len(),
        relay_publish: lag(|s| s.relay),
        projector_apply: lag(|s| s.projector),
        replica_apply: lag(|s| s.replica),
        projector_batch_mean_ms,
    }
}

/// The targets: freshness p99 ≤ 5 × command p99 at the offered load, and
/// each service's peak RSS ≤ 64 MiB.
pub fn verdicts(results: &FreshnessResults) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    if let (Some(freshness), Some(command), Some(ratio)) = (
        results.freshness_p99_ms,
        results.command_p99_ms,
        results.freshness_ratio,
    ) {
        let sustained = results.failed_fraction <= MAX_FAILED_FRACTION;
        verdicts.push(Verdict {
            target: "freshness p99 ≤ 5 × command p99 at 50 % of the max command rate",
            measured: format!(
                "{ratio:.2}× ({freshness:.1} ms / {command:.1} ms at {:.0} commands/s){}",
                results.command_rate_per_s,
                if sustained {
                    String::new()
                } else {
                    format!(
                        "; {:.1} % of the arrivals failed: the load was not sustained",
                        100.0 * results.failed_fraction
                    )
                }
            ),
            met: ratio <= FRESHNESS_RATIO_TARGET && sustained,
        });
    }
    for service in SERVICES {
        if let Some(&kib) = results.peak_rss_kib.get(service) {
            verdicts.push(Verdict {
                target: match service {
                    "command-service" => "command-service peak RSS ≤ 64 MiB under the mix",
                    "projector" => "projector peak RSS ≤ 64 MiB under the mix",
                    _ => "query-service peak RSS ≤ 64 MiB under the mix",
                },
                measured: format!("{:.1} MiB", kib as f64 / 1024.0),
                met: kib <= RSS_TARGET_KIB,
            });
        }
    }
    verdicts
}

/// The hop that dominated freshness in the median run (by mean lag), and
/// the memory targets missed, in one sentence each; None if every target
/// was met.
pub fn bottleneck(results: &FreshnessResults) -> Option<String> {
    let mut parts = Vec::new();
    if results.failed_fraction > MAX_FAILED_FRACTION {
        parts.push(unsustained(results));
    }
    let missed_freshness = results
        .freshness_ratio
        .is_some_and(|r| r > FRESHNESS_RATIO_TARGET);
    if missed_freshness || results.failed_fraction > MAX_FAILED_FRACTION {
        parts.push(freshness_bottleneck(results));
    }
    for (service, &kib) in &results.peak_rss_kib {
        if kib > RSS_TARGET_KIB {
            parts.push(format!(
                "{service} peaked at {:.1} MiB resident, over the 64 MiB target",
                kib as f64 / 1024.0
            ));
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The largest share of failed arrivals over the runs.
fn failed_fraction(runs: &[FreshnessRun]) -> f64 {
    runs.iter()
        .map(|run| {
            let m = &run.mix;
            let scheduled = m.commands.scheduled + m.reads.scheduled;
            let failed = m.commands.error_count() + m.reads.error_count();
            if scheduled == 0 {
                0.0
            } else {
                failed as f64 / scheduled as f64
            }
        })
        .fold(0.0, f64::max)
}

/// What failed in the run with the most failures, by cause.
fn unsustained(results: &FreshnessResults) -> String {
    let worst = results
        .runs
        .iter()
        .max_by_key(|run| run.mix.commands.error_count() + run.mix.reads.error_count());
    let Some(run) = worst else {
        return "no run".to_owned();
    };
    let mut causes: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, n) in run.mix.commands.errors.iter().chain(&run.mix.reads.errors) {
        *causes.entry(key).or_default() += n;
    }
    let mut causes: Vec<(&str, u64)> = causes.into_iter().collect();
    causes.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    format!(
        "the offered load ({:.0} ops/s) was not sustained: {:.1} % of the arrivals of run {} \
         failed ({})",
        results.rate_per_s,
        100.0 * results.failed_fraction,
        run.repetition,
        causes
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn freshness_bottleneck(results: &FreshnessResults) -> String {
    let mut runs: Vec<&FreshnessRun> = results
        .runs
        .iter()
        .filter(|r| r.mix.freshness.latency.is_some())
        .collect();
    runs.sort_by(|a, b| {
        let p99 = |r: &FreshnessRun| r.mix.freshness.latency.map_or(0.0, |l| l.p99_ms);
        p99(a).total_cmp(&p99(b))
    });
    let Some(run) = runs.get(runs.len().saturating_sub(1) / 2) else {
        return "no freshness samples".to_owned();
    };
    let h = &run.hops;
    // The gauges are ages of the oldest pending item, sampled: their means
    // approximate each hop's share. What the median sample took beyond their
    // sum no gauge sees: waiting in the broker for the projector's next fetch
    // (its high watermark is only refreshed by librdkafka's statistics),
    // the relay's and the projector's polling intervals, the probe's reads.
    let p50 = run.mix.freshness.latency.map_or(0.0, |l| l.p50_ms);
    let reported = h.relay_publish.mean_ms + h.projector_apply.mean_ms + h.replica_apply.mean_ms;
    let mut hops = [
        (
            "relay publish (outbox lag)",
            h.relay_publish.mean_ms,
            Some(h.relay_publish.max_ms),
        ),
        (
            "projector apply (projector lag)",
            h.projector_apply.mean_ms,
            Some(h.projector_apply.max_ms),
        ),
        (
            "replica apply (replay lag)",
            h.replica_apply.mean_ms,
            Some(h.replica_apply.max_ms),
        ),
        (
            "time no service reports (broker → projector fetch wait, polling intervals)",
            (p50 - reported).max(0.0),
            None,
        ),
    ];
    hops.sort_by(|a, b| b.1.total_cmp(&a.1));
    let listed = hops
        .iter()
        .map(|(name, mean, max)| match max {
            Some(max) => format!("{name} mean {mean:.1} ms, max {max:.1} ms"),
            None => format!("{name} {mean:.1} ms of the {p50:.1} ms p50"),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let mut text = format!(
        "freshness is dominated by {} ({} /metrics samples every {} ms: {listed})",
        hops[0].0,
        h.samples,
        SAMPLE_EVERY.as_millis()
    );
    if let Some(batch) = h.projector_batch_mean_ms {
        text.push_str(&format!(
            "; projector batches took {batch:.1} ms on average"
        ));
    }
    let cpus = results.machine.cpus.max(1) as f64;
    let busy = run.cpu.machine_busy_cores;
    if busy >= 0.9 * cpus {
        let own = run.cpu.cores.get("loadgen").copied().unwrap_or(0.0);
        text.push_str(&format!(
            "; the machine was CPU-bound ({busy:.1} of {cpus:.0} cores busy, loadgen itself {own:.1})"
        ));
    }
    text
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

/// The freshness section's body (without markers).
pub fn render(results: &FreshnessResults) -> String {
    let mut out = String::new();
    out.push_str(&results.machine.run_line());
    let rate = &results.max_command_rate;
    let source = match rate.source.as_str() {
        "write-path" => format!(
            "the write-path run's sustained append rate at {} clients ({})",
            rate.clients,
            rate.run_date.as_deref().unwrap_or("?")
        ),
        _ => format!(
            "the commands/s of a closed-loop probe of the whole mix at {} clients",
            rate.clients
        ),
    };
    let freshness = results.runs.first().map(|r| &r.mix.freshness);
    out.push_str(&format!(
        "Command: `{}` ({} repetitions; medians over them). Load: the `loadgen mix` mix, open \
         loop at {:.0} ops/s (fixed intervals), of which {:.0} commands/s = {:.0} % of the \
         maximum command rate {:.0}/s ({source}). Freshness: {:.0} % of the commands \
         sampled, each polled every {:.0} ms on query-service with `Cache-Control: no-cache` from its 202 until the \
         command's version is served. Settings: {}.\n\n",
        results.command,
        results.repetitions,
        results.rate_per_s,
        results.command_rate_per_s,
        100.0 * results.load_fraction,
        rate.commands_per_s,
        freshness.map_or(0.0, |f| 100.0 * f.sample_fraction),
        freshness.map_or(0.0, |f| f.poll_interval_ms),
        results
            .settings
            .iter()
            .map(|(k, v)| format!("`{k}` {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.push_str(
        "| run | ops/s ok | commands ok/s | command p99 ms | freshness p50 ms | p99 ms | max ms \
         | samples | timeouts | errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for run in &results.runs {
        let m = &run.mix;
        let f = &m.freshness;
        let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
        for (key, n) in m.commands.errors.iter().chain(&m.reads.errors) {
            *errors.entry(key).or_default() += n;
        }
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
            run.repetition,
            m.commands.ok_per_s + m.reads.ok_per_s,
            m.commands.ok_per_s,
            ms(m.commands.latency.map(|l| l.p99_ms)),
            ms(f.latency.map(|l| l.p50_ms)),
            ms(f.latency.map(|l| l.p99_ms)),
            ms(f.latency.map(|l| l.max_ms)),
            f.samples,
            f.timeouts,
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
    out.push_str(
        "\n| run | relay publish lag mean / max ms | projector lag mean / max ms | replica \
         lag mean / max ms | not reported ms (p50 − Σ means) | projector batch mean ms | CPU \
         cores: command / projector / query / loadgen / machine |\n\
         |---:|---|---|---|---:|---:|---|\n",
    );
    for run in &results.runs {
        let h = &run.hops;
        let lag = |l: HopLag| format!("{:.1} / {:.1}", l.mean_ms, l.max_ms);
        let cores = |name: &str| {
            run.cpu
                .cores
                .get(name)
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}"))
        };
        let unreported = run.mix.freshness.latency.map(|l| {
            (l.p50_ms
                - h.relay_publish.mean_ms
                - h.projector_apply.mean_ms
                - h.replica_apply.mean_ms)
                .max(0.0)
        });
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} / {} / {} / {} / {:.2} |\n",
            run.repetition,
            lag(h.relay_publish),
            lag(h.projector_apply),
            lag(h.replica_apply),
            ms(unreported),
            ms(h.projector_batch_mean_ms),
            cores(SERVICES[0]),
            cores(SERVICES[1]),
            cores(SERVICES[2]),
            cores("loadgen"),
            run.cpu.machine_busy_cores
        ));
    }
    out.push_str(&report::verdict_table(&verdicts(results)));
    if let Some(bottleneck) = &results.bottleneck {
        out.push_str(&format!("\nBottleneck: {bottleneck}.\n"));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::mix::driver::OpStats;
    use crate::mix::ops::OpKind;
    use crate::mix::stack::FreshnessStats;
    use crate::stats::Latency;

    fn latency(p99_ms: f64) -> Option<Latency> {
        Some(Latency {
            p50_ms: p99_ms / 3.0,
            p95_ms: p99_ms / 1.5,
            p99_ms,
            max_ms: p99_ms * 2.0,
        })
    }

    fn mix_results(command_p99: f64, freshness_p99: f64) -> MixResults {
        let stats = |kind| OpStats {
            kind,
            scheduled: 100,
            ok: 100,
            ok_per_s: 10.0,
            latency: latency(command_p99),
            errors: BTreeMap::new(),
        };
        MixResults {
            started_at: "2026-01-01T00:00:00.000Z".to_owned(),
            command_url: String::new(),
            query_url: String::new(),
            mode: "open-loop".to_owned(),
            rate_per_s: Some(33.3),
            concurrency: None,
            arrivals: "fixed-interval".to_owned(),
            warmup_s: 1.0,
            duration_s: 10.0,
            measured_s: 10.0,
            interrupted: false,
            max_in_flight: 2000,
            peak_in_flight: 4,
            mix: Mix::default().weights(),
            seed: Default::default(),
            operations: BTreeMap::new(),
            commands: stats(OpKind::Command),
            reads: stats(OpKind::Read),
            freshness: FreshnessStats {
                poll_interval_ms: 5.0,
                sample_fraction: 0.2,
                samples: 20,
                latency: latency(freshness_p99),
                ..FreshnessStats::default()
            },
        }
    }

    fn results(runs: Vec<(f64, f64, Hops)>, rss: &[(&str, u64)]) -> FreshnessResults {
        let runs: Vec<FreshnessRun> = runs
            .into_iter()
            .enumerate()
            .map(|(i, (command, freshness, hops))| FreshnessRun {
                repetition: i + 1,
                mix: mix_results(command, freshness),
                hops,
                cpu: CpuUsage::default(),
            })
            .collect();
        let mut results = FreshnessResults {
            machine: Machine {
                cpus: 2,
                ..Machine::default()
            },
            command: "loadgen freshness".to_owned(),
            repetitions: runs.len(),
            settings: BTreeMap::new(),
            topic_prefix: "freshness-x".to_owned(),
            max_command_rate: MaxCommandRate {
                source: "probe".to_owned(),
                path: None,
                run_date: None,
                clients: 16,
                commands_per_s: 20.0,
                probe: None,
            },
            load_fraction: 0.5,
            rate_per_s: 33.3,
            command_rate_per_s: 10.0,
            mix: Mix::default().weights(),
            freshness_p50_ms: median(
                runs.iter()
                    .filter_map(|r| r.mix.freshness.latency.map(|l| l.p50_ms)),
            ),
            freshness_p99_ms: median(
                runs.iter()
                    .filter_map(|r| r.mix.freshness.latency.map(|l| l.p99_ms)),
            ),
            command_p99_ms: median(
                runs.iter()
                    .filter_map(|r| r.mix.commands.latency.map(|l| l.p99_ms)),
            ),
            runs,
            peak_rss_kib: rss.iter().map(|(s, k)| ((*s).to_owned(), *k)).collect(),
            freshness_ratio: None,
            failed_fraction: 0.0,
            bottleneck: None,
        };
        results.failed_fraction = failed_fraction(&results.runs);
        results.freshness_ratio =
            Some(results.freshness_p99_ms.unwrap() / results.command_p99_ms.unwrap());
        results.bottleneck = bottleneck(&results);
        results
    }

    fn hop_lags(relay: f64, projector: f64, replica: f64) -> Hops {
        let lag = |mean_ms: f64| HopLag {
            mean_ms,
            max_ms: mean_ms * 3.0,
        };
        Hops {
            samples: 40,
            relay_publish: lag(relay),
            projector_apply: lag(projector),
            replica_apply: lag(replica),
            projector_batch_mean_ms: Some(4.0),
        }
    }

    #[test]
    fn met_targets_have_no_bottleneck() {
        let r = results(
            vec![(10.0, 30.0, hop_lags(5.0, 8.0, 1.0))],
            &[
                ("command-service", 30_000),
                ("projector", 20_000),
                ("query-service", 25_000),
            ],
        );
        let verdicts = verdicts(&r);
        assert_eq!(verdicts.len(), 4);
        assert!(verdicts.iter().all(|v| v.met), "{verdicts:?}");
        assert_eq!(r.bottleneck, None);
        let section = r.render();
        assert!(section.contains("3.00×"), "{section}");
        assert!(!section.contains("Bottleneck"), "{section}");
    }

    #[test]
    fn a_missed_freshness_target_names_the_dominant_hop_of_the_median_run() {
        let r = results(
            vec![
                (10.0, 80.0, hop_lags(2.0, 60.0, 1.0)),
                (10.0, 70.0, hop_lags(50.0, 3.0, 1.0)),
                (10.0, 90.0, hop_lags(1.0, 1.0, 70.0)),
            ],
            &[("projector", 70_000)],
        );
        assert_eq!(r.freshness_ratio, Some(8.0));
        let verdicts = verdicts(&r);
        assert!(!verdicts[0].met, "{verdicts:?}");
        assert!(!verdicts[1].met, "projector RSS: {verdicts:?}");
        let text = r.bottleneck.clone().unwrap();
        // The median run by freshness p99 is the first (80 ms).
        assert!(
            text.starts_with("freshness is dominated by projector apply"),
            "{text}"
        );
        assert!(text.contains("projector peaked at 68.4 MiB"), "{text}");
        assert!(r.render().contains("**missed**"));
    }

    #[test]
    fn an_unsustained_load_misses_the_freshness_target_whatever_the_ratio() {
        let mut r = results(
            vec![(10.0, 20.0, hop_lags(1.0, 5.0, 1.0))],
            &[("projector", 20_000)],
        );
        let commands = &mut r.runs[0].mix.commands;
        commands.errors.insert("503".to_owned(), 30);
        commands
            .errors
            .insert(crate::mix::driver::SATURATED.to_owned(), 10);
        commands.scheduled += 40;
        r.failed_fraction = failed_fraction(&r.runs);
        assert!((r.failed_fraction - 40.0 / 240.0).abs() < 1e-9);
        r.bottleneck = bottleneck(&r);
        let verdict = &verdicts(&r)[0];
        assert!(!verdict.met, "{verdict:?}");
        assert!(verdict.measured.contains("not sustained"), "{verdict:?}");
        let text = r.bottleneck.unwrap();
        assert!(
            text.contains("503: 30, not sent: client saturated: 10"),
            "{text}"
        );
        assert!(text.contains("dominated by projector apply"), "{text}");
    }

    #[test]
    fn time_no_gauge_sees_is_named_when_it_dominates() {
        // p50 = 300 ms, the gauges' means add up to 14 ms.
        let r = results(vec![(10.0, 900.0, hop_lags(5.0, 8.0, 1.0))], &[]);
        let text = r.bottleneck.unwrap();
        assert!(
            text.starts_with("freshness is dominated by time no service reports"),
            "{text}"
        );
        assert!(text.contains("286.0 ms of the 300.0 ms p50"), "{text}");
    }

    #[test]
    fn results_round_trip_through_json() {
        let r = results(vec![(10.0, 30.0, hop_lags(5.0, 8.0, 1.0))], &[]);
        let json = serde_json::to_value(&r).unwrap();
        let back: FreshnessResults = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        assert_eq!(back.runs, r.runs);
    }

    #[test]
    fn hops_are_means_and_maxima_of_the_samples() {
        let sample = |relay: f64, projector: Option<f64>, batches: (f64, f64)| Sample {
            at: Utc::now(),
            relay: Some(relay),
            projector,
            replica: None,
            batches: Some(batches),
            cpu: CpuSnapshot::take(&[]),
        };
        let samples = [
            sample(0.010, Some(0.004), (1.0, 100.0)),
            sample(0.030, None, (1.2, 150.0)),
        ];
        let h = hops(&samples.iter().collect::<Vec<_>>());
        assert_eq!(h.samples, 2);
        assert!((h.relay_publish.mean_ms - 20.0).abs() < 1e-9, "{h:?}");
        assert!((h.relay_publish.max_ms - 30.0).abs() < 1e-9, "{h:?}");
        assert!((h.projector_apply.mean_ms - 4.0).abs() < 1e-9, "{h:?}");
        assert_eq!(h.replica_apply, HopLag::default());
        assert!(
            (h.projector_batch_mean_ms.unwrap() - 4.0).abs() < 1e-9,
            "{h:?}"
        );
    }

    #[test]
    fn the_window_is_after_the_warmup() {
        let r = mix_results(1.0, 1.0);
        let (from, to) = measured_window(&r).unwrap();
        assert_eq!(from.to_rfc3339(), "2026-01-01T00:00:01+00:00");
        assert_eq!((to - from).num_seconds(), 10);
    }
}
