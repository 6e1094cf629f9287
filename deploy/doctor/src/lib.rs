//! `doctor`: a ranked bottleneck diagnosis of a running stack.
//!
//! It watches the stack for a window (default 5 s) while load runs:
//! Postgres statistics (`pg_stat_statements`, `pg_stat_user_tables`,
//! connections, replicas' replay position) on the primary and every replica,
//! the services' `/metrics` (pool occupancy, request latency, cache tiers,
//! outbox and consumer lag, breakers), the projector's consumer group on the
//! broker and Redis' keyspace counters. Counters are diffed between the
//! start and the end of the window, so history from before it (an earlier
//! incident, a benchmark an hour ago) does not count; gauges are sampled
//! every round. [`diagnosis::diagnose`] turns that into findings ranked as
//! the levers should be tried: database first, then pool, cache, replicas,
//! instances, partitions (see docs/adr/0015-bottleneck-doctor.md).

pub mod collect;
pub mod diagnosis;
pub mod observations;
pub mod prometheus_text;
pub mod report;

pub use collect::{collect, Sampling, Targets};
pub use diagnosis::{diagnose, Category, Finding, FindingKind, Severity, Thresholds};
pub use observations::Observations;
pub use report::Report;
