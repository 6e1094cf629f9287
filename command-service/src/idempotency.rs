//! `Idempotency-Key` (IETF httpapi idempotency-key draft): a client that
//! retries a command with the same key gets the original result instead of
//! a second execution.
//!
//! The key and a hash of the request are written with the command's events,
//! in one transaction ([`crate::event_store`]); a retry finds them and replays
//! the stored result, a retry with a different request is refused (422).

use sha2::{Digest, Sha256};

/// A validated key plus the hash of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: Vec<u8>,
}

/// Longest key accepted; the draft leaves it open, UUIDs need 36.
pub const MAX_KEY_LEN: usize = 255;

/// Why an `Idempotency-Key` header is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters")]
pub struct InvalidKey;

/// Parses the header value: an sf-string (`"..."`) per the draft, or the bare
/// token many clients send.
pub fn parse_key(raw: &str) -> Result<String, InvalidKey> {
    let raw = raw.trim();
    let key = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_graphic() && b != b'"');
    if valid {
        Ok(key.to_owned())
    } else {
        Err(InvalidKey)
    }
}

/// SHA-256 over method, path and the canonical JSON of the parsed body, so
/// whitespace or key order in the client's JSON does not make a retry look
/// like a different request.
pub fn request_hash(method: &str, path: &str, canonical_body: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b"\n");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical_body);
    hasher.finalize().to_vec()
}

pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sf_strings_or_tokens() {
        assert_eq!(parse_key("\"abc-1\"").as_deref(), Ok("abc-1"));
        assert_eq!(parse_key("abc-1").as_deref(), Ok("abc-1"));
        for bad in ["", "\"\"", "a b", "é", &"x".repeat(256)] {
            assert_eq!(parse_key(bad), Err(InvalidKey), "{bad:?}");
        }
    }

    #[test]
    fn hash_depends_on_method_path_and_body() {
        let h = request_hash("POST", "/orders", b"{}");
        assert_eq!(h, request_hash("POST", "/orders", b"{}"));
        assert_ne!(h, request_hash("POST", "/orders/1/confirm", b"{}"));
        assert_ne!(h, request_hash("POST", "/orders", b"{\"a\":1}"));
        assert_eq!(decode_hex(&encode_hex(&h)), Some(h));
        assert_eq!(decode_hex("0g"), None);
    }
}
