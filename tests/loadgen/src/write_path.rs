//! The write-path benchmark: command appends against pgbench single-row
//! inserts at the same client counts, interleaved, and the relay's drain
//! rate against the sustained append rate.
//!
//! Interleaving (pgbench c=1, appends c=1, pgbench c=16, appends c=16, and
//! again) spreads this shared machine's drift over both sides of every
//! ratio; the report quotes medians over the repetitions.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::append::{self, AppendOptions};
use crate::machine::Machine;
use crate::pgbench::{self, SINGLE_INSERT};
use crate::relay::{self, Drain};
use crate::service::Service;
use crate::stats::Measurement;

/// Name of the appends measured while the relay is off (to build a backlog).
pub const APPEND_RELAY_OFF: &str = "command_append_relay_off";

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
}

pub async fn run(options: &WritePathOptions, command: String) -> anyhow::Result<WritePathResults> {
    std::fs::create_dir_all(&options.work_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(options.work_dir.join("command-service.log"))?;
    let machine = Machine::read(&options.database_url).await;
    pgbench::setup(&options.database_url, &SINGLE_INSERT).await?;

    let mut measurements = Vec::new();
    let service = start(options, &log, true).await?;
    for repetition in 1..=options.repetitions {
        for &clients in &options.clients {
            eprintln!(
                "== repetition {repetition}/{}: pgbench single insert, {clients} client(s)",
                options.repetitions
            );
            let baseline = pgbench::run(
                &options.database_url,
                &SINGLE_INSERT,
                clients,
                options.warmup,
                options.duration,
                &options.work_dir,
                &[],
            )
            .await?;
            eprintln!("   {}", one_line(&baseline));
            measurements.push(baseline);
            eprintln!(
                "== repetition {repetition}/{}: command appends, {clients} client(s)",
                options.repetitions
            );
            let appends = append::run(&append_options(options, clients, options.duration)).await?;
            eprintln!("   {}", one_line(&appends));
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
        let drain = relay::measure_drain(
            &options.command_url,
            Duration::from_millis(100),
            Duration::from_secs(600),
        )
        .await?;
        eprintln!(
            "   relay: {} events in {:.2}s = {:.0} events/s",
            drain.events, drain.seconds, drain.events_per_s
        );
        drains.push(drain);
        service.stop().await?;
    }

    Ok(WritePathResults {
        machine,
        command,
        repetitions: options.repetitions,
        measurements,
        drains,
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
