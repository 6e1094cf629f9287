//! Read-model documents that cross a process boundary: the projector writes
//! them to Redis and query-service serves them (from Redis or, rebuilt from
//! the same columns, from a Postgres replica). One type, so both sides agree.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::Money;

/// What every [`order_summary_key`] starts with (for scanning them all).
pub const ORDER_SUMMARY_KEY_PREFIX: &str = "order_summary:";

/// Redis key of an order summary document.
pub fn order_summary_key(order_id: Uuid) -> String {
    format!("{ORDER_SUMMARY_KEY_PREFIX}{order_id}")
}

/// What every [`product_key`] starts with.
pub const PRODUCT_KEY_PREFIX: &str = "product:";

/// Cache key of a product in the catalog.
pub fn product_key(product_id: Uuid) -> String {
    format!("{PRODUCT_KEY_PREFIX}{product_id}")
}

/// What every [`customer_history_key`] starts with.
pub const CUSTOMER_HISTORY_KEY_PREFIX: &str = "customer_history:";

/// Cache key of a customer's order history (every list of it).
pub fn customer_history_key(customer_id: Uuid) -> String {
    format!("{CUSTOMER_HISTORY_KEY_PREFIX}{customer_id}")
}

/// Hash field of a document key holding the document's version. Every
/// document in Redis is a hash of this and [`DOCUMENT_BODY_FIELD`]; a hash
/// with a version and no body is a tombstone: "this version exists", so a
/// cache fill of an older one must be refused.
pub const DOCUMENT_VERSION_FIELD: &str = "version";

/// Hash field of a document key holding the JSON body served to clients.
pub const DOCUMENT_BODY_FIELD: &str = "body";

/// Redis pub/sub channel carrying [`Invalidations`] from the projector to
/// every query-service instance (see docs/adr/0009).
pub const INVALIDATION_CHANNEL: &str = "read-model-invalidations";

/// One read-model document that changed: a cache holding `key` at a version
/// below `version` is stale. Versions only grow per key, so a signal that
/// arrives late or twice cannot make a cache drop a newer entry it trusts.
///
/// `version` is the aggregate's sequence for per-aggregate documents
/// ([`order_summary_key`], [`product_key`]) and the global event position
/// for documents that sum many aggregates ([`customer_history_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    pub key: String,
    pub version: i64,
}

/// The message published on [`INVALIDATION_CHANNEL`] after each committed
/// projector batch: every key the batch changed, at its new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidations {
    pub changed: Vec<Invalidation>,
}

/// Lifecycle of an order as the read side reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Placed,
    Confirmed,
    Cancelled,
    Shipped,
}

impl OrderStatus {
    /// The value stored in `order_summary.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Confirmed => "confirmed",
            Self::Cancelled => "cancelled",
            Self::Shipped => "shipped",
        }
    }
}

impl std::str::FromStr for OrderStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "placed" => Ok(Self::Placed),
            "confirmed" => Ok(Self::Confirmed),
            "cancelled" => Ok(Self::Cancelled),
            "shipped" => Ok(Self::Shipped),
            other => Err(format!("unknown order status {other:?}")),
        }
    }
}

/// One line of an [`OrderSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(description = "One line of an order summary.")]
pub struct OrderSummaryLine {
    pub product_id: Uuid,
    pub quantity: u32,
    pub unit_price: Money,
    /// `quantity × unit_price`.
    pub amount: Money,
}

/// The denormalized view of one order. `version` is the sequence of the last
/// order event folded into it; a newer document always has a higher version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderSummary {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub status: OrderStatus,
    pub lines: Vec<OrderSummaryLine>,
    pub total: Money,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}
