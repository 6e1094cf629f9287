//! An in-memory [`PersistedEventRepository`] for tests: lets the real cqrs-es
//! `PersistedEventStore` (snapshots, upcasters, optimistic locking) run
//! without a database.
//!
//! It follows postgres-es' protocol (`event_repository.rs` and `sql_query.rs`
//! of postgres-es 0.5, which command-service's own append path copies):
//!
//! - events are unique per `(aggregate_type, aggregate_id, sequence)`; a
//!   duplicate fails the whole append with an optimistic-lock error;
//! - a snapshot update `(aggregate_id, payload, current_snapshot)` is stored
//!   in the same "transaction", with `last_sequence` = the sequence of the
//!   **last event of the append** (not of the last event folded into the
//!   payload); snapshot 1 is inserted, snapshot `n` replaces `n - 1`;
//! - `get_last_events(id, s)` returns the events with `sequence > s`.
//!
//! One difference: it keeps one snapshot row per aggregate and refuses a
//! second "snapshot 1". The real `snapshots` primary key also includes
//! `last_sequence`, so Postgres would add a second row, which only happens
//! after a snapshot failed to deserialize; these tests never do that.

use std::sync::{Arc, Mutex};

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use serde_json::Value;

/// One row of the `snapshots` table.
#[derive(Debug, Clone)]
pub struct SnapshotRow {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub last_sequence: usize,
    pub current_snapshot: usize,
    pub payload: Value,
}

/// The `events` and `snapshots` tables, in memory. Clones share the tables,
/// like two connections to one database.
#[derive(Debug, Default, Clone)]
pub struct MemRepo {
    tables: Arc<Mutex<Tables>>,
}

#[derive(Debug, Default)]
struct Tables {
    events: Vec<SerializedEvent>,
    snapshots: Vec<SnapshotRow>,
}

impl MemRepo {
    /// Appends `event` as stored, bypassing cqrs-es (e.g. an old event version).
    pub fn insert_raw(&self, event: SerializedEvent) {
        self.lock().events.push(event);
    }

    /// The snapshot row of one aggregate, if any.
    pub fn snapshot(&self, aggregate_type: &str, aggregate_id: &str) -> Option<SnapshotRow> {
        self.lock()
            .snapshots
            .iter()
            .find(|s| s.aggregate_type == aggregate_type && s.aggregate_id == aggregate_id)
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn select(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: usize,
    ) -> Vec<SerializedEvent> {
        let mut events: Vec<_> = self
            .lock()
            .events
            .iter()
            .filter(|e| {
                e.aggregate_type == aggregate_type
                    && e.aggregate_id == aggregate_id
                    && e.sequence > after
            })
            .cloned()
            .collect();
        events.sort_by_key(|e| e.sequence);
        events
    }
}

impl PersistedEventRepository for MemRepo {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(self.select(A::TYPE, aggregate_id, 0))
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(self.select(A::TYPE, aggregate_id, last_sequence))
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        Ok(self
            .snapshot(A::TYPE, aggregate_id)
            .map(|row| SerializedSnapshot {
                aggregate_id: row.aggregate_id,
                aggregate: row.payload,
                current_sequence: row.last_sequence,
                current_snapshot: row.current_snapshot,
            }))
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let mut tables = self.lock();
        for event in events {
            let taken = tables.events.iter().any(|e| {
                e.aggregate_type == A::TYPE
                    && e.aggregate_id == event.aggregate_id
                    && e.sequence == event.sequence
            });
            if taken {
                return Err(PersistenceError::OptimisticLockError);
            }
        }
        if let Some((aggregate_id, payload, current_snapshot)) = snapshot_update {
            let last_sequence = events.last().map_or(0, |e| e.sequence);
            let existing = tables
                .snapshots
                .iter()
                .position(|s| s.aggregate_type == A::TYPE && s.aggregate_id == aggregate_id);
            let row = SnapshotRow {
                aggregate_type: A::TYPE.to_owned(),
                aggregate_id,
                last_sequence,
                current_snapshot,
                payload,
            };
            match existing {
                None if current_snapshot == 1 => tables.snapshots.push(row),
                Some(i) if tables.snapshots[i].current_snapshot + 1 == current_snapshot => {
                    tables.snapshots[i] = row;
                }
                _ => return Err(PersistenceError::OptimisticLockError),
            }
        }
        tables.events.extend_from_slice(events);
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        stream(self.select(A::TYPE, aggregate_id, 0)).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        let events: Vec<_> = self
            .lock()
            .events
            .iter()
            .filter(|e| e.aggregate_type == A::TYPE)
            .cloned()
            .collect();
        stream(events).await
    }
}

async fn stream(events: Vec<SerializedEvent>) -> Result<ReplayStream, PersistenceError> {
    let (mut feed, stream) = ReplayStream::new(events.len().max(1));
    for event in events {
        feed.push(Ok(event)).await?;
    }
    Ok(stream)
}
