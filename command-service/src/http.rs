//! HTTP API: one thin handler per command. Each turns the request into a
//! command, makes one call to the [`CommandBus`], and answers 202 Accepted with
//! the new version and the event's global position.

use std::future::{ready, Ready};

use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use schema::money::Money;
use schema::order::{CancelledBy, OrderLine};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::commands::{Accepted, CommandBus};
use crate::domain::{Guarded, OrderCommand, ProductCommand};
use crate::error::CommandError;
use crate::idempotency::{parse_key, request_hash, Idempotency};

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

/// What every command request may carry besides its body: the version the
/// client expects (`If-Match: "3"` or `3`; `*` or none means any) and an
/// `Idempotency-Key`.
pub struct CommandMeta {
    expected_version: Option<u64>,
    idempotency_key: Option<String>,
    method: String,
    path: String,
}

impl CommandMeta {
    /// The idempotency context of this request with `body` (`()` for commands
    /// without one), or None without an `Idempotency-Key`.
    fn idempotency<B: Serialize>(&self, body: &B) -> Option<Idempotency> {
        let key = self.idempotency_key.clone()?;
        // Serializing the parsed body cannot fail for these plain types; the
        // empty fallback still hashes method and path.
        let canonical = serde_json::to_vec(body).unwrap_or_default();
        Some(Idempotency {
            key,
            request_hash: request_hash(&self.method, &self.path, &canonical),
        })
    }

    fn guard<C>(&self, command: C) -> Guarded<C> {
        Guarded::new(command, self.expected_version)
    }
}

impl FromRequest for CommandMeta {
    type Error = CommandError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(command_meta(req))
    }
}

fn command_meta(req: &HttpRequest) -> Result<CommandMeta, CommandError> {
    let expected_version = match req.headers().get(header::IF_MATCH) {
        None => None,
        Some(value) => match value.to_str().map(str::trim) {
            Ok("*") => None,
            Ok(text) => Some(
                text.trim_matches('"')
                    .parse()
                    .map_err(|_| CommandError::InvalidIfMatch)?,
            ),
            Err(_) => return Err(CommandError::InvalidIfMatch),
        },
    };
    let idempotency_key = match req.headers().get("idempotency-key") {
        None => None,
        Some(value) => Some(parse_key(
            value.to_str().map_err(|_| crate::idempotency::InvalidKey)?,
        )?),
    };
    Ok(CommandMeta {
        expected_version,
        idempotency_key,
        method: req.method().to_string(),
        path: req.path().to_owned(),
    })
}

fn accepted(base: &QueryPublicUrl, accepted: Accepted) -> HttpResponse {
    let collection = if accepted.aggregate_type == schema::product::AGGREGATE_TYPE {
        "products"
    } else {
        "orders"
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

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    pub sku: String,
    pub name: String,
    pub price: Money,
}

async fn create_product(
    bus: Bus,
    base: Base,
    meta: CommandMeta,
    body: web::Json<CreateProduct>,
) -> Result<HttpResponse, CommandError> {
    let idempotency = meta.idempotency(&*body);
    let CreateProduct { sku, name, price } = body.into_inner();
    let command = ProductCommand::CreateProduct { sku, name, price };
    let done = bus
        .product(Uuid::now_v7(), meta.guard(command), idempotency.as_ref())
        .await?;
    Ok(accepted(&base, done))
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RenameProduct {
    pub name: String,
}

async fn rename_product(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    meta: CommandMeta,
    body: web::Json<RenameProduct>,
) -> Result<HttpResponse, CommandError> {
    let idempotency = meta.idempotency(&*body);
    let command = ProductCommand::RenameProduct {
        name: body.into_inner().name,
    };
    let done = bus
        .product(*id, meta.guard(command), idempotency.as_ref())
        .await?;
    Ok(accepted(&base, done))
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeProductPrice {
    pub price: Money,
}

async fn change_product_price(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    meta: CommandMeta,
    body: web::Json<ChangeProductPrice>,
) -> Result<HttpResponse, CommandError> {
    let idempotency = meta.idempotency(&*body);
    let command = ProductCommand::ChangeProductPrice {
        price: body.into_inner().price,
    };
    let done = bus
        .product(*id, meta.guard(command), idempotency.as_ref())
        .await?;
    Ok(accepted(&base, done))
}

async fn discontinue_product(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    meta: CommandMeta,
) -> Result<HttpResponse, CommandError> {
    let idempotency = meta.idempotency(&());
    let command = ProductCommand::DiscontinueProduct;
    let done = bus
        .product(*id, meta.guard(command), idempotency.as_ref())
        .await?;
    Ok(accepted(&base, done))
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    pub customer_id: Uuid,
    pub lines: Vec<OrderLine>,
}

async fn place_order(
    bus: Bus,
    base: Base,
    meta: CommandMeta,
    body: web::Json<PlaceOrder>,
) -> Result<HttpResponse, CommandError> {
    let idempotency = meta.idempotency(&*body);
    let PlaceOrder { customer_id, lines } = body.into_inner();
    let command = OrderCommand::PlaceOrder { customer_id, lines };
    let done = bus
        .order(Uuid::now_v7(), meta.guard(command), idempotency.as_ref())
        .await?;
    Ok(accepted(&base, done))
}

async fn add_order_line(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    meta: CommandMeta,
    body: web::Json<OrderLine>,
) -> Result<HttpResponse, CommandError> {
    let idempotency = meta.idempotency(&*body);
    let command = OrderCommand::AddOrderLine {
        line: body.into_inner(),
    };
    let done = bus
        .order(*id, meta.guard(command), idempotency.as_ref())
        .await?;
    Ok(accepted(&base, done))
}

async fn remove_order_line(
    bus: Bus,
    base: Base,
    path: web::Path<(Uuid, Uuid)>,
    meta: CommandMeta,
) -> Result<HttpResponse, CommandError> {
    let idempotency = meta.idempotency(&());
    let (id, product_id) = path.into_inner();
    let command = OrderCommand::RemoveOrderLine { product_id };
    let done = bus
        .order(id, meta.guard(command), idempotency.as_ref())
        .await?;
    Ok(accepted(&base, done))
}

/// Confirm and ship: commands without a body.
async fn confirm_order(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    meta: CommandMeta,
) -> Result<HttpResponse, CommandError> {
    let idempotency = meta.idempotency(&());
    let done = bus
        .order(
            *id,
            meta.guard(OrderCommand::ConfirmOrder),
            idempotency.as_ref(),
        )
        .await?;
    Ok(accepted(&base, done))
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CancelOrder {
    #[serde(default)]
    pub reason: String,
    /// `customer`, `merchant` or `system`; `unknown` when not given.
    #[serde(default)]
    pub cancelled_by: CancelledBy,
}

async fn cancel_order(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    meta: CommandMeta,
    body: web::Json<CancelOrder>,
) -> Result<HttpResponse, CommandError> {
    let idempotency = meta.idempotency(&*body);
    let CancelOrder {
        reason,
        cancelled_by,
    } = body.into_inner();
    let command = OrderCommand::CancelOrder {
        reason,
        cancelled_by,
    };
    let done = bus
        .order(*id, meta.guard(command), idempotency.as_ref())
        .await?;
    Ok(accepted(&base, done))
}

async fn ship_order(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    meta: CommandMeta,
) -> Result<HttpResponse, CommandError> {
    let idempotency = meta.idempotency(&());
    let done = bus
        .order(
            *id,
            meta.guard(OrderCommand::ShipOrder),
            idempotency.as_ref(),
        )
        .await?;
    Ok(accepted(&base, done))
}
