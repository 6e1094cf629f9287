//! `projector rebuild <projection>`: a new copy of a projection, built from
//! the event store while the live one keeps serving, swapped in atomically.
//!
//! 1. Empty shadow tables are created in schema `rebuild_<name>` (same
//!    columns, indexes and partitions as the live ones).
//! 2. The projection's events are replayed from the `events` table in commit
//!    order — `(transaction_id, position)` below the oldest running
//!    transaction, the relay's gap-safe order (ADR 2) — through the same
//!    `store::apply_events` the live projector uses, on a connection whose
//!    `search_path` puts the shadow schema first.
//! 3. Once caught up, one transaction locks the projection's row (the live
//!    projector's batches key-share lock it, so they pause), applies the last
//!    events, swaps the shadow tables into `public` and the old ones out,
//!    and marks the projection 'live'. Everything the live projector has
//!    applied was published by the relay, hence is below the oldest running
//!    transaction, hence is in the shadow: after the swap the live stream
//!    continues without a gap, its duplicates skipped by version.
//!
//! Readers wait on the swap's locks for an instant and then see the new
//! tables; they never see a missing or half-built one. A brand-new projection
//! (state 'building') is filled the same way.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use schema::envelope::{AnyEvent, EventHeaders};
use service_runtime::postgres::DbPool;
use sqlx::PgConnection;

use crate::projections::Projection;
use crate::store::{self, ApplyError, StreamEvent};

/// Events replayed per transaction.
const BATCH: i64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored event that cannot be decoded or applied: the rebuild stops,
    /// the live projection is untouched, the shadow is left for inspection.
    #[error("event at position {position} cannot be applied: {reason}")]
    Event { position: i64, reason: String },
}

/// How far a rebuild is.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: i64,
    /// Events of the projection when the rebuild started (writes go on, so
    /// `done` may end above it).
    pub total: i64,
    pub elapsed: Duration,
}

impl Progress {
    /// Events per second so far.
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.done as f64 / seconds
        } else {
            0.0
        }
    }

    /// Time left at the current rate, if it can be told.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        (rate > 0.0).then(|| Duration::from_secs_f64((self.total - self.done).max(0) as f64 / rate))
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let percent = if self.total > 0 {
            100.0 * self.done as f64 / self.total as f64
        } else {
            100.0
        };
        write!(
            f,
            "{}/{} events ({percent:.1}%), {:.0} events/s",
            self.done,
            self.total,
            self.rate()
        )?;
        match self.eta() {
            Some(eta) => write!(f, ", ETA {:.0} s", eta.as_secs_f64()),
            None => Ok(()),
        }
    }
}

/// Position in the event store's commit order.
#[derive(Debug, Clone)]
struct Cursor {
    transaction_id: String,
    position: i64,
}

/// Rebuilds `projection`; `report` sees the progress after every batch.
/// `pause_before_swap` waits between catching up and the swap (0 in
/// production; tests widen the window in which the live projection moves
/// ahead, which the swap must then catch up with). Returns the final progress.
pub async fn rebuild(
    pool: &DbPool,
    projection: Projection,
    pause_before_swap: Duration,
    mut report: impl FnMut(&Progress),
) -> Result<Progress, RebuildError> {
    let shadow = format!("rebuild_{}", projection.name());
    let retired = format!("retired_{}", projection.name());
    let tables: Vec<String> = projection
        .tables()
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    let started = Instant::now();

    let mut connection = pool.acquire().await?;
    sqlx::query!("SELECT projection_create_shadow($1, $2)", shadow, &tables)
        .execute(&mut *connection)
        .await?;
    let total = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM events WHERE aggregate_type = $1"#,
        projection.aggregate_type()
    )
    .fetch_one(&mut *connection)
    .await?;
    sqlx::query!(
        "UPDATE projections
            SET rebuild_done = 0, rebuild_total = $2, rebuild_started_at = now(),
                rebuild_finished_at = NULL
          WHERE name = $1",
        projection.name(),
        total
    )
    .execute(&mut *connection)
    .await?;
    connection.finish().await?;

    let mut cursor = Cursor {
        transaction_id: "0".to_owned(),
        position: 0,
    };
    let mut progress = Progress {
        done: 0,
        total,
        elapsed: Duration::ZERO,
    };
    // Replay while the live projection serves, until a batch comes back short
    // (caught up with the commits of the moment).
    loop {
        let mut tx = pool.begin().await?;
        shadow_first(&mut tx, &shadow).await?;
        let applied = replay_batch(&mut tx, projection, &mut cursor).await?;
        progress.done += applied;
        progress.elapsed = started.elapsed();
        record(&mut tx, projection, &progress).await?;
        tx.commit().await?;
        report(&progress);
        if applied < BATCH {
            break;
        }
    }

    tokio::time::sleep(pause_before_swap).await;
    // The swap: live batches pause on the projection's row lock meanwhile.
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "SELECT name FROM projections WHERE name = $1 FOR UPDATE",
        projection.name()
    )
    .fetch_one(&mut *tx)
    .await?;
    // Partition maintenance must not add or move partitions mid-swap.
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtext('customer_order_history partitions'))")
        .execute(&mut *tx)
        .await?;
    shadow_first(&mut tx, &shadow).await?;
    loop {
        let applied = replay_batch(&mut tx, projection, &mut cursor).await?;
        progress.done += applied;
        if applied < BATCH {
            break;
        }
    }
    sqlx::query!(
        "SELECT projection_swap($1, $2, $3)",
        shadow,
        retired,
        &tables
    )
    .execute(&mut *tx)
    .await?;
    progress.elapsed = started.elapsed();
    record(&mut tx, projection, &progress).await?;
    sqlx::query!(
        "UPDATE projections SET state = 'live', rebuild_finished_at = now() WHERE name = $1",
        projection.name()
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    report(&progress);

    // The old tables are no longer read by anyone: free their space.
    let mut connection = pool.acquire().await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {retired} CASCADE"))
        .execute(&mut *connection)
        .await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {shadow} CASCADE"))
        .execute(&mut *connection)
        .await?;
    connection.finish().await?;
    Ok(progress)
}

/// Unqualified table names in this transaction resolve to the shadow copy.
/// The schema name comes from a [`Projection`], never from input.
async fn shadow_first(conn: &mut PgConnection, shadow: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("SET LOCAL search_path TO {shadow}, public"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn record(
    conn: &mut PgConnection,
    projection: Projection,
    progress: &Progress,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE public.projections SET rebuild_done = $2 WHERE name = $1",
        projection.name(),
        progress.done
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Applies the next events after `cursor` (at most [`BATCH`]) and advances it.
async fn replay_batch(
    conn: &mut PgConnection,
    projection: Projection,
    cursor: &mut Cursor,
) -> Result<i64, RebuildError> {
    let rows = sqlx::query!(
        r#"SELECT transaction_id::text AS "transaction_id!", position, aggregate_id, sequence,
                  event_type, event_version, payload::text AS "payload!",
                  metadata ->> 'occurred_at' AS occurred_at
             FROM public.events
            WHERE aggregate_type = $1
              AND (transaction_id, position) > ($2::text::xid8, $3)
              AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
            ORDER BY transaction_id, position
            LIMIT $4"#,
        projection.aggregate_type(),
        cursor.transaction_id,
        cursor.position,
        BATCH
    )
    .fetch_all(&mut *conn)
    .await?;
    let applied = rows.len() as i64;
    let mut events = Vec::with_capacity(rows.len());
    let mut positions = Vec::with_capacity(rows.len());
    for row in rows {
        let bad = |reason: String| RebuildError::Event {
            position: row.position,
            reason,
        };
        let occurred_at = row
            .occurred_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| bad("metadata has no valid occurred_at".to_owned()))?;
        let event = AnyEvent::decode_versioned(
            projection.aggregate_type(),
            &row.event_type,
            &row.event_version,
            row.payload.as_bytes(),
        )
        .map_err(|e| bad(e.to_string()))?;
        positions.push(row.position);
        events.push(StreamEvent {
            headers: EventHeaders {
                aggregate_type: projection.aggregate_type().to_owned(),
                aggregate_id: row.aggregate_id,
                sequence: row.sequence,
                position: row.position,
                event_type: row.event_type,
                event_version: row.event_version,
                occurred_at,
            },
            event,
        });
        cursor.transaction_id = row.transaction_id;
        cursor.position = row.position;
    }
    let refs: Vec<&StreamEvent> = events.iter().collect();
    store::apply_events(conn, &refs)
        .await
        .map_err(|(i, error)| match error {
            ApplyError::Database(e) => RebuildError::Database(e),
            other => RebuildError::Event {
                position: positions.get(i).copied().unwrap_or_default(),
                reason: other.to_string(),
            },
        })?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reports_rate_and_eta() {
        let p = Progress {
            done: 2_500,
            total: 10_000,
            elapsed: Duration::from_secs(5),
        };
        assert_eq!(p.rate(), 500.0);
        assert_eq!(p.eta(), Some(Duration::from_secs(15)));
        assert_eq!(
            p.to_string(),
            "2500/10000 events (25.0%), 500 events/s, ETA 15 s"
        );
        let start = Progress {
            done: 0,
            total: 0,
            elapsed: Duration::ZERO,
        };
        assert_eq!(start.eta(), None);
        assert_eq!(start.to_string(), "0/0 events (100.0%), 0 events/s");
    }
}
