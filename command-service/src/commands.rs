//! Executes commands against aggregates stored in Postgres and reports what
//! was appended.

use std::collections::HashMap;
use std::time::Duration;

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, CqrsFramework};
use schema::consistency::ConsistencyToken;
use schema::envelope::metadata;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Guarded, Order, OrderCommand, Product, ProductCommand};
use crate::error::CommandError;
use crate::event_store::{idempotency_metadata, EventStore};
use crate::idempotency::{encode_hex, Idempotency};

/// What a successful command appended: the aggregate's new version, the
/// global position of its last event, and both as an opaque
/// [`ConsistencyToken`] the query side accepts for read-your-writes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub version: i64,
    pub position: i64,
    pub consistency_token: String,
}

impl Accepted {
    /// The one way to build a result, so that a replayed Idempotency-Key
    /// answer is byte-identical to the original.
    pub fn new(aggregate_type: &str, aggregate_id: Uuid, version: i64, position: i64) -> Self {
        let consistency_token = ConsistencyToken {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_string(),
            version,
            position,
        }
        .encode();
        Self {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id,
            version,
            position,
            consistency_token,
        }
    }
}

type Framework<A> = CqrsFramework<A, PersistedEventStore<EventStore, A>>;

fn framework<A: Aggregate<Services = ()>>(
    store: EventStore,
    snapshot_every: usize,
) -> Framework<A> {
    CqrsFramework::new(
        PersistedEventStore::new_snapshot_store(store, snapshot_every)
            .with_upcasters(crate::domain::upcasters()),
        vec![],
        (),
    )
}

/// The command side's single entry point: one cqrs-es framework per aggregate
/// over one pool.
///
/// No cqrs-es `Query` is registered on purpose: queries run in-process after
/// commit, so a crash in between would lose the event for them. Read models
/// are fed only from the outbox relay, which cannot skip an event.
pub struct CommandBus {
    pool: PgPool,
    products: Framework<Product>,
    orders: Framework<Order>,
}

impl CommandBus {
    /// `snapshot_every`: an aggregate's state is snapshotted every that many
    /// events, so loading it reads the snapshot plus at most that many events
    /// instead of its whole history. `idempotency_ttl`: how long an
    /// Idempotency-Key is remembered.
    pub fn new(pool: PgPool, snapshot_every: usize, idempotency_ttl: Duration) -> Self {
        let every = snapshot_every.max(1);
        Self {
            products: framework(EventStore::new(pool.clone(), idempotency_ttl), every),
            orders: framework(EventStore::new(pool.clone(), idempotency_ttl), every),
            pool,
        }
    }

    pub async fn product(
        &self,
        id: Uuid,
        command: Guarded<ProductCommand>,
        idempotency: Option<&Idempotency>,
    ) -> Result<Accepted, CommandError> {
        self.execute(&self.products, id, command, idempotency).await
    }

    pub async fn order(
        &self,
        id: Uuid,
        command: Guarded<OrderCommand>,
        idempotency: Option<&Idempotency>,
    ) -> Result<Accepted, CommandError> {
        self.execute(&self.orders, id, command, idempotency).await
    }

    async fn execute<A>(
        &self,
        cqrs: &Framework<A>,
        id: Uuid,
        command: A::Command,
        idempotency: Option<&Idempotency>,
    ) -> Result<Accepted, CommandError>
    where
        A: Aggregate,
        CommandError: From<A::Error>,
    {
        if let Some(idempotency) = idempotency {
            if let Some(done) = self.replay(idempotency).await? {
                return Ok(done);
            }
        }
        let command_id = Uuid::now_v7();
        let mut metadata = HashMap::from([
            (metadata::COMMAND_ID.to_owned(), command_id.to_string()),
            (
                metadata::OCCURRED_AT.to_owned(),
                // Microseconds: the precision of timestamptz, so the time in
                // the event and in every read model row is the same value.
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
        ]);
        if let Some(idempotency) = idempotency {
            metadata.insert(
                idempotency_metadata::KEY.to_owned(),
                idempotency.key.clone(),
            );
            metadata.insert(
                idempotency_metadata::REQUEST_HASH.to_owned(),
                encode_hex(&idempotency.request_hash),
            );
        }
        let outcome = cqrs
            .execute_with_metadata(&id.to_string(), command, metadata)
            .await;
        match (outcome, idempotency) {
            (Ok(()), None) => self.appended(A::TYPE, id, command_id).await,
            (Ok(()), Some(idempotency)) => self
                .replay(idempotency)
                .await?
                .ok_or(CommandError::NothingAppended),
            (Err(error), None) => Err(CommandError::from_aggregate(error)),
            // Whatever failed, a request with the same key may have completed
            // meanwhile (it raced us to the key, or its events made our
            // command invalid): then its result is ours.
            (Err(error), Some(idempotency)) => match self.replay(idempotency).await? {
                Some(done) => Ok(done),
                None => Err(CommandError::from_aggregate(error)),
            },
        }
    }

    /// The stored result of `idempotency`'s key, if a command with it completed.
    async fn replay(&self, idempotency: &Idempotency) -> Result<Option<Accepted>, CommandError> {
        let row = sqlx::query!(
            r#"SELECT request_hash, aggregate_type, aggregate_id, version, position
                 FROM idempotency_keys
                WHERE key = $1 AND expires_at > now()"#,
            idempotency.key
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(CommandError::Database)?;
        let Some(row) = row else { return Ok(None) };
        if row.request_hash != idempotency.request_hash {
            return Err(CommandError::IdempotencyKeyReused);
        }
        let id = Uuid::parse_str(&row.aggregate_id).map_err(|_| CommandError::NothingAppended)?;
        Ok(Some(Accepted::new(
            &row.aggregate_type,
            id,
            row.version,
            row.position,
        )))
    }

    /// Finds the last event the command `command_id` appended. cqrs-es does
    /// not return positions, so the command id written into the events'
    /// metadata identifies them; the primary key narrows the scan to one
    /// aggregate.
    async fn appended(
        &self,
        aggregate_type: &'static str,
        id: Uuid,
        command_id: Uuid,
    ) -> Result<Accepted, CommandError> {
        let row = sqlx::query!(
            r#"SELECT sequence, position
                 FROM events
                WHERE aggregate_type = $1 AND aggregate_id = $2
                  AND metadata ->> 'command_id' = $3
                ORDER BY sequence DESC
                LIMIT 1"#,
            aggregate_type,
            id.to_string(),
            command_id.to_string(),
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(CommandError::Database)?
        .ok_or(CommandError::NothingAppended)?;
        Ok(Accepted::new(
            aggregate_type,
            id,
            row.sequence,
            row.position,
        ))
    }
}

impl CommandError {
    fn from_aggregate<E>(error: AggregateError<E>) -> Self
    where
        E: std::error::Error,
        CommandError: From<E>,
    {
        match error {
            AggregateError::UserError(e) => e.into(),
            AggregateError::AggregateConflict => Self::ConcurrentWrite,
            AggregateError::DatabaseConnectionError(e) => Self::StoreUnavailable(e),
            AggregateError::DeserializationError(e) | AggregateError::UnexpectedError(e) => {
                Self::Store(e)
            }
        }
    }
}
