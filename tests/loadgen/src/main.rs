use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loadgen::append::{self, AppendOptions};
use loadgen::report;
use loadgen::write_path::{self, WritePathOptions};

/// Drives the running stack and measures it. Service addresses come from the
/// same environment the services read (`eval "$(deploy/local/stack env)"`).
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop command appends (price changes, one product per client).
    Append {
        #[arg(long, env = "COMMAND_URL", default_value = "http://127.0.0.1:18080")]
        url: String,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Unmeasured seconds first.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
    },
    /// The write-path benchmark: pgbench single-row inserts and command
    /// appends at each client count, interleaved; then the relay's drain rate.
    /// Starts and stops command-service itself (the relay on or off).
    WritePath {
        #[arg(long, env = "PRIMARY_DATABASE_URL")]
        database_url: String,
        #[arg(long, env = "COMMAND_URL")]
        command_url: String,
        #[arg(long, default_value = "target/release/command-service")]
        command_bin: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Seconds of appends with the relay off, drained afterwards.
        #[arg(long, default_value_t = 10)]
        backlog: u64,
        #[arg(long, default_value = "target/bench")]
        work_dir: PathBuf,
        /// Write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Rewrite the `write-path` section of this Markdown file.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// The command to quote in the report (default: this command line).
        #[arg(long, env = "BENCH_COMMAND")]
        recorded_command: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Append {
            url,
            clients,
            duration,
            warmup,
        } => {
            let measurement = append::run(&AppendOptions {
                url,
                clients,
                warmup: Duration::from_secs(warmup),
                duration: Duration::from_secs(duration),
                progress: true,
            })
            .await?;
            println!("{}", write_path::one_line(&measurement));
            println!("{}", serde_json::to_string_pretty(&measurement)?);
        }
        Command::WritePath {
            database_url,
            command_url,
            command_bin,
            clients,
            repetitions,
            duration,
            warmup,
            backlog,
            work_dir,
            json,
            markdown,
            recorded_command,
        } => {
            let options = WritePathOptions {
                database_url,
                command_bin,
                command_url,
                clients,
                repetitions,
                warmup: Duration::from_secs(warmup),
                duration: Duration::from_secs(duration),
                backlog: Duration::from_secs(backlog),
                work_dir,
            };
            let recorded =
                recorded_command.unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
            let results = write_path::run(&options, recorded).await?;
            let section = report::render_write_path(&results);
            println!("{section}");
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&results)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = markdown {
                let doc = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                std::fs::write(&path, report::splice(&doc, "write-path", &section)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}
