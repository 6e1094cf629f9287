//! Dead letters: events the projector could not apply, and the later events
//! of the same aggregate parked behind them. Operators list them, and retry or
//! skip the oldest of an aggregate (`projector dlq ...` or the admin HTTP API);
//! either way the letters behind it are then applied in order, up to the next
//! one that fails.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use service_runtime::postgres::DbPool;

use crate::batch::{self, BatchError, Message};
use crate::store::{self, BatchEffects};

/// A parked event as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub topic: String,
    pub partition: i32,
    pub kafka_offset: i64,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub sequence: Option<i64>,
    /// `failed` (applying it failed) or `behind` (an earlier event of its
    /// aggregate is parked).
    pub reason: String,
    pub error: String,
    pub parked_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead letter {0} does not exist")]
    NotFound(i64),
    /// Skipping is allowed only for the oldest letter of an aggregate: any
    /// other would reorder its events.
    #[error("dead letter {id} is not the oldest of its aggregate; skip {oldest} first")]
    NotOldest { id: i64, oldest: i64 },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Unavailable(#[from] BatchError),
}

/// What a retry or skip did.
#[derive(Debug, Default, Serialize)]
pub struct Resolution {
    /// Letters applied and removed, in order.
    pub applied: Vec<i64>,
    /// The letter skipped, if this was a skip.
    pub skipped: Option<i64>,
    /// Letters of the aggregate still parked (the first of them failed again).
    pub still_parked: usize,
    /// For Redis and the invalidation signals.
    #[serde(skip)]
    pub effects: BatchEffects,
}

/// Every parked letter of `group`, oldest first.
pub async fn list(pool: &DbPool, group: &str) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    let letters = sqlx::query_as!(
        DeadLetter,
        "SELECT id, topic, partition, kafka_offset, aggregate_type, aggregate_id, sequence,
                reason, error, parked_at
           FROM projector_dead_letters WHERE consumer_group = $1 ORDER BY id",
        group
    )
    .fetch_all(&mut *connection)
    .await?;
    connection.finish().await?;
    Ok(letters)
}

/// Applies the letters of `id`'s aggregate again, oldest first, until one fails.
pub async fn retry(pool: &DbPool, group: &str, id: i64) -> Result<Resolution, DeadLetterError> {
    resolve(pool, group, id, false).await
}

/// Drops letter `id` (the oldest of its aggregate) without applying it, moves
/// the read model's version past it, then applies the letters behind it.
pub async fn skip(pool: &DbPool, group: &str, id: i64) -> Result<Resolution, DeadLetterError> {
    resolve(pool, group, id, true).await
}

async fn resolve(
    pool: &DbPool,
    group: &str,
    id: i64,
    skip: bool,
) -> Result<Resolution, DeadLetterError> {
    let mut tx = pool.begin().await?;
    let letter = sqlx::query!(
        "SELECT aggregate_type, aggregate_id FROM projector_dead_letters
          WHERE consumer_group = $1 AND id = $2",
        group,
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(DeadLetterError::NotFound(id))?;
    // Exclusive locks: a projector batch touching this aggregate (which
    // share-locks its letters) waits until this resolution has committed.
    let ids: Vec<i64> = sqlx::query_scalar!(
        "SELECT id FROM projector_dead_letters
          WHERE consumer_group = $1
            AND (id = $2 OR (aggregate_type = $3 AND aggregate_id = $4))
          ORDER BY id FOR UPDATE",
        group,
        id,
        letter.aggregate_type,
        letter.aggregate_id
    )
    .fetch_all(&mut *tx)
    .await?;
    // Read after locking, so letters parked meanwhile are included.
    let rows = sqlx::query!(
        r#"SELECT id, topic, partition, kafka_offset, headers, payload, aggregate_type,
                  aggregate_id, sequence
             FROM projector_dead_letters WHERE id = ANY($1) ORDER BY id"#,
        &ids
    )
    .fetch_all(&mut *tx)
    .await?;

    let mut resolution = Resolution::default();
    let mut rows = rows.into_iter().peekable();
    if skip {
        let Some(oldest) = rows.next() else {
            return Err(DeadLetterError::NotFound(id));
        };
        if oldest.id != id {
            return Err(DeadLetterError::NotOldest {
                id,
                oldest: oldest.id,
            });
        }
        if let (Some(kind), Some(Ok(aggregate)), Some(sequence)) = (
            oldest.aggregate_type.as_deref(),
            oldest.aggregate_id.as_deref().map(uuid::Uuid::parse_str),
            oldest.sequence,
        ) {
            store::skip_event(&mut tx, kind, aggregate, sequence).await?;
        }
        delete(&mut tx, oldest.id).await?;
        resolution.skipped = Some(oldest.id);
    }

    let mut applied: BTreeMap<String, i64> = BTreeMap::new();
    while let Some(row) = rows.next() {
        let message = Message {
            topic: row.topic.clone(),
            partition: row.partition,
            offset: row.kafka_offset,
            timestamp_ms: None,
            headers: headers_from_json(&row.headers),
            payload: row.payload,
        };
        match batch::apply_one(&mut tx, &message).await? {
            Ok(effects) => {
                delete(&mut tx, row.id).await?;
                resolution.applied.push(row.id);
                *applied.entry(row.topic).or_insert(0) += 1;
                resolution.effects.merge(effects);
            }
            Err(error) => {
                sqlx::query!(
                    "UPDATE projector_dead_letters SET reason = 'failed', error = $2 WHERE id = $1",
                    row.id,
                    error
                )
                .execute(&mut *tx)
                .await?;
                resolution.still_parked = 1 + rows.len();
                break;
            }
        }
    }
    batch::add_applied(&mut tx, group, &applied).await?;
    tx.commit().await?;
    Ok(resolution)
}

async fn delete(conn: &mut sqlx::PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM projector_dead_letters WHERE id = $1", id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The inverse of [`Message::headers_json`].
fn headers_from_json(headers: &serde_json::Value) -> Vec<(String, Vec<u8>)> {
    headers
        .as_object()
        .map(|object| {
            object
                .iter()
                .filter_map(|(key, value)| {
                    value.as_str().map(|v| (key.clone(), v.as_bytes().to_vec()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The operations on dead letters that both the CLI and the admin HTTP API
/// offer: the database changes, then Redis brought up to date and the
/// invalidations published, as after a batch.
#[derive(Clone)]
pub struct DeadLetterDesk {
    pub pool: DbPool,
    pub redis: crate::redis_sink::RedisSink,
    pub group: String,
}

impl DeadLetterDesk {
    pub async fn list(&self) -> Result<Vec<DeadLetter>, DeadLetterError> {
        Ok(list(&self.pool, &self.group).await?)
    }

    pub async fn retry(&self, id: i64) -> Result<Resolution, DeadLetterError> {
        let resolution = retry(&self.pool, &self.group, id).await?;
        self.sync_redis(&resolution).await;
        Ok(resolution)
    }

    pub async fn skip(&self, id: i64) -> Result<Resolution, DeadLetterError> {
        let resolution = skip(&self.pool, &self.group, id).await?;
        self.sync_redis(&resolution).await;
        Ok(resolution)
    }

    async fn sync_redis(&self, resolution: &Resolution) {
        self.redis.apply(&resolution.effects).await;
    }
}
