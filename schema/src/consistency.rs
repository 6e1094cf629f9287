//! The consistency token: what a client holds after a command so that a later
//! read can ask for data at least that fresh (read-your-writes).
//!
//! Clients treat it as opaque. Its format, for the services that read it:
//! `ct1.` followed by the unpadded base64url encoding of
//! `{aggregate_type}:{aggregate_id}:{version}:{position}`, where `version` is
//! the aggregate's sequence after the command and `position` the global
//! position of its last event. A read model that reflects `aggregate_id` at
//! `version` (or has applied `position`) satisfies the token. The `ct1`
//! prefix versions the format itself.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// HTTP header carrying the token in command responses and read requests.
pub const HEADER: &str = "consistency-token";

const PREFIX: &str = "ct1.";

/// A decoded consistency token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub version: i64,
    pub position: i64,
}

/// A string that is not a consistency token of a known format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid consistency token")]
pub struct InvalidToken;

impl ConsistencyToken {
    pub fn encode(&self) -> String {
        let raw = format!(
            "{}:{}:{}:{}",
            self.aggregate_type, self.aggregate_id, self.version, self.position
        );
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    pub fn decode(token: &str) -> Result<Self, InvalidToken> {
        let body = token.strip_prefix(PREFIX).ok_or(InvalidToken)?;
        let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| InvalidToken)?;
        let raw = String::from_utf8(raw).map_err(|_| InvalidToken)?;
        // The id may not contain ':' in this domain (UUIDs), but split from the
        // right so that only the two numbers are fixed-position.
        let mut parts = raw.rsplitn(3, ':');
        let position = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or(InvalidToken)?;
        let version = parts
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or(InvalidToken)?;
        let (aggregate_type, aggregate_id) = parts
            .next()
            .and_then(|r| r.split_once(':'))
            .ok_or(InvalidToken)?;
        if aggregate_type.is_empty() || aggregate_id.is_empty() {
            return Err(InvalidToken);
        }
        Ok(Self {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            version,
            position,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_url_safe() {
        let token = ConsistencyToken {
            aggregate_type: "Order".into(),
            aggregate_id: "0193a1c2-0000-7000-8000-000000000001".into(),
            version: 3,
            position: 1_234_567,
        };
        let encoded = token.encode();
        assert!(encoded.starts_with("ct1."));
        assert!(encoded[4..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(ConsistencyToken::decode(&encoded), Ok(token));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "ct1.",
            "ct2.T3JkZXI6eDoxOjI",
            "ct1.!!!",
            "ct1.T3JkZXI6eDp5Onk",
        ] {
            assert_eq!(ConsistencyToken::decode(bad), Err(InvalidToken), "{bad:?}");
        }
    }
}
