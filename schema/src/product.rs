//! Events of the `Product` aggregate.

use serde::{Deserialize, Serialize};

use crate::money::Money;

/// `aggregate_type` of products in the event store and the Kafka topic suffix.
pub const AGGREGATE_TYPE: &str = "Product";

/// Everything that can happen to a product, in the past tense.
///
/// The JSON form is serde's externally tagged enum (`{"ProductCreated":{..}}`),
/// which is what postgres-es stores in `events.payload` and what the relay
/// publishes as the Kafka message value. The golden files in
/// `schema/fixtures/events/` pin it: changing a field is a new `event_version`
/// plus an upcaster, never an in-place edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductEvent {
    ProductCreated {
        sku: String,
        name: String,
        price: Money,
    },
    ProductRenamed {
        name: String,
    },
    ProductPriceChanged {
        price: Money,
    },
    ProductDiscontinued {},
}

impl crate::VersionedEvent for ProductEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::ProductCreated { .. } => "ProductCreated",
            Self::ProductRenamed { .. } => "ProductRenamed",
            Self::ProductPriceChanged { .. } => "ProductPriceChanged",
            Self::ProductDiscontinued {} => "ProductDiscontinued",
        }
    }

    fn event_version(&self) -> &'static str {
        match self {
            Self::ProductCreated { .. }
            | Self::ProductRenamed { .. }
            | Self::ProductPriceChanged { .. }
            | Self::ProductDiscontinued {} => "1",
        }
    }
}
