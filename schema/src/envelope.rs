//! How an event travels: the metadata stored beside it in `events.metadata`,
//! the Kafka topic it is published to, and the Kafka headers that describe it.
//!
//! The Kafka message key is the aggregate id (so one aggregate's events stay in
//! one partition, in order) and the value is the event payload JSON exactly as
//! stored in `events.payload`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::upcast::{self, UpcastError};
use crate::{order, product, VersionedEvent};

/// Keys of `events.metadata`, written by command-service with every event.
pub mod metadata {
    /// RFC 3339 time at which the command was accepted: the event's business time.
    /// Read models partition and bucket by it.
    pub const OCCURRED_AT: &str = "occurred_at";
    /// Unique id of the command that produced the event; lets the command side find
    /// the rows one command wrote.
    pub const COMMAND_ID: &str = "command_id";
    /// W3C `traceparent` of the command's span, so the relay and the
    /// projector continue its trace (see [`crate::trace_context`]). Absent on
    /// events appended before tracing existed.
    pub const TRACEPARENT: &str = crate::trace_context::TRACEPARENT;
}

/// Kafka header names. Every published event carries all of them.
pub mod header {
    pub const AGGREGATE_TYPE: &str = "aggregate_type";
    pub const AGGREGATE_ID: &str = "aggregate_id";
    /// Per-aggregate sequence (1, 2, ...): with the aggregate id, the event's identity.
    /// Consumers drop a message whose sequence they have already applied.
    pub const SEQUENCE: &str = "sequence";
    /// Global position in the event store (`events.position`).
    pub const POSITION: &str = "position";
    pub const EVENT_TYPE: &str = "event_type";
    pub const EVENT_VERSION: &str = "event_version";
    pub const OCCURRED_AT: &str = "occurred_at";
    pub const CONTENT_TYPE: &str = "content-type";
    /// W3C `traceparent` of the publishing span. Optional: not part of
    /// [`super::EventHeaders`], because an event without one is still valid.
    pub const TRACEPARENT: &str = crate::trace_context::TRACEPARENT;
}

/// Topic that carries the events of `aggregate_type`, e.g. `events.order`.
pub fn topic_for(prefix: &str, aggregate_type: &str) -> String {
    format!("{prefix}.{}", aggregate_type.to_ascii_lowercase())
}

/// Every aggregate type that has a topic.
pub const AGGREGATE_TYPES: [&str; 2] = [product::AGGREGATE_TYPE, order::AGGREGATE_TYPE];

/// The description of one published event, carried in Kafka headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHeaders {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub position: i64,
    pub event_type: String,
    pub event_version: String,
    pub occurred_at: DateTime<Utc>,
}

/// Why a message's headers could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("header {0:?} is missing")]
    Missing(&'static str),
    #[error("header {name:?} is malformed: {value:?}")]
    Malformed { name: &'static str, value: String },
}

impl EventHeaders {
    /// Header name/value pairs in a fixed order.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            (header::AGGREGATE_TYPE, self.aggregate_type.clone()),
            (header::AGGREGATE_ID, self.aggregate_id.clone()),
            (header::SEQUENCE, self.sequence.to_string()),
            (header::POSITION, self.position.to_string()),
            (header::EVENT_TYPE, self.event_type.clone()),
            (header::EVENT_VERSION, self.event_version.clone()),
            (header::OCCURRED_AT, self.occurred_at.to_rfc3339()),
            (header::CONTENT_TYPE, "application/json".to_owned()),
        ]
    }

    /// Reads the headers back from name/value pairs (unknown names are ignored,
    /// so producers may add headers without breaking consumers).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, HeaderError> {
        let map: HashMap<&str, &[u8]> = pairs.into_iter().collect();
        let text = |name: &'static str| -> Result<String, HeaderError> {
            let raw = map.get(name).ok_or(HeaderError::Missing(name))?;
            String::from_utf8(raw.to_vec()).map_err(|e| HeaderError::Malformed {
                name,
                value: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            })
        };
        let number = |name: &'static str| -> Result<i64, HeaderError> {
            let value = text(name)?;
            value
                .parse()
                .map_err(|_| HeaderError::Malformed { name, value })
        };
        let occurred_at = {
            let value = text(header::OCCURRED_AT)?;
            DateTime::parse_from_rfc3339(&value)
                .map_err(|_| HeaderError::Malformed {
                    name: header::OCCURRED_AT,
                    value,
                })?
                .with_timezone(&Utc)
        };
        Ok(Self {
            aggregate_type: text(header::AGGREGATE_TYPE)?,
            aggregate_id: text(header::AGGREGATE_ID)?,
            sequence: number(header::SEQUENCE)?,
            position: number(header::POSITION)?,
            event_type: text(header::EVENT_TYPE)?,
            event_version: text(header::EVENT_VERSION)?,
            occurred_at,
        })
    }
}

/// An event of any aggregate, decoded from its aggregate type and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyEvent {
    Product(product::ProductEvent),
    Order(order::OrderEvent),
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown aggregate type {0:?}")]
    UnknownAggregateType(String),
    #[error("payload of a {aggregate_type} event is not valid: {source}")]
    Payload {
        aggregate_type: String,
        #[source]
        source: serde_json::Error,
    },
    /// The payload does not have the shape of the version it is labelled with.
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    /// The payload decoded, but to another event type or version than its
    /// label (after upcasting) says: e.g. a version newer than this build knows.
    #[error(
        "event labelled {event_type} v{event_version} (v{upcast_version} after upcasting) \
         decoded as {decoded_type} v{decoded_version}"
    )]
    Mismatch {
        /// `event_type` as labelled.
        event_type: String,
        /// `event_version` as labelled.
        event_version: String,
        /// The version the label upcasts to.
        upcast_version: String,
        /// The type of the decoded value.
        decoded_type: &'static str,
        /// The version of the decoded value.
        decoded_version: &'static str,
    },
}

impl VersionedEvent for AnyEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Product(event) => event.event_type(),
            Self::Order(event) => event.event_type(),
        }
    }

    fn event_version(&self) -> &'static str {
        match self {
            Self::Product(event) => event.event_version(),
            Self::Order(event) => event.event_version(),
        }
    }
}

impl AnyEvent {
    /// Decodes `payload` (the JSON in `events.payload` / the Kafka value),
    /// which must already be in the *current* version of its event.
    ///
    /// Stored events keep the version they were written with; to read one,
    /// use [`AnyEvent::decode_versioned`], which upcasts first.
    pub fn decode(aggregate_type: &str, payload: &[u8]) -> Result<Self, DecodeError> {
        let wrap = |source| DecodeError::Payload {
            aggregate_type: aggregate_type.to_owned(),
            source,
        };
        match aggregate_type {
            product::AGGREGATE_TYPE => serde_json::from_slice(payload)
                .map(Self::Product)
                .map_err(wrap),
            order::AGGREGATE_TYPE => serde_json::from_slice(payload)
                .map(Self::Order)
                .map_err(wrap),
            other => Err(DecodeError::UnknownAggregateType(other.to_owned())),
        }
    }

    /// Decodes `payload` labelled `event_type` at `event_version` (the
    /// `events` columns / Kafka headers of the same names): upcasts it to the
    /// current version with [`crate::upcast::upcast`], then deserializes it.
    ///
    /// Fails if the decoded event's type or version differs from the label
    /// after upcasting, so a payload from a newer writer, or one labelled
    /// with another event type, is reported instead of misread.
    pub fn decode_versioned(
        aggregate_type: &str,
        event_type: &str,
        event_version: &str,
        payload: &[u8],
    ) -> Result<Self, DecodeError> {
        let (version, event) = if upcast::needs_upcast(aggregate_type, event_type, event_version) {
            let value = serde_json::from_slice(payload).map_err(|source| DecodeError::Payload {
                aggregate_type: aggregate_type.to_owned(),
                source,
            })?;
            let (version, value) =
                upcast::upcast(aggregate_type, event_type, event_version, value)?;
            (version, Self::decode_value(aggregate_type, value)?)
        } else {
            (
                event_version.to_owned(),
                Self::decode(aggregate_type, payload)?,
            )
        };
        if event.event_type() != event_type || event.event_version() != version {
            return Err(DecodeError::Mismatch {
                event_type: event_type.to_owned(),
                event_version: event_version.to_owned(),
                upcast_version: version,
                decoded_type: event.event_type(),
                decoded_version: event.event_version(),
            });
        }
        Ok(event)
    }

    /// [`AnyEvent::decode`] for a payload already parsed into JSON.
    fn decode_value(aggregate_type: &str, value: serde_json::Value) -> Result<Self, DecodeError> {
        let wrap = |source| DecodeError::Payload {
            aggregate_type: aggregate_type.to_owned(),
            source,
        };
        match aggregate_type {
            product::AGGREGATE_TYPE => serde_json::from_value(value)
                .map(Self::Product)
                .map_err(wrap),
            order::AGGREGATE_TYPE => serde_json::from_value(value).map(Self::Order).map_err(wrap),
            other => Err(DecodeError::UnknownAggregateType(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EventHeaders {
        EventHeaders {
            aggregate_type: "Order".into(),
            aggregate_id: "0193a1c2-0000-7000-8000-000000000001".into(),
            sequence: 3,
            position: 42,
            event_type: "OrderConfirmed".into(),
            event_version: "1".into(),
            occurred_at: DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
                .expect("valid time")
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn headers_round_trip() {
        let pairs = sample().to_pairs();
        let back =
            EventHeaders::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_bytes()))).expect("ok");
        assert_eq!(back, sample());
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let mut pairs = sample().to_pairs();
        pairs.retain(|(k, _)| *k != header::SEQUENCE);
        let err = EventHeaders::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_bytes())));
        assert_eq!(err, Err(HeaderError::Missing(header::SEQUENCE)));

        let mut pairs = sample().to_pairs();
        pairs.push((header::POSITION, "x".into()));
        pairs.remove(3);
        let err = EventHeaders::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_bytes())));
        assert!(
            matches!(err, Err(HeaderError::Malformed { name, .. }) if name == header::POSITION)
        );
    }

    #[test]
    fn topics_are_per_aggregate_type() {
        assert_eq!(topic_for("events", "Order"), "events.order");
    }

    #[test]
    fn decode_versioned_upcasts_old_versions_and_reads_current_ones() {
        let v1 = br#"{"OrderCancelled":{"reason":"r"}}"#;
        let v2 = br#"{"OrderCancelled":{"reason":"r","cancelled_by":"unknown"}}"#;
        let from_v1 = AnyEvent::decode_versioned("Order", "OrderCancelled", "1", v1).expect("v1");
        let from_v2 = AnyEvent::decode_versioned("Order", "OrderCancelled", "2", v2).expect("v2");
        assert_eq!(from_v1, from_v2);
        assert_eq!(
            from_v1,
            AnyEvent::Order(order::OrderEvent::OrderCancelled {
                reason: "r".into(),
                cancelled_by: order::CancelledBy::Unknown,
            })
        );
        assert_eq!(from_v1.event_version(), "2");
        // The unversioned decode only reads the current shape.
        assert!(AnyEvent::decode("Order", v1).is_err());
        let confirmed = br#"{"OrderConfirmed":{}}"#;
        assert!(matches!(
            AnyEvent::decode_versioned("Order", "OrderConfirmed", "1", confirmed),
            Ok(AnyEvent::Order(order::OrderEvent::OrderConfirmed {}))
        ));
    }

    #[test]
    fn decode_versioned_rejects_payloads_that_contradict_their_labels() {
        let v2 = br#"{"OrderCancelled":{"reason":"r","cancelled_by":"system"}}"#;
        // A version this build does not know (e.g. from a newer writer).
        assert!(matches!(
            AnyEvent::decode_versioned("Order", "OrderCancelled", "3", v2),
            Err(DecodeError::Mismatch {
                decoded_version: "2",
                ..
            })
        ));
        // A current payload labelled with its old version is not upcast twice.
        assert!(matches!(
            AnyEvent::decode_versioned("Order", "OrderCancelled", "1", v2),
            Err(DecodeError::Upcast(_))
        ));
        // The label's event type must match the payload's.
        assert!(matches!(
            AnyEvent::decode_versioned("Order", "OrderShipped", "2", v2),
            Err(DecodeError::Mismatch {
                decoded_type: "OrderCancelled",
                ..
            })
        ));
        assert!(matches!(
            AnyEvent::decode_versioned("Order", "OrderCancelled", "1", b"not json"),
            Err(DecodeError::Payload { .. })
        ));
        assert!(matches!(
            AnyEvent::decode_versioned("Invoice", "InvoiceSent", "1", b"{}"),
            Err(DecodeError::UnknownAggregateType(_))
        ));
    }

    #[test]
    fn unknown_aggregate_type_is_an_error_not_a_panic() {
        assert!(matches!(
            AnyEvent::decode("Invoice", b"{}"),
            Err(DecodeError::UnknownAggregateType(_))
        ));
        assert!(matches!(
            AnyEvent::decode("Order", b"{\"Nope\":{}}"),
            Err(DecodeError::Payload { .. })
        ));
    }
}
