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
//!
//! The producer sits behind the `kafka-producer` circuit breaker
//! ([`service_runtime::breaker`]). A batch whose messages the broker did not
//! acknowledge (an enqueue error, a failed or dropped delivery report, a
//! delivery timeout) is a failure; `KAFKA_BREAKER_FAILURES` in a row open
//! the breaker. While it is open the relay produces nothing: it keeps its
//! lease (confirming it as when idle) and waits, shutdown permitting, until
//! the open period is over; then one batch goes out as the probe. Its
//! acknowledgement closes the breaker; its failure re-opens it for longer.
//! Reading the outbox, the cursor write and bad rows say nothing about the
//! broker and are not counted. None of this changes what is published or
//! when the cursor moves: one batch at a time, in order, the cursor only
//! after every delivery report.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use event_bus::TopicSettings;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use schema::envelope::{header, topic_for, EventHeaders};
use schema::trace_context::TraceParent;
use service_runtime::backoff::Backoff;
use service_runtime::breaker::{Breaker, CallPermit};
use service_runtime::shutdown::{sleep_or_shutdown, CancellationToken};
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::RelayConfig;
use crate::metrics::RelayMetrics;

/// Name of the relay's cursor row and lease. One relay per event store.
pub const RELAY_NAME: &str = "main";

/// Name of the producer's circuit breaker (the `breaker` metric label).
pub const PRODUCER_BREAKER: &str = "kafka-producer";

/// Shortest pause of a relay waiting for its open breaker, so that a probe
/// just due does not make it spin.
const MIN_BREAKER_WAIT: Duration = Duration::from_millis(5);

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
    #[error("the relay lease's session failed: {0}")]
    LeaseLost(#[source] sqlx::Error),
}

/// Whether this instance's relay is the active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayRole {
    /// Not configured to relay (`RELAY_ENABLED=false`).
    Disabled,
    /// Waiting for the lease held by another instance.
    Standby,
    /// Holding the lease and publishing.
    Leader,
}

/// Shared, cheap-to-read view of a relay's role.
#[derive(Debug, Clone)]
pub struct RelayStatus(Arc<AtomicU8>);

impl RelayStatus {
    pub fn disabled() -> Self {
        Self(Arc::new(AtomicU8::new(RelayRole::Disabled as u8)))
    }

    fn standby() -> Self {
        Self(Arc::new(AtomicU8::new(RelayRole::Standby as u8)))
    }

    fn set(&self, role: RelayRole) {
        self.0.store(role as u8, Ordering::Relaxed);
    }

    pub fn role(&self) -> RelayRole {
        match self.0.load(Ordering::Relaxed) {
            r if r == RelayRole::Leader as u8 => RelayRole::Leader,
            r if r == RelayRole::Standby as u8 => RelayRole::Standby,
            _ => RelayRole::Disabled,
        }
    }
}

/// The relay's leadership: a session holding the relay's advisory lock.
struct Lease {
    conn: PgConnection,
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
    /// Guards `producer`; kept across leaderships and producer re-creation
    /// (it judges the broker, not one producer instance).
    breaker: Breaker,
    status: RelayStatus,
    metrics: RelayMetrics,
}

impl OutboxRelay {
    pub fn new(
        pool: PgPool,
        topics: TopicSettings,
        config: RelayConfig,
        metrics: RelayMetrics,
    ) -> Result<Self, RelayError> {
        let producer = create_producer(&topics, &config)?;
        let breaker = Breaker::new(PRODUCER_BREAKER, config.breaker, &metrics.breakers);
        Ok(Self {
            name: RELAY_NAME.to_owned(),
            metrics,
            pool,
            topics,
            config,
            producer,
            breaker,
            status: RelayStatus::standby(),
        })
    }

    /// A handle on this relay's role, for the status endpoint.
    pub fn status(&self) -> RelayStatus {
        self.status.clone()
    }

    /// Runs until `shutdown` is cancelled: waits to become the one active
    /// relay, publishes while it is, and competes again if it loses the lease.
    /// A batch in flight is finished first on shutdown, so a graceful stop
    /// does not leave published-but-uncursored events.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        while let Err(error) = event_bus::ensure_topics(&self.topics).await {
            tracing::warn!(%error, "cannot create event topics yet");
            if sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                return;
            }
        }
        let mut candidate = None;
        while !shutdown.is_cancelled() {
            let Some(mut lease) = self.acquire_lease(&mut candidate, &shutdown).await else {
                break;
            };
            self.status.set(RelayRole::Leader);
            self.metrics.leader.set(1);
            tracing::info!(relay = %self.name, "this instance is now the active relay");
            if let Err(error) = self.lead(&mut lease, &shutdown).await {
                tracing::warn!(relay = %self.name, %error, "lost the relay lease; standing by");
            }
            self.status.set(RelayRole::Standby);
            self.metrics.leader.set(0);
            // Dropping the lease closes its session, which releases the lock.
        }
        let _ = self.producer.flush(Duration::from_secs(5));
        tracing::info!(relay = %self.name, "outbox relay stopped");
    }

    /// Waits until this instance holds the relay's advisory lock. The lock is
    /// taken on a dedicated connection (not pooled), so it lives exactly as
    /// long as that session: a crashed leader's lock is released by Postgres
    /// when its connection drops, and a standby takes over at its next try.
    async fn acquire_lease(
        &self,
        candidate: &mut Option<PgConnection>,
        shutdown: &CancellationToken,
    ) -> Option<Lease> {
        loop {
            match self.try_lock(candidate).await {
                Ok(Some(lease)) => return Some(lease),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot compete for the relay lease");
                    *candidate = None;
                }
            }
            if sleep_or_shutdown(self.config.lease_retry, shutdown).await {
                return None;
            }
        }
    }

    async fn try_lock(
        &self,
        candidate: &mut Option<PgConnection>,
    ) -> Result<Option<Lease>, sqlx::Error> {
        let mut conn = match candidate.take() {
            Some(conn) => conn,
            None => PgConnection::connect_with(&self.pool.connect_options()).await?,
        };
        let locked = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_lock(hashtext('outbox-relay:' || $1)) AS "locked!""#,
            self.name
        )
        .fetch_one(&mut conn)
        .await?;
        if locked {
            Ok(Some(Lease { conn }))
        } else {
            *candidate = Some(conn);
            Ok(None)
        }
    }

    /// Publishes while holding `lease`. Returns when shutdown is requested
    /// (Ok) or the lease's session is gone (Err).
    async fn lead(
        &mut self,
        lease: &mut Lease,
        shutdown: &CancellationToken,
    ) -> Result<(), sqlx::Error> {
        // The previous leader may have moved the cursor: always start from the table.
        let mut cursor = self.load_cursor(&mut lease.conn).await?;
        tracing::info!(relay = %self.name, ?cursor, "publishing from the cursor");
        let mut backoff = Backoff::default();
        let mut checked = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            let Some(permit) = self.breaker.try_acquire() else {
                // The broker's breaker is open: produce nothing until its
                // probe is due, and keep the lease as when idle.
                self.confirm_lease(lease, &mut checked).await?;
                let wait = self
                    .breaker
                    .open_remaining()
                    .unwrap_or(self.config.poll_interval)
                    .min(self.config.lease_retry)
                    .max(MIN_BREAKER_WAIT);
                if sleep_or_shutdown(wait, shutdown).await {
                    break;
                }
                continue;
            };
            match self.publish_next_batch(&mut cursor, lease, permit).await {
                Ok(0) => {
                    backoff.reset();
                    // Idle: confirm now and then that the lease still stands,
                    // so a standby is not blocked by a leader that cannot publish.
                    self.confirm_lease(lease, &mut checked).await?;
                    if sleep_or_shutdown(self.config.poll_interval, shutdown).await {
                        break;
                    }
                }
                Ok(published) => {
                    backoff.reset();
                    tracing::debug!(published, position = cursor.position, "published batch");
                }
                Err(RelayError::LeaseLost(error)) => return Err(error),
                Err(error) => {
                    self.metrics.failed_batches.inc();
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
                    if sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks that the lease's session still stands if it was last
    /// confirmed `lease_retry` ago or more.
    async fn confirm_lease(
        &self,
        lease: &mut Lease,
        checked: &mut tokio::time::Instant,
    ) -> Result<(), sqlx::Error> {
        if checked.elapsed() >= self.config.lease_retry {
            sqlx::query!("SELECT 1 AS alive")
                .fetch_one(&mut lease.conn)
                .await?;
            *checked = tokio::time::Instant::now();
        }
        Ok(())
    }

    fn recreate_producer(&mut self) {
        match create_producer(&self.topics, &self.config) {
            Ok(producer) => self.producer = producer,
            Err(error) => tracing::error!(%error, "cannot recreate the kafka producer"),
        }
    }

    async fn load_cursor(&self, conn: &mut PgConnection) -> Result<Cursor, sqlx::Error> {
        let row = sqlx::query!(
            r#"SELECT transaction_id::text AS "transaction_id!", position
                 FROM outbox_cursor WHERE relay = $1"#,
            self.name
        )
        .fetch_optional(&mut *conn)
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
    /// many events were published. Settles `permit` with the broker's
    /// verdict on the batch; an empty batch, a failed read and a bad row
    /// leave it unsettled (they say nothing about the broker).
    async fn publish_next_batch(
        &self,
        cursor: &mut Cursor,
        lease: &mut Lease,
        permit: CallPermit,
    ) -> Result<usize, RelayError> {
        let rows = sqlx::query!(
            r#"SELECT transaction_id::text AS "transaction_id!",
                      position, aggregate_type, aggregate_id, sequence,
                      event_type, event_version, payload::text AS "payload!",
                      metadata ->> 'occurred_at' AS occurred_at,
                      metadata ->> 'traceparent' AS traceparent
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
            let mut pairs = headers.to_pairs();
            if let Some(publish) = publish_span(row.traceparent.as_deref(), &headers) {
                pairs.push((header::TRACEPARENT, publish.to_string()));
            }
            let kafka_headers = pairs
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
                    Err((error, _)) => {
                        permit.failure();
                        return Err(error.into());
                    }
                }
            };
            deliveries.push((row.position, delivery));
        }
        for (position, delivery) in deliveries {
            let failed = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((error, _))) => error.into(),
                Err(_) => RelayError::DeliveryCanceled { position },
            };
            permit.failure();
            return Err(failed);
        }
        // Every message acknowledged: the broker is fine, whatever becomes
        // of the cursor write below.
        permit.success();

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
        // On the lease's own session: the write succeeds only while this
        // instance still holds the lock, so a deposed leader cannot move it.
        .execute(&mut lease.conn)
        .await
        .map_err(RelayError::LeaseLost)?;
        *cursor = next;
        self.metrics.published.inc_by(rows.len() as u64);
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

/// Target of the per-event publish spans; enable with
/// `RUST_LOG=info,command_service::trace=debug`.
const TRACE_TARGET: &str = "command_service::trace";

/// The publish span of one event: a child of the command's span stored in
/// the event's metadata, sent on as the Kafka `traceparent` header so the
/// projector continues the trace. None for events stored without one.
fn publish_span(stored: Option<&str>, event: &EventHeaders) -> Option<TraceParent> {
    let parent: TraceParent = stored?.parse().ok()?;
    let span = parent.child();
    if tracing::enabled!(target: TRACE_TARGET, tracing::Level::DEBUG) {
        tracing::debug_span!(
            target: TRACE_TARGET,
            "publish",
            trace_id = %span.trace_id(),
            span_id = %span.span_id(),
            parent_span_id = %parent.span_id(),
        )
        .in_scope(|| {
            tracing::debug!(
                target: TRACE_TARGET,
                aggregate_type = event.aggregate_type,
                aggregate_id = event.aggregate_id,
                sequence = event.sequence,
                position = event.position,
                "event published"
            );
        });
    }
    Some(span)
}
