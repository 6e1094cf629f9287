//! HTTP API: one thin handler per command. Each turns the request into a
//! command, makes one call to the [`CommandBus`], and answers 202 Accepted with
//! the new version and the event's global position.

use std::future::{ready, Ready};

use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use schema::money::Money;
use schema::order::OrderLine;
use serde::Deserialize;
use uuid::Uuid;

use crate::commands::{Accepted, CommandBus};
use crate::domain::{Guarded, OrderCommand, ProductCommand};
use crate::error::CommandError;

/// Base URL of query-service, where accepted aggregates can be read back.
#[derive(Debug, Clone)]
pub struct QueryPublicUrl(pub String);

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/products", web::post().to(create_product))
        .route("/products/{id}/rename", web::post().to(rename_product))
        .route(
            "/products/{id}/change-price",
            web::post().to(change_product_price),
        )
        .route(
            "/products/{id}/discontinue",
            web::post().to(discontinue_product),
        )
        .route("/orders", web::post().to(place_order))
        .route("/orders/{id}/lines", web::post().to(add_order_line))
        .route(
            "/orders/{id}/lines/{product_id}",
            web::delete().to(remove_order_line),
        )
        .route("/orders/{id}/confirm", web::post().to(confirm_order))
        .route("/orders/{id}/cancel", web::post().to(cancel_order))
        .route("/orders/{id}/ship", web::post().to(ship_order));
}

/// The version a client expects the aggregate to be at, from `If-Match`
/// (`"3"` or `3`; `*` or no header means any version).
pub struct IfMatch(Option<u64>);

impl FromRequest for IfMatch {
    type Error = CommandError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let parsed = match req.headers().get(header::IF_MATCH) {
            None => Ok(Self(None)),
            Some(value) => match value.to_str().map(str::trim) {
                Ok("*") => Ok(Self(None)),
                Ok(text) => text
                    .trim_matches('"')
                    .parse()
                    .map(|v| Self(Some(v)))
                    .map_err(|_| CommandError::InvalidIfMatch),
                Err(_) => Err(CommandError::InvalidIfMatch),
            },
        };
        ready(parsed)
    }
}

fn accepted(base: &QueryPublicUrl, accepted: Accepted) -> HttpResponse {
    let collection = match accepted.aggregate_type {
        schema::product::AGGREGATE_TYPE => "products",
        _ => "orders",
    };
    HttpResponse::Accepted()
        .insert_header((
            header::LOCATION,
            format!(
                "{}/{collection}/{}",
                base.0.trim_end_matches('/'),
                accepted.aggregate_id
            ),
        ))
        .insert_header((header::ETAG, format!("\"{}\"", accepted.version)))
        .insert_header((
            schema::consistency::HEADER,
            accepted.consistency_token.clone(),
        ))
        .json(accepted)
}

type Bus = web::Data<CommandBus>;
type Base = web::Data<QueryPublicUrl>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    pub sku: String,
    pub name: String,
    pub price: Money,
}

async fn create_product(
    bus: Bus,
    base: Base,
    body: web::Json<CreateProduct>,
) -> Result<HttpResponse, CommandError> {
    let CreateProduct { sku, name, price } = body.into_inner();
    let command = ProductCommand::CreateProduct { sku, name, price };
    let done = bus.product(Uuid::now_v7(), command.into()).await?;
    Ok(accepted(&base, done))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameProduct {
    pub name: String,
}

async fn rename_product(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    if_match: IfMatch,
    body: web::Json<RenameProduct>,
) -> Result<HttpResponse, CommandError> {
    let command = ProductCommand::RenameProduct {
        name: body.into_inner().name,
    };
    let done = bus.product(*id, Guarded::new(command, if_match.0)).await?;
    Ok(accepted(&base, done))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeProductPrice {
    pub price: Money,
}

async fn change_product_price(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    if_match: IfMatch,
    body: web::Json<ChangeProductPrice>,
) -> Result<HttpResponse, CommandError> {
    let command = ProductCommand::ChangeProductPrice {
        price: body.into_inner().price,
    };
    let done = bus.product(*id, Guarded::new(command, if_match.0)).await?;
    Ok(accepted(&base, done))
}

async fn discontinue_product(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    if_match: IfMatch,
) -> Result<HttpResponse, CommandError> {
    let command = ProductCommand::DiscontinueProduct;
    let done = bus.product(*id, Guarded::new(command, if_match.0)).await?;
    Ok(accepted(&base, done))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    pub customer_id: Uuid,
    pub lines: Vec<OrderLine>,
}

async fn place_order(
    bus: Bus,
    base: Base,
    body: web::Json<PlaceOrder>,
) -> Result<HttpResponse, CommandError> {
    let PlaceOrder { customer_id, lines } = body.into_inner();
    let command = OrderCommand::PlaceOrder { customer_id, lines };
    let done = bus.order(Uuid::now_v7(), command.into()).await?;
    Ok(accepted(&base, done))
}

async fn add_order_line(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    if_match: IfMatch,
    body: web::Json<OrderLine>,
) -> Result<HttpResponse, CommandError> {
    let command = OrderCommand::AddOrderLine {
        line: body.into_inner(),
    };
    let done = bus.order(*id, Guarded::new(command, if_match.0)).await?;
    Ok(accepted(&base, done))
}

async fn remove_order_line(
    bus: Bus,
    base: Base,
    path: web::Path<(Uuid, Uuid)>,
    if_match: IfMatch,
) -> Result<HttpResponse, CommandError> {
    let (id, product_id) = path.into_inner();
    let command = OrderCommand::RemoveOrderLine { product_id };
    let done = bus.order(id, Guarded::new(command, if_match.0)).await?;
    Ok(accepted(&base, done))
}

async fn confirm_order(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    if_match: IfMatch,
) -> Result<HttpResponse, CommandError> {
    let command = OrderCommand::ConfirmOrder;
    let done = bus.order(*id, Guarded::new(command, if_match.0)).await?;
    Ok(accepted(&base, done))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelOrder {
    #[serde(default)]
    pub reason: String,
}

async fn cancel_order(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    if_match: IfMatch,
    body: web::Json<CancelOrder>,
) -> Result<HttpResponse, CommandError> {
    let command = OrderCommand::CancelOrder {
        reason: body.into_inner().reason,
    };
    let done = bus.order(*id, Guarded::new(command, if_match.0)).await?;
    Ok(accepted(&base, done))
}

async fn ship_order(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    if_match: IfMatch,
) -> Result<HttpResponse, CommandError> {
    let command = OrderCommand::ShipOrder;
    let done = bus.order(*id, Guarded::new(command, if_match.0)).await?;
    Ok(accepted(&base, done))
}
