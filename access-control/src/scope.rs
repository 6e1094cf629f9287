//! The scopes a token can grant.

use std::fmt;
use std::str::FromStr;

/// One permission a token can carry in its `scope` claim.
///
/// Scopes are independent: `admin` does not imply `write`, and `write` does
/// not imply `read`. A token that should do everything lists all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `read`: query endpoints.
    Read,
    /// `write`: command endpoints.
    Write,
    /// `admin`: operational endpoints (replays, maintenance).
    Admin,
}

impl Scope {
    /// Every scope, in the order [`Scopes`] lists them.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    /// The word for this scope in the `scope` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Admin => 4,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not one of the known scopes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}: expected read, write or admin")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    /// Parses the exact claim word; scope words are case-sensitive (RFC 6749 §3.3).
    fn from_str(word: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == word)
            .ok_or_else(|| UnknownScope(word.to_owned()))
    }
}

/// A set of [`Scope`]s.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope at all.
    pub const fn empty() -> Self {
        Scopes(0)
    }

    /// Whether `scope` is in the set.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Adds `scope` to the set.
    pub fn insert(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }

    /// Whether the set has no scope.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes in the set, in [`Scope::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL
            .into_iter()
            .filter(move |scope| self.contains(*scope))
    }

    /// The known scopes of a space-separated `scope` claim. Unknown words are
    /// skipped so that an issuer can add scopes for other audiences.
    pub(crate) fn from_claim(claim: &str) -> Self {
        claim
            .split_ascii_whitespace()
            .filter_map(|word| word.parse().ok())
            .collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut scopes = Scopes::empty();
        for scope in iter {
            scopes.insert(scope);
        }
        scopes
    }
}

/// The claim form: space-separated words.
impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for scope in self.iter() {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
            first = false;
        }
        Ok(())
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_parsing_keeps_known_words_and_skips_others() {
        let scopes = Scopes::from_claim("  write openid READ admin:all read\tadmin ");
        assert_eq!(scopes.to_string(), "read write admin");
        assert!(Scopes::from_claim("").is_empty());
        assert!(!Scopes::from_claim("Read").contains(Scope::Read));
    }

    #[test]
    fn parses_scope_words() {
        assert_eq!("write".parse(), Ok(Scope::Write));
        assert_eq!(
            "owner".parse::<Scope>(),
            Err(UnknownScope("owner".to_owned()))
        );
    }
}
