//! Old event versions on the command side: a cqrs-es [`EventUpcaster`] that
//! delegates to the shared table in [`schema::upcast`], so aggregates are
//! rebuilt from exactly what the projector reads.
//!
//! cqrs-es calls upcasters on every [`SerializedEvent`] it loads (full
//! history, or the events after a snapshot), before deserializing it into
//! [`super::Stored`]. Snapshots hold aggregate state, not events, and are not
//! upcast.
//!
//! cqrs-es' own `SemanticVersionEventUpcaster` is not used: it upcasts an
//! event to one fixed target version per upcaster, parses versions as
//! semver and panics on an unparsable target. One upcaster that runs the
//! whole chain of [`schema::upcast::STEPS`] is simpler and cannot disagree
//! with the projector.

use cqrs_es::persist::{EventUpcaster, SerializedEvent};

/// The [`EventUpcaster`] over [`schema::upcast`]; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchemaUpcaster;

impl EventUpcaster for SchemaUpcaster {
    /// cqrs-es passes no aggregate type here, so this matches a step of any
    /// aggregate; [`SchemaUpcaster::upcast`] then applies only the steps of the
    /// event's own `aggregate_type`.
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        schema::upcast::STEPS
            .iter()
            .any(|step| step.event_type == event_type && step.from_version == event_version)
    }

    /// Upcasts to the current version. cqrs-es gives this no way to fail: a
    /// payload not in the shape of its stored version is logged and returned
    /// as is, so that deserializing it fails and the command is rejected with
    /// a deserialization error instead of acting on a misread event.
    fn upcast(&self, event: SerializedEvent) -> SerializedEvent {
        match schema::upcast::upcast(
            &event.aggregate_type,
            &event.event_type,
            &event.event_version,
            event.payload.clone(),
        ) {
            Ok((event_version, payload)) => SerializedEvent {
                event_version,
                payload,
                ..event
            },
            Err(error) => {
                tracing::error!(
                    aggregate_id = %event.aggregate_id,
                    sequence = event.sequence,
                    %error,
                    "stored event cannot be upcast"
                );
                event
            }
        }
    }
}

/// The upcasters for every cqrs-es event store of command-service, in the
/// order cqrs-es must apply them; pass them to
/// `PersistedEventStore::with_upcasters`.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(SchemaUpcaster)]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use cqrs_es::persist::PersistedEventStore;
    use cqrs_es::{AggregateError, CqrsFramework, EventStore};
    use schema::order::{CancelledBy, OrderEvent, OrderLine};
    use serde_json::{json, Value};
    use uuid::Uuid;

    use super::*;
    use crate::domain::mem_repo::MemRepo;
    use crate::domain::{Guarded, Order, OrderCommand, OrderError, OrderStatus, Stored};

    const ID: &str = "0193a1c2-0000-7000-8000-00000000000a";

    fn row(sequence: usize, event_type: &str, version: &str, payload: Value) -> SerializedEvent {
        SerializedEvent::new(
            ID.to_owned(),
            sequence,
            "Order".to_owned(),
            event_type.to_owned(),
            version.to_owned(),
            payload,
            json!({}),
        )
    }

    /// An order placed and then cancelled by a version 1 `OrderCancelled`,
    /// stored exactly as an old build wrote it.
    fn repo_with_a_v1_cancellation() -> MemRepo {
        let repo = MemRepo::default();
        let placed = OrderEvent::OrderPlaced {
            customer_id: Uuid::from_u128(9),
            lines: vec![OrderLine {
                product_id: Uuid::from_u128(1),
                quantity: 1,
                unit_price: schema::money::Money::new(
                    100,
                    schema::money::Currency::try_from("EUR").unwrap(),
                ),
            }],
        };
        repo.insert_raw(row(
            1,
            "OrderPlaced",
            "1",
            serde_json::to_value(placed).unwrap(),
        ));
        repo.insert_raw(row(
            2,
            "OrderCancelled",
            "1",
            serde_json::from_str(include_str!(
                "../../../schema/fixtures/events/OrderCancelled.v1.json"
            ))
            .unwrap(),
        ));
        repo
    }

    #[test]
    fn v1_order_cancelled_is_upcast_with_an_unknown_originator() {
        let v1 = row(
            2,
            "OrderCancelled",
            "1",
            json!({"OrderCancelled": {"reason": "r"}}),
        );
        assert!(SchemaUpcaster.can_upcast("OrderCancelled", "1"));
        let v2 = SchemaUpcaster.upcast(v1.clone());
        assert_eq!(v2.event_version, "2");
        assert_eq!(
            v2.payload,
            json!({"OrderCancelled": {"reason": "r", "cancelled_by": "unknown"}})
        );
        assert_eq!(
            (v2.sequence, &v2.aggregate_id),
            (v1.sequence, &v1.aggregate_id)
        );
        let event: Stored<OrderEvent> = serde_json::from_value(v2.payload).unwrap();
        assert_eq!(
            event.0,
            OrderEvent::OrderCancelled {
                reason: "r".into(),
                cancelled_by: CancelledBy::Unknown,
            }
        );
    }

    #[test]
    fn current_versions_are_left_alone() {
        assert!(!SchemaUpcaster.can_upcast("OrderCancelled", "2"));
        assert!(!SchemaUpcaster.can_upcast("OrderPlaced", "1"));
        // Matched by event type alone, but another aggregate's event is not changed.
        let foreign = SerializedEvent {
            aggregate_type: "Product".to_owned(),
            ..row(1, "OrderCancelled", "1", json!({"OrderCancelled": {}}))
        };
        assert_eq!(SchemaUpcaster.upcast(foreign.clone()), foreign);
    }

    #[test]
    fn a_malformed_old_payload_is_returned_unchanged_to_fail_deserialization() {
        let bad = row(2, "OrderCancelled", "1", json!({"OrderCancelled": "r"}));
        assert_eq!(SchemaUpcaster.upcast(bad.clone()), bad);
    }

    /// The wiring command-service uses, against stored v1 events: loading
    /// works with the upcasters and fails without them.
    #[tokio::test]
    async fn an_event_store_with_the_upcasters_loads_v1_events() {
        let store =
            PersistedEventStore::<_, Order>::new_snapshot_store(repo_with_a_v1_cancellation(), 50)
                .with_upcasters(upcasters());
        let events = store.load_events(ID).await.unwrap();
        assert_eq!(
            events[1].payload.0,
            OrderEvent::OrderCancelled {
                reason: "customer request".into(),
                cancelled_by: CancelledBy::Unknown,
            }
        );
        let context = store.load_aggregate(ID).await.unwrap();
        assert_eq!(context.aggregate.status(), Some(OrderStatus::Cancelled));
        assert_eq!(context.aggregate.version(), 2);

        let cqrs = CqrsFramework::new(store, vec![], ());
        let again = OrderCommand::CancelOrder {
            reason: "again".into(),
            cancelled_by: CancelledBy::Merchant,
        };
        assert!(matches!(
            cqrs.execute(ID, Guarded::expecting(2, again)).await,
            Err(AggregateError::UserError(OrderError::AlreadyCancelled))
        ));

        let without =
            PersistedEventStore::<_, Order>::new_snapshot_store(repo_with_a_v1_cancellation(), 50);
        assert!(matches!(
            without.load_aggregate(ID).await,
            Err(AggregateError::DeserializationError(_))
        ));
    }
}
