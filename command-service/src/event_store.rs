//! The event store as cqrs-es sees it: reads are postgres-es', appends are
//! ours.
//!
//! Appending ourselves lets one transaction hold, together, a command's events
//! (one multi-row INSERT instead of one round trip per event), the aggregate's
//! snapshot, and the command's Idempotency-Key record. The schema and the
//! snapshot protocol are exactly postgres-es' (see its `db/init.sql` and
//! `event_repository.rs`), so its readers stay correct.

use std::time::Duration;

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use service_runtime::shutdown::{sleep_or_shutdown, CancellationToken};
use sqlx::PgPool;

/// Keys of `events.metadata` that carry a command's Idempotency-Key to the
/// append (cqrs-es passes metadata, and nothing else, from the caller to
/// [`PersistedEventRepository::persist`]).
pub mod idempotency_metadata {
    pub const KEY: &str = "idempotency_key";
    /// Hex SHA-256 of the request, see [`crate::idempotency::request_hash`].
    pub const REQUEST_HASH: &str = "idempotency_request_hash";
}

/// postgres-es for reads, our own transaction for appends.
pub struct EventStore {
    reads: PostgresEventRepository,
    pool: PgPool,
    idempotency_ttl: Duration,
}

impl EventStore {
    pub fn new(pool: PgPool, idempotency_ttl: Duration) -> Self {
        Self {
            reads: PostgresEventRepository::new(pool.clone()),
            pool,
            idempotency_ttl,
        }
    }

    async fn append<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot: Option<(String, Value, usize)>,
    ) -> Result<(), sqlx::Error> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await?;
        let ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
        let sequences: Vec<i64> = events.iter().map(|e| e.sequence as i64).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let versions: Vec<&str> = events.iter().map(|e| e.event_version.as_str()).collect();
        let payloads: Vec<String> = events.iter().map(|e| e.payload.to_string()).collect();
        let metadata: Vec<String> = events.iter().map(|e| e.metadata.to_string()).collect();
        // A duplicate (aggregate_type, aggregate_id, sequence) fails the whole
        // statement with 23505: the optimistic-lock conflict cqrs-es expects.
        let position = sqlx::query_scalar!(
            r#"INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
               SELECT $1, id, seq, et, ev, p::json, m::json
                 FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])
                      AS t(id, seq, et, ev, p, m)
               RETURNING position"#,
            A::TYPE,
            &ids as &[&str],
            &sequences,
            &types as &[&str],
            &versions as &[&str],
            &payloads,
            &metadata,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .max()
        .unwrap_or_default();

        if let Some((aggregate_id, aggregate, current_snapshot)) = snapshot {
            save_snapshot::<A>(
                &mut tx,
                &aggregate_id,
                &aggregate,
                current_snapshot,
                last.sequence,
            )
            .await?;
        }
        if let Some((key, hash)) = idempotency_of(last) {
            let recorded = sqlx::query!(
                r#"INSERT INTO idempotency_keys
                       (key, request_hash, aggregate_type, aggregate_id, version, position, expires_at)
                   VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
                   ON CONFLICT (key) DO UPDATE
                      SET request_hash = EXCLUDED.request_hash,
                          aggregate_type = EXCLUDED.aggregate_type,
                          aggregate_id = EXCLUDED.aggregate_id,
                          version = EXCLUDED.version,
                          position = EXCLUDED.position,
                          created_at = now(),
                          expires_at = EXCLUDED.expires_at
                    WHERE idempotency_keys.expires_at <= now()"#,
                key,
                hash,
                A::TYPE,
                last.aggregate_id,
                last.sequence as i64,
                position,
                self.idempotency_ttl.as_secs_f64(),
            )
            .execute(&mut *tx)
            .await?;
            if recorded.rows_affected() == 0 {
                // The key is taken by a live record: another request with the
                // same key got here first. Roll back; the caller replays it.
                return Err(sqlx::Error::RowNotFound);
            }
        }
        tx.commit().await
    }
}

/// postgres-es' snapshot protocol: the first snapshot is inserted, later ones
/// replace the row only if nobody else moved it in between.
async fn save_snapshot<A: Aggregate>(
    tx: &mut sqlx::PgConnection,
    aggregate_id: &str,
    aggregate: &Value,
    current_snapshot: usize,
    last_sequence: usize,
) -> Result<(), sqlx::Error> {
    if current_snapshot == 1 {
        sqlx::query!(
            r#"INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
               VALUES ($1, $2, $3, $4, $5)"#,
            A::TYPE,
            aggregate_id,
            last_sequence as i64,
            current_snapshot as i64,
            aggregate,
        )
        .execute(&mut *tx)
        .await?;
    } else {
        let updated = sqlx::query!(
            r#"UPDATE snapshots
                  SET last_sequence = $3, payload = $5, current_snapshot = $4
                WHERE aggregate_type = $1 AND aggregate_id = $2 AND current_snapshot = $4 - 1"#,
            A::TYPE,
            aggregate_id,
            last_sequence as i64,
            current_snapshot as i64,
            aggregate,
        )
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(sqlx::Error::RowNotFound);
        }
    }
    Ok(())
}

fn idempotency_of(event: &SerializedEvent) -> Option<(&str, Vec<u8>)> {
    let key = event.metadata.get(idempotency_metadata::KEY)?.as_str()?;
    let hash = event
        .metadata
        .get(idempotency_metadata::REQUEST_HASH)?
        .as_str()
        .and_then(crate::idempotency::decode_hex)?;
    Some((key, hash))
}

/// Conflicts (unique violations, a lost snapshot race, a taken idempotency
/// key) are optimistic-lock errors; a dead or exhausted pool is a connection
/// error (503); the rest is unexpected (500).
fn persistence_error(error: sqlx::Error) -> PersistenceError {
    match &error {
        sqlx::Error::RowNotFound => PersistenceError::OptimisticLockError,
        sqlx::Error::Database(e) if e.code().as_deref() == Some("23505") => {
            PersistenceError::OptimisticLockError
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed => PersistenceError::ConnectionError(Box::new(error)),
        _ => PersistenceError::UnknownError(Box::new(error)),
    }
}

impl PersistedEventRepository for EventStore {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads.get_events::<A>(aggregate_id).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await
    }

    /// The newest snapshot. postgres-es' own query has no ORDER BY, and the
    /// snapshots key includes `last_sequence`, so after a state-shape change
    /// (cqrs-es then replays and starts a second "snapshot 1") it could load
    /// either row.
    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        let row = sqlx::query!(
            r#"SELECT last_sequence, current_snapshot, payload
                 FROM snapshots
                WHERE aggregate_type = $1 AND aggregate_id = $2
                ORDER BY last_sequence DESC
                LIMIT 1"#,
            A::TYPE,
            aggregate_id
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(persistence_error)?;
        Ok(row.map(|row| SerializedSnapshot {
            aggregate_id: aggregate_id.to_owned(),
            aggregate: row.payload,
            current_sequence: usize::try_from(row.last_sequence).unwrap_or_default(),
            current_snapshot: usize::try_from(row.current_snapshot).unwrap_or_default(),
        }))
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        self.append::<A>(events, snapshot_update)
            .await
            .map_err(persistence_error)
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.reads.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.reads.stream_all_events::<A>().await
    }
}

/// Deletes expired Idempotency-Key records every `every` until shutdown.
pub async fn purge_expired_keys(pool: PgPool, every: Duration, shutdown: CancellationToken) {
    while !sleep_or_shutdown(every, &shutdown).await {
        match sqlx::query!("DELETE FROM idempotency_keys WHERE expires_at <= now()")
            .execute(&pool)
            .await
        {
            Ok(done) if done.rows_affected() > 0 => {
                tracing::debug!(
                    purged = done.rows_affected(),
                    "expired idempotency keys purged"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "purging expired idempotency keys failed"),
        }
    }
}
