//! The projections this projector maintains: which events feed each one and
//! which tables hold it. A projection is the unit of gating and rebuilding
//! (`projections` table, [`crate::rebuild`]).

use std::fmt;
use std::str::FromStr;

/// One read model (a set of tables fed by one aggregate type's events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    /// `product_catalog`, from Product events.
    Catalog,
    /// `order_summary`, `customer_order_history`, `daily_sales`, from Order
    /// events. One projection, because `daily_sales` is kept idempotent by
    /// the version check on `order_summary` in the same transaction.
    Orders,
}

impl Projection {
    pub const ALL: [Self; 2] = [Self::Catalog, Self::Orders];

    /// Its name in the `projections` table and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Catalog => "catalog",
            Self::Orders => "orders",
        }
    }

    /// The aggregate type whose events feed it.
    pub fn aggregate_type(self) -> &'static str {
        match self {
            Self::Catalog => schema::product::AGGREGATE_TYPE,
            Self::Orders => schema::order::AGGREGATE_TYPE,
        }
    }

    /// Its tables (in `public`), all rebuilt and swapped together.
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Self::Catalog => &["product_catalog"],
            Self::Orders => &["order_summary", "customer_order_history", "daily_sales"],
        }
    }

    /// The projection fed by `aggregate_type`'s events.
    pub fn fed_by(aggregate_type: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.aggregate_type() == aggregate_type)
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown projection {0:?} (known: catalog, orders)")]
pub struct UnknownProjection(String);

impl FromStr for Projection {
    type Err = UnknownProjection;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownProjection(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_projection_round_trips_and_is_fed_by_its_own_aggregate_type() {
        for p in Projection::ALL {
            assert_eq!(p.name().parse::<Projection>(), Ok(p));
            assert_eq!(Projection::fed_by(p.aggregate_type()), Some(p));
        }
        assert!("Orders".parse::<Projection>().is_err());
        assert_eq!(Projection::fed_by("Invoice"), None);
    }
}
