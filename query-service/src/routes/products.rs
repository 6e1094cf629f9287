//! `GET /products/{id}` and `GET /products`: the product catalog.

use actix_web::{web, HttpRequest, HttpResponse};
use schema::views::product_key;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cache::Caches;
use crate::conditional::{self, PUBLIC_SHORT};
use crate::consistency::{Aggregate, Requirement};
use crate::error::QueryError;
use crate::metrics::Metrics;
use crate::params::{page_limit, paginate};
use crate::read_model::{self, Product};
use crate::reads::{self, DocumentRead};
use crate::replicas::ReadRouter;

/// Default page size of `GET /products`.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size of `GET /products`.
pub const MAX_LIMIT: u32 = 200;

/// One product; 404 if the catalog does not have it. Cached in both tiers;
/// honours `Cache-Control: no-cache`, `If-None-Match` and
/// `consistency-token` (see [`reads::document`]).
pub async fn get_product(
    request: HttpRequest,
    path: web::Path<Uuid>,
    caches: web::Data<Caches>,
    router: web::Data<ReadRouter>,
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, QueryError> {
    let product_id = path.into_inner();
    let read = DocumentRead::from_request(
        &request,
        product_key(product_id),
        Aggregate::Product,
        product_id,
    )?;
    let served = reads::document(&caches.products, &router, read, |pool| async move {
        reads::as_document(read_model::product(&pool, product_id).await?, |p| p.version)
    })
    .await?
    .ok_or_else(|| QueryError::NotFound {
        resource: "product",
        id: product_id.to_string(),
    })?;
    metrics.read("product", &served.from);
    Ok(conditional::respond_document(
        &request,
        served,
        PUBLIC_SHORT,
    ))
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
    request: HttpRequest,
    query: web::Query<ListQuery>,
    router: web::Data<ReadRouter>,
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, QueryError> {
    let limit = page_limit(query.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = query.after;
    let requirement = Requirement::from_request(&request)?;
    // One row more than asked tells whether another page exists, so the last
    // page says `null` instead of sending the client to an empty page.
    let served = reads::uncached(&router, requirement, |pool| async move {
        read_model::products_after(&pool, after, limit + 1).await
    })
    .await?;
    metrics.read("products", &served.from);
    let page = served.map(|rows| {
        let (items, next_after) = paginate(rows, limit, |product| product.product_id);
        ProductPage { items, next_after }
    });
    conditional::respond_list(&request, page, PUBLIC_SHORT)
}
