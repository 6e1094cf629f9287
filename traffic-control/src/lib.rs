//! Traffic protection.
