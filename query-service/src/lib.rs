//! query-service: the read side. Serves order summaries, customer order
//! history, the product catalog and sales reports from a Postgres read
//! replica, with order summaries served from Redis first.
//!
//! [`startup::Application`] is the whole service; `main` only reads the
//! [`config::Config`] and waits for a shutdown signal.

pub mod cache;
pub mod config;
pub mod error;
pub mod params;
pub mod read_model;
pub mod routes;
pub mod startup;
