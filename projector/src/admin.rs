//! The projector's admin HTTP API: dead letters. Thin handlers over
//! [`DeadLetterDesk`], the same operations as `projector dlq ...`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use problem_details::Problem;

use crate::dead_letters::{DeadLetterDesk, DeadLetterError};

impl ResponseError for DeadLetterError {
    fn status_code(&self) -> StatusCode {
        self.to_problem().status_code()
    }

    fn error_response(&self) -> HttpResponse {
        self.to_problem().to_response()
    }
}

impl DeadLetterError {
    /// The problem sent to the client; database details stay in the log.
    pub fn to_problem(&self) -> Problem {
        match self {
            Self::NotFound(_) => Problem::new(StatusCode::NOT_FOUND).with_detail(self.to_string()),
            Self::NotOldest { oldest, .. } => Problem::typed(
                StatusCode::CONFLICT,
                "/problems/dead-letter-not-oldest",
                "Not the oldest dead letter of its aggregate",
            )
            .with_detail(self.to_string())
            .with_extension("oldest", oldest),
            Self::Database(_) | Self::Unavailable(_) => Problem::typed(
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/database-unavailable",
                "Database unavailable",
            )
            .with_detail("the primary database did not answer; retry shortly")
            .with_retry_after(1),
        }
    }
}

/// The admin routes, relative to the `/admin` scope the app mounts them in.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/dead-letters", web::get().to(list))
        .route("/dead-letters/{id}/retry", web::post().to(retry))
        .route("/dead-letters/{id}/skip", web::post().to(skip));
}

/// `GET /admin/dead-letters`: every parked letter, oldest first.
async fn list(desk: web::Data<DeadLetterDesk>) -> Result<HttpResponse, DeadLetterError> {
    Ok(HttpResponse::Ok().json(desk.list().await?))
}

/// `POST /admin/dead-letters/{id}/retry`: applies the letters of its
/// aggregate again, oldest first, until one fails.
async fn retry(
    desk: web::Data<DeadLetterDesk>,
    id: web::Path<i64>,
) -> Result<HttpResponse, DeadLetterError> {
    Ok(HttpResponse::Ok().json(desk.retry(id.into_inner()).await?))
}

/// `POST /admin/dead-letters/{id}/skip`: drops the oldest letter of an
/// aggregate unapplied, then applies the ones behind it.
async fn skip(
    desk: web::Data<DeadLetterDesk>,
    id: web::Path<i64>,
) -> Result<HttpResponse, DeadLetterError> {
    Ok(HttpResponse::Ok().json(desk.skip(id.into_inner()).await?))
}
