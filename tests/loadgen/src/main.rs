use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loadgen::append::{self, AppendOptions};
use loadgen::catchup::{self, CatchupOptions};
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
    /// The projector catch-up benchmark: a backlog of events written into the
    /// event store and relayed to Kafka, applied by the projector from offset
    /// 0 in each repetition, interleaved with pgbench 100-row transactions.
    /// Starts and stops command-service (relay) and the projector itself.
    ProjectorCatchup {
        #[arg(long, env = "PRIMARY_DATABASE_URL")]
        database_url: String,
        #[arg(long, env = "REDIS_URL")]
        redis_url: String,
        #[arg(long, env = "COMMAND_URL")]
        command_url: String,
        #[arg(long, env = "PROJECTOR_URL")]
        projector_url: String,
        /// The stack's directory, for the broker's and Redis' CPU.
        #[arg(long, env = "STACK_DIR")]
        stack_dir: Option<PathBuf>,
        #[arg(long, default_value = "target/release/command-service")]
        command_bin: PathBuf,
        #[arg(long, default_value = "target/release/projector")]
        projector_bin: PathBuf,
        /// Smallest backlog in events.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
        /// pgbench client counts (the fewest is the verdict's baseline).
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        baseline_clients: Vec<usize>,
        /// Measured seconds of each pgbench run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        #[arg(long, default_value = "catchup")]
        topic_prefix: String,
        /// Longest wait for one catch-up or for the relay, seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// write-path results of the same run (sustained append rate).
        #[arg(long)]
        write_path_json: Option<PathBuf>,
        #[arg(long, default_value = "target/bench")]
        work_dir: PathBuf,
        #[arg(long)]
        json: Option<PathBuf>,
        /// Rewrite the `projector-catchup` section of this Markdown file.
        #[arg(long)]
        markdown: Option<PathBuf>,
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
            write_outputs(&results, &section, "write-path", json, markdown)?;
        }
        Command::ProjectorCatchup {
            database_url,
            redis_url,
            command_url,
            projector_url,
            stack_dir,
            command_bin,
            projector_bin,
            events,
            repetitions,
            baseline_clients,
            duration,
            warmup,
            topic_prefix,
            timeout,
            write_path_json,
            work_dir,
            json,
            markdown,
            recorded_command,
        } => {
            let options = CatchupOptions {
                database_url,
                redis_url,
                command_bin,
                command_url,
                projector_bin,
                projector_url,
                stack_dir,
                events,
                repetitions,
                baseline_clients,
                warmup: Duration::from_secs(warmup),
                duration: Duration::from_secs(duration),
                topic_prefix,
                timeout: Duration::from_secs(timeout),
                write_path_json,
                work_dir,
            };
            let recorded =
                recorded_command.unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
            let results = catchup::run(&options, recorded).await?;
            let section = report::render_catchup(&results);
            println!("{section}");
            write_outputs(&results, &section, "projector-catchup", json, markdown)?;
        }
    }
    Ok(())
}

/// Writes `results` as JSON and splices `section` into the Markdown file.
fn write_outputs(
    results: &impl serde::Serialize,
    section: &str,
    marker: &str,
    json: Option<PathBuf>,
    markdown: Option<PathBuf>,
) -> anyhow::Result<()> {
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = markdown {
        let doc = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        std::fs::write(&path, report::splice(&doc, marker, section)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
