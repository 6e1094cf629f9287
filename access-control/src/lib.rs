//! JWT bearer authentication.
