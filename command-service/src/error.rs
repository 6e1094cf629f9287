//! The one error type of command-service, and how each case is reported over
//! HTTP as an RFC 9457 problem.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use problem_details::{FieldError, Problem};

use crate::domain::{OrderError, ProductError, RuleKind};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Product(#[from] ProductError),
    #[error(transparent)]
    Order(#[from] OrderError),
    /// Another command appended to the same aggregate between our load and
    /// our append (the event store's primary key caught it).
    #[error("the aggregate was changed by a concurrent command")]
    ConcurrentWrite,
    #[error("If-Match must be an aggregate version such as \"3\"")]
    InvalidIfMatch,
    #[error(transparent)]
    InvalidIdempotencyKey(#[from] crate::idempotency::InvalidKey),
    /// The key was used before with a different request.
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    #[error("event store unavailable: {0}")]
    StoreUnavailable(#[source] BoxError),
    #[error("event store error: {0}")]
    Store(#[source] BoxError),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// Every command of this domain appends at least one event or fails; an
    /// empty append is a bug, reported rather than answered with a made-up version.
    #[error("the command appended no event")]
    NothingAppended,
}

impl CommandError {
    fn problem(&self) -> Problem {
        match self {
            Self::Product(e) => rule_problem(e.kind(), e.to_string(), e.field()),
            Self::Order(e) => rule_problem(e.kind(), e.to_string(), e.field()),
            // Clients act on this type: reload the aggregate and retry.
            Self::ConcurrentWrite => Problem::typed(
                StatusCode::CONFLICT,
                "/problems/concurrent-write",
                "Concurrent modification",
            )
            .with_detail(self.to_string())
            .with_extension("retryable", true),
            Self::InvalidIfMatch => Problem::typed(
                StatusCode::BAD_REQUEST,
                "/problems/invalid-if-match",
                "Invalid If-Match header",
            )
            .with_detail(self.to_string()),
            Self::InvalidIdempotencyKey(_) => Problem::typed(
                StatusCode::BAD_REQUEST,
                "/problems/invalid-idempotency-key",
                "Invalid Idempotency-Key header",
            )
            .with_detail(self.to_string()),
            Self::IdempotencyKeyReused => Problem::typed(
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/idempotency-key-reused",
                "Idempotency-Key reused",
            )
            .with_detail(self.to_string()),
            Self::StoreUnavailable(_) => Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                .with_detail("the event store is unavailable, retry later")
                .with_retry_after(1),
            Self::Store(_) | Self::Database(_) | Self::NothingAppended => {
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }
}

/// A rejected command: 404, 409 or 422 by its [`RuleKind`]; a rejection that
/// names a field lists it under `errors`.
fn rule_problem(kind: RuleKind, detail: String, field: Option<&str>) -> Problem {
    let problem = match kind {
        RuleKind::NotFound => Problem::new(StatusCode::NOT_FOUND),
        RuleKind::StaleVersion => Problem::typed(
            StatusCode::PRECONDITION_FAILED,
            "/problems/stale-version",
            "The aggregate is not at the version in If-Match",
        ),
        RuleKind::Conflict => Problem::typed(
            StatusCode::CONFLICT,
            "/problems/conflict",
            "Conflicts with the aggregate's current state",
        ),
        RuleKind::Forbidden => {
            Problem::typed(StatusCode::FORBIDDEN, "/problems/forbidden", "Forbidden")
        }
        RuleKind::Violation if field.is_some() => Problem::typed(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation",
            "Invalid command",
        ),
        RuleKind::Violation => Problem::typed(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/rule-violation",
            "Business rule violated",
        ),
    };
    match field {
        Some(field) => problem
            .with_detail(detail.clone())
            .with_field_errors(vec![FieldError {
                field: field.to_owned(),
                detail,
            }]),
        None => problem.with_detail(detail),
    }
}

impl ResponseError for CommandError {
    fn status_code(&self) -> StatusCode {
        self.problem().status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let problem = self.problem();
        if problem.status_code().is_server_error() {
            tracing::error!(error = %self, "command failed");
        }
        problem.to_response()
    }
}
