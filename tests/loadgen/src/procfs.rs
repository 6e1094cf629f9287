//! CPU time and peak memory of the processes a benchmark involves, read from
//! `/proc` (Linux only; on other systems every reading is simply absent).
//!
//! A [`CpuSnapshot`] records the CPU ticks of named groups of processes (the
//! projector; Postgres = its postmaster and every child; the broker; Redis)
//! and of the whole machine; the difference of two snapshots says how many
//! cores each group kept busy over the window between them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// The fields of `/proc/<pid>/stat` this module needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub ppid: u32,
    /// User + system CPU time, in clock ticks.
    pub ticks: u64,
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid ... utime stime ...`.
/// `comm` may contain spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state(0) ppid(1) pgrp(2) session(3) tty_nr(4) tpgid(5)
    // flags(6) minflt(7) cminflt(8) majflt(9) cmajflt(10) utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ProcStat {
        ppid,
        ticks: utime + stime,
    })
}

pub fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `pid` and every live process whose parent is `pid` (one level: enough for
/// a postmaster, whose backends and auxiliary processes are its children).
pub fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if read_stat(child).is_some_and(|s| s.ppid == pid) {
                pids.push(child);
            }
        }
    }
    pids
}

/// Busy and total jiffies of the whole machine, from the first line of
/// `/proc/stat` (`cpu user nice system idle iowait irq softirq steal ...`).
pub fn parse_machine(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    if values.len() < 8 {
        return None;
    }
    let idle = values[3] + values[4];
    let total: u64 = values.iter().sum();
    Some((total - idle, total))
}

/// Peak resident set size (`VmHWM`) of `pid` in KiB.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix("VmHWM:")?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    parse_vm_hwm(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The pid in a pidfile (first line).
pub fn pid_from_file(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub async fn clock_ticks() -> f64 {
    match Command::new("getconf").arg("CLK_TCK").output().await {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(100.0),
        _ => 100.0,
    }
}

/// How a group's processes are found at each snapshot.
#[derive(Debug, Clone)]
pub enum Processes {
    /// Exactly this process.
    One(u32),
    /// This process and its children at the time of the snapshot.
    WithChildren(u32),
}

impl Processes {
    fn pids(&self) -> Vec<u32> {
        match self {
            Self::One(pid) => vec![*pid],
            Self::WithChildren(pid) => with_children(*pid),
        }
    }
}

/// CPU ticks per process of each group, and the machine's, at one moment.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at: Instant,
    groups: BTreeMap<String, HashMap<u32, u64>>,
    machine: Option<(u64, u64)>,
}

impl CpuSnapshot {
    pub fn take(groups: &[(String, Processes)]) -> Self {
        let groups = groups
            .iter()
            .map(|(name, processes)| {
                let ticks = processes
                    .pids()
                    .into_iter()
                    .filter_map(|pid| read_stat(pid).map(|s| (pid, s.ticks)))
                    .collect();
                (name.clone(), ticks)
            })
            .collect();
        Self {
            at: Instant::now(),
            groups,
            machine: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|t| parse_machine(&t)),
        }
    }

    /// Cores each group kept busy between `self` and the later `end`. A
    /// process that appeared in between counts from zero; one that exited
    /// is lost (its last ticks are unknown), which undercounts short-lived
    /// processes only.
    pub fn usage_until(&self, end: &CpuSnapshot, ticks_per_s: f64, cpus: usize) -> CpuUsage {
        let seconds = end.at.duration_since(self.at).as_secs_f64();
        let cores = |ticks: u64| {
            if seconds > 0.0 {
                ticks as f64 / ticks_per_s / seconds
            } else {
                0.0
            }
        };
        let groups = end
            .groups
            .iter()
            .map(|(name, after)| {
                let before = self.groups.get(name);
                let ticks: u64 = after
                    .iter()
                    .map(|(pid, &t)| {
                        t.saturating_sub(before.and_then(|b| b.get(pid)).copied().unwrap_or(0))
                    })
                    .sum();
                (name.clone(), cores(ticks))
            })
            .collect();
        let machine_busy_cores = match (self.machine, end.machine) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                (busy1 - busy0) as f64 / (total1 - total0) as f64 * cpus as f64
            }
            _ => 0.0,
        };
        CpuUsage {
            seconds,
            cores: groups,
            machine_busy_cores,
        }
    }
}

/// Average CPU use over a window, in cores (1.0 = one core busy all along).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUsage {
    pub seconds: f64,
    pub cores: BTreeMap<String, f64>,
    /// The whole machine (every process), from `/proc/stat`.
    pub machine_busy_cores: f64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_even_with_spaces_and_parentheses_in_the_name() {
        let line =
            "4242 (tokio (rt) 1) S 17 4242 17 0 -1 4194304 98 0 0 0 250 50 0 0 20 0 1 0 1559070";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                ppid: 17,
                ticks: 300
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn machine_busy_excludes_idle_and_iowait() {
        let text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_machine(text), Some((150, 1000)));
        assert_eq!(parse_machine("intr 1 2"), None);
    }

    #[test]
    fn reads_peak_rss() {
        let status =
            "Name:\tprojector\nVmPeak:\t  999 kB\nVmHWM:\t   48212 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(48212));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }

    #[test]
    fn usage_is_ticks_over_wall_time_and_new_processes_count_from_zero() {
        let start = Instant::now();
        let before = CpuSnapshot {
            at: start,
            groups: BTreeMap::from([("pg".to_owned(), HashMap::from([(1, 100), (2, 50)]))]),
            machine: Some((1000, 4000)),
        };
        let after = CpuSnapshot {
            at: start + std::time::Duration::from_secs(2),
            // pid 2 exited, pid 3 is new
            groups: BTreeMap::from([("pg".to_owned(), HashMap::from([(1, 200), (3, 100)]))]),
            machine: Some((1300, 4400)),
        };
        let usage = before.usage_until(&after, 100.0, 2);
        // (100 + 100) ticks / 100 per s / 2 s = 1 core
        assert!((usage.cores["pg"] - 1.0).abs() < 1e-9, "{usage:?}");
        // 300 busy of 400 jiffies on 2 CPUs = 1.5 cores
        assert!((usage.machine_busy_cores - 1.5).abs() < 1e-9, "{usage:?}");
    }
}
