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
use crate::openapi::PROBLEM_JSON;
use crate::params::{page_limit, paginate};
use crate::read_model::{self, Product};
use crate::reads::{self, DocumentRead};
use crate::replicas::ReadRouter;

/// Default page size of `GET /products`.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size of `GET /products`.
pub const MAX_LIMIT: u32 = 200;

/// Reads a product
///
/// One product of the catalog; 404 if the catalog does not have it. Served
/// from the caches unless `Cache-Control: no-cache`; conditional with
/// `If-None-Match`; read-your-writes with `consistency-token` (see
/// `reads::document`).
#[utoipa::path(
    get,
    path = "/products/{id}",
    operation_id = "getProduct",
    tag = "products",
    params(("id" = Uuid, Path, description = "The product."), super::DocumentReadHeaders),
    responses(
        (status = 200, description = "The product.", body = crate::openapi::Product,
            headers(("ETag"), ("Cache-Control"), ("x-read-source"))),
        (status = 304, description = super::NOT_MODIFIED,
            headers(("ETag"), ("Cache-Control"), ("x-read-source"))),
        (status = 400, description = super::BAD_DOCUMENT_READ, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 404, description = "No product with this id in the catalog (yet).",
            body = crate::openapi::Problem, content_type = PROBLEM_JSON),
    )
)]
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
    let served = reads::document(&caches.products, &router, read, |db| async move {
        reads::as_document(read_model::product(&db, product_id).await?, |p| p.version)
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
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size (default 50).
    #[param(value_type = u32, required = false, minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// The `next_after` of the previous page.
    #[param(value_type = Uuid, required = false)]
    pub after: Option<Uuid>,
}

/// One page of the catalog, in `product_id` order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProductPage {
    #[schema(value_type = Vec<crate::openapi::Product>)]
    pub items: Vec<Product>,
    /// Pass as `after` to get the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_after: Option<Uuid>,
}

/// Lists products
///
/// A page of the catalog in `product_id` order (keyset pagination: pass the
/// page's `next_after` as `after` for the next one). Read from a database,
/// never cached server-side; conditional with `If-None-Match`.
#[utoipa::path(
    get,
    path = "/products",
    operation_id = "listProducts",
    tag = "products",
    params(ListQuery, super::ListReadHeaders),
    responses(
        (status = 200, description = "One page of products.", body = ProductPage,
            headers(("ETag"), ("Cache-Control"), ("x-read-source"))),
        (status = 304, description = super::NOT_MODIFIED,
            headers(("ETag"), ("Cache-Control"), ("x-read-source"))),
        (status = 400, description = "`limit` not an integer from 1 to 200, or `after` not a \
UUID (`/problems/invalid-query`); or a `consistency-token` that is not a token of this system \
(`/problems/invalid-consistency-token`).", body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
    )
)]
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
    let served = reads::uncached(&router, requirement, |db| async move {
        read_model::products_after(&db, after, limit + 1).await
    })
    .await?;
    metrics.read("products", &served.from);
    let page = served.map(|rows| {
        let (items, next_after) = paginate(rows, limit, |product| product.product_id);
        ProductPage { items, next_after }
    });
    conditional::respond_list(&request, page, PUBLIC_SHORT)
}
