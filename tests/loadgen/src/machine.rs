//! Facts about the machine a benchmark ran on, recorded with its numbers.

use serde::{Deserialize, Serialize};
use tokio::process::Command;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    /// UTC, RFC 3339.
    pub date: String,
    pub git_commit: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub postgres: String,
}

impl Machine {
    /// The report's first line: when, at which commit, on what.
    pub fn run_line(&self) -> String {
        format!(
            "Run {} at commit `{}`: {} CPUs ({}), {} GiB, Linux {}, PostgreSQL {}.\n\n",
            self.date,
            self.git_commit,
            self.cpus,
            self.cpu_model,
            self.memory_gib,
            self.kernel,
            self.postgres
        )
    }

    /// Best effort: a fact that cannot be read is left empty.
    pub async fn read(database_url: &str) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            git_commit: output("git", &["rev-parse", "--short", "HEAD"]).await,
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: field(&cpuinfo, "model name").unwrap_or_default(),
            memory_gib: field(&meminfo, "MemTotal")
                .and_then(|kb| kb.trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(0.0, |kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0),
            kernel: output("uname", &["-r"]).await,
            postgres: output("psql", &[database_url, "-XtAc", "SHOW server_version"]).await,
        }
    }
}

fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().to_owned())
    })
}

async fn output(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output().await {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_colon_separated_fields() {
        let text = "processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\nMemTotal:       24568316 kB\n";
        assert_eq!(
            field(text, "model name").as_deref(),
            Some("Some CPU @ 2.0GHz")
        );
        assert_eq!(field(text, "MemTotal").as_deref(), Some("24568316 kB"));
        assert_eq!(field(text, "flags"), None);
    }
}
