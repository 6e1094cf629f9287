//! The event store as cqrs-es sees it: loading an aggregate (events,
//! snapshot) and appending are ours; whole-stream replays are postgres-es'.
//!
//! A command's append goes through [`GroupCommit`]: `append_events` writes,
//! in one statement and so one transaction, the command's events, the
//! aggregate's snapshot and the command's Idempotency-Key record, together
//! with those of the commands that arrived meanwhile. With the aggregate
//! cached ([`crate::aggregate_cache`]) that is the command's only round trip.
//! The schema and the snapshot protocol are exactly postgres-es' (see its
//! `db/init.sql` and `event_repository.rs`), so its readers stay correct.
//! See `docs/adr/0007-one-round-trip-commands.md`.
//!
//! Every statement of the command path goes through [`DbPool::acquire`], so
//! it works the same through PgBouncer in transaction mode
//! (`docs/adr/0016-pgbouncer-transaction-mode.md`). The replays
//! (`stream_events`, `stream_all_events`) are cqrs-es' for rebuilding its
//! queries; this service registers none, so they are never called here, and
//! they read through the pool directly.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use service_runtime::postgres::DbPool;
use service_runtime::shutdown::{sleep_or_shutdown, CancellationToken};

use crate::group_commit::{Append, AppendError, GroupCommit, Snapshot};

/// Keys of `events.metadata` that carry a command's Idempotency-Key to the
/// append (cqrs-es passes metadata, and nothing else, from the caller to
/// [`PersistedEventRepository::persist`]).
pub mod idempotency_metadata {
    pub const KEY: &str = "idempotency_key";
    /// Hex SHA-256 of the request, see [`crate::idempotency::request_hash`].
    pub const REQUEST_HASH: &str = "idempotency_request_hash";
}

/// What a command appended, handed from [`EventStore::persist`] back to the
/// command bus (cqrs-es' `persist` returns nothing): the aggregate's new
/// version and the global position of its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub version: i64,
    pub position: i64,
}

/// How one command went through the store, shared between the command bus
/// and the store for the duration of that one command (cqrs-es passes
/// nothing but metadata between them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandScope {
    /// In: read the aggregate from the database, not the cache.
    pub bypass_cache: bool,
    /// Out: the aggregate was loaded from the cache.
    pub served_from_cache: bool,
    /// Out: the number of the snapshot written with the append, if any.
    pub snapshot_taken: Option<usize>,
    /// Out: what the command appended.
    pub appended: Option<Appended>,
}

tokio::task_local! {
    static SCOPE: Cell<CommandScope>;
}

pub(crate) fn update_scope(f: impl FnOnce(&mut CommandScope)) {
    // Outside `in_scope` (tests driving cqrs-es directly) there is nobody
    // to tell.
    let _ = SCOPE.try_with(|cell| {
        let mut scope = cell.get();
        f(&mut scope);
        cell.set(scope);
    });
}

pub(crate) fn bypass_cache() -> bool {
    SCOPE
        .try_with(|cell| cell.get().bypass_cache)
        .unwrap_or(false)
}

pub(crate) fn snapshot_taken() -> Option<usize> {
    SCOPE
        .try_with(|cell| cell.get().snapshot_taken)
        .ok()
        .flatten()
}

/// Runs `command` (one cqrs-es `execute`) in a [`CommandScope`] and returns
/// the scope as the command left it. Task-local: it cannot leak to another
/// request or outlive a cancelled one.
pub async fn in_scope<F: Future>(bypass_cache: bool, command: F) -> (F::Output, CommandScope) {
    let scope = CommandScope {
        bypass_cache,
        ..CommandScope::default()
    };
    SCOPE
        .scope(Cell::new(scope), async {
            let output = command.await;
            (output, SCOPE.with(Cell::get))
        })
        .await
}

/// Our reads and group-committed appends; postgres-es for replays.
pub struct EventStore {
    replays: PostgresEventRepository,
    primary: DbPool,
    appends: GroupCommit,
}

impl EventStore {
    pub fn new(primary: DbPool, appends: GroupCommit) -> Self {
        Self {
            replays: PostgresEventRepository::new(primary.pool().clone()),
            primary,
            appends,
        }
    }

    /// The aggregate's events after `after` (0: all), in order. One
    /// statement whatever `after` is (postgres-es formats it into the SQL,
    /// which prepares a new statement per value).
    async fn events_after<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let mut connection = self.primary.acquire().await.map_err(persistence_error)?;
        let rows = sqlx::query!(
            r#"SELECT sequence, event_type, event_version, payload, metadata
                 FROM events
                WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
                ORDER BY sequence"#,
            A::TYPE,
            aggregate_id,
            after
        )
        .fetch_all(&mut *connection)
        .await
        .map_err(persistence_error)?;
        connection.finish().await.map_err(persistence_error)?;
        Ok(rows
            .into_iter()
            .map(|row| SerializedEvent {
                aggregate_id: aggregate_id.to_owned(),
                sequence: usize::try_from(row.sequence).unwrap_or_default(),
                aggregate_type: A::TYPE.to_owned(),
                event_type: row.event_type,
                event_version: row.event_version,
                payload: row.payload,
                metadata: row.metadata,
            })
            .collect())
    }
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

/// Conflicts (`append_events` raises a lost snapshot race and a taken
/// Idempotency-Key as unique violations too) are optimistic-lock errors; a
/// dead or exhausted pool is a connection error (503); the rest is
/// unexpected (500).
fn append_error(error: AppendError) -> PersistenceError {
    match error {
        AppendError::Database(error) => persistence_error(error),
        AppendError::Stopped => PersistenceError::ConnectionError(Box::new(error)),
        AppendError::Positions { .. } => PersistenceError::UnknownError(Box::new(error)),
    }
}

fn persistence_error(error: sqlx::Error) -> PersistenceError {
    match &error {
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
        self.events_after::<A>(aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.events_after::<A>(aggregate_id, last_sequence).await
    }

    /// The newest snapshot. postgres-es' own query has no ORDER BY, and the
    /// snapshots key includes `last_sequence`, so after a state-shape change
    /// (cqrs-es then replays and starts a second "snapshot 1") it could load
    /// either row.
    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        let mut connection = self.primary.acquire().await.map_err(persistence_error)?;
        let row = sqlx::query!(
            r#"SELECT last_sequence, current_snapshot, payload
                 FROM snapshots
                WHERE aggregate_type = $1 AND aggregate_id = $2
                ORDER BY last_sequence DESC
                LIMIT 1"#,
            A::TYPE,
            aggregate_id
        )
        .fetch_optional(&mut *connection)
        .await
        .map_err(persistence_error)?;
        connection.finish().await.map_err(persistence_error)?;
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
        let Some(last) = events.last() else {
            return Ok(());
        };
        // cqrs-es snapshots only at the last event of an append (see
        // domain::snapshot_tests), so the snapshot is at `last.sequence`.
        let snapshot = snapshot_update.map(|(_, payload, number)| Snapshot { payload, number });
        let snapshot_number = snapshot.as_ref().map(|s| s.number);
        let append = Append {
            aggregate_type: A::TYPE,
            events: events.to_vec(),
            snapshot,
            idempotency: idempotency_of(last).map(|(key, hash)| (key.to_owned(), hash)),
        };
        match self.appends.append(append).await {
            Ok(position) => {
                update_scope(|scope| {
                    scope.snapshot_taken = snapshot_number;
                    scope.appended = Some(Appended {
                        version: last.sequence as i64,
                        position,
                    });
                });
                Ok(())
            }
            Err(error) => Err(append_error(error)),
        }
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.replays.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.replays.stream_all_events::<A>().await
    }
}

/// Deletes expired Idempotency-Key records every `every` until shutdown.
pub async fn purge_expired_keys(primary: DbPool, every: Duration, shutdown: CancellationToken) {
    while !sleep_or_shutdown(every, &shutdown).await {
        match purge_once(&primary).await {
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

async fn purge_once(primary: &DbPool) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
    let mut connection = primary.acquire().await?;
    let done = sqlx::query!("DELETE FROM idempotency_keys WHERE expires_at <= now()")
        .execute(&mut *connection)
        .await?;
    connection.finish().await?;
    Ok(done)
}
