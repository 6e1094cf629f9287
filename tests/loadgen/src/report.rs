//! `docs/BENCHMARKS.md`: generated sections between markers, so that the
//! hand-written analysis around them survives a re-run.

use std::collections::BTreeMap;

use crate::catchup::{Catchup, CatchupResults};
use crate::query_reads::{self, QueryReadsResults, Run};
use crate::stats::{median, Measurement};
use crate::write_path::{self, WritePathResults, APPEND_RELAY_OFF};
use crate::{append, pgbench};

/// Results that render as a generated section of `docs/BENCHMARKS.md`.
pub trait Section: serde::Serialize {
    /// The section's name in its markers (`<!-- {MARKER}:begin -->`).
    const MARKER: &'static str;
    /// The section's body (without markers).
    fn render(&self) -> String;
}

impl Section for WritePathResults {
    const MARKER: &'static str = "write-path";
    fn render(&self) -> String {
        render_write_path(self)
    }
}

impl Section for CatchupResults {
    const MARKER: &'static str = "projector-catchup";
    fn render(&self) -> String {
        render_catchup(self)
    }
}

impl Section for QueryReadsResults {
    const MARKER: &'static str = "query-reads";
    fn render(&self) -> String {
        render_query_reads(self)
    }
}

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
    if let (Some(relay), Some((_, app))) = (
        median(results.drains.iter().map(|d| d.events_per_s)),
        sustained_append(m),
    ) {
        let ratio = relay / app;
        verdicts.push(Verdict {
            target: "relay publish rate ≥ 3 × the sustained append rate",
            measured: format!("{ratio:.1}× ({relay:.0} / {app:.0} events/s)"),
            met: ratio >= 3.0,
        });
    }
    verdicts
}

/// The sustained append rate of a write-path run: the median appends/s (relay
/// running) at its largest client count, with that count.
pub fn sustained_append(measurements: &[Measurement]) -> Option<(usize, f64)> {
    let clients = measurements
        .iter()
        .filter(|m| m.name == append::NAME)
        .map(|m| m.clients)
        .max()?;
    Some((
        clients,
        series(measurements, append::NAME, clients)?.ops_per_s,
    ))
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
    out.push_str(&machine.run_line());
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
        out.push_str(&series_row(
            &results.measurements,
            name,
            clients,
            label(name),
        ));
    }
    let drains: Vec<(f64, u64, f64)> = results
        .drains
        .iter()
        .map(|d| (d.events_per_s, d.events, d.seconds))
        .collect();
    out.push_str(&rate_row("relay publish, draining a backlog", "", &drains));
    out.push_str(&write_path::render_profiles(results));
    let verdicts = write_path_verdicts(results);
    out.push_str(&verdict_table(&verdicts));
    let missed: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.met)
        .filter_map(|v| {
            if v.target.starts_with("relay") {
                write_path::relay_bottleneck(results).map(|t| format!("- relay: {t}.\n"))
            } else if v.target.contains("at 16 clients") {
                write_path::appends_bottleneck(results, 16)
                    .map(|t| format!("- appends at 16 clients: {t}.\n"))
            } else {
                write_path::appends_bottleneck(results, 1)
                    .map(|t| format!("- appends at 1 client: {t}.\n"))
            }
        })
        .collect();
    if !missed.is_empty() {
        out.push_str("\nMissed. Where the time went (the median run of each):\n\n");
        out.push_str(&missed.concat());
    }
    out
}

/// A table row of one (name, clients) series: its medians, then the ops/s
/// of each run (and its errors, if any). Empty if the series has no run.
fn series_row(measurements: &[Measurement], name: &str, clients: usize, label: &str) -> String {
    let Some(s) = series(measurements, name, clients) else {
        return String::new();
    };
    let runs: Vec<String> = measurements
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
    format!(
        "| {label} | {clients} | {:.0} | {:.2} | {:.2} | {} |\n",
        s.ops_per_s,
        s.p50_ms,
        s.p99_ms,
        runs.join(", ")
    )
}

/// The targets' table: a row for each verdict.
pub fn verdict_table(verdicts: &[Verdict]) -> String {
    let mut out = String::from("\n| target | measured | |\n|---|---|---|\n");
    for v in verdicts {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            v.target,
            v.measured,
            if v.met { "met" } else { "**missed**" }
        ));
    }
    out
}

/// The pgbench 100-row baseline the catch-up verdict uses: the fewest
/// clients measured (1, like the projector's one batch transaction at a
/// time), as (clients, median rows/s).
fn catchup_baseline(results: &CatchupResults) -> Option<(usize, f64)> {
    let name = pgbench::HUNDRED_ROW_INSERT.name;
    let clients = results
        .baselines
        .iter()
        .filter(|m| m.name == name)
        .map(|m| m.clients)
        .min()?;
    let tps = series(&results.baselines, name, clients)?.ops_per_s;
    Some((
        clients,
        tps * pgbench::HUNDRED_ROW_INSERT.rows_per_transaction as f64,
    ))
}

/// The catch-up whose rate is the median (the lower one of an even count).
pub fn median_catchup(results: &CatchupResults) -> Option<&Catchup> {
    let mut runs: Vec<&Catchup> = results.catchups.iter().collect();
    runs.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    runs.get(runs.len().checked_sub(1)? / 2).copied()
}

/// The catch-up targets: events/s ≥ 0.5 × pgbench 100-row-transaction rows/s
/// (1 client) and ≥ 3 × the sustained append rate.
pub fn catchup_verdicts(results: &CatchupResults) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    let Some(rate) = median(results.catchups.iter().map(|c| c.events_per_s)) else {
        return verdicts;
    };
    if let Some((clients, rows)) = catchup_baseline(results) {
        let ratio = rate / rows;
        verdicts.push(Verdict {
            target: "projector catch-up events/s ≥ 0.5 × pgbench 100-row-transaction rows/s",
            measured: format!(
                "{ratio:.2}× ({rate:.0} events/s / {rows:.0} rows/s at {clients} client{})",
                if clients == 1 { "" } else { "s" }
            ),
            met: ratio >= 0.5,
        });
    }
    if let Some(sustained) = &results.sustained_append {
        let ratio = rate / sustained.ops_per_s;
        verdicts.push(Verdict {
            target: "projector catch-up events/s ≥ 3 × the sustained append rate",
            measured: format!(
                "{ratio:.2}× ({rate:.0} / {:.0} appends/s at {} clients, write-path run {})",
                sustained.ops_per_s, sustained.clients, sustained.run_date
            ),
            met: ratio >= 3.0,
        });
    }
    verdicts
}

/// Where the median catch-up's window went, in one sentence, from the
/// counters alone (the hand-written analysis below the section says why).
pub fn catchup_bottleneck(results: &CatchupResults) -> Option<String> {
    let c = median_catchup(results)?;
    let in_batches = c.batch_seconds / c.seconds;
    let mut text = if in_batches >= 0.5 {
        let per_event = c.statement_calls as f64 / c.applied_total.max(1) as f64;
        let costliest = c
            .statements
            .first()
            .map(|s| format!("; the costliest is `{}`", cell(&shorten(&s.query, 90))))
            .unwrap_or_default();
        // Set-based batches run far fewer statements than events.
        let statements = if per_event >= 1.0 {
            format!("{per_event:.1} statements per event")
        } else {
            format!("one statement per {:.0} events", 1.0 / per_event.max(1e-9))
        };
        format!(
            "applying batches: {:.0} % of the window is inside the batch transactions, \
             {statements}, each one round trip{costliest}",
            100.0 * in_batches
        )
    } else {
        format!(
            "outside the batch transactions ({:.0} % of the window): fetching from the broker \
             and the Redis writes after each commit",
            100.0 * (1.0 - in_batches)
        )
    };
    let cpus = results.machine.cpus.max(1) as f64;
    let busy = c.cpu.machine_busy_cores;
    if busy >= 0.9 * cpus {
        text.push_str(&format!(
            "; the machine was CPU-bound ({busy:.1} of {cpus:.0} cores busy)"
        ));
    } else if busy > 0.0 {
        text.push_str(&format!(
            "; the machine was not CPU-bound ({busy:.1} of {cpus:.0} cores busy)"
        ));
    }
    Some(text)
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

/// Text safe inside a Markdown table cell and inline code.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('`', "'")
}

/// The projector-catchup section's body (without markers).
pub fn render_catchup(results: &CatchupResults) -> String {
    let machine = &results.machine;
    let backlog = &results.backlog;
    let plan = &backlog.plan;
    let mut out = String::new();
    out.push_str(&machine.run_line());
    out.push_str(&format!(
        "Command: `{}` ({} repetitions, pgbench and catch-up interleaved; medians over them). \
         Projector settings: {}.\n\n",
        results.command,
        results.repetitions,
        results
            .settings
            .iter()
            .map(|(k, v)| format!("`{k}` {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let partitions = median_catchup(results).map_or(0, |c| c.partitions);
    let history: Vec<String> = median_catchup(results)
        .map(|c| {
            c.history_by_partition
                .iter()
                .map(|(p, n)| format!("`{p}` {n}"))
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&format!(
        "Backlog: **{} events** in Kafka (topics `{}.order` and `{}.product`, {partitions} \
         partitions, broker storage {}): {} products (created, then {} price changes each) and \
         {} orders of {} customers with 1–3 lines each (60 % confirmed and shipped, 10 % \
         confirmed then cancelled, 10 % cancelled while placed, 10 % given a line then \
         confirmed, 10 % left placed), business time {} to {}. Written into `events` by one \
         `INSERT … SELECT` in {:.1} s; published by the relay at {:.0} events/s. History rows \
         per partition afterwards: {}.\n\n",
        backlog.events,
        backlog.topic_prefix,
        backlog.topic_prefix,
        backlog.broker_storage.as_deref().unwrap_or("unknown"),
        plan.products,
        plan.price_changes_per_product,
        plan.orders,
        plan.customers,
        backlog.first_occurred_at,
        backlog.last_occurred_at,
        backlog.insert_seconds,
        backlog.relay.events_per_s,
        history.join(", ")
    ));

    out.push_str("| measurement | clients | rows or events/s | p50 ms | p99 ms | each run |\n");
    out.push_str("|---|---:|---:|---:|---:|---|\n");
    let name = pgbench::HUNDRED_ROW_INSERT.name;
    let rows = pgbench::HUNDRED_ROW_INSERT.rows_per_transaction as f64;
    let mut clients: Vec<usize> = results.baselines.iter().map(|m| m.clients).collect();
    clients.sort_unstable();
    clients.dedup();
    for c in clients {
        let Some(s) = series(&results.baselines, name, c) else {
            continue;
        };
        let runs: Vec<String> = results
            .baselines
            .iter()
            .filter(|m| m.name == name && m.clients == c)
            .map(|m| format!("{:.0}", m.ops_per_s * rows))
            .collect();
        out.push_str(&format!(
            "| pgbench 100-row transactions (baseline) | {c} | {:.0} rows/s ({:.0} tx/s) | {:.2} | {:.2} | {} |\n",
            s.ops_per_s * rows,
            s.ops_per_s,
            s.p50_ms,
            s.p99_ms,
            runs.join(", ")
        ));
    }
    let catchups: Vec<(f64, u64, f64)> = results
        .catchups
        .iter()
        .map(|c| (c.events_per_s, c.events, c.seconds))
        .collect();
    out.push_str(&rate_row(
        "projector catch-up from the backlog",
        "1 (one batch transaction at a time)",
        &catchups,
    ));

    if let Some(c) = median_catchup(results) {
        let cores: Vec<String> = c
            .cpu
            .cores
            .iter()
            .map(|(name, cores)| format!("{name} {cores:.2}"))
            .collect();
        out.push_str(&format!(
            "\nThe median repetition ({:.0} events/s, {:.1} s window):\n\n| | |\n|---|---|\n",
            c.events_per_s, c.seconds
        ));
        out.push_str(&format!(
            "| inside batch transactions (`projector_batch_seconds`) | {:.0} % of the window: {} batches, {:.0} events and {:.1} ms each |\n",
            100.0 * c.batch_seconds / c.seconds,
            c.batches,
            c.events as f64 / c.batches.max(1) as f64,
            1000.0 * c.batch_seconds / c.batches.max(1) as f64
        ));
        if c.statement_calls > 0 {
            out.push_str(&format!(
                "| Postgres statements (`pg_stat_statements`, whole projector run) | {:.2} per event; executing {:.0} % of the window |\n",
                c.statement_calls as f64 / c.applied_total.max(1) as f64,
                100.0 * c.statement_ms / 1000.0 / c.seconds
            ));
        }
        let per_event = |calls: u64| calls as f64 / c.applied_total.max(1) as f64;
        let redis: Vec<String> = c
            .redis_calls
            .iter()
            .filter(|&(_, &calls)| per_event(calls) >= 0.001)
            .map(|(command, &calls)| format!("{command} {:.3}", per_event(calls)))
            .collect();
        if !redis.is_empty() {
            out.push_str(&format!(
                "| Redis calls per event (`INFO commandstats`, whole projector run; after each commit, outside the batch transaction; commands inside a script count too) | {} |\n",
                redis.join(", ")
            ));
        }
        out.push_str(&format!(
            "| CPU in the window, cores (of {}) | {}; whole machine {:.2} busy |\n",
            machine.cpus,
            cores.join(", "),
            c.cpu.machine_busy_cores
        ));
        if let Some(kib) = c.peak_rss_kib {
            out.push_str(&format!(
                "| projector peak RSS (VmHWM) | {:.0} MiB |\n",
                kib as f64 / 1024.0
            ));
        }
        out.push_str(&format!(
            "| start-up to the first applied batch (not measured) | {:.1} s |\n",
            c.startup_seconds
        ));
        if !c.statements.is_empty() {
            out.push_str(
                "\n| costliest statements (median repetition) | calls per event | ms per call | share of statement time |\n|---|---:|---:|---:|\n",
            );
            for st in c.statements.iter().take(6) {
                out.push_str(&format!(
                    "| `{}` | {:.2} | {:.3} | {:.0} % |\n",
                    cell(&shorten(&st.query, 110)),
                    st.calls as f64 / c.applied_total.max(1) as f64,
                    st.total_ms / st.calls.max(1) as f64,
                    100.0 * st.total_ms / c.statement_ms.max(f64::MIN_POSITIVE)
                ));
            }
        }
    }

    let verdicts = catchup_verdicts(results);
    out.push_str(&verdict_table(&verdicts));
    if results.sustained_append.is_none() {
        out.push_str("| projector catch-up events/s ≥ 3 × the sustained append rate | no write-path results given | |\n");
    }
    if verdicts.iter().any(|v| !v.met) {
        if let Some(bottleneck) = catchup_bottleneck(results) {
            out.push_str(&format!(
                "\nMissed. Where the window went (this run's counters): {bottleneck}.\n"
            ));
        }
    }
    out
}

/// The pgbench client count the uncached target is read against: the first
/// one measured (`--pgbench-clients`, default query-service's pool size).
fn pk_select_verdict_clients(results: &QueryReadsResults) -> Option<usize> {
    results
        .measurements
        .iter()
        .find(|m| m.name == pgbench::PK_SELECT.name)
        .map(|m| m.clients)
}

/// The read targets: cached `GET /orders/{id}` req/s at the connection
/// count ≥ 0.5 × the bare actix handler's; uncached ≥ 0.4 × pgbench
/// primary-key selects/s.
pub fn query_reads_verdicts(results: &QueryReadsResults) -> Vec<Verdict> {
    let m = &results.measurements;
    let c = results.connections;
    let mut verdicts = Vec::new();
    if let (Some(cached), Some(bare)) = (
        series(m, query_reads::CACHED, c),
        series(m, query_reads::BARE, c),
    ) {
        let ratio = cached.ops_per_s / bare.ops_per_s;
        verdicts.push(Verdict {
            target:
                "cached `GET /orders/{id}` req/s at 64 connections ≥ 0.5 × the bare actix handler",
            measured: format!(
                "{ratio:.2}× ({:.0} / {:.0} at {c} connections)",
                cached.ops_per_s, bare.ops_per_s
            ),
            met: ratio >= 0.5,
        });
    }
    if let (Some(uncached), Some(clients)) = (
        series(m, query_reads::UNCACHED, c),
        pk_select_verdict_clients(results),
    ) {
        if let Some(pg) = series(m, pgbench::PK_SELECT.name, clients) {
            let ratio = uncached.ops_per_s / pg.ops_per_s;
            verdicts.push(Verdict {
                target: "uncached `GET /orders/{id}` req/s ≥ 0.4 × pgbench primary-key selects/s",
                measured: format!(
                    "{ratio:.2}× ({:.0} at {c} connections / {:.0} at {clients} clients)",
                    uncached.ops_per_s, pg.ops_per_s
                ),
                met: ratio >= 0.4,
            });
        }
    }
    verdicts
}

/// Ratios quoted beside the targets, without a target of their own.
fn query_reads_context(results: &QueryReadsResults) -> Vec<(String, String)> {
    let m = &results.measurements;
    let c = results.connections;
    let mut rows = Vec::new();
    if let (Some(cached), Some(redis)) = (
        series(m, query_reads::CACHED, c),
        series(m, query_reads::REDIS_GET, c),
    ) {
        rows.push((
            format!("cached req/s ÷ redis-benchmark GET/s at {c}"),
            format!(
                "{:.2}× ({:.0} / {:.0})",
                cached.ops_per_s / redis.ops_per_s,
                cached.ops_per_s,
                redis.ops_per_s
            ),
        ));
    }
    let verdict_clients = pk_select_verdict_clients(results);
    if let Some(uncached) = series(m, query_reads::UNCACHED, c) {
        for clients in distinct_clients(m, pgbench::PK_SELECT.name) {
            if Some(clients) == verdict_clients {
                continue;
            }
            if let Some(pg) = series(m, pgbench::PK_SELECT.name, clients) {
                rows.push((
                    format!("uncached req/s ÷ pgbench primary-key selects/s at {clients} clients"),
                    format!(
                        "{:.2}× ({:.0} / {:.0})",
                        uncached.ops_per_s / pg.ops_per_s,
                        uncached.ops_per_s,
                        pg.ops_per_s
                    ),
                ));
            }
        }
    }
    rows
}

fn distinct_clients(measurements: &[Measurement], name: &str) -> Vec<usize> {
    let mut clients: Vec<usize> = measurements
        .iter()
        .filter(|m| m.name == name)
        .map(|m| m.clients)
        .collect();
    clients.sort_unstable();
    clients.dedup();
    clients
}

fn query_reads_label(name: &str) -> &str {
    match name {
        query_reads::REDIS_GET => "redis-benchmark GET, same value size (context)",
        query_reads::BARE => "bare actix-web handler, same route and body (baseline)",
        query_reads::CACHED => "query-service `GET /orders/{id}`, cached",
        n if n == pgbench::PK_SELECT.name => "pgbench primary-key select on the replica",
        query_reads::UNCACHED => {
            "query-service `GET /orders/{id}`, uncached (`Cache-Control: no-cache`, replica)"
        }
        other => other,
    }
}

/// CPU groups in the order the report shows them.
const CPU_GROUPS: [&str; 7] = [
    "query-service",
    "bare server",
    "redis",
    "postgres replica",
    "postgres replica2",
    "postgres primary",
    "broker",
];

/// Median cores of every CPU group (and `machine`, and `rest` = the machine
/// minus the groups: the load tool, mostly) over the runs of one series.
fn median_cpu(runs: &[&Run]) -> BTreeMap<String, f64> {
    let mut names: Vec<&String> = runs.iter().flat_map(|r| r.cpu.cores.keys()).collect();
    names.sort();
    names.dedup();
    let mut out: BTreeMap<String, f64> = names
        .into_iter()
        .filter_map(|name| {
            median(runs.iter().filter_map(|r| r.cpu.cores.get(name).copied()))
                .map(|v| (name.clone(), v))
        })
        .collect();
    if let Some(machine) = median(runs.iter().map(|r| r.cpu.machine_busy_cores)) {
        out.insert("machine".to_owned(), machine);
    }
    if let Some(rest) = median(
        runs.iter()
            .map(|r| (r.cpu.machine_busy_cores - r.cpu.cores.values().sum::<f64>()).max(0.0)),
    ) {
        out.insert("rest".to_owned(), rest);
    }
    out
}

/// The series of a query-reads run in report order.
fn query_reads_keys(results: &QueryReadsResults) -> Vec<(&'static str, usize)> {
    let m = &results.measurements;
    let c = results.connections;
    let mut keys = vec![
        (query_reads::REDIS_GET, c),
        (query_reads::BARE, c),
        (query_reads::CACHED, c),
    ];
    keys.extend(
        distinct_clients(m, pgbench::PK_SELECT.name)
            .into_iter()
            .map(|clients| (pgbench::PK_SELECT.name, clients)),
    );
    keys.push((query_reads::UNCACHED, c));
    keys.retain(|&(name, clients)| m.iter().any(|x| x.name == name && x.clients == clients));
    keys
}

/// Where the cores went in a missed workload's runs, in one sentence.
pub fn query_reads_bottleneck(results: &QueryReadsResults, name: &str) -> Option<String> {
    let runs: Vec<&Run> = results
        .runs
        .iter()
        .filter(|r| r.name == name && r.clients == results.connections)
        .collect();
    let cpu = median_cpu(&runs);
    let machine = cpu.get("machine").copied()?;
    let mut parts: Vec<(&String, &f64)> = cpu
        .iter()
        .filter(|(k, _)| k.as_str() != "machine")
        .collect();
    parts.sort_by(|a, b| b.1.total_cmp(a.1));
    let parts: Vec<String> = parts
        .iter()
        .take(3)
        .map(|(k, v)| {
            let k = if k.as_str() == "rest" {
                "wrk and the rest"
            } else {
                k.as_str()
            };
            format!("{k} {v:.2}")
        })
        .collect();
    let cpus = results.machine.cpus.max(1) as f64;
    let bound = if machine >= 0.9 * cpus {
        "CPU-bound"
    } else {
        "not CPU-bound"
    };
    Some(format!(
        "{}: cores {}; the machine was {bound} ({machine:.2} of {cpus:.0} busy)",
        query_reads_label(name),
        parts.join(", ")
    ))
}

/// The query-reads section's body (without markers).
pub fn render_query_reads(results: &QueryReadsResults) -> String {
    let machine = &results.machine;
    let seed = &results.seed;
    let m = &results.measurements;
    let mut out = String::new();
    out.push_str(&machine.run_line());
    let settings: Vec<String> = results
        .settings
        .iter()
        .map(|(k, v)| format!("`{k}` {v}"))
        .collect();
    let sources = |map: &BTreeMap<String, usize>| {
        map.iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tools: Vec<String> = results
        .tools
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(_, v)| format!("`{}`", cell(v)))
        .collect();
    out.push_str(&format!(
        "Command: `{}` ({} repetitions, baselines and workloads interleaved; medians over \
         them). Data: {} orders of {} customers with 1–3 lines each (summaries of {}–{} bytes, \
         median {}), placed through command-service in {:.1} s and projected into the replica \
         and Redis {:.1} s later (topics `{}.*`); `x-read-source` of a pass over all of them just before measuring: {} (cached), {} (uncached). \
         HTTP load: wrk, {} threads, {} connections, a random seeded order per request; \
         redis-benchmark: {} clients, {} threads, the same number of keys holding a {}-byte \
         value; pgbench: `-M prepared -j 2`. query-service: `RUST_LOG=warn`, {}. Tools: {}.\n\n",
        results.command,
        results.repetitions,
        seed.orders,
        seed.customers,
        seed.body_bytes_min,
        seed.body_bytes_max,
        seed.body_bytes_median,
        seed.place_seconds,
        seed.projected_seconds,
        seed.topic_prefix,
        sources(&seed.warm_cached),
        sources(&seed.warm_uncached),
        results.threads,
        results.connections,
        results.connections,
        results.threads,
        seed.bare_body_bytes,
        settings.join(", "),
        tools.join(", ")
    ));

    out.push_str(
        "| measurement | connections or clients | req/s | p50 ms | p99 ms | req/s of each run |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---|\n");
    let keys = query_reads_keys(results);
    for &(name, clients) in &keys {
        let label = if name == pgbench::PK_SELECT.name
            && Some(clients) == pk_select_verdict_clients(results)
        {
            "pgbench primary-key select on the replica (baseline)"
        } else {
            query_reads_label(name)
        };
        out.push_str(&series_row(m, name, clients, label));
    }

    // CPU per process group, medians over the repetitions.
    let mut groups: Vec<&str> = CPU_GROUPS
        .iter()
        .copied()
        .filter(|g| results.runs.iter().any(|r| r.cpu.cores.contains_key(*g)))
        .collect();
    for r in &results.runs {
        for g in r.cpu.cores.keys() {
            if !groups.contains(&g.as_str()) {
                groups.push(g.as_str());
            }
        }
    }
    if !results.runs.is_empty() {
        out.push_str(&format!(
            "\n| CPU in the window, cores of {} (medians) | {} | rest (the load tool) | whole machine |\n|---|{}---:|---:|\n",
            machine.cpus,
            groups.join(" | "),
            "---:|".repeat(groups.len())
        ));
        for &(name, clients) in &keys {
            let runs: Vec<&Run> = results
                .runs
                .iter()
                .filter(|r| r.name == name && r.clients == clients)
                .collect();
            let cpu = median_cpu(&runs);
            let value = |k: &str| cpu.get(k).map_or(String::new(), |v| format!("{v:.2}"));
            let cells: Vec<String> = groups.iter().map(|g| value(g)).collect();
            let tool = match name {
                query_reads::REDIS_GET => "redis-benchmark",
                n if n == pgbench::PK_SELECT.name => "pgbench",
                _ => "wrk",
            };
            out.push_str(&format!(
                "| {tool} → {} ({clients}) | {} | {} | {} |\n",
                short_target(name),
                cells.join(" | "),
                value("rest"),
                value("machine")
            ));
        }
    }
    // What one request cost Redis and the replica, in the median run.
    let mut cost_rows = String::new();
    for name in [query_reads::CACHED, query_reads::UNCACHED] {
        let Some(run) = median_run(results, name) else {
            continue;
        };
        if run.requests == 0 {
            continue;
        }
        let per = |calls: u64| calls as f64 / run.requests as f64;
        let redis: Vec<String> = run
            .redis_calls
            .iter()
            .filter(|&(_, &calls)| per(calls) >= 0.001)
            .map(|(command, &calls)| format!("{command} {:.3}", per(calls)))
            .collect();
        let statements: Vec<String> = run
            .replica_statements
            .iter()
            .filter(|st| per(st.calls) >= 0.001)
            .take(4)
            .map(|st| {
                format!(
                    "`{}` {:.3} × {:.0} µs",
                    cell(&shorten(
                        &st.query.split_whitespace().collect::<Vec<_>>().join(" "),
                        70
                    )),
                    per(st.calls),
                    1000.0 * st.total_ms / st.calls.max(1) as f64
                )
            })
            .collect();
        let none = |v: Vec<String>| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        cost_rows.push_str(&format!(
            "| {} ({:.0} req/s, repetition {}) | {} | {} |\n",
            short_target(name),
            run.ops_per_s,
            run.repetition,
            none(redis),
            none(statements)
        ));
    }
    if !cost_rows.is_empty() {
        out.push_str(
            "\n| per request, median run | Redis calls (`INFO commandstats`) | replica statements (`pg_stat_statements`: calls × mean execution time) |\n|---|---|---|\n",
        );
        out.push_str(&cost_rows);
    }

    let rss = |name: &str| {
        median(
            results
                .runs
                .iter()
                .filter(|r| r.name == name)
                .filter_map(|r| r.query_rss_kib.map(|k| k as f64)),
        )
    };
    if let (Some(cached), Some(uncached)) = (rss(query_reads::CACHED), rss(query_reads::UNCACHED)) {
        out.push_str(&format!(
            "\nquery-service resident memory under load (VmRSS at the end of the window, median): \
             {:.0} MiB cached, {:.0} MiB uncached",
            cached / 1024.0,
            uncached / 1024.0
        ));
        if let Some(peak) = results.query_peak_rss_kib {
            out.push_str(&format!("; peak (VmHWM) {:.0} MiB", peak as f64 / 1024.0));
        }
        out.push_str(".\n");
    }

    let verdicts = query_reads_verdicts(results);
    out.push_str(&verdict_table(&verdicts));
    for (what, measured) in query_reads_context(results) {
        out.push_str(&format!("| {what} (context, no target) | {measured} | |\n"));
    }
    let missed: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.met)
        .filter_map(|v| {
            let name = if v.target.starts_with("cached") {
                query_reads::CACHED
            } else {
                query_reads::UNCACHED
            };
            query_reads_bottleneck(results, name)
        })
        .collect();
    if !missed.is_empty() {
        out.push_str(&format!(
            "\nMissed. Where the cores went (this run's medians): {}.\n",
            missed.join("; ")
        ));
    }
    out
}

/// The run of a series whose rate is the median (the lower of an even count).
fn median_run<'a>(results: &'a QueryReadsResults, name: &str) -> Option<&'a Run> {
    let mut runs: Vec<&Run> = results
        .runs
        .iter()
        .filter(|r| r.name == name && r.clients == results.connections)
        .collect();
    runs.sort_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s));
    runs.get(runs.len().checked_sub(1)? / 2).copied()
}

fn short_target(name: &str) -> &str {
    match name {
        query_reads::REDIS_GET => "Redis GET",
        query_reads::BARE => "bare handler",
        query_reads::CACHED => "query-service cached",
        query_reads::UNCACHED => "query-service uncached",
        n if n == pgbench::PK_SELECT.name => "replica PK select",
        other => other,
    }
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

/// A table row for an events/s rate measured in several runs of
/// `(events/s, events, seconds)`: the median, then each run. Empty if no run.
fn rate_row(label: &str, clients: &str, runs: &[(f64, u64, f64)]) -> String {
    let Some(rate) = median(runs.iter().map(|r| r.0)) else {
        return String::new();
    };
    let each: Vec<String> = runs
        .iter()
        .map(|(per_s, events, seconds)| format!("{per_s:.0} ({events} events in {seconds:.1} s)"))
        .collect();
    // An empty cell is "| |", as in the other rows.
    let clients = if clients.is_empty() {
        " ".to_owned()
    } else {
        format!(" {clients} ")
    };
    format!(
        "| {label} |{clients}| {rate:.0} events/s | | | {} |\n",
        each.join(", ")
    )
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
            profiles: vec![],
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
    fn missed_write_path_targets_name_where_the_time_went() {
        let mut missed = results([5_000.0, 5_500.0, 9_000.0], 10_000.0);
        missed.machine.cpus = 2;
        let cpu = crate::procfs::CpuUsage {
            seconds: 8.0,
            cores: BTreeMap::from([("command-service".to_owned(), 1.2)]),
            machine_busy_cores: 1.9,
        };
        for (name, clients) in [(append::NAME, 16), (crate::relay::NAME, 1)] {
            missed.profiles.push(write_path::Profile {
                repetition: 1,
                name: name.to_owned(),
                clients,
                per_s: 5_500.0,
                cpu: cpu.clone(),
                primary: Default::default(),
            });
        }
        let section = render_write_path(&missed);
        assert!(
            section.contains(
                "- appends at 16 clients: command-service 1.20 cores, the rest 0.70; \
                 the machine was CPU-bound (1.90 of 2 busy).\n"
            ),
            "{section}"
        );
        assert!(
            section.contains("- relay: during the drain command-service 1.20 cores"),
            "{section}"
        );
        assert!(
            section.contains("| command append, 16 clients (5500 appends/s, repetition 1) |"),
            "{section}"
        );
    }

    fn catchup(events_per_s: f64) -> Catchup {
        Catchup {
            name: crate::catchup::NAME.to_owned(),
            group: "g".to_owned(),
            events: (events_per_s * 10.0) as u64,
            seconds: 10.0,
            events_per_s,
            applied_total: (events_per_s * 10.0) as u64 + 500,
            startup_seconds: 1.0,
            batches: 100,
            batch_seconds: 9.0,
            peak_rss_kib: Some(40 * 1024),
            cpu: Default::default(),
            partitions: 8,
            statements: vec![crate::catchup::Statement {
                query: "INSERT INTO a | b".to_owned(),
                calls: 10,
                total_ms: 5.0,
                rows: 10,
            }],
            statement_calls: 33,
            statement_ms: 10.0,
            redis_calls: Default::default(),
            read_models: Default::default(),
            history_by_partition: Default::default(),
        }
    }

    fn catchup_results(rates: &[f64], pgbench_tps: f64, sustained: f64) -> CatchupResults {
        let plan = crate::catchup::BacklogPlan::for_events(1_000);
        CatchupResults {
            machine: Machine {
                cpus: 2,
                ..Machine::default()
            },
            command: "make bench".to_owned(),
            repetitions: rates.len(),
            settings: Default::default(),
            backlog: crate::catchup::Backlog {
                plan,
                topic_prefix: "catchup-x".to_owned(),
                inserted_by_type: plan.events_by_type(),
                first_occurred_at: "a".to_owned(),
                last_occurred_at: "b".to_owned(),
                insert_seconds: 1.0,
                history_partitions: vec![],
                events: plan.events(),
                relay: Drain {
                    name: "relay_publish".to_owned(),
                    events: 1,
                    seconds: 1.0,
                    events_per_s: 1.0,
                },
                relay_failed_batches: 0,
                broker_storage: Some("memory".to_owned()),
            },
            baselines: vec![
                measurement(pgbench::HUNDRED_ROW_INSERT.name, 1, pgbench_tps, 1.0),
                measurement(pgbench::HUNDRED_ROW_INSERT.name, 4, pgbench_tps * 3.0, 2.0),
            ],
            catchups: rates.iter().map(|&r| catchup(r)).collect(),
            sustained_append: Some(crate::catchup::SustainedAppend {
                source: "write-path.json".to_owned(),
                run_date: "today".to_owned(),
                clients: 16,
                ops_per_s: sustained,
            }),
        }
    }

    #[test]
    fn catchup_targets_use_rows_per_second_at_one_client_and_the_sustained_rate() {
        // 500 tx/s × 100 rows = 50k rows/s; median catch-up 30k events/s.
        let results = catchup_results(&[20_000.0, 30_000.0, 40_000.0], 500.0, 9_000.0);
        let verdicts = catchup_verdicts(&results);
        assert_eq!(verdicts.len(), 2);
        assert!(verdicts[0].measured.starts_with("0.60×"), "{verdicts:?}");
        assert!(verdicts[0].met, "0.6 ≥ 0.5");
        assert!(verdicts[1].measured.starts_with("3.33×"), "{verdicts:?}");
        assert!(verdicts[1].met);
        assert_eq!(
            median_catchup(&results).map(|c| c.events_per_s),
            Some(30_000.0)
        );
    }

    #[test]
    fn missed_catchup_targets_name_where_the_time_went() {
        let results = catchup_results(&[2_000.0, 2_200.0, 1_900.0], 600.0, 4_000.0);
        let verdicts = catchup_verdicts(&results);
        assert!(verdicts.iter().all(|v| !v.met), "{verdicts:?}");
        let section = render_catchup(&results);
        assert!(section.contains("**missed**"), "{section}");
        assert!(section.contains("60000 rows/s (600 tx/s)"), "{section}");
        assert!(section.contains("| 2000 events/s |"), "{section}");
        // 9 s of a 10 s window inside batches; pipes escaped in table cells.
        assert!(
            section.contains("90 % of the window is inside the batch"),
            "{section}"
        );
        assert!(section.contains("INSERT INTO a \\| b"), "{section}");
    }

    fn query_reads_results(cached: [f64; 3], uncached: [f64; 3]) -> QueryReadsResults {
        let mut measurements = vec![];
        let mut runs = vec![];
        for i in 0..3 {
            let rep = [
                measurement(query_reads::REDIS_GET, 64, 60_000.0, 0.5),
                measurement(query_reads::BARE, 64, 40_000.0, 1.5),
                measurement(query_reads::CACHED, 64, cached[i], 3.0),
                measurement(pgbench::PK_SELECT.name, 16, 30_000.0, 0.5),
                measurement(pgbench::PK_SELECT.name, 64, 25_000.0, 2.5),
                measurement(query_reads::UNCACHED, 64, uncached[i], 6.0),
            ];
            for m in rep {
                let counted = m.name == query_reads::UNCACHED;
                runs.push(Run {
                    repetition: i + 1,
                    name: m.name.clone(),
                    clients: m.clients,
                    ops_per_s: m.ops_per_s,
                    requests: if counted { 1000 } else { 0 },
                    redis_calls: if counted {
                        BTreeMap::from([("set".to_owned(), 1000), ("get".to_owned(), 0)])
                    } else {
                        BTreeMap::new()
                    },
                    replica_statements: if counted {
                        vec![crate::query_reads::Statement {
                            query: "SELECT order_id,\n  customer_id FROM order_summary".to_owned(),
                            calls: 2000,
                            total_ms: 100.0,
                        }]
                    } else {
                        vec![]
                    },
                    cpu: crate::procfs::CpuUsage {
                        seconds: 8.0,
                        cores: BTreeMap::from([
                            ("query-service".to_owned(), 1.1),
                            ("redis".to_owned(), 0.3),
                        ]),
                        machine_busy_cores: 2.0,
                    },
                    query_rss_kib: Some(20 * 1024),
                });
                measurements.push(m);
            }
        }
        QueryReadsResults {
            machine: Machine {
                cpus: 2,
                ..Machine::default()
            },
            command: "make bench".to_owned(),
            repetitions: 3,
            connections: 64,
            threads: 2,
            tools: BTreeMap::from([("wrk".to_owned(), "wrk 4.1.0 | x".to_owned())]),
            settings: BTreeMap::from([("REPLICA_POOL_SIZE".to_owned(), "default".to_owned())]),
            seed: crate::query_reads::Seed {
                orders: 2000,
                ..Default::default()
            },
            measurements,
            runs,
            query_peak_rss_kib: Some(30 * 1024),
        }
    }

    #[test]
    fn read_targets_use_the_bare_handler_and_the_first_pgbench_count() {
        // Cached median 24k = 0.6 × 40k; uncached median 15k = 0.5 × 30k (16 clients).
        let results = query_reads_results(
            [20_000.0, 24_000.0, 30_000.0],
            [9_000.0, 15_000.0, 16_000.0],
        );
        let verdicts = query_reads_verdicts(&results);
        assert_eq!(verdicts.len(), 2);
        assert!(verdicts.iter().all(|v| v.met), "{verdicts:?}");
        assert!(verdicts[0].measured.starts_with("0.60×"), "{verdicts:?}");
        assert!(verdicts[1].measured.starts_with("0.50×"), "{verdicts:?}");
        assert!(
            verdicts[1].measured.contains("at 16 clients"),
            "{verdicts:?}"
        );
        let section = render_query_reads(&results);
        assert!(!section.contains("**missed**"), "{section}");
        // Context: against redis-benchmark and pgbench at 64.
        assert!(section.contains("0.40× (24000 / 60000)"), "{section}");
        assert!(section.contains("0.60× (15000 / 25000)"), "{section}");
        assert!(
            section
                .contains("| pgbench primary-key select on the replica (baseline) | 16 | 30000 |"),
            "{section}"
        );
        // Machine 2.0 busy minus 1.4 in the groups.
        assert!(
            section.contains("| 1.10 | 0.30 | 0.60 | 2.00 |"),
            "{section}"
        );
        assert!(section.contains("20 MiB cached"), "{section}");
        // Uncached median run: 1 SET and 2 statements of 50 µs per request.
        assert!(
            section.contains("| query-service uncached (15000 req/s, repetition 2) | set 1.000 | `SELECT order_id, customer_id FROM order_summary` 2.000 × 50 µs |"),
            "{section}"
        );
        assert!(section.contains("`wrk 4.1.0 \\| x`"), "{section}");
    }

    #[test]
    fn missed_read_targets_say_where_the_cores_went() {
        let results = query_reads_results(
            [10_000.0, 12_000.0, 30_000.0],
            [9_000.0, 11_000.0, 16_000.0],
        );
        let verdicts = query_reads_verdicts(&results);
        assert!(verdicts.iter().all(|v| !v.met), "{verdicts:?}");
        let section = render_query_reads(&results);
        assert!(section.contains("**missed**"), "{section}");
        assert!(
            section.contains("Missed. Where the cores went"),
            "{section}"
        );
        assert!(section.contains("query-service 1.10"), "{section}");
        assert!(section.contains("CPU-bound (2.00 of 2 busy)"), "{section}");
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

    #[test]
    fn a_series_row_quotes_the_medians_then_each_run_with_its_errors() {
        let mut failing = measurement("x", 4, 300.0, 2.0);
        failing.errors.insert("timeout".to_owned(), 3);
        let runs = [
            measurement("x", 4, 100.0, 1.0),
            failing,
            measurement("x", 4, 200.0, 1.5),
            measurement("x", 1, 50.0, 1.0),
            measurement("y", 4, 10.0, 1.0),
        ];
        assert_eq!(
            series_row(&runs, "x", 4, "label"),
            "| label | 4 | 200 | 1.50 | 4.50 | 100, 300 (3 errors), 200 |\n"
        );
        assert_eq!(series_row(&runs, "x", 2, "label"), "");
    }

    #[test]
    fn a_rate_row_quotes_the_median_then_each_run() {
        let runs = [
            (3651.0, 78802, 21.58),
            (4134.0, 79527, 19.24),
            (3907.0, 81183, 20.78),
        ];
        assert_eq!(
            rate_row("relay publish, draining a backlog", "", &runs),
            "| relay publish, draining a backlog | | 3907 events/s | | | 3651 (78802 events in 21.6 s), \
             4134 (79527 events in 19.2 s), 3907 (81183 events in 20.8 s) |\n"
        );
        assert_eq!(rate_row("none", "", &[]), "");
    }
}
