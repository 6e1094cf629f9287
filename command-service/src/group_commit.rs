//! Group commit: the appends of commands that arrive while others are being
//! written share one `append_events` call, so one round trip, one
//! transaction and one commit for the lot.
//!
//! Per command, a round trip and a commit cost Postgres several times what
//! inserting its one event does (`docs/BENCHMARKS.md`); batching the commands
//! that queue up anyway under load spreads that cost. Nothing waits to fill a
//! batch: a worker takes whatever is queued when it becomes free, so a lone
//! command is written at once, alone.
//!
//! A batch is all or nothing in Postgres. When it fails (one command lost an
//! optimistic-lock race, two carry the same Idempotency-Key, ...), each of its
//! commands is appended again on its own, so each gets its own outcome and
//! none fails for another's conflict.
//!
//! Workers stop when every [`GroupCommit`] handle is dropped (the command bus
//! goes away with the HTTP server), after writing what was already queued.

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::SerializedEvent;
use service_runtime::postgres::DbPool;
use tokio::sync::{mpsc, oneshot, Mutex};

/// One command's append.
#[derive(Debug)]
pub struct Append {
    pub aggregate_type: &'static str,
    /// The command's events, in sequence order; not empty.
    pub events: Vec<SerializedEvent>,
    /// The snapshot due with them (at the last event).
    pub snapshot: Option<Snapshot>,
    /// Idempotency-Key and request hash.
    pub idempotency: Option<(String, Vec<u8>)>,
}

/// An aggregate's state as of a command's last event, and its number in
/// postgres-es' snapshot protocol (1 for the first).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub payload: serde_json::Value,
    pub number: usize,
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("append_events returned {returned} positions for {commands} commands")]
    Positions { returned: usize, commands: usize },
    #[error("the group-commit workers have stopped")]
    Stopped,
}

struct Pending {
    append: Append,
    reply: oneshot::Sender<Result<i64, AppendError>>,
}

/// Handle to the group-commit workers; cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

/// Group-commit settings.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitSettings {
    /// Most commands in one call (1: no batching).
    pub max_batch: usize,
    /// Calls in flight at once; each holds a pooled connection while writing.
    pub workers: usize,
    /// How long an Idempotency-Key is remembered.
    pub idempotency_ttl: Duration,
}

impl GroupCommit {
    /// Spawns the workers on the current Tokio runtime.
    pub fn start(primary: DbPool, settings: GroupCommitSettings) -> Self {
        let max_batch = settings.max_batch.max(1);
        let (queue, receiver) = mpsc::channel(max_batch * settings.workers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..settings.workers.max(1) {
            tokio::spawn(worker(
                primary.clone(),
                receiver.clone(),
                max_batch,
                settings.idempotency_ttl,
            ));
        }
        Self { queue }
    }

    /// Appends one command's events; returns the position of the last.
    pub async fn append(&self, append: Append) -> Result<i64, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { append, reply })
            .await
            .map_err(|_| AppendError::Stopped)?;
        answer.await.map_err(|_| AppendError::Stopped)?
    }
}

async fn worker(
    primary: DbPool,
    queue: Arc<Mutex<mpsc::Receiver<Pending>>>,
    max_batch: usize,
    ttl: Duration,
) {
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return; // every handle dropped and the queue drained
            };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            batch
        };
        write_batch(&primary, batch, ttl).await;
    }
}

async fn write_batch(primary: &DbPool, batch: Vec<Pending>, ttl: Duration) {
    if batch.len() > 1 {
        let appends: Vec<&Append> = batch.iter().map(|p| &p.append).collect();
        if let Ok(positions) = append_events(primary, &appends, ttl).await {
            for (pending, position) in batch.into_iter().zip(positions) {
                // The requester may have gone away; its append stands.
                let _ = pending.reply.send(Ok(position));
            }
            return;
        }
    }
    for pending in batch {
        let outcome = append_events(primary, &[&pending.append], ttl)
            .await
            .and_then(|positions| {
                positions.first().copied().ok_or(AppendError::Positions {
                    returned: 0,
                    commands: 1,
                })
            });
        let _ = pending.reply.send(outcome);
    }
}

/// One `append_events` call for `appends`; the position of each one's last
/// event, in order.
async fn append_events(
    primary: &DbPool,
    appends: &[&Append],
    ttl: Duration,
) -> Result<Vec<i64>, AppendError> {
    let events = appends
        .iter()
        .flat_map(|a| a.events.iter().map(move |e| (a, e)));
    let mut types = Vec::new();
    let mut ids = Vec::new();
    let mut sequences = Vec::new();
    let mut event_types = Vec::new();
    let mut versions = Vec::new();
    let mut payloads = Vec::new();
    let mut metadata = Vec::new();
    for (append, event) in events {
        types.push(append.aggregate_type);
        ids.push(event.aggregate_id.as_str());
        sequences.push(event.sequence as i64);
        event_types.push(event.event_type.as_str());
        versions.push(event.event_version.as_str());
        payloads.push(event.payload.to_string());
        metadata.push(event.metadata.to_string());
    }
    let command_types: Vec<&str> = appends.iter().map(|a| a.aggregate_type).collect();
    let command_ids: Vec<&str> = appends
        .iter()
        .map(|a| a.events.last().map_or("", |e| e.aggregate_id.as_str()))
        .collect();
    let command_sequences: Vec<i64> = appends
        .iter()
        .map(|a| a.events.last().map_or(0, |e| e.sequence as i64))
        .collect();
    let snapshots: Vec<Option<&serde_json::Value>> = appends
        .iter()
        .map(|a| a.snapshot.as_ref().map(|s| &s.payload))
        .collect();
    let snapshot_numbers: Vec<Option<i64>> = appends
        .iter()
        .map(|a| a.snapshot.as_ref().map(|s| s.number as i64))
        .collect();
    let keys: Vec<Option<&str>> = appends
        .iter()
        .map(|a| a.idempotency.as_ref().map(|(k, _)| k.as_str()))
        .collect();
    let hashes: Vec<Option<&[u8]>> = appends
        .iter()
        .map(|a| a.idempotency.as_ref().map(|(_, h)| h.as_slice()))
        .collect();
    let mut connection = primary.acquire().await?;
    let positions = sqlx::query_scalar!(
        r#"SELECT append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) AS "positions!""#,
        &types as &[&str],
        &ids as &[&str],
        &sequences,
        &event_types as &[&str],
        &versions as &[&str],
        &payloads,
        &metadata,
        &command_types as &[&str],
        &command_ids as &[&str],
        &command_sequences,
        &snapshots as &[Option<&serde_json::Value>],
        &snapshot_numbers as &[Option<i64>],
        &keys as &[Option<&str>],
        &hashes as &[Option<&[u8]>],
        ttl.as_secs_f64(),
    )
    .fetch_one(&mut *connection)
    .await?;
    // Behind PgBouncer this commits the append: only then is it acknowledged.
    connection.finish().await?;
    if positions.len() != appends.len() {
        return Err(AppendError::Positions {
            returned: positions.len(),
            commands: appends.len(),
        });
    }
    Ok(positions)
}
