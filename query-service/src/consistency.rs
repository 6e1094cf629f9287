//! Read-your-writes: what a request's consistency token requires of the
//! database that answers it.
//!
//! The token (`schema::consistency`, from a command's 202) names an
//! aggregate and its version after the command. A database satisfies it
//! when its read model holds that aggregate at that version or later: the
//! projector writes all of an event's effects in one transaction, so every
//! read model of that database then reflects the command too.

use actix_web::HttpRequest;
use schema::consistency::{ConsistencyToken, HEADER};
use service_runtime::postgres::DbPool;
use uuid::Uuid;

use crate::error::QueryError;
use crate::read_model;

/// The aggregates whose read models can prove freshness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Order,
    Product,
}

/// "At least this version of this aggregate".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    pub aggregate: Aggregate,
    pub id: Uuid,
    pub version: i64,
}

impl Requirement {
    /// The requirement of the request's `consistency-token` header, if any;
    /// 400 for a header that is not a token of this system.
    pub fn from_request(request: &HttpRequest) -> Result<Option<Self>, QueryError> {
        let Some(value) = request.headers().get(HEADER) else {
            return Ok(None);
        };
        let invalid = |reason: &str| QueryError::InvalidToken(reason.to_owned());
        let text = value
            .to_str()
            .map_err(|_| invalid("the header is not ASCII"))?;
        let token = ConsistencyToken::decode(text).map_err(|e| invalid(&e.to_string()))?;
        Self::try_from(&token).map(Some)
    }

    /// Whether the requirement is about this very document, so that the
    /// document's own version proves it.
    pub fn names(&self, aggregate: Aggregate, id: Uuid) -> bool {
        self.aggregate == aggregate && self.id == id
    }

    /// Whether the database behind `db` satisfies the requirement.
    pub async fn is_met(&self, db: &DbPool) -> Result<bool, QueryError> {
        let version = match self.aggregate {
            Aggregate::Order => read_model::order_version(db, self.id).await?,
            Aggregate::Product => read_model::product_version(db, self.id).await?,
        };
        Ok(version.is_some_and(|version| version >= self.version))
    }
}

impl TryFrom<&ConsistencyToken> for Requirement {
    type Error = QueryError;

    fn try_from(token: &ConsistencyToken) -> Result<Self, Self::Error> {
        let aggregate = match token.aggregate_type.as_str() {
            schema::order::AGGREGATE_TYPE => Aggregate::Order,
            schema::product::AGGREGATE_TYPE => Aggregate::Product,
            other => {
                return Err(QueryError::InvalidToken(format!(
                    "unknown aggregate type {other:?}"
                )))
            }
        };
        let id = token
            .aggregate_id
            .parse()
            .map_err(|_| QueryError::InvalidToken("the aggregate id is not a UUID".to_owned()))?;
        if token.version < 1 {
            return Err(QueryError::InvalidToken(
                "the version must be at least 1".to_owned(),
            ));
        }
        Ok(Self {
            aggregate,
            id,
            version: token.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(aggregate_type: &str, aggregate_id: &str, version: i64) -> ConsistencyToken {
        ConsistencyToken {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            version,
            position: 42,
        }
    }

    #[test]
    fn order_and_product_tokens_become_requirements() {
        let id = Uuid::from_u128(7);
        let order = Requirement::try_from(&token("Order", &id.to_string(), 3)).expect("order");
        assert_eq!(
            order,
            Requirement {
                aggregate: Aggregate::Order,
                id,
                version: 3
            }
        );
        assert!(order.names(Aggregate::Order, id));
        assert!(!order.names(Aggregate::Product, id));
        let product =
            Requirement::try_from(&token("Product", &id.to_string(), 1)).expect("product");
        assert_eq!(product.aggregate, Aggregate::Product);
    }

    #[test]
    fn foreign_or_malformed_tokens_are_client_errors() {
        let id = Uuid::from_u128(7).to_string();
        for bad in [
            token("Invoice", &id, 1),
            token("Order", "nope", 1),
            token("Order", &id, 0),
        ] {
            let error = Requirement::try_from(&bad).expect_err("rejected");
            assert_eq!(error.to_problem().status, 400, "{bad:?}");
        }
    }

    #[test]
    fn the_header_is_optional_but_must_decode() {
        let none = actix_web::test::TestRequest::default().to_http_request();
        assert_eq!(Requirement::from_request(&none).expect("no header"), None);
        let bad = actix_web::test::TestRequest::default()
            .insert_header((HEADER, "ct1.!!"))
            .to_http_request();
        assert!(Requirement::from_request(&bad).is_err());
        let good = actix_web::test::TestRequest::default()
            .insert_header((
                HEADER,
                token("Order", &Uuid::from_u128(1).to_string(), 2).encode(),
            ))
            .to_http_request();
        assert_eq!(
            Requirement::from_request(&good)
                .expect("decodes")
                .map(|r| r.version),
            Some(2)
        );
    }
}
