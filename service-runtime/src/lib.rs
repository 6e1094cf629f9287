//! Process plumbing shared by every service binary: tracing set-up, the
//! shutdown signal, typed reading of environment variables, and Postgres pools.

pub mod backoff;
pub mod config;
pub mod postgres;
pub mod shutdown;
pub mod telemetry;
