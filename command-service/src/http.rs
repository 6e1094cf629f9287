//! HTTP API: one thin handler per command. Each turns the request into a
//! command, makes one call to the [`CommandBus`], and answers 202 Accepted with
//! the new version and the event's global position.

use std::future::{ready, Ready};

use access_control::Principal;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse};
use schema::money::Money;
use schema::order::{CancelledBy, OrderLine};
use schema::trace_context::TraceParent;
use serde::{Deserialize, Serialize};
use traffic_control::RequestTrace;
use uuid::Uuid;

use crate::commands::{Accepted, CommandBus, CommandContext};
use crate::domain::{Guarded, OrderCommand, ProductCommand};
use crate::error::CommandError;
use crate::idempotency::{parse_key, request_hash, Idempotency};
use crate::openapi::PROBLEM_JSON;

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

/// The request headers every command accepts, as documented: [`CommandMeta`]
/// parses them. Never constructed.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct CommandHeaders {
    /// Act only if the aggregate is at this version (a new aggregate is at 0),
    /// else 412: a version from an `ETag` (`"3"` or `3`). `*` or no header: any
    /// version.
    #[param(
        rename = "If-Match",
        value_type = String,
        required = false,
        pattern = r#"^(\*|"*\+?0*[0-9]{1,19}"*)$"#
    )]
    pub if_match: Option<String>,
    /// Makes a retry safe: a request repeating an earlier one's key, method,
    /// path and body (as parsed) gets the earlier answer instead of running
    /// again; the same key with another request is 422. Remembered for
    /// `IDEMPOTENCY_TTL_SECS` (default one day). 1 to 255 visible ASCII
    /// characters, optionally in double quotes.
    #[param(
        rename = "Idempotency-Key",
        value_type = String,
        required = false,
        pattern = r#"^("[!#-~]{1,255}"|[!#-~]{1,255})$"#
    )]
    pub idempotency_key: Option<String>,
}

/// What every command request may carry besides its body: the version the
/// client expects (`If-Match: "3"` or `3`; `*` or none means any) and an
/// `Idempotency-Key`.
pub struct CommandMeta {
    expected_version: Option<u64>,
    idempotency_key: Option<String>,
    method: String,
    path: String,
    trace: TraceParent,
    /// The customer a customer token is limited to.
    acting_for: Option<Uuid>,
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

    /// What the command carries besides itself, for a request with `body`.
    fn context<B: Serialize>(&self, body: &B) -> CommandContext {
        CommandContext {
            idempotency: self.idempotency(body),
            trace: self.trace,
        }
    }

    fn guard<C>(&self, command: C) -> Guarded<C> {
        Guarded::new(command, self.expected_version).acting_for(self.acting_for)
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
        // Left by the auth layer (access_control::RequireScope).
        acting_for: req
            .extensions()
            .get::<Principal>()
            .and_then(|principal| principal.customer_id),
        // Set by the root span builder (traffic_control::TraceRootSpan).
        trace: req
            .extensions()
            .get::<RequestTrace>()
            .map_or_else(TraceParent::new_root, |trace| trace.0),
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

// Descriptions shared by the `#[utoipa::path]` annotations below. Each
// handler lists every status it can answer; `crate::openapi::SECURITY_ADDON`
// adds 401, 403, 429, 500 and 503 to all of them.

const ACCEPTED: &str = "The command's event is stored. The body and the headers name the \
aggregate, its new version and a consistency token; the result is readable on query-service \
once projected (send the token to wait for it). A retry with the same `Idempotency-Key` gets \
this same answer.";
const BAD_HEADERS: &str = "Malformed request (`/problems/invalid-path`, \
`/problems/invalid-if-match`, `/problems/invalid-idempotency-key`): an id that is not a UUID, \
or an invalid `If-Match` or `Idempotency-Key` header.";
const BAD_BODY: &str = "Malformed request: an id that is not a UUID, an invalid `If-Match` or \
`Idempotency-Key` header, or a body that is not JSON of this schema \
(`/problems/malformed-body`: syntax, wrong types, missing or unknown fields, a currency that \
is not three upper-case letters).";
const BAD_NEW_BODY: &str = "Malformed request: an invalid `If-Match` or `Idempotency-Key` \
header, or a body that is not JSON of this schema (`/problems/malformed-body`: syntax, wrong \
types, missing or unknown fields, a currency that is not three upper-case letters).";
const NOT_FOUND: &str = "No aggregate of this type has this id.";
const CONCURRENT: &str = "Another command changed the aggregate at the same time \
(`/problems/concurrent-write`, `retryable: true`): load it again and retry.";
const CREATE_STALE: &str = "`If-Match` names a version other than 0, the version of an \
aggregate that does not exist yet (`/problems/stale-version`).";
const STALE: &str = "The aggregate is not at the `If-Match` version (`/problems/stale-version`): \
read it again, decide again, resend with its current version.";
const TOO_LARGE: &str = "The body is larger than `BODY_LIMIT_BYTES`.";
const NOT_JSON: &str = "The body is not `application/json` (or another `+json` type).";

/// Body of `POST /products`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// Stock-keeping unit: ASCII letters, digits, `-`, `_` and `.`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]+$")]
    pub sku: String,
    /// Display name, stored exactly as given; not blank.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    /// List price.
    pub price: Money,
}

/// Creates a product
///
/// A new product with a fresh id, named by `Location` and the body.
#[utoipa::path(
    post,
    path = "/products",
    operation_id = "createProduct",
    tag = "products",
    params(CommandHeaders),
    request_body = CreateProduct,
    responses(
        (status = 202, description = ACCEPTED, body = crate::openapi::Accepted,
            headers(("Location"), ("ETag"), ("consistency-token"))),
        (status = 400, description = BAD_NEW_BODY, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 412, description = CREATE_STALE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 413, description = TOO_LARGE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 415, description = NOT_JSON, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 422, description = "A field is invalid (`/problems/validation`, naming it \
under `errors`): a blank `sku` or `name`, one longer than allowed, a `sku` with other \
characters, a negative price; or the `Idempotency-Key` was used with a different request \
(`/problems/idempotency-key-reused`).", body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn create_product(
    bus: Bus,
    base: Base,
    meta: CommandMeta,
    body: problem_details::Json<CreateProduct>,
) -> Result<HttpResponse, CommandError> {
    let context = meta.context(&*body);
    let CreateProduct { sku, name, price } = body.into_inner();
    let command = ProductCommand::CreateProduct { sku, name, price };
    let done = bus
        .product(Uuid::now_v7(), meta.guard(command), &context)
        .await?;
    Ok(accepted(&base, done))
}

/// Body of `POST /products/{id}/rename`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameProduct {
    /// The new display name, stored exactly as given; not blank.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
}

/// Renames a product
#[utoipa::path(
    post,
    path = "/products/{id}/rename",
    operation_id = "renameProduct",
    tag = "products",
    params(("id" = Uuid, Path, description = "The product."), CommandHeaders),
    request_body = RenameProduct,
    responses(
        (status = 202, description = ACCEPTED, body = crate::openapi::Accepted,
            headers(("Location"), ("ETag"), ("consistency-token"))),
        (status = 400, description = BAD_BODY, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 404, description = NOT_FOUND, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 409, description = CONCURRENT, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 412, description = STALE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 413, description = TOO_LARGE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 415, description = NOT_JSON, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 422, description = "A blank or too long `name` (`/problems/validation`); \
the product is discontinued or already has this name (`/problems/rule-violation`); or the \
`Idempotency-Key` was used with a different request.", body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn rename_product(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    meta: CommandMeta,
    body: problem_details::Json<RenameProduct>,
) -> Result<HttpResponse, CommandError> {
    let context = meta.context(&*body);
    let command = ProductCommand::RenameProduct {
        name: body.into_inner().name,
    };
    let done = bus.product(*id, meta.guard(command), &context).await?;
    Ok(accepted(&base, done))
}

/// Body of `POST /products/{id}/change-price`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeProductPrice {
    /// The new list price.
    pub price: Money,
}

/// Changes a product's price
///
/// The currency may change too.
#[utoipa::path(
    post,
    path = "/products/{id}/change-price",
    operation_id = "changeProductPrice",
    tag = "products",
    params(("id" = Uuid, Path, description = "The product."), CommandHeaders),
    request_body = ChangeProductPrice,
    responses(
        (status = 202, description = ACCEPTED, body = crate::openapi::Accepted,
            headers(("Location"), ("ETag"), ("consistency-token"))),
        (status = 400, description = BAD_BODY, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 404, description = NOT_FOUND, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 409, description = CONCURRENT, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 412, description = STALE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 413, description = TOO_LARGE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 415, description = NOT_JSON, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 422, description = "A negative price (`/problems/validation`); the product \
is discontinued or already has this price (`/problems/rule-violation`); or the \
`Idempotency-Key` was used with a different request.", body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn change_product_price(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    meta: CommandMeta,
    body: problem_details::Json<ChangeProductPrice>,
) -> Result<HttpResponse, CommandError> {
    let context = meta.context(&*body);
    let command = ProductCommand::ChangeProductPrice {
        price: body.into_inner().price,
    };
    let done = bus.product(*id, meta.guard(command), &context).await?;
    Ok(accepted(&base, done))
}

/// Discontinues a product
///
/// Takes the product off sale for good. No request body.
#[utoipa::path(
    post,
    path = "/products/{id}/discontinue",
    operation_id = "discontinueProduct",
    tag = "products",
    params(("id" = Uuid, Path, description = "The product."), CommandHeaders),
    responses(
        (status = 202, description = ACCEPTED, body = crate::openapi::Accepted,
            headers(("Location"), ("ETag"), ("consistency-token"))),
        (status = 400, description = BAD_HEADERS, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 404, description = NOT_FOUND, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 409, description = CONCURRENT, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 412, description = STALE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 422, description = "The product is already discontinued \
(`/problems/rule-violation`), or the `Idempotency-Key` was used with a different request.",
            body = crate::openapi::Problem, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn discontinue_product(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    meta: CommandMeta,
) -> Result<HttpResponse, CommandError> {
    let context = meta.context(&());
    let command = ProductCommand::DiscontinueProduct;
    let done = bus.product(*id, meta.guard(command), &context).await?;
    Ok(accepted(&base, done))
}

/// Body of `POST /orders`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// Who orders.
    pub customer_id: Uuid,
    /// One line per product, all priced in the same currency.
    #[schema(min_items = 1, max_items = 100)]
    pub lines: Vec<OrderLine>,
}

/// Places an order
///
/// A new order with a fresh id, named by `Location` and the body.
#[utoipa::path(
    post,
    path = "/orders",
    operation_id = "placeOrder",
    tag = "orders",
    params(CommandHeaders),
    request_body = PlaceOrder,
    responses(
        (status = 202, description = ACCEPTED, body = crate::openapi::Accepted,
            headers(("Location"), ("ETag"), ("consistency-token"))),
        (status = 400, description = BAD_NEW_BODY, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 412, description = CREATE_STALE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 413, description = TOO_LARGE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 415, description = NOT_JSON, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 422, description = "The lines break a rule: none or more than 100 \
(`lines`), a quantity outside 1 to 10 000, a negative unit price, a currency other than the \
first line's (`/problems/validation`, naming the field under `errors`); two lines for one \
product, or a total that overflows (`/problems/rule-violation`); or the `Idempotency-Key` \
was used with a different request.", body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn place_order(
    bus: Bus,
    base: Base,
    meta: CommandMeta,
    body: problem_details::Json<PlaceOrder>,
) -> Result<HttpResponse, CommandError> {
    let context = meta.context(&*body);
    let PlaceOrder { customer_id, lines } = body.into_inner();
    let command = OrderCommand::PlaceOrder { customer_id, lines };
    let done = bus
        .order(Uuid::now_v7(), meta.guard(command), &context)
        .await?;
    Ok(accepted(&base, done))
}

/// Adds a line to an order
///
/// Only while the order is placed, for a product it has no line for, in the
/// order's currency.
#[utoipa::path(
    post,
    path = "/orders/{id}/lines",
    operation_id = "addOrderLine",
    tag = "orders",
    params(("id" = Uuid, Path, description = "The order."), CommandHeaders),
    request_body = OrderLine,
    responses(
        (status = 202, description = ACCEPTED, body = crate::openapi::Accepted,
            headers(("Location"), ("ETag"), ("consistency-token"))),
        (status = 400, description = BAD_BODY, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 404, description = NOT_FOUND, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 409, description = CONCURRENT, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 412, description = STALE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 413, description = TOO_LARGE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 415, description = NOT_JSON, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 422, description = "A quantity outside 1 to 10 000, a negative unit price \
or a currency other than the order's (`/problems/validation`, under `errors`); the order is \
no longer placed, already has a line for the product or 100 lines, or its total would \
overflow (`/problems/rule-violation`); or the `Idempotency-Key` was used with a different \
request.", body = crate::openapi::Problem, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn add_order_line(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    meta: CommandMeta,
    body: problem_details::Json<OrderLine>,
) -> Result<HttpResponse, CommandError> {
    let context = meta.context(&*body);
    let command = OrderCommand::AddOrderLine {
        line: body.into_inner(),
    };
    let done = bus.order(*id, meta.guard(command), &context).await?;
    Ok(accepted(&base, done))
}

/// Removes a line from an order
///
/// Only while the order is placed, and never its last line (cancel the
/// order instead). No request body.
#[utoipa::path(
    delete,
    path = "/orders/{id}/lines/{product_id}",
    operation_id = "removeOrderLine",
    tag = "orders",
    params(
        ("id" = Uuid, Path, description = "The order."),
        ("product_id" = Uuid, Path, description = "The product whose line to remove."),
        CommandHeaders
    ),
    responses(
        (status = 202, description = ACCEPTED, body = crate::openapi::Accepted,
            headers(("Location"), ("ETag"), ("consistency-token"))),
        (status = 400, description = BAD_HEADERS, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 404, description = "No order has this id. (An order without a line for \
the product is 422, not 404.)", body = crate::openapi::Problem, content_type = PROBLEM_JSON),
        (status = 409, description = CONCURRENT, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 412, description = STALE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 422, description = "The order is no longer placed, has no line for the \
product, or only this one (`/problems/rule-violation`); or the `Idempotency-Key` was used \
with a different request.", body = crate::openapi::Problem, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn remove_order_line(
    bus: Bus,
    base: Base,
    path: web::Path<(Uuid, Uuid)>,
    meta: CommandMeta,
) -> Result<HttpResponse, CommandError> {
    let context = meta.context(&());
    let (id, product_id) = path.into_inner();
    let command = OrderCommand::RemoveOrderLine { product_id };
    let done = bus.order(id, meta.guard(command), &context).await?;
    Ok(accepted(&base, done))
}

/// Confirms an order
///
/// Accepts a placed order for fulfilment; its lines become final. No request
/// body.
#[utoipa::path(
    post,
    path = "/orders/{id}/confirm",
    operation_id = "confirmOrder",
    tag = "orders",
    params(("id" = Uuid, Path, description = "The order."), CommandHeaders),
    responses(
        (status = 202, description = ACCEPTED, body = crate::openapi::Accepted,
            headers(("Location"), ("ETag"), ("consistency-token"))),
        (status = 400, description = BAD_HEADERS, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 404, description = NOT_FOUND, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 409, description = CONCURRENT, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 412, description = STALE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 422, description = "The order is already confirmed, or shipped or \
cancelled (`/problems/rule-violation`); or the `Idempotency-Key` was used with a different \
request.", body = crate::openapi::Problem, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn confirm_order(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    meta: CommandMeta,
) -> Result<HttpResponse, CommandError> {
    let context = meta.context(&());
    let done = bus
        .order(*id, meta.guard(OrderCommand::ConfirmOrder), &context)
        .await?;
    Ok(accepted(&base, done))
}

/// Body of `POST /orders/{id}/cancel`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrder {
    /// Free text, may be empty (the default).
    #[serde(default)]
    #[schema(max_length = 500, default = "")]
    pub reason: String,
    /// `customer`, `merchant` or `system`; `unknown` when not given.
    #[serde(default)]
    #[schema(default = "unknown")]
    pub cancelled_by: CancelledBy,
}

/// Cancels an order
///
/// Calls off a placed or confirmed order. `{}` is a valid body: both fields
/// have defaults.
#[utoipa::path(
    post,
    path = "/orders/{id}/cancel",
    operation_id = "cancelOrder",
    tag = "orders",
    params(("id" = Uuid, Path, description = "The order."), CommandHeaders),
    request_body = CancelOrder,
    responses(
        (status = 202, description = ACCEPTED, body = crate::openapi::Accepted,
            headers(("Location"), ("ETag"), ("consistency-token"))),
        (status = 400, description = BAD_BODY, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 404, description = NOT_FOUND, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 409, description = CONCURRENT, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 412, description = STALE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 413, description = TOO_LARGE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 415, description = NOT_JSON, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 422, description = "A `reason` longer than 500 characters \
(`/problems/validation`); the order is already cancelled or shipped \
(`/problems/rule-violation`); or the `Idempotency-Key` was used with a different request.",
            body = crate::openapi::Problem, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn cancel_order(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    meta: CommandMeta,
    body: problem_details::Json<CancelOrder>,
) -> Result<HttpResponse, CommandError> {
    let context = meta.context(&*body);
    let CancelOrder {
        reason,
        cancelled_by,
    } = body.into_inner();
    let command = OrderCommand::CancelOrder {
        reason,
        cancelled_by,
    };
    let done = bus.order(*id, meta.guard(command), &context).await?;
    Ok(accepted(&base, done))
}

/// Ships an order
///
/// Records that a confirmed order left the warehouse. No request body.
#[utoipa::path(
    post,
    path = "/orders/{id}/ship",
    operation_id = "shipOrder",
    tag = "orders",
    params(("id" = Uuid, Path, description = "The order."), CommandHeaders),
    responses(
        (status = 202, description = ACCEPTED, body = crate::openapi::Accepted,
            headers(("Location"), ("ETag"), ("consistency-token"))),
        (status = 400, description = BAD_HEADERS, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 404, description = NOT_FOUND, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 409, description = CONCURRENT, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 412, description = STALE, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 422, description = "The order is already shipped, or placed (not yet \
confirmed) or cancelled (`/problems/rule-violation`); or the `Idempotency-Key` was used with \
a different request.", body = crate::openapi::Problem, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn ship_order(
    bus: Bus,
    base: Base,
    id: web::Path<Uuid>,
    meta: CommandMeta,
) -> Result<HttpResponse, CommandError> {
    let context = meta.context(&());
    let done = bus
        .order(*id, meta.guard(OrderCommand::ShipOrder), &context)
        .await?;
    Ok(accepted(&base, done))
}
