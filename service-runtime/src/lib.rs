//! Process plumbing shared by every service binary: tracing set-up, the
//! shutdown signal, typed reading of environment variables, Postgres pools,
//! HTTP server settings, and circuit breakers (with their Prometheus
//! metrics) around dependencies.

pub mod backoff;
pub mod breaker;
pub mod config;
pub mod http;
pub mod postgres;
pub mod shutdown;
pub mod telemetry;
