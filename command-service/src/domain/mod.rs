//! The pure domain layer of command-service: the `Product` and `Order`
//! aggregates, their commands and their business rules.
//!
//! Nothing here does I/O. Every rule lives in an aggregate's `handle`, which
//! either emits past-tense events or returns a typed error; `apply` only folds
//! events into state, because it also runs when events are replayed from the
//! store and replay must never fail.
//!
//! The events themselves belong to the `schema` crate (they are a contract
//! shared with the projector). cqrs-es needs them to implement its
//! `DomainEvent` trait, which the orphan rule forbids for two foreign types,
//! so events are wrapped in [`Stored`], a `#[serde(transparent)]` newtype
//! whose JSON is byte-identical to the schema enum it wraps.

use std::fmt::Debug;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use schema::VersionedEvent;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod guard;
#[cfg(test)]
mod mem_repo;
pub mod order;
pub mod product;
#[cfg(test)]
mod snapshot_tests;
pub mod upcasting;

pub use guard::{Guarded, VersionMismatch};
pub use order::{Order, OrderCommand, OrderError, OrderStatus, StoredOrderEvent};
pub use product::{Product, ProductCommand, ProductError, StoredProductEvent};
pub use upcasting::upcasters;

/// A schema event as cqrs-es stores it.
///
/// cqrs-es requires `Aggregate::Event: DomainEvent`, and the orphan rule
/// forbids implementing cqrs-es's trait for the schema crate's enums here. The
/// wrapper is `#[serde(transparent)]`, so what lands in `events.payload` is
/// byte-identical to the schema enum's JSON and the projector, which decodes
/// with `schema` alone, never sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Stored<E>(pub E);

impl<E> DomainEvent for Stored<E>
where
    E: VersionedEvent + Serialize + DeserializeOwned + Clone + PartialEq + Debug + Send + Sync,
{
    fn event_type(&self) -> String {
        self.0.event_type().to_owned()
    }

    fn event_version(&self) -> String {
        self.0.event_version().to_owned()
    }
}

/// Records `event` as the outcome of a command on `aggregate`.
///
/// `EventSink::write` applies the event to the aggregate it is given. cqrs-es
/// 0.5 calls `handle` on the aggregate it will snapshot and applies the new
/// events to it again when a snapshot is due, so writing against the handled
/// aggregate itself would fold the event in twice (snapshot `version` one
/// ahead of its `last_sequence`). Writing against a scratch copy keeps the
/// aggregate as loaded; `snapshot_tests` pins this. Every aggregate emits
/// through here, so the workaround lives in one place.
pub(crate) async fn emit<A, E>(sink: &EventSink<A>, aggregate: &A, event: E)
where
    A: Aggregate<Event = Stored<E>> + Clone,
    Stored<E>: DomainEvent,
{
    sink.write(Stored(event), &mut aggregate.clone()).await;
}

/// How a rejected command should be reported, independent of transport.
///
/// The HTTP layer maps these to status codes; keeping the classification here
/// means a new error variant cannot be added without deciding its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// The aggregate does not exist (HTTP 404).
    NotFound,
    /// The client's expected version (`If-Match`) is not the aggregate's
    /// (HTTP 412): re-read, decide again, resend with the new version.
    StaleVersion,
    /// The command collides with the aggregate's current identity (HTTP 409).
    Conflict,
    /// The caller may not act on this aggregate or for this customer (HTTP 403).
    Forbidden,
    /// The command breaks a business rule or carries invalid data (HTTP 422).
    Violation,
}
