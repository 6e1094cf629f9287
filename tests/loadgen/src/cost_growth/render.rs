//! The cost-growth section of `docs/BENCHMARKS.md` (between its
//! `<!-- cost-growth:begin -->` / `<!-- cost-growth:end -->` markers).

use std::fmt::Write as _;

use super::{size_label, CostGrowthResults, SizeResult, TARGET_RATIO, TARGET_SIZE};
use crate::stats::median;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// The section's body (without markers).
pub fn render(results: &CostGrowthResults) -> String {
    let mut out = String::new();
    out.push_str(&results.machine.run_line());
    let items = median(results.data.probe_page_items.iter().map(|&n| n as f64)).unwrap_or(0.0);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "Command: `{}` ({} at each size, interleaved: appends, history reads, \
         history SQL; medians over them). Appends: {} closed-loop clients changing prices \
         through command-service, relay running; history: `GET /customers/{{id}}/orders` \
         (default range and page size) with `Cache-Control: no-cache` at {} clients over {} \
         probe customers ({items:.0} items per page), served by a replica; history SQL: the \
         same query under `EXPLAIN (ANALYZE, BUFFERS)` on a replica, median of 5 runs. \
         {:.0} s warm-up, {:.0} s measured.\n\n",
        results.command,
        match results.repetitions {
            1 => "1 repetition".to_owned(),
            n => format!("{n} repetitions"),
        },
        results.append_clients,
        results.history_clients,
        results.data.probe_customers,
        results.warmup_s,
        results.duration_s,
    );
    out.push_str(
        "| bulk events | events stored | history rows | events heap + indexes | appends/s \
         | append p50 ms | append p99 ms | append p99 of each run | history p50 ms \
         | history p99 ms | history SQL ms (buffers) |\n",
    );
    out.push_str("|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---|\n");
    for size in &results.sizes {
        out.push_str(&size_row(size));
    }
    out.push_str(&growth_lines(results));
    out.push_str(&statement_table(results));
    out.push_str(&verdict_table(results));
    if let Some(bottleneck) = &results.bottleneck {
        let _ = writeln!(out, "\nBottleneck: {bottleneck}.");
    }
    if !results.findings.is_empty() {
        out.push('\n');
        for finding in &results.findings {
            let _ = writeln!(out, "- {finding}");
        }
    }
    let monthly = results
        .data
        .history_partitions
        .iter()
        .filter(|p| !p.ends_with("_default"))
        .count();
    let _ = writeln!(
        out,
        "\nData: {} orders per customer over {} months (+ the current one; {monthly} monthly \
         history partitions + DEFAULT), 2.7 events per order on average, one product per {} \
         orders with {} price changes; written in chunks of ~{} events, the relay's \
         cursor moved past them; `VACUUM ANALYZE` after each step. Raw numbers: \
         `docs/benchmarks/cost-growth.json`.",
        results.data.orders_per_customer,
        results.data.history_months,
        results.data.orders_per_product,
        results.data.price_changes_per_product,
        results.data.chunk_events,
    );
    out
}

fn size_row(size: &SizeResult) -> String {
    let bytes = |name: &str| size.relation_bytes.get(name).copied().unwrap_or(0);
    let indexes =
        bytes("events_pkey") + bytes("events_position_key") + bytes("events_outbox_order");
    let runs: Vec<String> = size
        .appends
        .iter()
        .map(|m| {
            let errors: u64 = m.errors.values().sum();
            if errors > 0 {
                format!("{:.2} ({errors} errors)", m.latency.p99_ms)
            } else {
                format!("{:.2}", m.latency.p99_ms)
            }
        })
        .collect();
    let history_errors: u64 = size.history.iter().flat_map(|m| m.errors.values()).sum();
    let sql = size.history_sql.last().map_or(String::new(), |t| {
        format!("({} hit, {} read)", t.shared_hit, t.shared_read)
    });
    let Some(m) = size.medians() else {
        return format!(
            "| {} | {} | {} | | | | | | | | |\n",
            size_label(size.size),
            size.stored_events,
            size.history_rows
        );
    };
    let history_p99 = if history_errors > 0 {
        format!("{:.2} ({history_errors} errors)", m.history_p99_ms)
    } else {
        format!("{:.2}", m.history_p99_ms)
    };
    format!(
        "| {} | {} | {} | {:.0} + {:.0} MiB | {:.0} | {:.2} | {:.2} | {} | {:.2} | {} | {:.3} {sql} |\n",
        size_label(size.size),
        size.stored_events,
        size.history_rows,
        mib(bytes("events")),
        mib(indexes),
        m.append_ops_per_s,
        m.append_p50_ms,
        m.append_p99_ms,
        runs.join(", "),
        m.history_p50_ms,
        history_p99,
        m.history_sql_ms,
    )
}

fn growth_lines(results: &CostGrowthResults) -> String {
    let mut out = String::new();
    let mut previous = 0;
    for size in &results.sizes {
        if let Some(g) = &size.growth {
            let _ = writeln!(
                out,
                "{}Growth {} → {}: {} events ({} orders of {} customers, {} products) in {} \
                 chunks, {:.1} s of inserts ({:.0} events/s), replicas waited for {:.1} s; \
                 `VACUUM ANALYZE` {:.1} s.",
                if out.is_empty() { "\n" } else { "" },
                size_label(previous),
                size_label(size.size),
                g.events,
                g.orders,
                g.customers,
                g.products,
                g.chunks,
                g.insert_seconds,
                g.events_per_s,
                g.replica_wait_seconds,
                size.vacuum_seconds,
            );
        }
        previous = size.size;
    }
    out
}

/// The append path's statements at the smallest and the largest size: the
/// largest size's costliest four, per call.
fn statement_table(results: &CostGrowthResults) -> String {
    let (Some(first), Some(last)) = (results.sizes.first(), results.sizes.last()) else {
        return String::new();
    };
    if last.append_statements.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nThe append path in Postgres (`pg_stat_statements` over the append windows, \
         all repetitions; per call):\n\n\
         | statement | bulk events | calls | ms per call | rows per call | buffer hits / reads per call | WAL bytes per call |\n\
         |---|---:|---:|---:|---:|---|---:|\n",
    );
    let sizes: Vec<&SizeResult> = if results.sizes.len() > 1 {
        vec![first, last]
    } else {
        vec![last]
    };
    for statement in last.append_statements.iter().take(4) {
        let query: String = statement.query.chars().take(70).collect();
        let query = query.replace('|', "\\|").replace('`', "'");
        for size in &sizes {
            let Some(s) = size
                .append_statements
                .iter()
                .find(|s| s.key == statement.key)
            else {
                continue;
            };
            let _ = writeln!(
                out,
                "| `{query}` | {} | {} | {:.3} | {:.1} | {:.1} / {:.2} | {:.0} |",
                size_label(size.size),
                s.calls,
                s.mean_ms,
                s.rows_per_call,
                s.hit_per_call,
                s.read_per_call,
                s.wal_bytes_per_call
            );
        }
    }
    out
}

fn verdict_table(results: &CostGrowthResults) -> String {
    let target = format!(
        "append p99 at {} stored events ≤ {TARGET_RATIO} × at 0",
        size_label(TARGET_SIZE)
    );
    let mut out = String::from("\n| target | measured | |\n|---|---|---|\n");
    let Some(v) = &results.verdict else {
        let _ = writeln!(out, "| {target} | one size measured: no ratio | not run |");
        return out;
    };
    let at = size_label(v.to_size);
    let note = if v.at_target_size {
        String::new()
    } else {
        format!(
            "; {} not measured in this run (opt-in: `--sizes 0,1000000,10000000`)",
            size_label(TARGET_SIZE)
        )
    };
    let verdict = match (v.met, v.at_target_size) {
        (true, true) => "met".to_owned(),
        (false, true) => "**missed**".to_owned(),
        (true, false) => format!("met at {at}"),
        (false, false) => format!("**missed** at {at}"),
    };
    let _ = writeln!(
        out,
        "| {target} | {:.2}× at {at} ({:.2} / {:.2} ms vs {}){note} | {verdict} |",
        v.ratio,
        v.to_p99_ms,
        v.from_p99_ms,
        size_label(v.from_size)
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cost_growth::tests::{append_call, size};
    use crate::cost_growth::{
        bottleneck, findings, verdict, DataShape, Growth, APPEND_CLIENTS, HISTORY_CLIENTS,
    };
    use crate::machine::Machine;
    use crate::report::{splice, Section};

    pub fn results(sizes: Vec<SizeResult>) -> CostGrowthResults {
        let settings = BTreeMap::from([("shared_buffers".to_owned(), "128MB".to_owned())]);
        let verdict = verdict(&sizes);
        let bottleneck = verdict
            .as_ref()
            .filter(|v| !v.met)
            .and_then(|_| bottleneck(&sizes, &settings));
        CostGrowthResults {
            machine: Machine {
                date: "2026-11-23T05:00:00Z".to_owned(),
                git_commit: "abc1234".to_owned(),
                cpus: 2,
                ..Machine::default()
            },
            command: "make bench".to_owned(),
            repetitions: 3,
            warmup_s: 2.0,
            duration_s: 10.0,
            append_clients: APPEND_CLIENTS,
            history_clients: HISTORY_CLIENTS,
            settings,
            data: DataShape {
                orders_per_customer: 20,
                orders_per_product: 50,
                price_changes_per_product: 4,
                history_months: 6,
                chunk_events: 250_000,
                probe_customers: 8,
                probe: growth(0, 450),
                history_partitions: vec![
                    "customer_order_history_default".to_owned(),
                    "customer_order_history_p2026_11".to_owned(),
                ],
                probe_page_items: vec![27, 27, 28],
            },
            findings: findings(&sizes),
            sizes,
            verdict,
            bottleneck,
        }
    }

    fn growth(step: u32, events: u64) -> Growth {
        Growth {
            step,
            events,
            orders: events / 3,
            customers: events / 60,
            products: events / 150,
            history_rows: events,
            chunks: 4,
            insert_seconds: 80.0,
            replica_wait_seconds: 2.0,
            events_per_s: events as f64 / 80.0,
        }
    }

    #[test]
    fn the_section_shows_every_size_the_growth_and_the_verdict() {
        let mut grown = size(
            1_000_000,
            &[11.0, 12.0, 11.5],
            append_call(0.3, 20.0, 0.0),
            2.1,
        );
        grown.growth = Some(growth(1, 1_000_012));
        let results = results(vec![
            size(0, &[10.0, 10.5, 10.2], append_call(0.3, 20.0, 0.0), 2.0),
            grown,
        ]);
        let text = results.render();
        assert!(
            text.starts_with("Run 2026-11-23T05:00:00Z at commit `abc1234`"),
            "{text}"
        );
        assert!(
            text.contains(
                "| 0 | 500 | 0 | 0 + 0 MiB | 3000 | 4.00 | 10.20 | 10.00, 10.50, 10.20 |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| 1M | 1000500 | 1000000 | 381 + 143 MiB |"),
            "{text}"
        );
        assert!(text.contains("Growth 0 → 1M: 1000012 events"), "{text}");
        assert!(
            text.contains("| append p99 at 10M stored events ≤ 1.2 × at 0 | 1.13× at 1M (11.50 / 10.20 ms vs 0); 10M not measured"),
            "{text}"
        );
        assert!(text.contains("| met at 1M |"), "{text}");
        assert!(
            text.contains("| `SELECT append_events($1, $2)` | 1M | 10000 | 0.300 |"),
            "{text}"
        );
        assert!(!text.contains("Bottleneck"), "{text}");
        assert!(text.contains("(27 items per page)"), "{text}");
        // It splices into its markers.
        let doc = "# B\n<!-- cost-growth:begin -->\nold\n<!-- cost-growth:end -->\nprose\n";
        let spliced = splice(doc, CostGrowthResults::MARKER, &text).unwrap();
        assert!(
            spliced.contains(&text) && !spliced.contains("old") && spliced.ends_with("prose\n")
        );
    }

    #[test]
    fn a_missed_target_at_ten_million_names_the_bottleneck() {
        let results = results(vec![
            size(0, &[10.0], append_call(0.3, 20.0, 0.0), 2.0),
            size(10_000_000, &[30.0], append_call(0.9, 21.0, 4.0), 2.0),
        ]);
        let text = results.render();
        assert!(
            text.contains("| 3.00× at 10M (30.00 / 10.00 ms vs 0) | **missed** |"),
            "{text}"
        );
        assert!(
            text.contains("\nBottleneck: cache misses in the events indexes"),
            "{text}"
        );
    }

    #[test]
    fn one_size_renders_without_a_ratio() {
        let results = results(vec![size(0, &[10.0], append_call(0.3, 20.0, 0.0), 2.0)]);
        let text = results.render();
        assert!(
            text.contains("one size measured: no ratio | not run |"),
            "{text}"
        );
    }
}
