//! The `projector` command line: run the service (no arguments), or act on
//! dead letters with the same code the admin HTTP API uses.
//!
//! ```text
//! projector                     consume and serve /health, /metrics, /admin
//! projector dlq list            parked letters, oldest first
//! projector dlq retry <id>      apply its aggregate's letters again, oldest first
//! projector dlq skip <id>       drop the oldest letter of an aggregate, apply the rest
//! projector rebuild <name>      rebuild a projection (catalog, orders) from the event
//!                               store beside the live one, then swap it in
//! ```

use std::time::{Duration, Instant};

use service_runtime::postgres::{pool_options, DbPool};
use service_runtime::shutdown::{cancel_on_signal, CancellationToken};

use crate::config::Config;
use crate::dead_letters::{DeadLetterDesk, Resolution};
use crate::projections::Projection;
use crate::redis_sink::RedisSink;
use crate::startup::Application;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Serve,
    DeadLetterList,
    DeadLetterRetry(i64),
    DeadLetterSkip(i64),
    Rebuild(Projection),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0}\nusage: projector [dlq list | dlq retry <id> | dlq skip <id> | rebuild <catalog|orders>]"
)]
pub struct UsageError(String);

impl Command {
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Self, UsageError> {
        let args: Vec<String> = args.into_iter().collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = |text: &str| {
            text.parse::<i64>()
                .map_err(|_| UsageError(format!("not a dead-letter id: {text:?}")))
        };
        match args.as_slice() {
            [] | ["serve"] => Ok(Self::Serve),
            ["dlq", "list"] => Ok(Self::DeadLetterList),
            ["dlq", "retry", n] => Ok(Self::DeadLetterRetry(id(n)?)),
            ["dlq", "skip", n] => Ok(Self::DeadLetterSkip(id(n)?)),
            ["rebuild", name] => name
                .parse()
                .map(Self::Rebuild)
                .map_err(|e: crate::projections::UnknownProjection| UsageError(e.to_string())),
            other => Err(UsageError(format!("unknown command {other:?}"))),
        }
    }
}

/// Runs `command` with `config`; the edge of the program, hence anyhow.
pub async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    if command == Command::Serve {
        let app = Application::build(config).await?;
        tracing::info!(port = app.port(), "projector HTTP endpoint listening");
        let shutdown = CancellationToken::new();
        cancel_on_signal(shutdown.clone());
        app.run_until_stopped(shutdown).await?;
        return Ok(());
    }
    // Through the pooler when there is one, like the service: nothing here
    // needs a session (no migrations).
    let pool = DbPool::connect(
        &config.database_url,
        config.transaction_pooler,
        pool_options(2, Duration::from_secs(10)),
    )
    .await?;
    let redis = redis::Client::open(config.redis_url.as_str())?;
    let desk = DeadLetterDesk {
        pool,
        redis: RedisSink::new(redis::aio::ConnectionManager::new(redis).await?),
        group: config.group_id,
    };
    match command {
        Command::Serve => {}
        Command::DeadLetterList => {
            let letters = desk.list().await?;
            println!("id\ttopic/partition@offset\taggregate\tsequence\treason\terror");
            for l in &letters {
                println!(
                    "{}\t{}/{}@{}\t{} {}\t{}\t{}\t{}",
                    l.id,
                    l.topic,
                    l.partition,
                    l.kafka_offset,
                    l.aggregate_type.as_deref().unwrap_or("?"),
                    l.aggregate_id.as_deref().unwrap_or("?"),
                    l.sequence.map_or_else(|| "?".to_owned(), |s| s.to_string()),
                    l.reason,
                    l.error
                );
            }
            println!("{} dead letter(s)", letters.len());
        }
        Command::DeadLetterRetry(id) => print_resolution(&desk.retry(id).await?),
        Command::DeadLetterSkip(id) => print_resolution(&desk.skip(id).await?),
        Command::Rebuild(projection) => {
            let mut shown = Instant::now();
            // A test seam, see `rebuild`; unset in production.
            let pause = Duration::from_millis(service_runtime::config::optional(
                "REBUILD_PAUSE_BEFORE_SWAP_MS",
                0,
            )?);
            let done = crate::rebuild::rebuild(&desk.pool, projection, pause, |progress| {
                if shown.elapsed() >= Duration::from_secs(1) {
                    eprintln!("rebuild {projection}: {progress}");
                    shown = Instant::now();
                }
            })
            .await?;
            println!("rebuild {projection}: swapped in; {done}");
            if projection == Projection::Orders {
                // Redis holds copies of the old model: drop them (a cache
                // miss reads the new tables) rather than overwrite them.
                let forgotten = desk.redis.forget_order_summaries().await?;
                println!("rebuild {projection}: {forgotten} order summaries removed from Redis");
            }
        }
    }
    Ok(())
}

fn print_resolution(r: &Resolution) {
    if let Some(id) = r.skipped {
        println!("skipped {id}");
    }
    println!("applied {:?}; still parked: {}", r.applied, r.still_parked);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, UsageError> {
        Command::parse(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_each_command_and_rejects_the_rest() {
        assert_eq!(parse(&[]), Ok(Command::Serve));
        assert_eq!(parse(&["dlq", "list"]), Ok(Command::DeadLetterList));
        assert_eq!(
            parse(&["dlq", "retry", "7"]),
            Ok(Command::DeadLetterRetry(7))
        );
        assert_eq!(parse(&["dlq", "skip", "8"]), Ok(Command::DeadLetterSkip(8)));
        assert!(parse(&["dlq", "skip", "x"]).is_err());
        assert!(parse(&["dlq"]).is_err());
        assert_eq!(
            parse(&["rebuild", "orders"]),
            Ok(Command::Rebuild(Projection::Orders))
        );
        assert!(parse(&["rebuild"]).is_err());
        assert!(parse(&["rebuild", "invoices"]).is_err());
    }
}
