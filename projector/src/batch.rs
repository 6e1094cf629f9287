//! One batch of Kafka messages → one Postgres transaction.
//!
//! The transaction holds everything that must agree: the read-model changes,
//! the consumer group's offsets for the partitions in the batch, the message
//! counts and any dead letters. Either all of it commits or none of it, so a
//! crash, a rebalance in the middle of a batch, or two instances briefly
//! owning one partition can neither lose nor double-apply a message:
//! - the offset rows of the batch's partitions are locked first (in a fixed
//!   order, so two instances cannot deadlock), and messages below the stored
//!   offset are dropped as already applied;
//! - aggregates with a parked dead letter get their later events parked
//!   behind it, so per-aggregate order holds while others keep flowing;
//! - the `projections` rows are key-share locked, so a rebuild's swap (which
//!   locks them for update) happens between two batches, never inside one;
//!   events of a projection that is not 'live' yet are acknowledged unapplied
//!   (its rebuild reads them from the event store).

use std::collections::{BTreeMap, HashMap, HashSet};

use schema::envelope::{AnyEvent, EventHeaders};

use service_runtime::postgres::DbPool;
use sqlx::{Connection, PgConnection};

use crate::projections::Projection;
use crate::store::{self, is_transient, ApplyError, BatchEffects, StreamEvent};

/// A Kafka message as the projector keeps it: owned, and storable as a dead
/// letter exactly as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Broker timestamp in milliseconds since the epoch, if any.
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Option<Vec<u8>>,
}

/// Which aggregate a message belongs to, read from its headers alone (so it
/// is known even when the payload cannot be decoded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AggregateRef {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
}

impl Message {
    fn event_headers(&self) -> Result<EventHeaders, String> {
        EventHeaders::from_pairs(
            self.headers
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_slice())),
        )
        .map_err(|e| e.to_string())
    }

    /// The trace the event's command started, from its `traceparent`
    /// header; None for events published without one.
    pub fn trace_parent(&self) -> Option<schema::trace_context::TraceParent> {
        self.headers
            .iter()
            .find(|(key, _)| key == schema::envelope::header::TRACEPARENT)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
            .and_then(|text| text.parse().ok())
    }

    /// The aggregate the message belongs to, if its headers say.
    pub fn aggregate(&self) -> Option<AggregateRef> {
        self.event_headers().ok().map(|h| AggregateRef {
            aggregate_type: h.aggregate_type,
            aggregate_id: h.aggregate_id,
            sequence: h.sequence,
        })
    }

    /// Headers and payload decoded (and upcast) into an event.
    pub fn decode(&self) -> Result<StreamEvent, String> {
        let headers = self.event_headers()?;
        let event = AnyEvent::decode_versioned(
            &headers.aggregate_type,
            &headers.event_type,
            &headers.event_version,
            self.payload.as_deref().unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
        Ok(StreamEvent { headers, event })
    }

    /// The headers as a JSON object (values as text), for the dead-letter table.
    pub fn headers_json(&self) -> serde_json::Value {
        self.headers
            .iter()
            .map(|(key, value)| {
                (
                    key.clone(),
                    serde_json::Value::String(String::from_utf8_lossy(value).into_owned()),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// How a batch treats an event that fails deterministically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fail the whole batch (it is retried with backoff): the fast path, one
    /// transaction, no savepoints, the events applied set-based
    /// ([`store::apply_events`]).
    Strict,
    /// Apply each event in a savepoint and park the ones that fail: used once
    /// a batch has failed `max_attempts` times.
    Isolate,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Postgres is unreachable or refused for now; nothing was committed.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// An event fails every time (in [`Mode::Strict`]); nothing was committed.
    #[error("{topic}/{partition} offset {offset}: {reason}")]
    Poison {
        topic: String,
        partition: i32,
        offset: i64,
        reason: String,
    },
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> Self {
        Self::Unavailable(error)
    }
}

/// Why a message of a committed batch changed no read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotProjected {
    /// Parked as a dead letter.
    Parked,
    /// Applied before (a redelivery).
    AlreadyApplied,
}

/// What a committed batch did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Messages applied (including those the read models already reflected).
    pub applied: usize,
    /// Messages dropped because the group's stored offset was past them or
    /// the batch held a later delivery of them.
    pub already_applied: usize,
    /// Messages parked as dead letters (failed, or behind one that failed).
    pub parked: usize,
    /// What became of each message that was not projected now (parked, or
    /// already applied), by (topic, partition, offset); tracing reports the
    /// others as projected. Rare, so cheap to keep.
    pub not_projected: HashMap<(String, i32, i64), NotProjected>,
    /// The summaries to bring Redis up to and the keys to invalidate.
    pub effects: BatchEffects,
    /// Per partition, the offset after the last message of the batch.
    pub next_offsets: BTreeMap<(String, i32), i64>,
}

/// Applies `messages` (in the order received) for consumer group `group` in
/// one transaction.
pub async fn apply(
    pool: &DbPool,
    group: &str,
    messages: &[Message],
    mode: Mode,
) -> Result<Outcome, BatchError> {
    let mut outcome = Outcome::default();
    let runs = partition_runs(messages);
    for (key, run) in &runs {
        if let Some(last) = run.last() {
            outcome.next_offsets.insert(key.clone(), last.offset + 1);
        }
    }
    let (topics, partitions): (Vec<String>, Vec<i32>) =
        outcome.next_offsets.keys().cloned().unzip();

    let mut tx = pool.begin().await?;
    // Create missing rows, then lock all of the batch's rows in key order.
    sqlx::query!(
        "INSERT INTO projector_offsets (consumer_group, topic, partition, next_offset)
         SELECT $1, t, p, 0 FROM UNNEST($2::text[], $3::int[]) AS u(t, p)
         ON CONFLICT DO NOTHING",
        group,
        &topics,
        &partitions
    )
    .execute(&mut *tx)
    .await?;
    let stored: HashMap<(String, i32), i64> = sqlx::query!(
        r#"SELECT topic, partition, next_offset FROM projector_offsets
            WHERE consumer_group = $1
              AND (topic, partition) IN (SELECT * FROM UNNEST($2::text[], $3::int[]))
            ORDER BY topic, partition
              FOR UPDATE"#,
        group,
        &topics,
        &partitions
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| ((r.topic, r.partition), r.next_offset))
    .collect();

    let fresh: Vec<&Message> = runs
        .values()
        .flatten()
        .filter(|m| {
            stored
                .get(&(m.topic.clone(), m.partition))
                .is_none_or(|&next| m.offset >= next)
        })
        .copied()
        .collect();
    // Delivered again within the batch, or below the stored offset.
    outcome.already_applied = messages.len() - fresh.len();
    if outcome.already_applied > 0 {
        let kept: HashSet<(&str, i32, i64)> = fresh
            .iter()
            .map(|m| (m.topic.as_str(), m.partition, m.offset))
            .collect();
        for m in messages {
            if !kept.contains(&(m.topic.as_str(), m.partition, m.offset)) {
                outcome.not_projected.insert(
                    (m.topic.clone(), m.partition, m.offset),
                    NotProjected::AlreadyApplied,
                );
            }
        }
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        for ((topic, partition), next) in &outcome.next_offsets {
            let offsets: Vec<i64> = runs
                .get(&(topic.clone(), *partition))
                .into_iter()
                .flatten()
                .map(|m| m.offset)
                .collect();
            tracing::debug!(
                topic,
                partition,
                stored = stored.get(&(topic.clone(), *partition)),
                first = offsets.first(),
                last = offsets.last(),
                messages = offsets.len(),
                next,
                "batch"
            );
        }
    }

    let live = live_projections(&mut tx).await?;
    let mut parked = parked_aggregates(&mut tx, group, &fresh).await?;
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    // Strict mode collects the events and applies them set-based at the end.
    let mut pending: Vec<(&Message, StreamEvent)> = Vec::new();
    for message in fresh {
        let aggregate = message.aggregate();
        if let Some(a) = aggregate.as_ref().filter(|a| parked.contains(&key(a))) {
            let error = format!(
                "parked behind an earlier dead letter of {} {}",
                a.aggregate_type, a.aggregate_id
            );
            park(&mut tx, group, message, "behind", &error).await?;
            outcome.parked += 1;
            outcome.not_projected.insert(
                (message.topic.clone(), message.partition, message.offset),
                NotProjected::Parked,
            );
            continue;
        }
        let gated = aggregate
            .as_ref()
            .and_then(|a| Projection::fed_by(&a.aggregate_type))
            .is_some_and(|p| !live.contains(&p));
        if gated {
            *counts.entry(message.topic.clone()).or_insert(0) += 1;
            outcome.applied += 1;
            continue;
        }
        if mode == Mode::Strict {
            match message.decode() {
                Ok(event) => pending.push((message, event)),
                Err(reason) => return Err(poison(message, reason)),
            }
            continue;
        }
        match apply_one(&mut tx, message).await? {
            Ok(effects) => {
                *counts.entry(message.topic.clone()).or_insert(0) += 1;
                outcome.applied += 1;
                outcome.effects.merge(effects);
            }
            Err(reason) => {
                tracing::error!(
                    topic = message.topic,
                    partition = message.partition,
                    offset = message.offset,
                    error = reason,
                    "event parked as a dead letter"
                );
                park(&mut tx, group, message, "failed", &reason).await?;
                outcome.parked += 1;
                outcome.not_projected.insert(
                    (message.topic.clone(), message.partition, message.offset),
                    NotProjected::Parked,
                );
                if let Some(a) = &aggregate {
                    parked.insert(key(a));
                }
            }
        }
    }

    if !pending.is_empty() {
        let events: Vec<&StreamEvent> = pending.iter().map(|(_, e)| e).collect();
        match store::apply_events(&mut tx, &events).await {
            Ok(effects) => {
                for (message, _) in &pending {
                    *counts.entry(message.topic.clone()).or_insert(0) += 1;
                }
                outcome.applied += pending.len();
                outcome.effects.merge(effects);
            }
            Err((_, ApplyError::Database(error))) if is_transient(&error) => {
                return Err(BatchError::Unavailable(error));
            }
            Err((i, error)) => return Err(poison(pending[i].0, error.to_string())),
        }
    }

    let offsets: Vec<i64> = outcome.next_offsets.values().copied().collect();
    sqlx::query!(
        "UPDATE projector_offsets o
            SET next_offset = GREATEST(o.next_offset, u.next_offset), updated_at = now()
           FROM UNNEST($2::text[], $3::int[], $4::bigint[]) AS u(topic, partition, next_offset)
          WHERE o.consumer_group = $1 AND o.topic = u.topic AND o.partition = u.partition",
        group,
        &topics,
        &partitions,
        &offsets
    )
    .execute(&mut *tx)
    .await?;
    add_applied(&mut tx, group, &counts).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Adds `counts` (messages applied per topic) to the group's message counter.
pub(crate) async fn add_applied(
    conn: &mut PgConnection,
    group: &str,
    counts: &BTreeMap<String, i64>,
) -> Result<(), sqlx::Error> {
    let topics: Vec<String> = counts.keys().cloned().collect();
    let applied: Vec<i64> = counts.values().copied().collect();
    sqlx::query!(
        "INSERT INTO projector_message_counts (consumer_group, topic, applied)
         SELECT $1, t, n FROM UNNEST($2::text[], $3::bigint[]) AS u(t, n)
         ON CONFLICT (consumer_group, topic)
         DO UPDATE SET applied = projector_message_counts.applied + EXCLUDED.applied",
        group,
        &topics,
        &applied
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn poison(message: &Message, reason: String) -> BatchError {
    BatchError::Poison {
        topic: message.topic.clone(),
        partition: message.partition,
        offset: message.offset,
        reason,
    }
}

/// The projections in state 'live'. Every row is locked (key share), live
/// or not, so that a swap turning one live waits for this batch.
async fn live_projections(conn: &mut PgConnection) -> Result<HashSet<Projection>, sqlx::Error> {
    let rows = sqlx::query!("SELECT name, state FROM projections ORDER BY name FOR KEY SHARE")
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter(|r| r.state == "live")
        .filter_map(|r| r.name.parse().ok())
        .collect())
}

/// The batch's messages per partition, in strictly increasing offset order.
///
/// A rebalance or a seek while the batch was being collected can make the
/// stream deliver a partition again from an earlier offset (duplicates, or
/// messages older than ones already received). The latest delivery wins:
/// a message at offset `o` replaces whatever the run held at `o` or later.
/// Without this, a message delivered twice in one batch would be applied
/// twice, and offsets could move past messages the batch never applied.
fn partition_runs(messages: &[Message]) -> BTreeMap<(String, i32), Vec<&Message>> {
    let mut runs: BTreeMap<(String, i32), Vec<&Message>> = BTreeMap::new();
    for m in messages {
        let run = runs.entry((m.topic.clone(), m.partition)).or_default();
        let keep = run.partition_point(|earlier| earlier.offset < m.offset);
        run.truncate(keep);
        run.push(m);
    }
    runs
}

fn key(a: &AggregateRef) -> (String, String) {
    (a.aggregate_type.clone(), a.aggregate_id.clone())
}

/// Aggregates among `messages` that have a parked dead letter. The rows are
/// locked (shared) so that `dlq retry`/`skip`, which lock them exclusively,
/// either finish first (and this batch applies normally) or wait for it.
async fn parked_aggregates(
    conn: &mut PgConnection,
    group: &str,
    messages: &[&Message],
) -> Result<HashSet<(String, String)>, sqlx::Error> {
    let ids: Vec<String> = messages
        .iter()
        .filter_map(|m| m.aggregate().map(|a| a.aggregate_id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let rows = sqlx::query!(
        r#"SELECT aggregate_type AS "aggregate_type!", aggregate_id AS "aggregate_id!"
             FROM projector_dead_letters
            WHERE consumer_group = $1 AND aggregate_id = ANY($2) AND aggregate_type IS NOT NULL
              FOR SHARE"#,
        group,
        &ids
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.aggregate_type, r.aggregate_id))
        .collect())
}

/// Decodes and applies one message in a savepoint, so that its failure
/// leaves the rest of the transaction intact. The outer error is transient
/// (abort the batch); the inner one is the event's own fault (park it).
pub(crate) async fn apply_one(
    conn: &mut PgConnection,
    message: &Message,
) -> Result<Result<store::BatchEffects, String>, BatchError> {
    let event = match message.decode() {
        Ok(event) => event,
        Err(reason) => return Ok(Err(reason)),
    };
    let mut savepoint = conn.begin().await?;
    match store::apply_events(&mut savepoint, &[&event]).await {
        Ok(effects) => {
            savepoint.commit().await?;
            Ok(Ok(effects))
        }
        Err((_, ApplyError::Database(error))) if is_transient(&error) => {
            Err(BatchError::Unavailable(error))
        }
        Err((_, error)) => {
            savepoint.rollback().await?;
            Ok(Err(error.to_string()))
        }
    }
}

/// Stores `message` as a dead letter.
pub(crate) async fn park(
    conn: &mut PgConnection,
    group: &str,
    message: &Message,
    reason: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    let aggregate = message.aggregate();
    sqlx::query!(
        "INSERT INTO projector_dead_letters
             (consumer_group, topic, partition, kafka_offset, aggregate_type, aggregate_id,
              sequence, headers, payload, reason, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        group,
        message.topic,
        message.partition,
        message.offset,
        aggregate.as_ref().map(|a| a.aggregate_type.as_str()),
        aggregate.as_ref().map(|a| a.aggregate_id.as_str()),
        aggregate.as_ref().map(|a| a.sequence),
        message.headers_json(),
        message.payload.as_deref(),
        reason,
        error
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(partition: i32, offset: i64) -> Message {
        Message {
            topic: "t".to_owned(),
            partition,
            offset,
            timestamp_ms: None,
            headers: Vec::new(),
            payload: None,
        }
    }

    fn offsets(runs: &BTreeMap<(String, i32), Vec<&Message>>, partition: i32) -> Vec<i64> {
        runs[&("t".to_owned(), partition)]
            .iter()
            .map(|m| m.offset)
            .collect()
    }

    #[test]
    fn a_partition_delivered_again_from_an_earlier_offset_keeps_the_latest_delivery() {
        let batch: Vec<Message> = [
            (0, 600),
            (0, 601),
            (1, 7),
            (0, 602),
            (0, 539),
            (0, 540),
            (1, 8),
            (1, 8),
        ]
        .into_iter()
        .map(|(p, o)| message(p, o))
        .collect();
        let runs = partition_runs(&batch);
        // 600..602 were delivered again from 539: only the new run counts,
        // so the batch cannot end past the messages it holds.
        assert_eq!(offsets(&runs, 0), vec![539, 540]);
        assert_eq!(offsets(&runs, 1), vec![7, 8]);
    }

    #[test]
    fn a_rewind_into_the_middle_keeps_the_earlier_part_of_the_run() {
        let batch: Vec<Message> = [600, 601, 602, 603, 601, 602]
            .into_iter()
            .map(|o| message(0, o))
            .collect();
        assert_eq!(offsets(&partition_runs(&batch), 0), vec![600, 601, 602]);
    }
}
