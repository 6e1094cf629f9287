//! W3C Trace Context (`traceparent`) as it travels with a command's events.
//!
//! One trace follows a write end to end: the HTTP request's `traceparent`
//! (or a new root when the client sent none) → the command's span in
//! command-service → `events.metadata.traceparent` (written in the append
//! transaction) → the `traceparent` Kafka header the relay publishes → the
//! projector's span that applies the event. Each hop records the trace id
//! and its own span id as span fields (`trace_id`, `span_id`,
//! `parent_span_id`), so the JSON logs of all three processes join on
//! `trace_id`, and an OpenTelemetry exporter added by a fork would see one
//! trace.
//!
//! Format (<https://www.w3.org/TR/trace-context/#traceparent-header>):
//! `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`.

use std::fmt;
use std::str::FromStr;

/// Name of the HTTP header, the `events.metadata` key and the Kafka header.
pub const TRACEPARENT: &str = "traceparent";

/// One position in a trace: the trace it belongs to and the span that is
/// the parent of whatever happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

/// Why a `traceparent` value was refused. The spec says to start a new trace
/// instead of failing the request, which [`TraceParent::from_header`] does.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceParentError {
    #[error("traceparent must be `00-<32 hex>-<16 hex>-<2 hex>`")]
    Malformed,
    #[error("traceparent version ff is forbidden")]
    ForbiddenVersion,
    #[error("traceparent trace id or parent id is all zeros")]
    ZeroId,
}

impl TraceParent {
    /// A new trace (sampled), for requests that arrive without one.
    pub fn new_root() -> Self {
        Self {
            trace_id: random_nonzero_u128(),
            span_id: random_nonzero_u64(),
            flags: 0x01,
        }
    }

    /// The context sent by a client, or a new root when it sent none or an
    /// invalid one (as the W3C spec asks: a bad header never fails a request).
    pub fn from_header(value: Option<&str>) -> Self {
        value
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(Self::new_root)
    }

    /// A new span in the same trace, whose parent is `self`.
    pub fn child(&self) -> Self {
        Self {
            span_id: random_nonzero_u64(),
            ..*self
        }
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// This span's id as 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// Whether the caller sampled this trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 == 0x01
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        // Versions above 00 may append fields; the first four keep their meaning.
        let [version, trace, span, flags, ..] = parts.as_slice() else {
            return Err(TraceParentError::Malformed);
        };
        let hex = |text: &str, len: usize| {
            (text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                .then_some(())
                .ok_or(TraceParentError::Malformed)
        };
        hex(version, 2)?;
        hex(trace, 32)?;
        hex(span, 16)?;
        hex(flags, 2)?;
        if *version == "ff" {
            return Err(TraceParentError::ForbiddenVersion);
        }
        if *version == "00" && parts.len() != 4 {
            return Err(TraceParentError::Malformed);
        }
        let parse =
            |text: &str| u128::from_str_radix(text, 16).map_err(|_| TraceParentError::Malformed);
        let trace_id = parse(trace)?;
        let span_id = parse(span)? as u64;
        if trace_id == 0 || span_id == 0 {
            return Err(TraceParentError::ZeroId);
        }
        Ok(Self {
            trace_id,
            span_id,
            flags: parse(flags)? as u8,
        })
    }
}

fn random_nonzero_u128() -> u128 {
    // A v4 UUID is 122 random bits from the OS generator: plenty for ids
    // that only need to be unique, and no extra dependency.
    loop {
        let id = uuid::Uuid::new_v4().as_u128();
        if id != 0 {
            return id;
        }
    }
}

fn random_nonzero_u64() -> u64 {
    loop {
        let id = uuid::Uuid::new_v4().as_u64_pair().1;
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn round_trips_the_spec_example() {
        let parent: TraceParent = EXAMPLE.parse().expect("valid");
        assert_eq!(parent.to_string(), EXAMPLE);
        assert_eq!(parent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.span_id(), "00f067aa0ba902b7");
        assert!(parent.sampled());
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_a_new_span() {
        let parent: TraceParent = EXAMPLE.parse().expect("valid");
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.span_id(), parent.span_id());
        assert_eq!(child.to_string().len(), EXAMPLE.len());
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(
                bad.parse::<TraceParent>(),
                Err(TraceParentError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse::<TraceParent>(),
            Err(TraceParentError::ForbiddenVersion)
        );
        assert_eq!(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse::<TraceParent>(),
            Err(TraceParentError::ZeroId)
        );
    }

    #[test]
    fn a_missing_or_bad_header_starts_a_new_trace() {
        let a = TraceParent::from_header(None);
        let b = TraceParent::from_header(Some("garbage"));
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(a.sampled());
        let kept = TraceParent::from_header(Some(EXAMPLE));
        assert_eq!(kept.to_string(), EXAMPLE);
    }

    #[test]
    fn a_future_version_keeps_its_first_four_fields() {
        let parent: TraceParent = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what"
            .parse()
            .expect("future versions are accepted");
        assert_eq!(parent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
