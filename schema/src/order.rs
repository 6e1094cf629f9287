//! Events of the `Order` aggregate.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::Money;

/// `aggregate_type` of orders in the event store and the Kafka topic suffix.
pub const AGGREGATE_TYPE: &str = "Order";

/// One line of an order: a product, how many, and the unit price agreed at the time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderLine {
    pub product_id: Uuid,
    /// 1 to 10 000: command-service refuses any other quantity (422).
    #[schema(minimum = 1, maximum = 10000)]
    pub quantity: u32,
    pub unit_price: Money,
}

impl OrderLine {
    /// `quantity × unit_price` in minor units, or `None` on overflow.
    pub fn amount_minor(&self) -> Option<i64> {
        self.unit_price
            .amount_minor
            .checked_mul(i64::from(self.quantity))
    }
}

/// Who called an order off; part of [`OrderEvent::OrderCancelled`] since its
/// version 2.
///
/// Serialized in snake case: `"customer"`, `"merchant"`, `"system"`, `"unknown"`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[schema(description = "Who called the order off; `unknown` when nobody said.")]
pub enum CancelledBy {
    /// The customer who placed the order.
    Customer,
    /// The merchant (staff acting for the shop).
    Merchant,
    /// An automated process, e.g. a payment or stock timeout.
    System,
    /// Nobody recorded who it was. Every version 1 `OrderCancelled` upcasts to
    /// this (see [`crate::upcast`]), and it is the default for a new
    /// cancellation whose originator the caller does not state.
    #[default]
    Unknown,
}

/// Everything that can happen to an order, in the past tense.
///
/// Same wire rules as [`crate::product::ProductEvent`]: externally tagged JSON,
/// pinned by golden fixtures, versioned by [`OrderEvent::event_version`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEvent {
    OrderPlaced {
        customer_id: Uuid,
        lines: Vec<OrderLine>,
    },
    OrderLineAdded {
        line: OrderLine,
    },
    OrderLineRemoved {
        product_id: Uuid,
    },
    OrderConfirmed {},
    /// Version 2: `cancelled_by` was added. Version 1 payloads
    /// (`{"OrderCancelled":{"reason":"..."}}`) are upcast by [`crate::upcast`]
    /// with `cancelled_by: "unknown"` before they are decoded.
    OrderCancelled {
        reason: String,
        cancelled_by: CancelledBy,
    },
    OrderShipped {},
}

impl crate::VersionedEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::OrderPlaced { .. } => "OrderPlaced",
            Self::OrderLineAdded { .. } => "OrderLineAdded",
            Self::OrderLineRemoved { .. } => "OrderLineRemoved",
            Self::OrderConfirmed {} => "OrderConfirmed",
            Self::OrderCancelled { .. } => "OrderCancelled",
            Self::OrderShipped {} => "OrderShipped",
        }
    }

    fn event_version(&self) -> &'static str {
        match self {
            Self::OrderPlaced { .. }
            | Self::OrderLineAdded { .. }
            | Self::OrderLineRemoved { .. }
            | Self::OrderConfirmed {}
            | Self::OrderShipped {} => "1",
            Self::OrderCancelled { .. } => "2",
        }
    }
}
