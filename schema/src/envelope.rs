//! How an event travels: the metadata stored beside it in `events.metadata`,
//! the Kafka topic it is published to, and the Kafka headers that describe it.
//!
//! The Kafka message key is the aggregate id (so one aggregate's events stay in
//! one partition, in order) and the value is the event payload JSON exactly as
//! stored in `events.payload`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::{order, product};

/// Keys of `events.metadata`, written by command-service with every event.
pub mod metadata {
    /// RFC 3339 time at which the command was accepted: the event's business time.
    /// Read models partition and bucket by it.
    pub const OCCURRED_AT: &str = "occurred_at";
    /// Unique id of the command that produced the event; lets the command side find
    /// the rows one command wrote.
    pub const COMMAND_ID: &str = "command_id";
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
}

impl AnyEvent {
    /// Decodes `payload` (the JSON in `events.payload` / the Kafka value).
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
