//! projector: a Kafka consumer group that builds the denormalized read models
//! (in range-partitioned Postgres tables and in Redis) idempotently.

pub mod admin;
pub mod batch;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod dead_letters;
pub mod metrics;
pub mod order_summary;
pub mod partitions;
pub mod projections;
pub mod rebuild;
pub mod redis_sink;
pub mod start_check;
pub mod startup;
pub mod store;
