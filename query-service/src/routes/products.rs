//! `GET /products/{id}` and `GET /products`: the product catalog.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::QueryError;
use crate::params::page_limit;
use crate::read_model::{self, Product};

/// Default page size of `GET /products`.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size of `GET /products`.
pub const MAX_LIMIT: u32 = 200;

/// One product; 404 if the catalog does not have it.
pub async fn get_product(
    path: web::Path<Uuid>,
    pool: web::Data<PgPool>,
) -> Result<HttpResponse, QueryError> {
    let product_id = path.into_inner();
    let product = read_model::product(&pool, product_id)
        .await?
        .ok_or_else(|| QueryError::NotFound {
            resource: "product",
            id: product_id.to_string(),
        })?;
    Ok(HttpResponse::Ok().json(product))
}

/// Query string of `GET /products`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub limit: Option<u32>,
    /// The `next_after` of the previous page.
    pub after: Option<Uuid>,
}

/// One page of `GET /products`.
#[derive(Debug, Serialize)]
pub struct ProductPage {
    pub items: Vec<Product>,
    /// Pass as `after` to get the next page; `null` on the last page.
    pub next_after: Option<Uuid>,
}

/// A page of products in product_id order (keyset pagination).
pub async fn list_products(
    query: web::Query<ListQuery>,
    pool: web::Data<PgPool>,
) -> Result<HttpResponse, QueryError> {
    let limit = page_limit(query.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    // One row more than asked tells whether another page exists, so the last
    // page says `null` instead of sending the client to an empty page.
    let rows = read_model::products_after(&pool, query.after, limit + 1).await?;
    Ok(HttpResponse::Ok().json(paginate(rows, limit)))
}

fn paginate(mut rows: Vec<Product>, limit: i64) -> ProductPage {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    let next_after = if has_more {
        rows.last().map(|p| p.product_id)
    } else {
        None
    };
    ProductPage {
        items: rows,
        next_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use schema::money::{Currency, Money};

    fn product(n: u128) -> Product {
        Product {
            product_id: Uuid::from_u128(n),
            sku: format!("SKU-{n}"),
            name: format!("Product {n}"),
            price: Money::new(100, Currency::try_from("EUR").expect("currency")),
            discontinued: false,
            version: 1,
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn next_after_is_the_last_item_when_more_rows_exist() {
        let page = paginate((1..=3).map(product).collect(), 2);
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.next_after, Some(Uuid::from_u128(2)));
    }

    #[test]
    fn next_after_is_null_on_the_last_page() {
        let page = paginate((1..=2).map(product).collect(), 2);
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.next_after, None);
        assert_eq!(paginate(vec![], 2).next_after, None);
    }
}
