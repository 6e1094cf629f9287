//! Executes commands against aggregates stored in Postgres and reports what
//! was appended.

use std::collections::HashMap;

use cqrs_es::{Aggregate, AggregateError};
use postgres_es::{postgres_snapshot_cqrs, PostgresCqrs};
use schema::consistency::ConsistencyToken;
use schema::envelope::metadata;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Guarded, Order, OrderCommand, Product, ProductCommand};
use crate::error::CommandError;

/// What a successful command appended: the aggregate's new version, the
/// global position of its last event, and both as an opaque
/// [`ConsistencyToken`] the query side accepts for read-your-writes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    pub aggregate_type: &'static str,
    pub aggregate_id: Uuid,
    pub version: i64,
    pub position: i64,
    pub consistency_token: String,
}

/// The command side's single entry point: one cqrs-es framework per aggregate
/// over one pool.
///
/// No cqrs-es `Query` is registered on purpose: queries run in-process after
/// commit, so a crash in between would lose the event for them. Read models
/// are fed only from the outbox relay, which cannot skip an event.
pub struct CommandBus {
    pool: PgPool,
    products: PostgresCqrs<Product>,
    orders: PostgresCqrs<Order>,
}

impl CommandBus {
    /// `snapshot_every`: an aggregate's state is snapshotted every that many
    /// events, so loading it reads the snapshot plus at most that many events
    /// instead of its whole history.
    pub fn new(pool: PgPool, snapshot_every: usize) -> Self {
        let every = snapshot_every.max(1);
        Self {
            products: postgres_snapshot_cqrs(pool.clone(), vec![], every, ()),
            orders: postgres_snapshot_cqrs(pool.clone(), vec![], every, ()),
            pool,
        }
    }

    pub async fn product(
        &self,
        id: Uuid,
        command: Guarded<ProductCommand>,
    ) -> Result<Accepted, CommandError> {
        self.execute(&self.products, id, command).await
    }

    pub async fn order(
        &self,
        id: Uuid,
        command: Guarded<OrderCommand>,
    ) -> Result<Accepted, CommandError> {
        self.execute(&self.orders, id, command).await
    }

    async fn execute<A>(
        &self,
        cqrs: &PostgresCqrs<A>,
        id: Uuid,
        command: A::Command,
    ) -> Result<Accepted, CommandError>
    where
        A: Aggregate,
        CommandError: From<A::Error>,
    {
        let command_id = Uuid::now_v7();
        let metadata = HashMap::from([
            (metadata::COMMAND_ID.to_owned(), command_id.to_string()),
            (
                metadata::OCCURRED_AT.to_owned(),
                // Microseconds: the precision of timestamptz, so the time in
                // the event and in every read model row is the same value.
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
        ]);
        cqrs.execute_with_metadata(&id.to_string(), command, metadata)
            .await
            .map_err(CommandError::from_aggregate)?;
        self.appended(A::TYPE, id, command_id).await
    }

    /// Finds the last event the command `command_id` appended. postgres-es
    /// does not return positions, so the command id written into the events'
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
        let consistency_token = ConsistencyToken {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: id.to_string(),
            version: row.sequence,
            position: row.position,
        }
        .encode();
        Ok(Accepted {
            aggregate_type,
            aggregate_id: id,
            version: row.sequence,
            position: row.position,
            consistency_token,
        })
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
