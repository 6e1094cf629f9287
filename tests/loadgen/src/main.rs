use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loadgen::append::{self, AppendOptions};
use loadgen::baselines;
use loadgen::catchup::{self, CatchupOptions};
use loadgen::query_reads::{self, QueryReadsOptions};
use loadgen::report::{self, Section};
use loadgen::summary;
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
    /// Against a stack from `deploy/local/stack up` the services' rate limits
    /// apply, keyed by loadgen's one token (commands: 100/s by default):
    /// start it with `RATE_LIMIT_COMMANDS=1000000/s` to measure beyond that.
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
        #[command(flatten)]
        schedule: Schedule,
        /// Seconds of appends with the relay off, drained afterwards.
        #[arg(long, default_value_t = 10)]
        backlog: u64,
        /// The stack's directory, for the CPU of Postgres, the broker and Redis.
        #[arg(long, env = "STACK_DIR")]
        stack_dir: Option<PathBuf>,
        #[arg(long, default_value = "target/bench")]
        work_dir: PathBuf,
        #[command(flatten)]
        outputs: Outputs,
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
        #[command(flatten)]
        writers: Writers,
        /// The stack's directory, for the broker's and Redis' CPU.
        #[arg(long, env = "STACK_DIR")]
        stack_dir: Option<PathBuf>,
        /// Smallest backlog in events.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// pgbench client counts (the fewest is the verdict's baseline).
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        baseline_clients: Vec<usize>,
        // Timed runs: pgbench's (a catch-up runs until it has caught up).
        #[command(flatten)]
        schedule: Schedule,
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
        #[command(flatten)]
        outputs: Outputs,
    },
    /// The read benchmark: query-service's `GET /orders/{id}` cached (Redis)
    /// beside a bare actix-web handler and redis-benchmark GET, and uncached
    /// (`Cache-Control: no-cache`, the replica) beside pgbench primary-key
    /// selects, interleaved. Seeds orders through command-service and the
    /// projector, which it starts and stops itself, as it does query-service.
    /// Needs wrk, redis-benchmark and pgbench.
    QueryReads {
        #[arg(long, env = "PRIMARY_DATABASE_URL")]
        database_url: String,
        #[arg(long, env = "REPLICA_DATABASE_URL")]
        replica_url: String,
        #[arg(long, env = "REDIS_URL")]
        redis_url: String,
        #[command(flatten)]
        writers: Writers,
        #[arg(long, env = "QUERY_URL")]
        query_url: String,
        /// The replicas query-service reads, comma-separated (default: the
        /// replica the pgbench baseline runs on).
        #[arg(long, env = "REPLICA_DATABASE_URLS")]
        query_replica_urls: Option<String>,
        /// The stack's directory, for the CPU of Redis and Postgres.
        #[arg(long, env = "STACK_DIR")]
        stack_dir: Option<PathBuf>,
        #[arg(long, default_value = "target/release/query-service")]
        query_bin: PathBuf,
        /// Orders seeded; each request reads a random one.
        #[arg(long, default_value_t = 2000)]
        orders: usize,
        /// HTTP connections (wrk -c) and redis-benchmark clients.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// wrk and redis-benchmark threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// pgbench client counts; the first is the uncached target's
        /// baseline (default: query-service's replica pool size, 16).
        #[arg(long, value_delimiter = ',', default_value = "16,64")]
        pgbench_clients: Vec<usize>,
        #[command(flatten)]
        schedule: Schedule,
        /// Longest wait for the seeded orders to be projected, seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[arg(long, default_value = "target/bench")]
        work_dir: PathBuf,
        #[command(flatten)]
        outputs: Outputs,
    },
    /// The suite's baselines, each once: `--label start` before the
    /// workloads, `--label end` after them (`loadgen summary` reports the
    /// drift). pgbench single-row inserts (1, 16 clients) and 100-row
    /// transactions (1) on the primary, primary-key selects (16, 64) on the
    /// replica, redis-benchmark GET and the bare actix handler under wrk
    /// (64), raw rdkafka produce and consume on the broker. Exits non-zero,
    /// after writing the JSON, if any baseline failed.
    Baselines {
        #[arg(long, value_enum)]
        label: baselines::Label,
        #[arg(long, env = "PRIMARY_DATABASE_URL")]
        database_url: String,
        #[arg(long, env = "REPLICA_DATABASE_URL")]
        replica_url: String,
        #[arg(long, env = "REDIS_URL")]
        redis_url: String,
        #[arg(long, env = "KAFKA_BROKERS")]
        brokers: String,
        /// The broker's storage engine, recorded with the results.
        #[arg(long, env = "BROKER_STORAGE")]
        broker_storage: Option<String>,
        /// Measured seconds of each baseline.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Unmeasured seconds before each.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Longest wait for replication and for the consumer, seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[arg(long, default_value = "target/bench")]
        work_dir: PathBuf,
        #[arg(long)]
        json: Option<PathBuf>,
        /// The command to record (default: this command line).
        #[arg(long, env = "BENCH_COMMAND")]
        recorded_command: Option<String>,
    },
    /// The suite's summary: every workload against its baseline and target,
    /// and the start/end baselines' drift, from whichever step results exist
    /// in `--dir`; rewrites the `summary` and `baselines` blocks of
    /// `--markdown`.
    Summary {
        #[arg(long, default_value = "docs/benchmarks")]
        dir: PathBuf,
        #[arg(long)]
        markdown: Option<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
        /// The suite's command to quote (default: this command line).
        #[arg(long, env = "BENCH_COMMAND")]
        recorded_command: Option<String>,
    },
    /// A realistic mix of commands and reads against the running stack, open
    /// loop at `--rate` (latency from each arrival's scheduled time) or closed
    /// loop at `--concurrency`: per-operation throughput, latency percentiles
    /// and errors, and freshness (a command's 202 until query-service's
    /// replica path shows it). Operations for `--mix` (default weight):
    /// create_product 2, change_price 4, rename_product 2, place_order 10,
    /// add_line 4, confirm_order 6, cancel_order 2, get_order 30,
    /// get_order_uncached 15, customer_orders 10, get_product 10,
    /// list_products 5. Progress on stderr, the table on stdout, every
    /// figure with --json. Exits 0 even if requests failed (counted).
    Mix(loadgen::mix::MixArgs),
    /// The freshness benchmark: the mix open loop at `--load-fraction` (50 %)
    /// of the maximum command rate (the write-path run's sustained append
    /// rate, or a closed-loop probe at 16 clients), freshness p50/p99 against
    /// the command p99, and the peak RSS of the three services. Starts and
    /// stops command-service (relay), the projector and query-service itself.
    Freshness {
        #[arg(long, env = "PRIMARY_DATABASE_URL")]
        database_url: String,
        #[command(flatten)]
        writers: Writers,
        #[arg(long, env = "QUERY_URL")]
        query_url: String,
        #[arg(long, default_value = "target/release/query-service")]
        query_bin: PathBuf,
        /// The stack's directory, for CPU per process and the broker storage.
        #[arg(long, env = "STACK_DIR")]
        stack_dir: Option<PathBuf>,
        /// write-path results of the same run (sustained append rate).
        #[arg(long)]
        write_path_json: Option<PathBuf>,
        /// Share of the maximum command rate offered.
        #[arg(long, default_value_t = 0.5)]
        load_fraction: f64,
        /// The mix, as `loadgen mix --mix` (default: loadgen mix's).
        #[arg(long)]
        mix: Option<String>,
        #[command(flatten)]
        schedule: Schedule,
        #[arg(long, default_value = "target/bench")]
        work_dir: PathBuf,
        #[command(flatten)]
        outputs: Outputs,
    },
    /// The cost-growth benchmark: append p50/p99 (16 clients) and the
    /// customer-history query (HTTP through query-service from a replica,
    /// and its SQL on the replica) with 0 events stored in bulk, then after
    /// growing the store by SQL to each larger size. EMPTIES the event store
    /// and the read models first: run it against a benchmark stack only.
    /// Starts and stops command-service (relay on, cursor moved past the
    /// bulk events) and query-service itself; the projector, if given, once
    /// to create the history partitions.
    CostGrowth {
        #[arg(long, env = "PRIMARY_DATABASE_URL")]
        database_url: String,
        /// The replica the history SQL is explained on.
        #[arg(long, env = "REPLICA_DATABASE_URL")]
        replica_url: String,
        /// Every replica (comma-separated): query-service reads them, the
        /// run waits for them to replay each chunk (default: --replica-url).
        #[arg(long, env = "REPLICA_DATABASE_URLS")]
        replica_urls: Option<String>,
        #[arg(long, env = "COMMAND_URL")]
        command_url: String,
        #[arg(long, default_value = "target/release/command-service")]
        command_bin: PathBuf,
        #[arg(long, env = "QUERY_URL")]
        query_url: String,
        #[arg(long, default_value = "target/release/query-service")]
        query_bin: PathBuf,
        /// Without it the history partitions are not created (rows of
        /// months without one land in the DEFAULT partition).
        #[arg(long)]
        projector_bin: Option<PathBuf>,
        #[arg(long, env = "PROJECTOR_URL", default_value = "http://127.0.0.1:18082")]
        projector_url: String,
        /// Events written in bulk before each measurement (10M is opt-in:
        /// about 15 minutes of inserts here).
        #[arg(long, value_delimiter = ',', default_value = "0,1000000")]
        sizes: Vec<u64>,
        /// Events per bulk statement.
        #[arg(long, default_value_t = loadgen::cost_growth::data::CHUNK_EVENTS)]
        chunk_events: u64,
        /// Longest wait for the replicas to replay a chunk, seconds.
        #[arg(long, default_value_t = 600)]
        replica_timeout: u64,
        #[command(flatten)]
        schedule: Schedule,
        #[arg(long, default_value = "target/bench")]
        work_dir: PathBuf,
        #[command(flatten)]
        outputs: Outputs,
    },
    /// The bare actix-web handler `query-reads` measures as its baseline
    /// (started by it as a child process).
    #[command(hide = true)]
    BareServer {
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// The JSON body every `GET /orders/{id}` is answered with.
        #[arg(long)]
        body_file: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    if command.calls_api() {
        // The run's one token, minted now so that a missing JWT
        // configuration fails before any service or baseline starts.
        loadgen::auth::token()?;
    }
    match command {
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
            schedule,
            backlog,
            stack_dir,
            work_dir,
            outputs,
        } => {
            let options = WritePathOptions {
                database_url,
                command_bin,
                command_url,
                clients,
                repetitions: schedule.repetitions,
                warmup: schedule.warmup(),
                duration: schedule.duration(),
                backlog: Duration::from_secs(backlog),
                work_dir,
                stack_dir,
            };
            outputs.publish(&write_path::run(&options, outputs.command()).await?)?;
        }
        Command::ProjectorCatchup {
            database_url,
            redis_url,
            writers,
            stack_dir,
            events,
            baseline_clients,
            schedule,
            topic_prefix,
            timeout,
            write_path_json,
            work_dir,
            outputs,
        } => {
            let options = CatchupOptions {
                database_url,
                redis_url,
                command_bin: writers.command_bin,
                command_url: writers.command_url,
                projector_bin: writers.projector_bin,
                projector_url: writers.projector_url,
                stack_dir,
                events,
                repetitions: schedule.repetitions,
                baseline_clients,
                warmup: schedule.warmup(),
                duration: schedule.duration(),
                topic_prefix,
                timeout: Duration::from_secs(timeout),
                write_path_json,
                work_dir,
            };
            outputs.publish(&catchup::run(&options, outputs.command()).await?)?;
        }
        Command::QueryReads {
            database_url,
            replica_url,
            redis_url,
            writers,
            query_url,
            query_replica_urls,
            stack_dir,
            query_bin,
            orders,
            connections,
            threads,
            pgbench_clients,
            schedule,
            timeout,
            work_dir,
            outputs,
        } => {
            let options = QueryReadsOptions {
                primary_url: database_url,
                replica_url,
                redis_url,
                command_bin: writers.command_bin,
                command_url: writers.command_url,
                projector_bin: writers.projector_bin,
                projector_url: writers.projector_url,
                query_bin,
                query_url,
                query_replica_urls,
                stack_dir,
                orders,
                connections,
                threads,
                pgbench_clients,
                repetitions: schedule.repetitions,
                warmup: schedule.warmup(),
                duration: schedule.duration(),
                timeout: Duration::from_secs(timeout),
                work_dir,
            };
            outputs.publish(&query_reads::run(&options, outputs.command()).await?)?;
        }
        Command::Baselines {
            label,
            database_url,
            replica_url,
            redis_url,
            brokers,
            broker_storage,
            duration,
            warmup,
            timeout,
            work_dir,
            json,
            recorded_command,
        } => {
            let options = baselines::BaselinesOptions {
                label,
                primary_url: database_url,
                replica_url,
                redis_url,
                brokers,
                broker_storage,
                warmup: Duration::from_secs(warmup),
                duration: Duration::from_secs(duration),
                timeout: Duration::from_secs(timeout),
                work_dir,
            };
            let command = recorded_command.unwrap_or_else(command_line);
            let results = baselines::run(&options, command).await?;
            print!("{}", results.table());
            if let Some(path) = &json {
                std::fs::write(path, serde_json::to_string_pretty(&results)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if !results.failures.is_empty() {
                let failed: Vec<&String> = results.failures.keys().collect();
                anyhow::bail!("baselines failed: {failed:?}");
            }
        }
        Command::Summary {
            dir,
            markdown,
            json,
            recorded_command,
        } => {
            let inputs = summary::Inputs::read(&dir)?;
            let results =
                summary::summarize(&inputs, recorded_command.unwrap_or_else(command_line));
            println!("{}", results.render_summary());
            println!("{}", results.render_baselines());
            results.publish(json.as_deref(), markdown.as_deref())?;
        }
        Command::Mix(args) => loadgen::mix::main(&args).await?,
        Command::Freshness {
            database_url,
            writers,
            query_url,
            query_bin,
            stack_dir,
            write_path_json,
            load_fraction,
            mix,
            schedule,
            work_dir,
            outputs,
        } => {
            let mix = match &mix {
                Some(spec) => loadgen::mix::ops::Mix::parse(spec)?,
                None => loadgen::mix::ops::Mix::default(),
            };
            let options = loadgen::freshness::FreshnessOptions {
                database_url,
                command_bin: writers.command_bin,
                command_url: writers.command_url,
                projector_bin: writers.projector_bin,
                projector_url: writers.projector_url,
                query_bin,
                query_url,
                stack_dir,
                write_path_json,
                repetitions: schedule.repetitions,
                warmup: schedule.warmup(),
                duration: schedule.duration(),
                load_fraction,
                mix,
                work_dir,
            };
            outputs.publish(&loadgen::freshness::run(&options, outputs.command()).await?)?;
        }
        Command::CostGrowth {
            database_url,
            replica_url,
            replica_urls,
            command_url,
            command_bin,
            query_url,
            query_bin,
            projector_bin,
            projector_url,
            sizes,
            chunk_events,
            replica_timeout,
            schedule,
            work_dir,
            outputs,
        } => {
            let replica_urls: Vec<String> = replica_urls
                .as_deref()
                .unwrap_or(&replica_url)
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            let options = loadgen::cost_growth::CostGrowthOptions {
                database_url,
                replica_url,
                replica_urls,
                command_bin,
                command_url,
                query_bin,
                query_url,
                projector_bin,
                projector_url,
                sizes,
                repetitions: schedule.repetitions,
                warmup: schedule.warmup(),
                duration: schedule.duration(),
                chunk_events,
                replica_timeout: Duration::from_secs(replica_timeout),
                work_dir,
            };
            outputs.publish(&loadgen::cost_growth::run(&options, outputs.command()).await?)?;
        }
        Command::BareServer { addr, body_file } => {
            let body = std::fs::read(&body_file)
                .with_context(|| format!("reading {}", body_file.display()))?;
            query_reads::bare_server(addr, body).await?;
        }
    }
    Ok(())
}

impl Command {
    /// Whether the command sends requests to API routes, which need
    /// loadgen's bearer token.
    fn calls_api(&self) -> bool {
        match self {
            Self::Append { .. } | Self::WritePath { .. } | Self::QueryReads { .. } => true,
            // wrk sends the bare handler query-reads' request, token included.
            Self::Baselines { .. } => true,
            Self::Summary { .. } => false,
            Self::Mix(_) | Self::Freshness { .. } => true,
            Self::CostGrowth { .. } => true,
            // Only /health and /metrics, which are public.
            Self::ProjectorCatchup { .. } | Self::BareServer { .. } => false,
        }
    }
}

/// This process' command line, as a step records it by default.
fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// command-service and the projector, which a benchmark starts and stops
/// itself.
#[derive(clap::Args)]
struct Writers {
    #[arg(long, env = "COMMAND_URL")]
    command_url: String,
    #[arg(long, env = "PROJECTOR_URL")]
    projector_url: String,
    #[arg(long, default_value = "target/release/command-service")]
    command_bin: PathBuf,
    #[arg(long, default_value = "target/release/projector")]
    projector_bin: PathBuf,
}

/// How often and how long a benchmark measures.
#[derive(clap::Args)]
struct Schedule {
    /// Repetitions, interleaved (the report quotes medians over them).
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Measured seconds of each timed run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Unmeasured seconds before each timed run.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
}

impl Schedule {
    fn duration(&self) -> Duration {
        Duration::from_secs(self.duration)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup)
    }
}

/// Where a benchmark's results go, and the command its report quotes.
#[derive(clap::Args)]
struct Outputs {
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Rewrite this benchmark's section of this Markdown file (between its
    /// `<!-- name:begin -->` and `<!-- name:end -->` markers).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// The command to quote in the report (default: this command line).
    #[arg(long, env = "BENCH_COMMAND")]
    recorded_command: Option<String>,
}

impl Outputs {
    /// The command the report quotes.
    fn command(&self) -> String {
        self.recorded_command
            .clone()
            .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "))
    }

    /// Prints the report section of `results`, writes them as JSON and
    /// splices the section into the Markdown file.
    fn publish<R: Section>(&self, results: &R) -> anyhow::Result<()> {
        let section = results.render();
        println!("{section}");
        if let Some(path) = &self.json {
            std::fs::write(path, serde_json::to_string_pretty(results)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(path) = &self.markdown {
            let doc = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            std::fs::write(path, report::splice(&doc, R::MARKER, &section)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}
