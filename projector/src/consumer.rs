//! The consume → apply → commit loop.
//!
//! Offsets are committed to Kafka only after the batch's Postgres transaction
//! committed (auto-commit is off), so a crash replays the batch; replays are
//! harmless because every read-model row keeps the version it reflects.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use schema::envelope::{AnyEvent, EventHeaders};
use service_runtime::backoff::Backoff;
use service_runtime::shutdown::{sleep_or_shutdown, CancellationToken};
use sqlx::PgPool;

use crate::config::Config;
use crate::partitions::{Month, PartitionKeeper};
use crate::redis_sink::RedisSink;
use crate::store::{self, StreamEvent};

/// Why a batch could not be applied; the batch is retried.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("creating history partitions: {0}")]
    Partitions(#[source] sqlx::Error),
    #[error(transparent)]
    Apply(#[from] store::ApplyError),
}

pub struct Projector {
    consumer: StreamConsumer,
    pool: PgPool,
    redis: RedisSink,
    partitions: PartitionKeeper,
    batch_size: usize,
    batch_timeout: Duration,
}

impl Projector {
    pub fn new(
        config: &Config,
        pool: PgPool,
        redis: RedisSink,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let consumer: StreamConsumer = config
            .topics
            .client_config()
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        Ok(Self {
            consumer,
            pool,
            redis,
            partitions: PartitionKeeper::default(),
            batch_size: config.batch_size.max(1),
            batch_timeout: config.batch_timeout,
        })
    }

    /// Consumes until `shutdown`; a batch in progress is finished and committed first.
    pub async fn run(mut self, topics: event_bus::TopicSettings, shutdown: CancellationToken) {
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
        tracing::info!(topics = ?names, "projector consuming");
        while let Some(batch) = self.next_batch(&shutdown).await {
            self.process(batch, &shutdown).await;
        }
        tracing::info!("projector stopped");
    }

    /// Waits for one message, then takes more until the batch is full or
    /// `batch_timeout` has passed. None on shutdown.
    async fn next_batch(&self, shutdown: &CancellationToken) -> Option<Vec<OwnedMessage>> {
        let first = loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                received = self.consumer.recv() => match received {
                    Ok(message) => break message.detach(),
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
                Ok(Ok(message)) => batch.push(message.detach()),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "kafka receive failed");
                    break;
                }
                Err(_) => break,
            }
        }
        Some(batch)
    }

    async fn process(&mut self, batch: Vec<OwnedMessage>, shutdown: &CancellationToken) {
        let events: Vec<StreamEvent> = batch.iter().filter_map(decode).collect();
        let mut backoff = Backoff::default();
        let summaries = loop {
            match self.apply(&events).await {
                Ok(summaries) => break summaries,
                Err(error) => {
                    tracing::error!(%error, "applying batch failed; retrying");
                    // Shutdown mid-retry leaves offsets uncommitted: the next
                    // owner of these partitions applies the batch again.
                    if sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                        return;
                    }
                }
            }
        };
        // Redis is a copy of Postgres: if it is down the batch still counts
        // (query-service falls back to the replica), and the next event of
        // the same order rewrites the summary in full.
        if let Err(error) = self.redis.write(&summaries).await {
            tracing::warn!(%error, orders = summaries.len(), "redis write failed");
        }
        self.commit(&batch);
    }

    async fn apply(
        &mut self,
        events: &[StreamEvent],
    ) -> Result<Vec<schema::views::OrderSummary>, BatchError> {
        let months: Vec<Month> = events
            .iter()
            .filter(|e| matches!(e.event, AnyEvent::Order(_)))
            .map(|e| Month::of(e.headers.occurred_at))
            .collect();
        self.partitions
            .ensure(&self.pool, &months)
            .await
            .map_err(BatchError::Partitions)?;
        Ok(store::apply_batch(&self.pool, events).await?)
    }

    /// Commits, per partition, the offset after the last message of the batch.
    fn commit(&self, batch: &[OwnedMessage]) {
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for message in batch {
            let entry = next
                .entry((message.topic(), message.partition()))
                .or_insert(0);
            *entry = (*entry).max(message.offset() + 1);
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if let Err(error) = list.add_partition_offset(topic, partition, Offset::Offset(offset))
            {
                tracing::warn!(%error, "building offset list");
            }
        }
        // A failed commit (e.g. during a rebalance) only means a replay.
        if let Err(error) = self.consumer.commit(&list, CommitMode::Sync) {
            tracing::warn!(%error, "offset commit failed; the batch will be replayed");
        }
    }
}

/// Decodes one message. A message that cannot be decoded is logged and
/// skipped so that it cannot block its partition.
fn decode(message: &OwnedMessage) -> Option<StreamEvent> {
    let pairs = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .filter_map(|h| h.value.map(|v| (h.key, v)))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let decoded = EventHeaders::from_pairs(pairs)
        .map_err(|e| e.to_string())
        .and_then(|headers| {
            let payload = message.payload().unwrap_or_default();
            AnyEvent::decode_versioned(
                &headers.aggregate_type,
                &headers.event_type,
                &headers.event_version,
                payload,
            )
            .map(|event| StreamEvent { headers, event })
            .map_err(|e| e.to_string())
        });
    match decoded {
        Ok(event) => Some(event),
        Err(error) => {
            tracing::error!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                %error,
                "undecodable event skipped"
            );
            None
        }
    }
}
