//! Upcasting: rewriting a stored event payload of an older `event_version`
//! into the shape of the current version, so that only the current shape is
//! ever deserialized.
//!
//! Events are immutable: the event store keeps every payload with the
//! `event_version` it was written with, and the relay publishes both
//! unchanged. Readers therefore see old and new versions side by side and
//! upcast before decoding: the command side through a cqrs-es
//! `EventUpcaster` (command-service `domain::upcasting`), the projector
//! through [`crate::envelope::AnyEvent::decode_versioned`]. Both use this one
//! table, so they cannot disagree about what an old event means.
//!
//! Versions are opaque strings compared for equality (`"1"`, `"2"`, ...), not
//! semantic versions. [`STEPS`] holds one [`Step`] per
//! `(aggregate_type, event_type, from_version)`; [`upcast`] applies the step
//! that starts at the payload's version, then the one that starts at the
//! version it produced, and so on until none does.
//!
//! Changing an event's shape: bump its `event_version()`, add a step from the
//! previous version to [`STEPS`] (with a unit test below), and add a golden
//! file for the new version beside the old ones, which must keep decoding.

use serde_json::Value;

use crate::order;

/// One upcasting step: rewrites a payload of `event_type` (of
/// `aggregate_type`) at `from_version` into its shape at `to_version`.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Aggregate type of the event, e.g. `Order`.
    pub aggregate_type: &'static str,
    /// Event type the step applies to, e.g. `OrderCancelled`.
    pub event_type: &'static str,
    /// The version the step reads.
    pub from_version: &'static str,
    /// The version the step writes; the next integer after `from_version`.
    pub to_version: &'static str,
    /// The rewrite of the whole payload as stored (the externally tagged
    /// JSON, e.g. `{"OrderCancelled":{...}}`); `Err` explains why the payload
    /// does not have the `from_version` shape.
    pub apply: fn(Value) -> Result<Value, String>,
}

/// Every upcasting step, for every aggregate and event type.
pub static STEPS: &[Step] = &[Step {
    aggregate_type: order::AGGREGATE_TYPE,
    event_type: "OrderCancelled",
    from_version: "1",
    to_version: "2",
    apply: order_cancelled_v1_to_v2,
}];

/// A payload did not have the shape of the version it was labelled with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot upcast {aggregate_type} event {event_type} from version {from_version}: {detail}")]
pub struct UpcastError {
    /// Aggregate type of the event.
    pub aggregate_type: String,
    /// Event type of the event.
    pub event_type: String,
    /// The version whose step failed (the stored one, or one reached on the way).
    pub from_version: String,
    /// What was wrong with the payload.
    pub detail: String,
}

/// Upcasts `payload`, stored as `event_type` at `event_version`, to the
/// current version of that event and returns `(current version, payload)`.
///
/// A payload that is already current, or of an event type without steps, is
/// returned unchanged with `event_version`. Fails only if a step finds the
/// payload not in the shape of the version it was labelled with.
pub fn upcast(
    aggregate_type: &str,
    event_type: &str,
    event_version: &str,
    mut payload: Value,
) -> Result<(String, Value), UpcastError> {
    let mut version = event_version.to_owned();
    // Every step raises the version (a test checks it), so each applies at most once.
    for _ in 0..STEPS.len() {
        let Some(step) = step_from(aggregate_type, event_type, &version) else {
            break;
        };
        payload = (step.apply)(payload).map_err(|detail| UpcastError {
            aggregate_type: aggregate_type.to_owned(),
            event_type: event_type.to_owned(),
            from_version: version.clone(),
            detail,
        })?;
        step.to_version.clone_into(&mut version);
    }
    Ok((version, payload))
}

/// Whether [`upcast`] would change an event stored as `event_type` at
/// `event_version`, i.e. whether that version is older than the current one.
pub fn needs_upcast(aggregate_type: &str, event_type: &str, event_version: &str) -> bool {
    step_from(aggregate_type, event_type, event_version).is_some()
}

fn step_from(aggregate_type: &str, event_type: &str, version: &str) -> Option<&'static Step> {
    STEPS.iter().find(|step| {
        step.aggregate_type == aggregate_type
            && step.event_type == event_type
            && step.from_version == version
    })
}

/// `OrderCancelled` v1 → v2: v2 added `cancelled_by`. Nobody recorded who
/// cancelled a v1 order, so it becomes `"unknown"` (not a guess).
fn order_cancelled_v1_to_v2(mut payload: Value) -> Result<Value, String> {
    let fields = payload
        .get_mut("OrderCancelled")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| "expected {\"OrderCancelled\":{...}}".to_owned())?;
    if fields.contains_key("cancelled_by") {
        return Err("version 1 has no cancelled_by field".to_owned());
    }
    fields.insert("cancelled_by".to_owned(), Value::from("unknown"));
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::json;

    use super::*;
    use crate::order::{CancelledBy, OrderEvent};

    #[test]
    fn order_cancelled_v1_gets_an_unknown_originator() {
        let v1 = json!({"OrderCancelled": {"reason": "out of stock"}});
        let (version, v2) = upcast("Order", "OrderCancelled", "1", v1).expect("upcasts");
        assert_eq!(version, "2");
        assert_eq!(
            v2,
            json!({"OrderCancelled": {"reason": "out of stock", "cancelled_by": "unknown"}})
        );
        let event: OrderEvent = serde_json::from_value(v2).expect("decodes as v2");
        assert_eq!(
            event,
            OrderEvent::OrderCancelled {
                reason: "out of stock".into(),
                cancelled_by: CancelledBy::Unknown,
            }
        );
    }

    #[test]
    fn current_versions_and_other_events_pass_unchanged() {
        let v2 = json!({"OrderCancelled": {"reason": "", "cancelled_by": "merchant"}});
        assert_eq!(
            upcast("Order", "OrderCancelled", "2", v2.clone()),
            Ok(("2".to_owned(), v2.clone()))
        );
        assert!(!needs_upcast("Order", "OrderCancelled", "2"));
        let confirmed = json!({"OrderConfirmed": {}});
        assert_eq!(
            upcast("Order", "OrderConfirmed", "1", confirmed.clone()),
            Ok(("1".to_owned(), confirmed))
        );
        // Steps are keyed by aggregate type too.
        assert!(!needs_upcast("Product", "OrderCancelled", "1"));
        assert_eq!(
            upcast("Product", "OrderCancelled", "1", v2.clone()),
            Ok(("1".to_owned(), v2))
        );
    }

    #[test]
    fn a_payload_not_in_its_labelled_shape_is_an_error_naming_the_event() {
        for payload in [
            json!("OrderCancelled"),
            json!({"OrderShipped": {}}),
            json!({"OrderCancelled": "x"}),
            json!({"OrderCancelled": {"reason": "", "cancelled_by": "system"}}),
        ] {
            let err = upcast("Order", "OrderCancelled", "1", payload.clone())
                .expect_err(&payload.to_string());
            assert_eq!(err.aggregate_type, "Order");
            assert_eq!(err.event_type, "OrderCancelled");
            assert_eq!(err.from_version, "1");
            assert!(err
                .to_string()
                .starts_with("cannot upcast Order event OrderCancelled from version 1: "));
        }
    }

    #[test]
    fn steps_raise_the_version_by_one_and_never_overlap() {
        let mut seen = HashSet::new();
        for step in STEPS {
            let from: u32 = step.from_version.parse().expect("integer version");
            let to: u32 = step.to_version.parse().expect("integer version");
            assert_eq!(to, from + 1, "{step:?}");
            assert!(
                seen.insert((step.aggregate_type, step.event_type, step.from_version)),
                "two steps from the same version: {step:?}"
            );
            assert!(crate::envelope::AGGREGATE_TYPES.contains(&step.aggregate_type));
        }
    }

    #[test]
    fn the_last_step_of_each_event_reaches_its_current_version() {
        let current = OrderEvent::OrderCancelled {
            reason: String::new(),
            cancelled_by: CancelledBy::Customer,
        };
        let (version, _) = upcast(
            "Order",
            "OrderCancelled",
            "1",
            json!({"OrderCancelled": {"reason": ""}}),
        )
        .expect("upcasts");
        assert_eq!(version, crate::VersionedEvent::event_version(&current));
    }
}
