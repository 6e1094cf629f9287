//! HTTP handlers, one module per resource. Each handler extracts and
//! validates the request, makes one call, and shapes the response.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use problem_details::Problem;

pub mod customers;
pub mod health;
pub mod orders;
pub mod products;
pub mod reports;

/// Registers every route. The app must also hold `web::Data<sqlx::PgPool>`
/// (the replica) and `web::Data<crate::cache::OrderCache>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/orders/{id}", orders::get_order))
        .service(get("/customers/{id}/orders", customers::list_orders))
        .service(get("/products", products::list_products))
        .service(get("/products/{id}", products::get_product))
        .service(get("/reports/daily-sales", reports::daily_sales))
        .service(get("/health/live", health::live))
        .service(get("/health/ready", health::ready));
}

/// A GET-only resource. Its default service answers other methods with a 405
/// problem; without it actix would send an empty 405 body.
fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(method_not_allowed))
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    let mut response = Problem::new(StatusCode::METHOD_NOT_ALLOWED)
        .with_detail(format!("{} is not allowed on {}", req.method(), req.path()))
        .to_response();
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
    response
}
