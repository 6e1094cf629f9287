//! Collection: counters snapshotted at the start and the end of the window,
//! gauges sampled every round in between, everything reduced to
//! [`Observations`]. A source that does not answer is recorded, never fatal.

pub mod kafka;
pub mod postgres;
pub mod services;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::observations::{
    ConsumerObservation, ConsumerSample, DatabaseObservation, DatabaseRole, Observations,
    RedisObservation, ReplicationObservation, UnreachableSource,
};
use crate::prometheus_text::Scrape;
use kafka::GroupProbe;
use postgres::{Counters, Server};

/// Where to look; every source is optional (an absent one is a note, a
/// silent one a finding).
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub primary_url: Option<String>,
    /// Named `replica-1`, `replica-2`, ... in this order, as query-service
    /// names them.
    pub replica_urls: Vec<String>,
    pub redis_url: Option<String>,
    pub brokers: Option<String>,
    pub topic_prefix: String,
    /// The projector's consumer group.
    pub group: String,
    pub command_url: Option<String>,
    pub query_url: Option<String>,
    pub projector_url: Option<String>,
}

/// How long and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// From the first counter snapshot to the last.
    pub window: Duration,
    /// Between gauge sampling rounds.
    pub interval: Duration,
    /// Budget of every single call (connect, query, scrape, broker request).
    pub timeout: Duration,
}

/// Calls to one source and how many failed.
#[derive(Debug, Default)]
struct Health {
    address: String,
    attempts: usize,
    failures: usize,
    last_error: Option<String>,
}

#[derive(Default)]
struct Ledger {
    sources: BTreeMap<String, Health>,
}

impl Ledger {
    fn record<T, E: std::fmt::Display>(
        &mut self,
        source: &str,
        address: &str,
        result: Result<T, E>,
    ) -> Option<T> {
        let health = self
            .sources
            .entry(source.to_owned())
            .or_insert_with(|| Health {
                address: address.to_owned(),
                ..Health::default()
            });
        health.attempts += 1;
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                health.failures += 1;
                health.last_error = Some(error.to_string());
                None
            }
        }
    }

    fn merge(&mut self, other: Ledger) {
        for (source, health) in other.sources {
            let mine = self.sources.entry(source).or_insert_with(|| Health {
                address: health.address.clone(),
                ..Health::default()
            });
            mine.attempts += health.attempts;
            mine.failures += health.failures;
            if health.last_error.is_some() {
                mine.last_error = health.last_error;
            }
        }
    }

    /// Sources that failed every call are unreachable; the others that
    /// failed sometimes get a note.
    fn finish(self, observations: &mut Observations) {
        for (source, health) in self.sources {
            let Some(error) = health.last_error else {
                continue;
            };
            if health.failures == health.attempts {
                observations.unreachable.push(UnreachableSource {
                    source,
                    address: health.address,
                    error,
                });
            } else {
                observations.notes.push(format!(
                    "{source}: {} of {} calls failed, last: {error}",
                    health.failures, health.attempts
                ));
            }
        }
    }
}

struct Database {
    name: String,
    address: String,
    role: DatabaseRole,
    server: Option<Server>,
    start: Option<Counters>,
    peak_connections: Option<i64>,
    max_connections: Option<i64>,
    replication: ReplicationObservation,
}

impl Database {
    fn source(&self) -> String {
        format!("postgres {}", self.name)
    }
}

struct Service {
    name: &'static str,
    url: String,
    scrapes: Vec<Option<Scrape>>,
}

/// Watches the targets for one window.
pub async fn collect(targets: &Targets, sampling: &Sampling) -> Observations {
    let mut observations = Observations::default();
    let mut ledger = Ledger::default();
    let timeout = sampling.timeout;

    let mut specs: Vec<(String, String, DatabaseRole)> = Vec::new();
    match &targets.primary_url {
        Some(url) => specs.push(("primary".to_owned(), url.clone(), DatabaseRole::Primary)),
        None => observations
            .notes
            .push("no primary database URL (PRIMARY_DATABASE_URL)".to_owned()),
    }
    for (i, url) in targets.replica_urls.iter().enumerate() {
        specs.push((
            format!("replica-{}", i + 1),
            url.clone(),
            DatabaseRole::Replica,
        ));
    }
    let connections = join_all(
        specs
            .iter()
            .map(|(_, url, _)| Server::connect(url, timeout)),
    )
    .await;
    let mut databases: Vec<Database> = Vec::new();
    for ((name, url, role), connection) in specs.into_iter().zip(connections) {
        let address = postgres::address(&url);
        let mut database = Database {
            name,
            address,
            role,
            server: None,
            start: None,
            peak_connections: None,
            max_connections: None,
            replication: ReplicationObservation::default(),
        };
        database.server = ledger.record(&database.source(), &database.address, connection);
        databases.push(database);
    }

    let mut services: Vec<Service> = [
        ("command-service", &targets.command_url),
        ("query-service", &targets.query_url),
        ("projector", &targets.projector_url),
    ]
    .into_iter()
    .filter_map(|(name, url)| match url {
        Some(url) => Some(Service {
            name,
            url: url.clone(),
            scrapes: Vec::new(),
        }),
        None => {
            observations
                .notes
                .push(format!("{name}: no URL given, its metrics are not read"));
            None
        }
    })
    .collect();
    let client = reqwest::Client::new();

    // The consumer group: layout once, positions every round.
    let mut probe: Option<(GroupProbe, Vec<(String, i32)>)> = None;
    let mut consumer: Option<ConsumerObservation> = None;
    match &targets.brokers {
        Some(brokers) => {
            let topics = event_bus::TopicSettings {
                brokers: brokers.clone(),
                prefix: targets.topic_prefix.clone(),
                partitions: 0,
                replication: 0,
            }
            .topics();
            let created = GroupProbe::new(brokers, &targets.group, timeout);
            if let Some(group_probe) = ledger.record("kafka", brokers, created) {
                let layout = group_probe.layout(topics.clone()).await;
                if let Some(layout) = ledger.record("kafka", brokers, layout) {
                    if layout.partitions.is_empty() {
                        observations
                            .notes
                            .push(format!("kafka: none of the topics {topics:?} exists yet"));
                    }
                    consumer = Some(ConsumerObservation {
                        group: targets.group.clone(),
                        topics,
                        partitions: layout.partitions.len(),
                        members: layout.members,
                        samples: Vec::new(),
                    });
                    probe = Some((group_probe, layout.partitions));
                }
            }
        }
        None => observations
            .notes
            .push("kafka: no brokers given (KAFKA_BROKERS), consumer lag not read".to_owned()),
    }

    let mut redis = match &targets.redis_url {
        Some(url) => {
            let connected = redis_connect(url, timeout).await;
            ledger
                .record("redis", &redact(url), connected)
                .map(|c| (c, url.clone()))
        }
        None => {
            observations
                .notes
                .push("redis: no URL given (REDIS_URL), cache tier counters not read".to_owned());
            None
        }
    };

    // Counters at the start.
    let started = Instant::now();
    for database in &mut databases {
        database.start = snapshot(database, &mut ledger).await;
    }
    let redis_start = match &mut redis {
        Some((connection, url)) => {
            let info = redis_stats(connection, timeout).await;
            ledger.record("redis", &redact(url), info)
        }
        None => None,
    };

    // Gauges, every round until the window is over: one loop per service
    // and one for the databases and one for the broker, so a source that
    // hangs until its timeout does not thin out the samples of the others.
    let service_loops = join_all(services.iter_mut().map(|service| {
        let client = &client;
        async move {
            let mut ledger = Ledger::default();
            let source = format!("{} /metrics", service.name);
            loop {
                let round_started = Instant::now();
                let scrape = services::scrape(client, &service.url, timeout).await;
                let url = service.url.clone();
                service.scrapes.push(ledger.record(&source, &url, scrape));
                match next_round(started, round_started, sampling) {
                    Some(next) => tokio::time::sleep_until(next.into()).await,
                    None => break,
                }
            }
            ledger
        }
    }));
    let database_loop = async {
        let mut ledger = Ledger::default();
        let mut rounds = 0;
        loop {
            let round_started = Instant::now();
            sample_databases(&mut databases, &mut ledger).await;
            rounds += 1;
            match next_round(started, round_started, sampling) {
                Some(next) => tokio::time::sleep_until(next.into()).await,
                None => break,
            }
        }
        (ledger, rounds)
    };
    let kafka_loop = async {
        let mut ledger = Ledger::default();
        let (Some((probe, partitions)), Some(consumer)) = (&probe, consumer.as_mut()) else {
            return ledger;
        };
        let brokers = targets.brokers.clone().unwrap_or_default();
        let mut watch = GroupWatch {
            probe,
            partitions,
            group: &targets.group,
            brokers: &brokers,
            primary: targets
                .primary_url
                .as_deref()
                .map(|url| (url, postgres::address(url))),
            record: None,
            timeout,
        };
        loop {
            let round_started = Instant::now();
            if let Some((committed, end)) = watch.sample(&mut ledger).await {
                consumer.samples.push(ConsumerSample {
                    at_secs: started.elapsed().as_secs_f64(),
                    committed,
                    end,
                });
            }
            match next_round(started, round_started, sampling) {
                Some(next) => tokio::time::sleep_until(next.into()).await,
                None => break,
            }
        }
        watch.close().await;
        ledger
    };
    let (service_ledgers, (database_ledger, rounds), kafka_ledger) =
        tokio::join!(service_loops, database_loop, kafka_loop);
    for other in service_ledgers
        .into_iter()
        .chain([database_ledger, kafka_ledger])
    {
        ledger.merge(other);
    }

    // Counters at the end.
    for database in &mut databases {
        if let Some(end) = snapshot(database, &mut ledger).await {
            if let Some(error) = &end.statements_error {
                observations.notes.push(format!(
                    "{}: pg_stat_statements unreadable ({error}); add it to \
                     shared_preload_libraries and CREATE EXTENSION pg_stat_statements",
                    database.name
                ));
            }
            if let Some(start) = &database.start {
                if database.role == DatabaseRole::Replica {
                    if let Some(server) = database.server.as_mut() {
                        let delay = server.apply_delay_ms().await;
                        database.replication.apply_delay_ms =
                            ledger.record(&database.source(), &database.address, delay);
                    }
                }
                observations.databases.push(DatabaseObservation {
                    name: database.name.clone(),
                    address: database.address.clone(),
                    role: database.role,
                    statements: postgres::statement_deltas(start, &end)
                        .into_iter()
                        .take(25)
                        .collect(),
                    tables: postgres::table_deltas(start, &end),
                    peak_connections: database.peak_connections,
                    max_connections: database.max_connections,
                    replication: (database.role == DatabaseRole::Replica)
                        .then(|| database.replication.clone()),
                });
            }
        }
    }
    if let Some((mut connection, url)) = redis {
        let info = redis_stats(&mut connection, timeout).await;
        if let (Some(start), Some(end)) = (redis_start, ledger.record("redis", &redact(&url), info))
        {
            observations.redis = Some(RedisObservation {
                hits: (end.hits - start.hits).max(0),
                misses: (end.misses - start.misses).max(0),
                evicted: (end.evicted - start.evicted).max(0),
            });
        }
    }
    observations.window_secs = started.elapsed().as_secs_f64();
    observations.rounds = rounds;
    observations.services = services
        .iter()
        .map(|s| services::summarize(s.name, &s.url, &s.scrapes))
        .collect();
    if let Some(c) = consumer.as_ref().filter(|c| c.samples.len() < 2) {
        observations.notes.push(format!(
            "kafka group {}: {} usable sample(s) of its position in the window; \
             its lag is not judged",
            c.group,
            c.samples.len()
        ));
    }
    observations.consumer = consumer;
    for database in databases {
        if let Some(server) = database.server {
            server.close().await;
        }
    }
    ledger.finish(&mut observations);
    observations
}

/// When the next sampling round starts, or None once the window is over
/// (no round is started in its last half interval).
fn next_round(started: Instant, round_started: Instant, sampling: &Sampling) -> Option<Instant> {
    let end = started + sampling.window;
    if Instant::now() + sampling.interval.min(sampling.window) / 2 >= end {
        return None;
    }
    Some((round_started + sampling.interval).min(end))
}

/// Counter snapshot of one database; a failure drops its connection (a
/// timed-out query leaves it unusable) and is recorded.
async fn snapshot(database: &mut Database, ledger: &mut Ledger) -> Option<Counters> {
    let server = database.server.as_mut()?;
    let result = server.counters().await;
    let counters = ledger.record(&database.source(), &database.address, result);
    if counters.is_none() {
        database.server = None;
    }
    counters
}

/// One round of database gauges: connections everywhere, the primary's WAL
/// position, then each replica's replay state against it.
async fn sample_databases(databases: &mut [Database], ledger: &mut Ledger) {
    let mut primary_lsn = None;
    for database in databases.iter_mut() {
        let source = database.source();
        let Some(server) = database.server.as_mut() else {
            ledger.record::<(), _>(&source, &database.address, Err("no connection"));
            continue;
        };
        let ok = match server.connections().await {
            Ok((connections, max)) => {
                database.peak_connections =
                    Some(database.peak_connections.unwrap_or(0).max(connections));
                database.max_connections = Some(max);
                if database.role == DatabaseRole::Primary {
                    primary_lsn = server.wal_position().await.ok();
                }
                Ok(())
            }
            Err(error) => Err(error),
        };
        if ledger.record(&source, &database.address, ok).is_none() {
            database.server = None;
        }
    }
    let Some(primary_lsn) = primary_lsn else {
        return;
    };
    for database in databases
        .iter_mut()
        .filter(|d| d.role == DatabaseRole::Replica)
    {
        let Some(server) = database.server.as_mut() else {
            continue;
        };
        let state = server.replay_state(&primary_lsn).await;
        match ledger.record(&database.source(), &database.address, state) {
            Some(state) => {
                database.replication.lag_secs.push(state.lag_secs);
                database
                    .replication
                    .unreplayed_bytes
                    .push(state.unreplayed_bytes);
                database
                    .replication
                    .unreceived_bytes
                    .push(state.unreceived_bytes);
            }
            None => database.server = None,
        }
    }
}

/// A failed Redis call.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

async fn redis_connect(
    url: &str,
    timeout: Duration,
) -> Result<redis::aio::MultiplexedConnection, RedisError> {
    let client = redis::Client::open(url)?;
    tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| RedisError::Timeout(timeout))?
        .map_err(RedisError::from)
}

async fn redis_stats(
    connection: &mut redis::aio::MultiplexedConnection,
    timeout: Duration,
) -> Result<RedisObservation, RedisError> {
    let info: String = tokio::time::timeout(
        timeout,
        redis::cmd("INFO").arg("stats").query_async(connection),
    )
    .await
    .map_err(|_| RedisError::Timeout(timeout))??;
    Ok(parse_redis_stats(&info))
}

/// `keyspace_hits`, `keyspace_misses` and `evicted_keys` of `INFO stats`.
fn parse_redis_stats(info: &str) -> RedisObservation {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    RedisObservation {
        hits: field("keyspace_hits"),
        misses: field("keyspace_misses"),
        evicted: field("evicted_keys"),
    }
}

/// The group's position, sampled every round. Every sample comes from the
/// same sources: with a primary given, a round whose read of
/// `projector_offsets` fails is skipped rather than judged by Kafka's hint
/// alone, which trails that record by the projector's last asynchronous
/// commit and would show a stopped projector as moving.
struct GroupWatch<'a> {
    probe: &'a GroupProbe,
    partitions: &'a [(String, i32)],
    group: &'a str,
    brokers: &'a str,
    /// The primary's URL and address, if given.
    primary: Option<(&'a str, String)>,
    /// The connection that reads `projector_offsets`; one that failed is
    /// dropped and opened again next round.
    record: Option<Server>,
    timeout: Duration,
}

impl GroupWatch<'_> {
    const RECORD: &'static str = "postgres primary projector_offsets";
    const HINT: &'static str = "kafka group offsets";

    /// `(applied, end)` summed over the partitions, or none this round.
    async fn sample(&mut self, ledger: &mut Ledger) -> Option<(i64, i64)> {
        let stored = match &self.primary {
            Some((url, address)) => {
                if self.record.is_none() {
                    let connected = Server::connect(url, self.timeout).await;
                    self.record = ledger.record(Self::RECORD, address, connected);
                }
                let read = self.record.as_mut()?.projector_offsets(self.group).await;
                match ledger.record(Self::RECORD, address, read) {
                    Some(stored) => stored,
                    None => {
                        if let Some(server) = self.record.take() {
                            server.close().await;
                        }
                        return None;
                    }
                }
            }
            None => HashMap::new(),
        };
        let watermarks = self.probe.watermarks(self.partitions.to_vec()).await;
        let watermarks = ledger.record("kafka", self.brokers, watermarks)?;
        let positions = match self.probe.committed(watermarks.clone()).await {
            Ok(positions) => {
                ledger.record::<_, kafka::KafkaError>(Self::HINT, self.brokers, Ok(()));
                positions
            }
            Err(error) => {
                ledger.record::<(), _>(Self::HINT, self.brokers, Err(error));
                // Without the projector's record the hint is all there is.
                self.primary.as_ref()?;
                watermarks
            }
        };
        Some(kafka::totals(&positions, &stored))
    }

    async fn close(self) {
        if let Some(server) = self.record {
            server.close().await;
        }
    }
}

/// A URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_stats_fields() {
        let info = "# Stats\r\nkeyspace_hits:120\r\nkeyspace_misses:30\r\nevicted_keys:0\r\n";
        assert_eq!(
            parse_redis_stats(info),
            RedisObservation {
                hits: 120,
                misses: 30,
                evicted: 0
            }
        );
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(redact("redis://:pw@h:1/"), "redis://…@h:1/");
        assert_eq!(redact("redis://h:1/"), "redis://h:1/");
    }

    #[tokio::test]
    async fn silent_sources_are_findings_not_crashes() {
        // Ports nothing listens on (bound, then released).
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port")
        };
        let targets = Targets {
            primary_url: Some(format!("postgres://app:app@127.0.0.1:{}/app", port())),
            replica_urls: vec![format!("postgres://app:app@127.0.0.1:{}/app", port())],
            redis_url: Some(format!("redis://127.0.0.1:{}/", port())),
            brokers: None,
            topic_prefix: "events".to_owned(),
            group: "projector".to_owned(),
            command_url: None,
            query_url: None,
            projector_url: Some(format!("http://127.0.0.1:{}", port())),
        };
        let observations = collect(
            &targets,
            &Sampling {
                window: Duration::from_millis(300),
                interval: Duration::from_millis(100),
                timeout: Duration::from_millis(500),
            },
        )
        .await;
        let mut silent: Vec<&str> = observations
            .unreachable
            .iter()
            .map(|u| u.source.as_str())
            .collect();
        silent.sort_unstable();
        assert_eq!(
            silent,
            vec![
                "postgres primary",
                "postgres replica-1",
                "projector /metrics",
                "redis"
            ]
        );
        let findings =
            crate::diagnosis::diagnose(&observations, &crate::diagnosis::Thresholds::default());
        assert_eq!(findings.len(), 4);
        assert!(findings
            .iter()
            .all(|f| f.kind == crate::diagnosis::FindingKind::SourceUnreachable));
    }
}
