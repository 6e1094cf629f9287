//! The transactional-outbox relay: publishes every committed event from the
//! `events` table to Kafka, in order, and never skips one.
//!
//! Reading order is `(transaction_id, position)`, restricted to transactions
//! older than the oldest one still running (`pg_snapshot_xmin`). Positions are
//! handed out at insert, not at commit, so a plain "position > cursor" reader
//! would jump over a slow transaction's rows and never come back for them;
//! with the xmin horizon, a row becomes visible to the relay only once nothing
//! that could commit *before* it is still open. See
//! `docs/adr/0002-gap-safe-outbox.md`.
//!
//! Delivery is at-least-once: the cursor advances only after the broker
//! acknowledged every message of a batch, in order; a failure re-reads the
//! batch from the cursor, so consumers may see a message again and drop it by
//! (aggregate id, sequence).

use std::time::Duration;

use event_bus::TopicSettings;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use schema::envelope::{topic_for, EventHeaders};
use service_runtime::backoff::Backoff;
use service_runtime::shutdown::{sleep_or_shutdown, CancellationToken};
use sqlx::PgPool;

use crate::config::RelayConfig;

/// The relay's failure modes; each is retried from the stored cursor.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading the outbox: {0}")]
    Database(#[from] sqlx::Error),
    #[error("publishing to kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("delivery report of position {position} was dropped")]
    DeliveryCanceled { position: i64 },
    #[error("event at position {position} has no valid occurred_at metadata")]
    BadMetadata { position: i64 },
    #[error("kafka topics: {0}")]
    Topics(#[from] event_bus::TopicError),
}

/// Where the relay has published up to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    /// `xid8` as text: sqlx has no xid8 type, and text round-trips exactly.
    transaction_id: String,
    position: i64,
}

/// Publishes the outbox to Kafka until shut down.
pub struct OutboxRelay {
    name: String,
    pool: PgPool,
    topics: TopicSettings,
    config: RelayConfig,
    producer: FutureProducer,
}

impl OutboxRelay {
    pub fn new(
        pool: PgPool,
        topics: TopicSettings,
        config: RelayConfig,
    ) -> Result<Self, RelayError> {
        let producer = create_producer(&topics, &config)?;
        Ok(Self {
            name: "main".to_owned(),
            pool,
            topics,
            config,
            producer,
        })
    }

    /// Runs until `shutdown` is cancelled. A batch in flight is finished
    /// first, so a graceful stop does not leave published-but-uncursored events.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        while let Err(error) = event_bus::ensure_topics(&self.topics).await {
            tracing::warn!(%error, "cannot create event topics yet");
            if sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                return;
            }
        }
        let mut cursor = loop {
            match self.load_cursor().await {
                Ok(cursor) => break cursor,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the outbox cursor yet");
                    if sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                        return;
                    }
                }
            }
        };
        tracing::info!(relay = %self.name, ?cursor, "outbox relay started");
        backoff.reset();
        while !shutdown.is_cancelled() {
            match self.publish_next_batch(&mut cursor).await {
                Ok(0) => {
                    backoff.reset();
                    if sleep_or_shutdown(self.config.poll_interval, &shutdown).await {
                        break;
                    }
                }
                Ok(published) => {
                    backoff.reset();
                    tracing::debug!(published, position = cursor.position, "published batch");
                }
                Err(error) => {
                    tracing::warn!(%error, "outbox batch failed; retrying from the cursor");
                    // A failed delivery can leave the idempotent producer's
                    // sequence state unusable (fatal error, or fenced after an
                    // epoch bump, as seen with Tansu after a stall). A fresh
                    // producer gets a new producer id; the batch is re-read
                    // from the cursor, so nothing is lost by dropping the old one.
                    if matches!(
                        error,
                        RelayError::Kafka(_) | RelayError::DeliveryCanceled { .. }
                    ) {
                        self.recreate_producer();
                    }
                    if sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                        break;
                    }
                }
            }
        }
        let _ = self.producer.flush(Duration::from_secs(5));
        tracing::info!(relay = %self.name, "outbox relay stopped");
    }

    fn recreate_producer(&mut self) {
        match create_producer(&self.topics, &self.config) {
            Ok(producer) => self.producer = producer,
            Err(error) => tracing::error!(%error, "cannot recreate the kafka producer"),
        }
    }

    async fn load_cursor(&self) -> Result<Cursor, sqlx::Error> {
        let row = sqlx::query!(
            r#"SELECT transaction_id::text AS "transaction_id!", position
                 FROM outbox_cursor WHERE relay = $1"#,
            self.name
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map_or(
            Cursor {
                transaction_id: "0".to_owned(),
                position: 0,
            },
            |r| Cursor {
                transaction_id: r.transaction_id,
                position: r.position,
            },
        ))
    }

    /// Publishes the next batch after `cursor` and advances it. Returns how
    /// many events were published.
    async fn publish_next_batch(&self, cursor: &mut Cursor) -> Result<usize, RelayError> {
        let rows = sqlx::query!(
            r#"SELECT transaction_id::text AS "transaction_id!",
                      position, aggregate_type, aggregate_id, sequence,
                      event_type, event_version, payload::text AS "payload!",
                      metadata ->> 'occurred_at' AS occurred_at
                 FROM events
                WHERE (transaction_id, position) > ($1::text::xid8, $2)
                  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                ORDER BY transaction_id, position
                LIMIT $3"#,
            cursor.transaction_id,
            cursor.position,
            self.config.batch_size,
        )
        .fetch_all(&self.pool)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(0);
        };
        let next = Cursor {
            transaction_id: last.transaction_id.clone(),
            position: last.position,
        };

        // Enqueue strictly in row order (librdkafka keeps per-partition order
        // with idempotence on), then wait for every delivery report.
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in &rows {
            let occurred_at = row
                .occurred_at
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .ok_or(RelayError::BadMetadata {
                    position: row.position,
                })?
                .with_timezone(&chrono::Utc);
            let headers = EventHeaders {
                aggregate_type: row.aggregate_type.clone(),
                aggregate_id: row.aggregate_id.clone(),
                sequence: row.sequence,
                position: row.position,
                event_type: row.event_type.clone(),
                event_version: row.event_version.clone(),
                occurred_at,
            };
            let kafka_headers =
                headers
                    .to_pairs()
                    .into_iter()
                    .fold(OwnedHeaders::new(), |h, (key, value)| {
                        h.insert(Header {
                            key,
                            value: Some(value.as_bytes()),
                        })
                    });
            let topic = topic_for(&self.topics.prefix, &row.aggregate_type);
            let mut record = FutureRecord::to(&topic)
                .key(row.aggregate_id.as_str())
                .payload(row.payload.as_str())
                .headers(kafka_headers);
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // Retrying the same record keeps the order; the queue
                        // drains as earlier deliveries complete.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((error, _)) => return Err(error.into()),
                }
            };
            deliveries.push((row.position, delivery));
        }
        for (position, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(error.into()),
                Err(_) => return Err(RelayError::DeliveryCanceled { position }),
            }
        }

        sqlx::query!(
            r#"INSERT INTO outbox_cursor (relay, transaction_id, position, updated_at)
               VALUES ($1, $2::text::xid8, $3, now())
               ON CONFLICT (relay) DO UPDATE
                  SET transaction_id = EXCLUDED.transaction_id,
                      position = EXCLUDED.position,
                      updated_at = EXCLUDED.updated_at"#,
            self.name,
            next.transaction_id,
            next.position,
        )
        .execute(&self.pool)
        .await?;
        *cursor = next;
        Ok(rows.len())
    }
}

/// Producer settings that cannot reorder or duplicate on retry: idempotence
/// (which implies acks=all and at most 5 in-flight requests per connection)
/// and a Java-compatible partitioner so every client maps a key to the same
/// partition.
fn create_producer(
    topics: &TopicSettings,
    config: &RelayConfig,
) -> Result<FutureProducer, KafkaError> {
    topics
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            config.delivery_timeout.as_millis().to_string(),
        )
        .create()
}
