//! The consume → apply → commit loop.
//!
//! Offsets live in Postgres, written by the batch's own transaction
//! ([`crate::batch`]); on partition assignment the consumer starts each
//! partition at the offset stored there. Kafka's committed offsets are only
//! a hint, written after the fact, for the case where the stored offsets
//! cannot be read during a rebalance (the batch transaction still drops what
//! was already applied).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Headers, Message as _, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use service_runtime::backoff::Backoff;
use service_runtime::postgres::DbPool;
use service_runtime::shutdown::{sleep_or_shutdown, CancellationToken};

use crate::batch::{self, BatchError, Message, Mode, NotProjected, Outcome};
use crate::config::Config;
use crate::metrics::{LagTracker, Metrics};
use crate::redis_sink::RedisSink;
use crate::start_check::{StartChecks, Verdict};

/// Starts assigned partitions at the offsets stored in Postgres.
/// Also feeds librdkafka's statistics (high watermarks) to the lag metrics.
pub struct OffsetsFromPostgres {
    pool: DbPool,
    group: String,
    runtime: tokio::runtime::Handle,
    lag: LagTracker,
    starts: StartChecks,
}

impl ClientContext for OffsetsFromPostgres {
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (name, topic) in &statistics.topics {
            for (&partition, p) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition.
                if partition >= 0 && p.fetch_state == "active" && p.hi_offset >= 0 {
                    self.lag.observe_high(name, partition, p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for OffsetsFromPostgres {
    /// librdkafka assigns the list it hands us after this returns, with the
    /// offsets set here. The callback is synchronous and runs inside the
    /// consume loop's `recv()`, on a runtime worker, hence `block_in_place`
    /// (the projector needs a multi-threaded runtime). Revoked partitions
    /// leave this instance's lag gauges: their new owner reports them.
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = match rebalance {
            Rebalance::Assign(assigned) => assigned,
            Rebalance::Revoke(revoked) => {
                for element in revoked.elements() {
                    self.lag.forget(element.topic(), element.partition());
                }
                return;
            }
            Rebalance::Error(_) => return,
        };
        let stored = tokio::task::block_in_place(|| {
            self.runtime
                .block_on(stored_offsets(&self.pool, &self.group))
        });
        match stored {
            Ok(stored) => {
                let mut started = Vec::new();
                for mut element in assigned.elements() {
                    let key = (element.topic().to_owned(), element.partition());
                    if let Some(&next) = stored.get(&key) {
                        match element.set_offset(Offset::Offset(next)) {
                            Ok(()) => started.push((key, next)),
                            Err(error) => {
                                tracing::warn!(%error, topic = key.0, partition = key.1, "cannot set start offset");
                            }
                        }
                    }
                }
                self.starts.started(started);
                tracing::info!(
                    partitions = assigned.count(),
                    "partitions assigned; starting at stored offsets"
                );
            }
            Err(error) => tracing::warn!(
                %error,
                "cannot read stored offsets; starting from Kafka's committed offsets (applied messages are dropped)"
            ),
        }
    }
}

async fn stored_offsets(
    pool: &DbPool,
    group: &str,
) -> Result<HashMap<(String, i32), i64>, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    let rows = sqlx::query!(
        "SELECT topic, partition, next_offset FROM projector_offsets WHERE consumer_group = $1",
        group
    )
    .fetch_all(&mut *connection)
    .await?;
    connection.finish().await?;
    Ok(rows
        .into_iter()
        .map(|r| ((r.topic, r.partition), r.next_offset))
        .collect())
}

pub struct Projector {
    consumer: StreamConsumer<OffsetsFromPostgres>,
    pool: DbPool,
    redis: RedisSink,
    metrics: Metrics,
    lag: LagTracker,
    starts: StartChecks,
    group: String,
    batch_size: usize,
    batch_timeout: Duration,
    max_attempts: u32,
}

impl Projector {
    /// Must be called inside a multi-threaded tokio runtime (see
    /// [`OffsetsFromPostgres`]).
    pub fn new(
        config: &Config,
        pool: DbPool,
        redis: RedisSink,
        metrics: Metrics,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let lag = LagTracker::new(metrics.clone());
        let starts = StartChecks::default();
        let context = OffsetsFromPostgres {
            pool: pool.clone(),
            group: config.group_id.clone(),
            runtime: tokio::runtime::Handle::current(),
            lag: lag.clone(),
            starts: starts.clone(),
        };
        let consumer: StreamConsumer<OffsetsFromPostgres> = config
            .topics
            .client_config()
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "1000")
            .set(
                "fetch.wait.max.ms",
                config.fetch_wait.as_millis().to_string(),
            )
            .set(
                "session.timeout.ms",
                config.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (config.session_timeout.as_millis() / 3).to_string(),
            )
            .create_with_context(context)?;
        Ok(Self {
            consumer,
            pool,
            redis,
            metrics,
            lag,
            starts,
            group: config.group_id.clone(),
            batch_size: config.batch_size.max(1),
            batch_timeout: config.batch_timeout,
            max_attempts: config.max_attempts.max(1),
        })
    }

    /// Consumes until `shutdown`; a batch in progress is finished and committed first.
    pub async fn run(self, topics: event_bus::TopicSettings, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        while let Err(error) = event_bus::ensure_topics(&topics).await {
            tracing::warn!(%error, "cannot create event topics yet");
            if sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                return;
            }
        }
        let names = topics.topics();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        if let Err(error) = self.consumer.subscribe(&names) {
            tracing::error!(%error, "cannot subscribe to the event topics");
            return;
        }
        tracing::info!(topics = ?names, group = self.group, "projector consuming");
        while let Some(batch) = self.next_batch(&shutdown).await {
            self.process(&batch, &shutdown).await;
        }
        tracing::info!("projector stopped");
    }

    /// Waits for one message, then takes more until the batch is full or
    /// `batch_timeout` has passed. None on shutdown.
    async fn next_batch(&self, shutdown: &CancellationToken) -> Option<Vec<Message>> {
        let first = loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        if self.admit(&message) {
                            break owned(message.detach());
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "kafka receive failed");
                        if sleep_or_shutdown(Duration::from_millis(200), shutdown).await {
                            return None;
                        }
                    }
                },
            }
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.batch_timeout;
        while batch.len() < self.batch_size {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => {
                    if self.admit(&message) {
                        batch.push(owned(message.detach()));
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "kafka receive failed");
                    break;
                }
                Err(_) => break,
            }
        }
        Some(batch)
    }

    /// Whether `message` may go into a batch; if its partition started past
    /// the stored offset, seeks it back instead (see [`crate::start_check`]).
    fn admit(&self, message: &rdkafka::message::BorrowedMessage<'_>) -> bool {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        match self.starts.check(topic, partition, offset) {
            Verdict::Admit => true,
            Verdict::SeekTo(target) => {
                tracing::warn!(
                    topic,
                    partition,
                    first = offset,
                    seek_to = target,
                    "partition started past its stored offset; seeking back"
                );
                // seek waits for the fetcher (up to the timeout): off the
                // async workers' fast path, like the rebalance callback.
                let sought = tokio::task::block_in_place(|| {
                    self.consumer.seek(
                        topic,
                        partition,
                        Offset::Offset(target),
                        Duration::from_secs(10),
                    )
                });
                if let Err(error) = sought {
                    tracing::error!(%error, topic, partition, "seek failed");
                }
                false
            }
        }
    }

    /// Applies `batch` until it commits: transient failures are retried with
    /// backoff for as long as it takes; a batch that fails `max_attempts`
    /// times on an event's own fault is applied event by event, parking the
    /// events that fail.
    async fn process(&self, batch: &[Message], shutdown: &CancellationToken) {
        self.record_batch_start(batch);
        let mut backoff = Backoff::default();
        let mut failures = 0;
        let outcome = loop {
            let mode = if failures >= self.max_attempts {
                Mode::Isolate
            } else {
                Mode::Strict
            };
            let timer = self.metrics.batch_seconds.start_timer();
            let result = batch::apply(&self.pool, &self.group, batch, mode).await;
            timer.observe_duration();
            match result {
                Ok(outcome) => break outcome,
                Err(error) => {
                    self.metrics.failed_batches.inc();
                    if matches!(error, BatchError::Poison { .. }) {
                        failures += 1;
                    }
                    tracing::warn!(%error, failures, "applying batch failed; retrying");
                    // Shutdown mid-retry commits nothing: the next owner of
                    // these partitions starts at the stored offsets.
                    if sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                        return;
                    }
                }
            }
        };
        self.metrics.applied.inc_by(outcome.applied as u64);
        self.metrics
            .already_applied
            .inc_by(outcome.already_applied as u64);
        self.metrics.parked.inc_by(outcome.parked as u64);
        self.redis.apply(&outcome.effects).await;
        self.commit_hint(&outcome);
        self.record_lag(batch, &outcome);
        trace_projected(batch, &outcome);
    }

    /// Commits the batch's offsets to Kafka too, asynchronously: only a hint
    /// for when Postgres cannot be read at assignment (see module docs).
    fn commit_hint(&self, outcome: &Outcome) {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &outcome.next_offsets {
            if let Err(error) =
                list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            {
                tracing::warn!(%error, "building offset list");
            }
        }
        if let Err(error) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::debug!(%error, "kafka offset commit failed (a hint only)");
        }
    }

    fn record_batch_start(&self, batch: &[Message]) {
        let mut partitions: HashMap<(&str, i32), (i64, Option<i64>)> = HashMap::new();
        for m in batch {
            let entry = partitions
                .entry((m.topic.as_str(), m.partition))
                .or_insert((0, None));
            entry.0 = entry.0.max(m.offset + 1);
            entry.1 = match (entry.1, m.timestamp_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        for ((topic, partition), (end, oldest)) in partitions {
            self.lag.batch_started(topic, partition, end, oldest);
        }
    }

    fn record_lag(&self, batch: &[Message], outcome: &Outcome) {
        for ((topic, partition), next) in &outcome.next_offsets {
            let newest = batch
                .iter()
                .filter(|m| &m.topic == topic && m.partition == *partition)
                .filter_map(|m| m.timestamp_ms)
                .max();
            self.lag.applied(topic, *partition, *next, newest);
        }
    }
}

/// Target of the per-event trace spans; enable with
/// `RUST_LOG=info,projector::trace=debug`.
const TRACE_TARGET: &str = "projector::trace";

/// Continues each event's trace (command → append → publish → project) with
/// one span per projected event, a child of the relay's publish span from the
/// `traceparent` header. The batch commits many traces at once, so the span
/// is recorded after the commit, carrying the batch's outcome; at the default
/// level this costs one `enabled!` check per batch.
fn trace_projected(batch: &[Message], outcome: &Outcome) {
    if !tracing::enabled!(target: TRACE_TARGET, tracing::Level::DEBUG) {
        return;
    }
    for message in batch {
        let Some(parent) = message.trace_parent() else {
            continue;
        };
        let span = parent.child();
        tracing::debug_span!(
            target: TRACE_TARGET,
            "project",
            trace_id = %span.trace_id(),
            span_id = %span.span_id(),
            parent_span_id = %parent.span_id(),
        )
        .in_scope(|| {
            let key = (message.topic.clone(), message.partition, message.offset);
            let what = match outcome.not_projected.get(&key) {
                None => "event projected",
                Some(NotProjected::Parked) => "event parked as a dead letter",
                Some(NotProjected::AlreadyApplied) => "event already applied",
            };
            tracing::debug!(
                target: TRACE_TARGET,
                topic = message.topic,
                partition = message.partition,
                offset = message.offset,
                "{what}"
            );
        });
    }
}

fn owned(message: OwnedMessage) -> Message {
    Message {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        headers: message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .filter_map(|h| h.value.map(|v| (h.key.to_owned(), v.to_vec())))
                    .collect()
            })
            .unwrap_or_default(),
        payload: message.payload().map(<[u8]>::to_vec),
    }
}
