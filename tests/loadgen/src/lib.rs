//! Load generator and benchmark runner for the skeleton.
//!
//! Every workload reports the same [`stats::Measurement`] as the baseline it
//! is compared with (pgbench, ...), measured in the same run on the same
//! machine, because absolute numbers on a shared machine move 2–3× between
//! runs while ratios hold. `make bench` runs the suite and rewrites the
//! generated sections of `docs/BENCHMARKS.md`.

pub mod append;
pub mod auth;
pub mod baselines;
pub mod catchup;
pub mod cost_growth;
pub mod freshness;
pub mod machine;
pub mod mix;
pub mod pgbench;
pub mod procfs;
pub mod query_reads;
pub mod relay;
pub mod report;
pub mod service;
pub mod sql;
pub mod stats;
pub mod summary;
pub mod write_path;
