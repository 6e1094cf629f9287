//! Executes commands against aggregates stored in Postgres and reports what
//! was appended.

use std::collections::HashMap;
use std::time::Duration;

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, CqrsFramework};
use schema::consistency::ConsistencyToken;
use schema::envelope::metadata;
use schema::trace_context::TraceParent;
use service_runtime::postgres::DbPool;
use uuid::Uuid;

use crate::aggregate_cache::CachedEventStore;
use crate::domain::{Guarded, Order, OrderCommand, Product, ProductCommand};
use crate::error::CommandError;
use crate::event_store::{idempotency_metadata, in_scope, EventStore};
use crate::group_commit::{GroupCommit, GroupCommitSettings};
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

/// How the command bus stores and remembers.
#[derive(Debug, Clone, Copy)]
pub struct BusSettings {
    /// An aggregate's state is snapshotted every that many events, so loading
    /// it reads the snapshot plus fewer than that many events instead of its
    /// whole history.
    pub snapshot_every: usize,
    /// How long an Idempotency-Key is remembered.
    pub idempotency_ttl: Duration,
    /// How many aggregates of each type stay in memory (0: none; see
    /// [`crate::aggregate_cache`]).
    pub cached_aggregates: usize,
    /// Most commands appended in one statement (see [`crate::group_commit`]).
    pub append_batch_max: usize,
    /// Appends in flight at once.
    pub append_workers: usize,
}

type Framework<A> = CqrsFramework<A, CachedEventStore<A>>;

fn framework<A: Aggregate<Services = ()> + Clone>(
    store: EventStore,
    snapshot_every: usize,
    cached_aggregates: usize,
) -> Framework<A> {
    CqrsFramework::new(
        CachedEventStore::new(
            PersistedEventStore::new_snapshot_store(store, snapshot_every)
                .with_upcasters(crate::domain::upcasters()),
            cached_aggregates,
        ),
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
    primary: DbPool,
    products: Framework<Product>,
    orders: Framework<Order>,
}

/// What a command carries besides itself.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// The request's `Idempotency-Key` context, if it sent one.
    pub idempotency: Option<Idempotency>,
    /// The span of the request, stored with the events so the relay and the
    /// projector continue its trace.
    pub trace: TraceParent,
}

impl CommandBus {
    pub fn new(primary: DbPool, settings: BusSettings) -> Self {
        let every = settings.snapshot_every.max(1);
        let appends = GroupCommit::start(
            primary.clone(),
            GroupCommitSettings {
                max_batch: settings.append_batch_max,
                workers: settings.append_workers,
                idempotency_ttl: settings.idempotency_ttl,
            },
        );
        let store = || EventStore::new(primary.clone(), appends.clone());
        Self {
            products: framework(store(), every, settings.cached_aggregates),
            orders: framework(store(), every, settings.cached_aggregates),
            primary,
        }
    }

    pub async fn product(
        &self,
        id: Uuid,
        command: Guarded<ProductCommand>,
        context: &CommandContext,
    ) -> Result<Accepted, CommandError> {
        self.execute(&self.products, id, command, context).await
    }

    pub async fn order(
        &self,
        id: Uuid,
        command: Guarded<OrderCommand>,
        context: &CommandContext,
    ) -> Result<Accepted, CommandError> {
        self.execute(&self.orders, id, command, context).await
    }

    async fn execute<A>(
        &self,
        cqrs: &Framework<A>,
        id: Uuid,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Accepted, CommandError>
    where
        A: Aggregate + Clone,
        A::Command: Clone,
        CommandError: From<A::Error>,
    {
        let idempotency = context.idempotency.as_ref();
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
            (metadata::TRACEPARENT.to_owned(), context.trace.to_string()),
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
        let aggregate_id = id.to_string();
        let (mut outcome, mut scope) = in_scope(
            false,
            cqrs.execute_with_metadata(&aggregate_id, command.clone(), metadata.clone()),
        )
        .await;
        if outcome.is_err() && scope.served_from_cache {
            // Decided on a cached aggregate that another instance may have
            // moved on: decide again on the database's state (docs/adr/0007).
            (outcome, scope) = in_scope(
                true,
                cqrs.execute_with_metadata(&aggregate_id, command, metadata),
            )
            .await;
        }
        match (outcome, scope.appended, idempotency) {
            (Ok(()), Some(appended), _) => Ok(Accepted::new(
                A::TYPE,
                id,
                appended.version,
                appended.position,
            )),
            (Ok(()), None, _) => Err(CommandError::NothingAppended),
            (Err(error), _, None) => Err(CommandError::from_aggregate(error)),
            // Whatever failed, a request with the same key may have completed
            // meanwhile (it raced us to the key, or its events made our
            // command invalid): then its result is ours.
            (Err(error), _, Some(idempotency)) => match self.replay(idempotency).await? {
                Some(done) => Ok(done),
                None => Err(CommandError::from_aggregate(error)),
            },
        }
    }

    /// The stored result of `idempotency`'s key, if a command with it completed.
    async fn replay(&self, idempotency: &Idempotency) -> Result<Option<Accepted>, CommandError> {
        let mut connection = self
            .primary
            .acquire()
            .await
            .map_err(CommandError::Database)?;
        let row = sqlx::query!(
            r#"SELECT request_hash, aggregate_type, aggregate_id, version, position
                 FROM idempotency_keys
                WHERE key = $1 AND expires_at > now()"#,
            idempotency.key
        )
        .fetch_optional(&mut *connection)
        .await
        .map_err(CommandError::Database)?;
        connection.finish().await.map_err(CommandError::Database)?;
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
