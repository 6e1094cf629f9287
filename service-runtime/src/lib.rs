//! Process plumbing shared by every service binary: tracing set-up, the
//! shutdown signal, and typed reading of environment variables.

pub mod backoff;
pub mod config;
pub mod shutdown;
pub mod telemetry;
