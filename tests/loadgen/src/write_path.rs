//! The write-path benchmark: command appends against pgbench single-row
//! inserts at the same client counts, interleaved, and the relay's drain
//! rate against the sustained append rate.
//!
//! Interleaving (pgbench c=1, appends c=1, pgbench c=16, appends c=16, and
//! again) spreads this shared machine's drift over both sides of every
//! ratio; the report quotes medians over the repetitions.
//!
//! Every measured run is also profiled, so that a missed target names where
//! the time went: the cores of command-service, both Postgres clusters, the
//! broker, Redis and loadgen itself ([`procfs`]), and what the primary did
//! (`pg_stat_statements`, commits, WAL flushes), over the middle 80 % of the
//! run's window, or a drain's whole window.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::append::{self, AppendOptions};
use crate::catchup::{self, Statement};
use crate::machine::Machine;
use crate::pgbench::{self, SINGLE_INSERT};
use crate::procfs::{self, CpuSnapshot, CpuUsage, Processes};
use crate::query_reads;
use crate::relay::{self, Drain};
use crate::service::Service;
use crate::sql::{self, SqlError};
use crate::stats::Measurement;

/// Name of the appends measured while the relay is off (to build a backlog).
pub const APPEND_RELAY_OFF: &str = "command_append_relay_off";

/// CPU group of command-service.
pub const COMMAND_SERVICE: &str = "command-service";
/// CPU group of this process: the append clients, or the metrics scrapes of
/// a drain (pgbench runs as a process of its own, counted in the rest).
pub const LOADGEN: &str = "loadgen";
/// CPU group of the primary's postmaster and its children (the name
/// [`query_reads`] gives it too).
pub const PRIMARY: &str = "postgres primary";

/// Statements kept per profile, the costliest first.
const KEPT_STATEMENTS: usize = 10;
/// Process groups below this many cores are counted in "the rest".
const SHOWN_CORES: f64 = 0.05;

#[derive(Debug, Clone)]
pub struct WritePathOptions {
    pub database_url: String,
    /// The command-service binary (a release build).
    pub command_bin: PathBuf,
    pub command_url: String,
    pub clients: Vec<usize>,
    pub repetitions: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// How long to append with the relay off to build the drained backlog.
    pub backlog: Duration,
    /// Scratch space (pgbench logs) and the services' logs.
    pub work_dir: PathBuf,
    /// The stack's directory: pidfiles of both Postgres clusters, the broker
    /// and Redis, for their CPU. Without it the primary is found from its
    /// sessions and the others are counted in the rest.
    pub stack_dir: Option<PathBuf>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WritePathResults {
    pub machine: Machine,
    /// The exact command line that produced these results.
    pub command: String,
    pub repetitions: usize,
    pub measurements: Vec<Measurement>,
    pub drains: Vec<Drain>,
    /// Where each measured run and drain spent its time (absent from
    /// results written before runs were profiled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<Profile>,
}

/// The cores each process group kept busy and what the primary did over
/// one measured run (the middle 80 % of its window) or drain (its window).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub repetition: usize,
    /// The measurement's name, or [`relay::NAME`] for a drain.
    pub name: String,
    /// Clients of the run (1 for a drain: one relay).
    pub clients: usize,
    /// The run's rate: operations/s, or events/s of a drain.
    pub per_s: f64,
    pub cpu: CpuUsage,
    pub primary: PrimaryActivity,
}

/// What the Postgres primary did over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrimaryActivity {
    pub seconds: f64,
    /// Transactions committed in the database by every session, reads
    /// included (`pg_stat_database.xact_commit`; sessions report it up to a
    /// second late, which evens out under steady load).
    pub commits: u64,
    /// WAL flushes to disk, the whole cluster's (`pg_stat_wal.wal_sync`):
    /// fewer than commits when commits share a flush.
    pub wal_syncs: u64,
    /// The costliest statements (`pg_stat_statements`, nested ones too), most
    /// execution time first; empty without the extension.
    pub statements: Vec<Statement>,
}

impl PrimaryActivity {
    /// The costliest kept statement whose text satisfies `matches`.
    pub fn statement(&self, matches: impl Fn(&str) -> bool) -> Option<&Statement> {
        self.statements.iter().find(|s| matches(&s.query))
    }
}

impl Profile {
    fn of(repetition: usize, m: &Measurement, (cpu, primary): (CpuUsage, PrimaryActivity)) -> Self {
        Self {
            repetition,
            name: m.name.clone(),
            clients: m.clients,
            per_s: m.ops_per_s,
            cpu,
            primary,
        }
    }
}

pub async fn run(options: &WritePathOptions, command: String) -> anyhow::Result<WritePathResults> {
    std::fs::create_dir_all(&options.work_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(options.work_dir.join("command-service.log"))?;
    let machine = Machine::read(&options.database_url).await;
    pgbench::setup(&options.database_url, &SINGLE_INSERT).await?;
    let meter = Meter::new(options, machine.cpus).await;

    let mut measurements = Vec::new();
    let mut profiles = Vec::new();
    let service = start(options, &log, true).await?;
    let groups = meter.groups(&service);
    for repetition in 1..=options.repetitions {
        for &clients in &options.clients {
            eprintln!(
                "== repetition {repetition}/{}: pgbench single insert, {clients} client(s)",
                options.repetitions
            );
            let (baseline, window) = meter
                .during(
                    pgbench::run(
                        &options.database_url,
                        &SINGLE_INSERT,
                        clients,
                        options.warmup,
                        options.duration,
                        &options.work_dir,
                        &[],
                    ),
                    &groups,
                    options.warmup,
                    options.duration,
                )
                .await;
            let baseline = baseline?;
            let profile = Profile::of(repetition, &baseline, window?);
            eprintln!("   {}", one_line(&baseline));
            eprintln!("   {}", run_text(&profile, machine.cpus));
            profiles.push(profile);
            measurements.push(baseline);
            eprintln!(
                "== repetition {repetition}/{}: command appends, {clients} client(s)",
                options.repetitions
            );
            let appends =
                append::prepare(&append_options(options, clients, options.duration)).await?;
            let (appends, window) = meter
                .during(appends.run(), &groups, options.warmup, options.duration)
                .await;
            let profile = Profile::of(repetition, &appends, window?);
            eprintln!("   {}", one_line(&appends));
            eprintln!("   {}", run_text(&profile, machine.cpus));
            profiles.push(profile);
            measurements.push(appends);
        }
    }
    service.stop().await?;

    let backlog_clients = options.clients.iter().copied().max().unwrap_or(16);
    let mut drains = Vec::new();
    for repetition in 1..=options.repetitions {
        eprintln!(
            "== repetition {repetition}/{}: backlog with the relay off, then drain",
            options.repetitions
        );
        let service = start(options, &log, false).await?;
        let mut backlog =
            append::run(&append_options(options, backlog_clients, options.backlog)).await?;
        backlog.name = APPEND_RELAY_OFF.to_owned();
        eprintln!("   {}", one_line(&backlog));
        measurements.push(backlog);
        service.stop().await?;

        let service = start(options, &log, true).await?;
        let groups = meter.groups(&service);
        let (meter_ref, groups_ref) = (&meter, &groups[..]);
        let (drain, first, last) = relay::measure_drain_observed(
            &options.command_url,
            Duration::from_millis(100),
            Duration::from_secs(600),
            move || meter_ref.snapshot(groups_ref),
        )
        .await?;
        let (cpu, primary) = meter.usage(&first?, &last?);
        let profile = Profile {
            repetition,
            name: drain.name.clone(),
            clients: 1,
            per_s: drain.events_per_s,
            cpu,
            primary,
        };
        eprintln!(
            "   relay: {} events in {:.2}s = {:.0} events/s",
            drain.events, drain.seconds, drain.events_per_s
        );
        eprintln!("   {}", relay_text(&profile, machine.cpus));
        profiles.push(profile);
        drains.push(drain);
        service.stop().await?;
    }

    Ok(WritePathResults {
        machine,
        command,
        repetitions: options.repetitions,
        measurements,
        drains,
        profiles,
    })
}

async fn start(
    options: &WritePathOptions,
    log: &std::fs::File,
    relay: bool,
) -> anyhow::Result<Service> {
    let relay = if relay { "true" } else { "false" };
    Ok(Service::start(
        options.command_bin.clone(),
        &[("RELAY_ENABLED", relay), ("RUST_LOG", "warn")],
        log,
        &options.command_url,
    )
    .await?)
}

fn append_options(options: &WritePathOptions, clients: usize, duration: Duration) -> AppendOptions {
    AppendOptions {
        url: options.command_url.clone(),
        clients,
        warmup: options.warmup,
        duration,
        progress: false,
    }
}

pub fn one_line(m: &Measurement) -> String {
    let errors = if m.errors.is_empty() {
        String::new()
    } else {
        format!(" errors {:?}", m.errors)
    };
    format!(
        "{} c={}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms{errors}",
        m.name, m.clients, m.ops_per_s, m.latency.p50_ms, m.latency.p99_ms, m.latency.max_ms
    )
}

// ------------------------------------------------------------------ sampling

/// Samples the CPU of the process groups and the primary's counters.
struct Meter {
    /// Every group but command-service, which is restarted between phases.
    groups: Vec<(String, Processes)>,
    ticks: f64,
    cpus: usize,
    database_url: String,
}

/// The CPU ticks and the primary's counters at one moment.
struct Snapshot {
    cpu: CpuSnapshot,
    primary: PrimaryCounters,
}

impl Meter {
    /// loadgen, and the stack's Postgres clusters, Redis and broker from
    /// its pidfiles; without them the primary's postmaster from its sessions.
    async fn new(options: &WritePathOptions, cpus: usize) -> Self {
        let mut groups = vec![(LOADGEN.to_owned(), Processes::One(std::process::id()))];
        groups.extend(query_reads::stack_processes(options.stack_dir.as_deref()));
        if !groups.iter().any(|(name, _)| name == PRIMARY) {
            if let Some(pid) = catchup::postmaster_pid(&options.database_url).await {
                groups.push((PRIMARY.to_owned(), Processes::WithChildren(pid)));
            }
        }
        Self {
            groups,
            ticks: procfs::clock_ticks().await,
            cpus: cpus.max(1),
            database_url: options.database_url.clone(),
        }
    }

    /// The groups with `service` as command-service.
    fn groups(&self, service: &Service) -> Vec<(String, Processes)> {
        let mut groups = self.groups.clone();
        if let Some(pid) = service.pid() {
            groups.push((COMMAND_SERVICE.to_owned(), Processes::One(pid)));
        }
        groups
    }

    async fn snapshot(&self, groups: &[(String, Processes)]) -> Result<Snapshot, SqlError> {
        let cpu = CpuSnapshot::take(groups);
        let primary = PrimaryCounters::read(&self.database_url).await?;
        Ok(Snapshot { cpu, primary })
    }

    fn usage(&self, start: &Snapshot, end: &Snapshot) -> (CpuUsage, PrimaryActivity) {
        (
            start.cpu.usage_until(&end.cpu, self.ticks, self.cpus),
            start.primary.until(&end.primary),
        )
    }

    /// Runs `measure` (a warm-up, then a window, starting now) and samples
    /// from 10 % into the window to 90 % of it.
    async fn during<T>(
        &self,
        measure: impl Future<Output = T>,
        groups: &[(String, Processes)],
        warmup: Duration,
        window: Duration,
    ) -> (T, Result<(CpuUsage, PrimaryActivity), SqlError>) {
        let sample = async {
            tokio::time::sleep(warmup + window.mul_f64(0.1)).await;
            let start = self.snapshot(groups).await?;
            tokio::time::sleep(window.mul_f64(0.8)).await;
            let end = self.snapshot(groups).await?;
            Ok::<_, SqlError>(self.usage(&start, &end))
        };
        tokio::join!(measure, sample)
    }
}

/// The primary's cumulative counters at one moment.
#[derive(Debug, Clone)]
struct PrimaryCounters {
    at: Instant,
    totals: Totals,
    /// `pg_stat_statements` by statement key.
    statements: BTreeMap<String, Statement>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct Totals {
    commits: u64,
    wal_syncs: u64,
}

/// The database's commits and the cluster's WAL flushes.
const TOTALS_SQL: &str = "SELECT json_build_object(
        'commits', (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
        'wal_syncs', (SELECT wal_sync FROM pg_stat_wal))";

impl PrimaryCounters {
    /// `pg_stat_statements` best effort (empty without the extension); the
    /// totals must be readable.
    async fn read(database_url: &str) -> Result<Self, SqlError> {
        let started = Instant::now();
        let statements = catchup::statements(database_url).await;
        let totals = sql::json(database_url, TOTALS_SQL).await?;
        // Two psql runs take a noticeable part of a short window: time the
        // counters at their middle.
        Ok(Self {
            at: started + started.elapsed() / 2,
            totals,
            statements,
        })
    }

    /// What ran between `self` and `end`, without these reads themselves.
    fn until(&self, end: &Self) -> PrimaryActivity {
        let (_, _, ran) = catchup::statement_diff(&self.statements, &end.statements, usize::MAX);
        PrimaryActivity {
            seconds: end.at.duration_since(self.at).as_secs_f64(),
            commits: end.totals.commits.saturating_sub(self.totals.commits),
            wal_syncs: end.totals.wal_syncs.saturating_sub(self.totals.wal_syncs),
            statements: ran
                .into_iter()
                .filter(|s| !is_counter_read(&s.query))
                .take(KEPT_STATEMENTS)
                .collect(),
        }
    }
}

/// Whether `query` is one of the reads above: [`TOTALS_SQL`], or
/// [`catchup::statements`]' read of `pg_stat_statements`, whose stored text
/// is cut before its `FROM` (it is known by its `s.queryid`).
fn is_counter_read(query: &str) -> bool {
    query.contains("pg_stat_wal")
        || query.contains("pg_stat_statements")
        || query.contains("s.queryid")
}

// ------------------------------------------------------------------ reading

/// The profile of a series' median run by rate (the lower one of an even
/// count), as the verdicts take medians.
pub fn median_profile<'a>(
    profiles: &'a [Profile],
    name: &str,
    clients: usize,
) -> Option<&'a Profile> {
    let mut runs: Vec<&Profile> = profiles
        .iter()
        .filter(|p| p.name == name && p.clients == clients)
        .collect();
    runs.sort_by(|a, b| a.per_s.total_cmp(&b.per_s));
    runs.get(runs.len().checked_sub(1)? / 2).copied()
}

/// Where the median append run at `clients` spent its time, with pgbench's
/// median run at the same count beside it, in one sentence, e.g.
/// "command-service 0.90 cores, postgres primary 0.80 (append_events mean
/// 2.10 ms, 0.30 calls, 1.30 commits and 0.20 WAL flushes per append),
/// loadgen 0.20, the rest 0.05; the machine was CPU-bound (1.95 of 2 busy);
/// pgbench at 16 clients: …". None without profiles (older results).
pub fn appends_bottleneck(results: &WritePathResults, clients: usize) -> Option<String> {
    let cpus = results.machine.cpus;
    let appends = median_profile(&results.profiles, append::NAME, clients)?;
    let mut text = run_text(appends, cpus);
    if let Some(pgbench) = median_profile(&results.profiles, SINGLE_INSERT.name, clients) {
        text.push_str(&format!(
            "; pgbench at {}: {}",
            plural_clients(clients),
            run_text(pgbench, cpus)
        ));
    }
    Some(text)
}

/// What limits the median drain, in one sentence: the relay's batch cycle
/// (one batch in flight, Postgres' part of it and the rest) and the cores
/// during the drain. None without profiles (older results).
pub fn relay_bottleneck(results: &WritePathResults) -> Option<String> {
    median_profile(&results.profiles, relay::NAME, 1).map(|p| relay_text(p, results.machine.cpus))
}

/// The cores and the primary's part of one run.
fn run_text(profile: &Profile, cpus: usize) -> String {
    let details: BTreeMap<&str, String> = per_op_text(profile)
        .map(|text| (PRIMARY, text))
        .into_iter()
        .collect();
    let mut parts = vec![cores_text(
        &profile.cpu,
        &details,
        rest_label(&profile.name),
    )];
    parts.extend(machine_text(&profile.cpu, cpus));
    parts.retain(|p| !p.is_empty());
    parts.join("; ")
}

/// A drain's batch cycle, then its cores.
fn relay_text(profile: &Profile, cpus: usize) -> String {
    let mut parts: Vec<String> = batch_text(&profile.primary).into_iter().collect();
    let cores = cores_text(&profile.cpu, &BTreeMap::new(), rest_label(&profile.name));
    if !cores.is_empty() {
        parts.push(format!("during the drain {cores}"));
    }
    parts.extend(machine_text(&profile.cpu, cpus));
    parts.join("; ")
}

/// "command-service 0.90 cores, postgres primary 0.80 (detail), loadgen
/// 0.20, the rest 0.05": the groups from the busiest down, those under
/// [`SHOWN_CORES`] counted in the rest (the machine's busy cores minus the
/// groups shown, named `rest`); `details` in brackets after their group.
fn cores_text(cpu: &CpuUsage, details: &BTreeMap<&str, String>, rest: &str) -> String {
    let mut shown: Vec<(&str, f64)> = cpu
        .cores
        .iter()
        .filter(|&(_, &cores)| cores >= SHOWN_CORES)
        .map(|(name, &cores)| (name.as_str(), cores))
        .collect();
    shown.sort_by(|a, b| b.1.total_cmp(&a.1));
    // The unit once, after the first number.
    let unit = |parts: &[String]| if parts.is_empty() { " cores" } else { "" };
    let mut parts: Vec<String> = Vec::new();
    for &(name, cores) in &shown {
        let detail = details
            .get(name)
            .map_or(String::new(), |d| format!(" ({d})"));
        parts.push(format!("{name} {cores:.2}{}{detail}", unit(&parts)));
    }
    if cpu.machine_busy_cores > 0.0 {
        let cores = cpu.machine_busy_cores - shown.iter().map(|s| s.1).sum::<f64>();
        parts.push(format!("{rest} {:.2}{}", cores.max(0.0), unit(&parts)));
    }
    for (name, detail) in details {
        if !shown.iter().any(|s| s.0 == *name) {
            parts.push(format!("{name} ({detail})"));
        }
    }
    parts.join(", ")
}

/// What the machine's cores outside the groups are: pgbench runs as a
/// process of its own.
fn rest_label(name: &str) -> &'static str {
    if name == SINGLE_INSERT.name {
        "pgbench and the rest"
    } else {
        "the rest"
    }
}

/// "the machine was CPU-bound (1.95 of 2 busy)" (90 % of the cores or
/// more), or "not CPU-bound"; None when the machine's CPU was not read.
fn machine_text(cpu: &CpuUsage, cpus: usize) -> Option<String> {
    let busy = cpu.machine_busy_cores;
    if busy <= 0.0 {
        return None;
    }
    let cpus = cpus.max(1) as f64;
    let bound = if busy >= 0.9 * cpus {
        "CPU-bound"
    } else {
        "not CPU-bound"
    };
    Some(format!(
        "the machine was {bound} ({busy:.2} of {cpus:.0} busy)"
    ))
}

/// What one operation of an append or pgbench run cost the primary:
/// "append_events mean 2.10 ms, 0.30 calls, 1.30 commits and 0.20 WAL
/// flushes per append". Operations in the window are its rate × its length.
fn per_op_text(profile: &Profile) -> Option<String> {
    let primary = &profile.primary;
    let ops = profile.per_s * primary.seconds;
    if ops < 1.0 {
        return None;
    }
    let per = |n: u64| n as f64 / ops;
    let (call, op, with_calls) = match profile.name.as_str() {
        n if n == append::NAME || n == APPEND_RELAY_OFF => (
            primary
                .statement(|q| q.contains("append_events("))
                .map(|s| ("append_events", s)),
            "append",
            true,
        ),
        n if n == SINGLE_INSERT.name => (
            primary
                .statement(|q| q.starts_with("INSERT INTO bench_single_insert"))
                .map(|s| ("insert", s)),
            "insert",
            false,
        ),
        _ => return None,
    };
    let mut counts = Vec::new();
    let mut mean = String::new();
    if let Some((label, s)) = call {
        mean = format!(
            "{label} mean {:.2} ms, ",
            s.total_ms / s.calls.max(1) as f64
        );
        if with_calls {
            counts.push(format!("{:.2} calls", per(s.calls)));
        }
    }
    counts.push(format!("{:.2} commits", per(primary.commits)));
    counts.push(format!("{:.2} WAL flushes", per(primary.wal_syncs)));
    let last = counts.pop().unwrap_or_default();
    let counts = if counts.is_empty() {
        last
    } else {
        format!("{} and {last}", counts.join(", "))
    };
    Some(format!("{mean}{counts} per {op}"))
}

/// The relay's outbox read (the only statement reading event payloads as
/// text) and cursor write, matched in `pg_stat_statements`.
fn relay_statements(primary: &PrimaryActivity) -> Option<(&Statement, &Statement)> {
    let read = primary
        .statement(|q| q.starts_with("SELECT transaction_id::text") && q.contains("payload"))?;
    let write = primary.statement(|q| q.starts_with("INSERT INTO outbox_cursor"))?;
    Some((read, write))
}

/// "one batch at a time: 24 batches of 500 events in 3.0 s, 125.0 ms per
/// batch, of which Postgres executed the outbox read in 8.6 ms and the
/// cursor write in 0.4 ms; the other 116.0 ms went to …".
fn batch_text(primary: &PrimaryActivity) -> Option<String> {
    let (read, write) = relay_statements(primary)?;
    if write.calls == 0 || primary.seconds <= 0.0 {
        return None;
    }
    let batches = write.calls as f64;
    let cycle_ms = 1000.0 * primary.seconds / batches;
    let read_ms = read.total_ms / batches;
    let write_ms = write.total_ms / batches;
    Some(format!(
        "one batch at a time: {} batches of {:.0} events in {:.1} s, {cycle_ms:.1} ms per \
         batch, of which Postgres executed the outbox read in {read_ms:.1} ms and the cursor \
         write in {write_ms:.1} ms; the other {:.1} ms went to the round trips, producing the \
         batch and waiting for the broker to acknowledge all of it",
        write.calls,
        read.rows as f64 / batches,
        primary.seconds,
        (cycle_ms - read_ms - write_ms).max(0.0)
    ))
}

/// "1 client" or "16 clients".
fn plural_clients(clients: usize) -> String {
    format!("{clients} client{}", if clients == 1 { "" } else { "s" })
}

fn short_label(name: &str) -> &str {
    match name {
        n if n == append::NAME => "command append",
        n if n == SINGLE_INSERT.name => "pgbench single-row insert",
        n if n == relay::NAME => "relay draining a backlog",
        APPEND_RELAY_OFF => "command append, relay off",
        other => other,
    }
}

/// The section's table of where the median run of each series spent the
/// machine's cores and what it cost the primary; empty without profiles.
pub fn render_profiles(results: &WritePathResults) -> String {
    let mut keys: Vec<(&str, usize)> = Vec::new();
    for p in &results.profiles {
        if !keys.contains(&(p.name.as_str(), p.clients)) {
            keys.push((p.name.as_str(), p.clients));
        }
    }
    if keys.is_empty() {
        return String::new();
    }
    keys.sort_by_key(|&(name, clients)| {
        (
            name == relay::NAME,
            clients,
            name != SINGLE_INSERT.name,
            name,
        )
    });
    let cpus = results.machine.cpus;
    let mut out = format!(
        "\n| median run | cores of {} (sampled over the middle 80 % of the window; a drain's \
         whole window) | Postgres primary, same window |\n|---|---|---|\n",
        cpus
    );
    for (name, clients) in keys {
        let Some(p) = median_profile(&results.profiles, name, clients) else {
            continue;
        };
        let mut cores = vec![cores_text(&p.cpu, &BTreeMap::new(), rest_label(name))];
        cores.extend(machine_text(&p.cpu, cpus));
        cores.retain(|c| !c.is_empty());
        let primary = if name == relay::NAME {
            batch_text(&p.primary)
        } else {
            per_op_text(p)
        };
        let (unit, clients_text) = match name {
            n if n == relay::NAME => ("events/s", String::new()),
            n if n == SINGLE_INSERT.name => ("tx/s", format!(", {}", plural_clients(clients))),
            _ => ("appends/s", format!(", {}", plural_clients(clients))),
        };
        out.push_str(&format!(
            "| {}{clients_text} ({:.0} {unit}, repetition {}) | {} | {} |\n",
            short_label(name),
            p.per_s,
            p.repetition,
            cores.join("; "),
            primary.unwrap_or_else(|| "not read".to_owned())
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn statement(query: &str, calls: u64, total_ms: f64, rows: u64) -> Statement {
        Statement {
            query: query.to_owned(),
            calls,
            total_ms,
            rows,
        }
    }

    fn cpu(cores: &[(&str, f64)], machine: f64) -> CpuUsage {
        CpuUsage {
            seconds: 8.0,
            cores: cores.iter().map(|&(n, c)| (n.to_owned(), c)).collect(),
            machine_busy_cores: machine,
        }
    }

    /// An append run at 16 clients: 5000/s over an 8 s window = 40 000
    /// appends, 12 000 append_events calls of 2.1 ms.
    fn append_profile(repetition: usize, per_s: f64) -> Profile {
        Profile {
            repetition,
            name: append::NAME.to_owned(),
            clients: 16,
            per_s,
            cpu: cpu(
                &[
                    (COMMAND_SERVICE, 0.9),
                    (PRIMARY, 0.8),
                    (LOADGEN, 0.2),
                    ("broker", 0.01),
                ],
                1.95,
            ),
            primary: PrimaryActivity {
                seconds: 8.0,
                commits: 52_000,
                wal_syncs: 8_000,
                statements: vec![
                    statement("SELECT append_events($1, $2)", 12_000, 25_200.0, 12_000),
                    statement(
                        "INSERT INTO events (a) VALUES ($1)",
                        40_000,
                        8_000.0,
                        40_000,
                    ),
                ],
            },
        }
    }

    fn pgbench_profile() -> Profile {
        Profile {
            repetition: 1,
            name: SINGLE_INSERT.name.to_owned(),
            clients: 16,
            per_s: 10_000.0,
            cpu: cpu(&[(PRIMARY, 1.6), (COMMAND_SERVICE, 0.02)], 1.9),
            primary: PrimaryActivity {
                seconds: 8.0,
                commits: 80_000,
                wal_syncs: 16_000,
                statements: vec![statement(
                    "INSERT INTO bench_single_insert (aggregate_id, payload) VALUES ($1, $2)",
                    80_000,
                    40_000.0,
                    80_000,
                )],
            },
        }
    }

    /// A drain of 4000 events/s: 24 batches of 500 in 3 s.
    fn relay_profile() -> Profile {
        Profile {
            repetition: 1,
            name: relay::NAME.to_owned(),
            clients: 1,
            per_s: 4_000.0,
            cpu: cpu(&[("broker", 0.95), (COMMAND_SERVICE, 0.4), (PRIMARY, 0.2)], 1.6),
            primary: PrimaryActivity {
                seconds: 3.0,
                commits: 60,
                wal_syncs: 24,
                statements: vec![
                    statement(
                        "SELECT transaction_id::text AS \"transaction_id!\", position, \
                         aggregate_type, aggregate_id, sequence, event_type, event_version, \
                         payload::text AS \"payload!\"",
                        24,
                        206.4,
                        12_000,
                    ),
                    statement(
                        "SELECT transaction_id::text AS \"transaction_id!\", position FROM outbox_cursor",
                        1,
                        0.1,
                        1,
                    ),
                    statement(
                        "INSERT INTO outbox_cursor (relay, transaction_id, position, updated_at)",
                        24,
                        9.6,
                        24,
                    ),
                ],
            },
        }
    }

    fn results(profiles: Vec<Profile>) -> WritePathResults {
        WritePathResults {
            machine: Machine {
                cpus: 2,
                ..Machine::default()
            },
            command: "make bench".to_owned(),
            repetitions: 3,
            measurements: vec![],
            drains: vec![],
            profiles,
        }
    }

    #[test]
    fn the_append_bottleneck_names_the_busiest_processes_and_the_primarys_part() {
        let r = results(vec![
            append_profile(1, 4_000.0),
            append_profile(2, 5_000.0),
            append_profile(3, 6_000.0),
            pgbench_profile(),
        ]);
        let text = appends_bottleneck(&r, 16).unwrap();
        // The median run (5000/s): 40 000 appends in the 8 s window.
        assert!(
            text.starts_with(
                "command-service 0.90 cores, postgres primary 0.80 (append_events mean 2.10 ms, \
                 0.30 calls, 1.30 commits and 0.20 WAL flushes per append), loadgen 0.20, \
                 the rest 0.05; the machine was CPU-bound (1.95 of 2 busy)"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "; pgbench at 16 clients: postgres primary 1.60 cores (insert mean 0.50 ms, \
                 1.00 commits and 0.20 WAL flushes per insert), pgbench and the rest 0.30; the \
                 machine was CPU-bound (1.90 of 2 busy)"
            ),
            "{text}"
        );
        assert_eq!(appends_bottleneck(&r, 1), None, "no profile at 1 client");
        assert_eq!(appends_bottleneck(&results(vec![]), 16), None);
    }

    #[test]
    fn the_relay_bottleneck_is_its_batch_cycle() {
        let text = relay_bottleneck(&results(vec![relay_profile()])).unwrap();
        assert_eq!(
            text,
            "one batch at a time: 24 batches of 500 events in 3.0 s, 125.0 ms per batch, of \
             which Postgres executed the outbox read in 8.6 ms and the cursor write in 0.4 ms; \
             the other 116.0 ms went to the round trips, producing the batch and waiting for \
             the broker to acknowledge all of it; during the drain broker 0.95 cores, \
             command-service 0.40, postgres primary 0.20, the rest 0.05; the machine was not \
             CPU-bound (1.60 of 2 busy)"
        );
        // Without pg_stat_statements: the cores alone.
        let mut bare = relay_profile();
        bare.primary.statements.clear();
        assert!(relay_bottleneck(&results(vec![bare]))
            .unwrap()
            .starts_with("during the drain broker 0.95 cores"));
    }

    #[test]
    fn a_missing_primary_group_still_gets_its_detail_and_no_proc_means_no_machine() {
        let mut p = append_profile(1, 5_000.0);
        p.cpu = CpuUsage::default();
        assert_eq!(
            run_text(&p, 2),
            "postgres primary (append_events mean 2.10 ms, 0.30 calls, 1.30 commits and 0.20 \
             WAL flushes per append)"
        );
    }

    #[test]
    fn the_median_profile_is_the_lower_middle_run() {
        let profiles = [
            append_profile(1, 6_000.0),
            append_profile(2, 4_000.0),
            append_profile(3, 5_000.0),
            append_profile(4, 7_000.0),
        ];
        assert_eq!(
            median_profile(&profiles, append::NAME, 16).map(|p| p.repetition),
            Some(3)
        );
        assert_eq!(median_profile(&profiles, append::NAME, 1), None);
    }

    #[test]
    fn counters_are_diffed_without_their_own_reads() {
        let at = Instant::now();
        let key = |k: &str| k.to_owned();
        let before = PrimaryCounters {
            at,
            totals: Totals {
                commits: 100,
                wal_syncs: 50,
            },
            statements: BTreeMap::from([
                (
                    key("a"),
                    statement("SELECT append_events($1)", 10, 20.0, 10),
                ),
                (
                    key("s"),
                    statement("SELECT … FROM pg_stat_statements s", 1, 1.0, 1),
                ),
            ]),
        };
        let after = PrimaryCounters {
            at: at + Duration::from_secs(2),
            totals: Totals {
                commits: 1100,
                wal_syncs: 250,
            },
            statements: BTreeMap::from([
                (
                    key("a"),
                    statement("SELECT append_events($1)", 310, 620.0, 310),
                ),
                (
                    key("s"),
                    statement("SELECT … FROM pg_stat_statements s", 2, 2.0, 2),
                ),
                (
                    key("t"),
                    statement(
                        "SELECT json_agg(json_build_object( $1, s.queryid",
                        1,
                        3.0,
                        1,
                    ),
                ),
                (
                    key("w"),
                    statement("SELECT json_build_object(… pg_stat_wal)", 1, 0.1, 1),
                ),
            ]),
        };
        let activity = before.until(&after);
        assert!((activity.seconds - 2.0).abs() < 1e-9);
        assert_eq!((activity.commits, activity.wal_syncs), (1000, 200));
        assert_eq!(
            activity.statements,
            vec![statement("SELECT append_events($1)", 300, 600.0, 300)]
        );
    }

    #[test]
    fn the_profile_table_has_a_row_per_series_median() {
        let r = results(vec![
            relay_profile(),
            append_profile(1, 5_000.0),
            pgbench_profile(),
        ]);
        let table = render_profiles(&r);
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows.len(), 4, "{table}");
        assert!(
            rows[1].starts_with("| pgbench single-row insert, 16 clients (10000 tx/s, repetition 1) | postgres primary 1.60 cores, pgbench and the rest 0.30; the machine was CPU-bound (1.90 of 2 busy) | insert mean 0.50 ms"),
            "{table}"
        );
        assert!(
            rows[2].starts_with("| command append, 16 clients"),
            "{table}"
        );
        assert!(
            rows[3].starts_with(
                "| relay draining a backlog (4000 events/s, repetition 1) | broker 0.95 cores"
            ),
            "{table}"
        );
        assert_eq!(render_profiles(&results(vec![])), "");
    }

    #[test]
    fn results_without_profiles_still_parse_and_none_are_written() {
        let old = r#"{"machine": {"date": "d", "git_commit": "c", "cpus": 2, "cpu_model": "m",
            "memory_gib": 1.0, "kernel": "k", "postgres": "p"}, "command": "make bench",
            "repetitions": 1, "measurements": [], "drains": []}"#;
        let parsed: WritePathResults = serde_json::from_str(old).unwrap();
        assert!(parsed.profiles.is_empty());
        let json = serde_json::to_value(&parsed).unwrap();
        assert!(json.get("profiles").is_none(), "{json}");
        let with = results(vec![relay_profile()]);
        let back: WritePathResults =
            serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(back.profiles, with.profiles);
    }
}
