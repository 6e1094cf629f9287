//! `doctor`: watch the stack for a window, print ranked findings. Reads the
//! same environment as the services (`eval "$(deploy/local/stack env)"`);
//! flags override it. Always exits 0 once it could run: it is a report.

use std::time::Duration;

use clap::Parser;
use doctor::{collect, Report, Sampling, Targets, Thresholds};

/// Ranked bottleneck diagnosis of a running stack.
#[derive(Debug, Parser)]
#[command(name = "doctor", version)]
struct Args {
    /// The Postgres primary.
    #[arg(long, env = "PRIMARY_DATABASE_URL")]
    primary_url: Option<String>,
    /// The replicas, comma-separated, named replica-1, replica-2, ... in
    /// this order (as query-service names them).
    #[arg(long, env = "REPLICA_DATABASE_URLS", value_delimiter = ',')]
    replica_urls: Vec<String>,
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: Option<String>,
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "events")]
    topic_prefix: String,
    /// The projector's consumer group.
    #[arg(long, env = "PROJECTOR_GROUP_ID", default_value = "projector")]
    group: String,
    #[arg(long, env = "COMMAND_URL")]
    command_url: Option<String>,
    #[arg(long, env = "QUERY_URL")]
    query_url: Option<String>,
    #[arg(long, env = "PROJECTOR_URL")]
    projector_url: Option<String>,
    /// Seconds to watch; counters are compared between its start and end.
    #[arg(long, default_value_t = 5.0)]
    window: f64,
    /// Milliseconds between gauge samples (default: a twentieth of the
    /// window, 100 to 1000).
    #[arg(long)]
    interval_ms: Option<u64>,
    /// Budget of each call to a source, milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Print the report as JSON (findings, thresholds, observations).
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.window.is_finite() && args.window > 0.0,
        "--window must be a positive number of seconds"
    );
    let window = Duration::from_secs_f64(args.window);
    let interval = args
        .interval_ms
        .map(Duration::from_millis)
        .unwrap_or_else(|| (window / 20).clamp(Duration::from_millis(100), Duration::from_secs(1)));
    let blank_is_none = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let targets = Targets {
        primary_url: blank_is_none(args.primary_url),
        replica_urls: args
            .replica_urls
            .into_iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect(),
        redis_url: blank_is_none(args.redis_url),
        brokers: blank_is_none(args.brokers),
        topic_prefix: args.topic_prefix,
        group: args.group,
        command_url: blank_is_none(args.command_url),
        query_url: blank_is_none(args.query_url),
        projector_url: blank_is_none(args.projector_url),
    };
    if !args.json {
        eprintln!("doctor: watching for {:.1} s ...", args.window);
    }
    let observations = collect(
        &targets,
        &Sampling {
            window,
            interval,
            timeout: Duration::from_millis(args.timeout_ms),
        },
    )
    .await;
    let report = Report::new(observations, Thresholds::default());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
