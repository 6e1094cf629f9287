//! Optimistic concurrency for commands.
//!
//! A client that read an aggregate at version `n` (e.g. from an `ETag`) can
//! send `If-Match: n` so that its command is rejected if anyone else changed
//! the aggregate in between, instead of silently acting on stale state. The
//! event store's unique `(aggregate_type, aggregate_id, sequence)` key only
//! protects against concurrent *writes*; this guard protects against commands
//! decided on an outdated *read*.

use uuid::Uuid;

/// A command together with the aggregate version the client expects (and
/// whom the caller acts for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guarded<C> {
    /// The version the client believes the aggregate is at; `None` accepts any.
    pub expected_version: Option<u64>,
    /// The customer the caller is limited to (a customer token), or None for
    /// a back-office caller. Aggregates decide what such a caller may do
    /// (object-level authorization belongs with the rules, in `handle`).
    pub acting_for: Option<Uuid>,
    /// The command to handle if the version matches.
    pub command: C,
}

impl<C> Guarded<C> {
    /// Wraps `command`, to be handled only if the aggregate is at
    /// `expected_version` (or at any version when it is `None`).
    pub fn new(command: C, expected_version: Option<u64>) -> Self {
        Self {
            expected_version,
            acting_for: None,
            command,
        }
    }

    /// The same command, sent by a caller limited to `customer`.
    pub fn acting_for(mut self, customer: Option<Uuid>) -> Self {
        self.acting_for = customer;
        self
    }

    /// Wraps `command`, to be handled only if the aggregate is at exactly `version`.
    pub fn expecting(version: u64, command: C) -> Self {
        Self::new(command, Some(version))
    }
}

impl<C> From<C> for Guarded<C> {
    /// An unguarded command: the client does not care which version it acts on.
    fn from(command: C) -> Self {
        Self::new(command, None)
    }
}

/// The aggregate is not at the version the client expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected version {expected}, but the aggregate is at version {actual}")]
pub struct VersionMismatch {
    /// The version the client sent.
    pub expected: u64,
    /// The version the aggregate is actually at.
    pub actual: u64,
}

/// Checks a client's expected version against the aggregate's `actual` one.
///
/// Both aggregates call this first in `handle`, so a stale client learns about
/// the conflict before any business rule is evaluated against state it has
/// not seen.
pub fn check_version(expected: Option<u64>, actual: u64) -> Result<(), VersionMismatch> {
    match expected {
        Some(expected) if expected != actual => Err(VersionMismatch { expected, actual }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_expectation_accepts_any_version() {
        assert_eq!(check_version(None, 0), Ok(()));
        assert_eq!(check_version(None, 7), Ok(()));
    }

    #[test]
    fn matching_expectation_is_accepted() {
        assert_eq!(check_version(Some(3), 3), Ok(()));
    }

    #[test]
    fn mismatching_expectation_is_rejected_with_both_versions() {
        assert_eq!(
            check_version(Some(2), 3),
            Err(VersionMismatch {
                expected: 2,
                actual: 3
            })
        );
    }

    #[test]
    fn from_command_is_unguarded() {
        let guarded: Guarded<&str> = "cmd".into();
        assert_eq!(guarded.expected_version, None);
        assert_eq!(Guarded::expecting(4, "cmd").expected_version, Some(4));
    }
}
