//! The contracts every service shares: event types and their wire format, the
//! Kafka envelope, and the SQL migrations of the event store and read models.
//!
//! Anything that crosses a process boundary is defined here, once.

pub mod envelope;
pub mod money;
pub mod order;
pub mod product;
pub mod views;

/// All SQL migrations (event store, outbox cursor, read models), embedded at
/// compile time from `schema/migrations`. Services that own the primary run
/// them at start-up; `sqlx migrate` takes an advisory lock, so concurrent
/// starts are safe.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[cfg(test)]
mod golden;
