//! query-service: the read side. Serves order summaries, customer order
//! history, the product catalog and sales reports from Postgres read
//! replicas chosen by health and lag ([`replicas`]), behind two cache tiers
//! invalidated by the projector's signals ([`cache`]), with read-your-writes
//! for requests carrying a consistency token ([`consistency`]).
//!
//! [`startup::Application`] is the whole service; `main` only reads the
//! [`config::Config`] and waits for a shutdown signal.

pub mod cache;
pub mod conditional;
pub mod config;
pub mod consistency;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod params;
pub mod read_model;
pub mod reads;
pub mod replicas;
pub mod routes;
pub mod startup;
