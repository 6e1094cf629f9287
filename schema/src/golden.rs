//! Golden files pin the wire format of every event: a change that alters the
//! JSON of an existing `event_type`/`event_version` fails here. Regenerate only
//! for a brand-new event or version: `UPDATE_GOLDEN=1 cargo test -p schema`.
//!
//! Files of superseded versions stay: they are what old stored events look
//! like, and every one of them must still decode (through the upcasters).

use std::path::PathBuf;

use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

use crate::envelope::AnyEvent;
use crate::money::{Currency, Money};
use crate::order::{CancelledBy, OrderEvent, OrderLine};
use crate::product::ProductEvent;
use crate::VersionedEvent;

fn eur(amount_minor: i64) -> Money {
    Money::new(amount_minor, Currency::try_from("EUR").expect("valid"))
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0193_a1c2_0000_7000_8000_0000_0000_0000 | n)
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/events")
}

fn check<E: VersionedEvent + Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    event: &E,
) {
    let (event_type, version) = (event.event_type(), event.event_version());
    let path = fixtures().join(format!("{event_type}.v{version}.json"));
    let actual = serde_json::to_value(event).expect("serializable");
    if std::env::var_os("UPDATE_GOLDEN").is_some() && !path.exists() {
        let text = serde_json::to_string_pretty(&actual).expect("json");
        std::fs::write(&path, text + "\n").expect("write golden");
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("missing golden file {}: {e}", path.display()));
    let golden: serde_json::Value = serde_json::from_str(&text).expect("golden is JSON");
    assert_eq!(
        actual, golden,
        "wire format of {event_type} v{version} changed"
    );
    let decoded: E = serde_json::from_value(golden).expect("golden decodes");
    assert_eq!(
        &decoded, event,
        "golden {event_type} v{version} decodes differently"
    );
}

#[test]
fn product_events_match_golden_files() {
    let events = [
        ProductEvent::ProductCreated {
            sku: "SKU-0001".into(),
            name: "Espresso beans 1kg".into(),
            price: eur(2_450),
        },
        ProductEvent::ProductRenamed {
            name: "Espresso beans, 1 kg".into(),
        },
        ProductEvent::ProductPriceChanged { price: eur(2_590) },
        ProductEvent::ProductDiscontinued {},
    ];
    for event in &events {
        check(event);
    }
}

#[test]
fn order_events_match_golden_files() {
    let line = OrderLine {
        product_id: id(1),
        quantity: 2,
        unit_price: eur(2_450),
    };
    let events = [
        OrderEvent::OrderPlaced {
            customer_id: id(9),
            lines: vec![line.clone()],
        },
        OrderEvent::OrderLineAdded {
            line: OrderLine {
                product_id: id(2),
                quantity: 1,
                unit_price: eur(990),
            },
        },
        OrderEvent::OrderLineRemoved { product_id: id(2) },
        OrderEvent::OrderConfirmed {},
        OrderEvent::OrderCancelled {
            reason: "customer request".into(),
            cancelled_by: CancelledBy::Customer,
        },
        OrderEvent::OrderShipped {},
    ];
    for event in &events {
        check(event);
    }
}

#[test]
fn order_cancelled_v1_golden_file_upcasts_to_an_unknown_originator() {
    let text = std::fs::read_to_string(fixtures().join("OrderCancelled.v1.json")).expect("v1");
    // The v1 file is history: it must never be regenerated in the v2 shape.
    let golden: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        golden,
        serde_json::json!({"OrderCancelled": {"reason": "customer request"}})
    );
    let event = AnyEvent::decode_versioned("Order", "OrderCancelled", "1", text.as_bytes())
        .expect("v1 still decodes");
    assert_eq!(
        event,
        AnyEvent::Order(OrderEvent::OrderCancelled {
            reason: "customer request".into(),
            cancelled_by: CancelledBy::Unknown,
        })
    );
}

/// Every golden file, current or superseded, decodes to an event of its type
/// in the current version.
#[test]
fn every_golden_file_still_decodes() {
    let mut decoded = 0;
    for entry in std::fs::read_dir(fixtures()).expect("fixtures dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        let (event_type, version) = name
            .strip_suffix(".json")
            .and_then(|stem| stem.split_once(".v"))
            .unwrap_or_else(|| panic!("{name} is not <event_type>.v<version>.json"));
        let aggregate_type = if event_type.starts_with("Order") {
            "Order"
        } else {
            "Product"
        };
        let text = std::fs::read_to_string(&path).expect("read");
        let event =
            AnyEvent::decode_versioned(aggregate_type, event_type, version, text.as_bytes())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(event.event_type(), event_type, "{name}");
        decoded += 1;
    }
    assert!(decoded >= 11, "only {decoded} golden files");
}
