//! The contracts every service shares: event types and their wire format, the
//! Kafka envelope, and the SQL migrations of the event store and read models.
//!
//! Anything that crosses a process boundary is defined here, once.

pub mod consistency;
pub mod envelope;
pub mod money;
pub mod order;
pub mod product;
pub mod trace_context;
pub mod upcast;
pub mod views;

/// What every event enum of the contract says about each of its values: a
/// stable name and the version of its payload shape. Stored in
/// `events.event_type`/`event_version` and sent as Kafka headers.
pub trait VersionedEvent {
    /// Stable name, e.g. `OrderPlaced`; never renamed once published.
    fn event_type(&self) -> &'static str;
    /// Version of this event's payload shape; bumped together with an upcaster.
    fn event_version(&self) -> &'static str;
}

/// All SQL migrations (event store, outbox cursor, read models), embedded at
/// compile time from `schema/migrations`. Services that own the primary run
/// them at start-up; `sqlx migrate` takes an advisory lock, so concurrent
/// starts are safe.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[cfg(test)]
mod golden;
