//! command-service: validates commands against the `Product` and `Order`
//! aggregates (cqrs-es), appends their events to Postgres (postgres-es), and
//! relays every committed event to Kafka through the transactional outbox.

pub mod aggregate_cache;
pub mod commands;
pub mod config;
pub mod domain;
pub mod error;
pub mod event_store;
pub mod group_commit;
pub mod http;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod relay;
pub mod startup;
