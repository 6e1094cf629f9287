//! The one error type of every handler, and how it becomes an RFC 9457 problem.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use problem_details::Problem;

/// Why a read could not be answered.
///
/// The `Display` and `Debug` output (logged by `TracingLogger`) may carry the
/// database's own message; the problem sent to the client never does.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The requested document does not exist in the read model.
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    /// A customer token asked for another customer's list (object-level
    /// authorization; single orders answer [`QueryError::NotFound`] instead,
    /// so probing ids reveals nothing).
    #[error("this token may read only its own customer's data")]
    ForbiddenCustomer,
    /// A time or date range that is empty, reversed or too long.
    #[error("invalid range: {0}")]
    InvalidRange(String),
    /// A query parameter that parsed but is not acceptable (e.g. `limit=0`).
    #[error("invalid query parameter {name}: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    /// The replica could not be reached in time, is still starting, or
    /// cancelled the statement (timeout, recovery conflict). Retrying helps.
    #[error("read replica unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// An attempt on one database outlived its budget.
    #[error("{database} did not answer in time")]
    DeadlineExceeded { database: String },
    /// No replica is healthy and within the lag bound, and the primary may
    /// not be read (`PRIMARY_FALLBACK=deny`) or is down too.
    #[error("no database qualifies for reads")]
    NoDatabase,
    /// The read carried a consistency token and no database had data that
    /// fresh within `CONSISTENT_READ_TIMEOUT_MS`.
    #[error("the read model has not caught up with the consistency token yet")]
    NotYetConsistent,
    /// The `consistency-token` header is not a token this service issued.
    #[error("invalid consistency token: {0}")]
    InvalidToken(String),
    /// The failure of a read another request made for this one (single
    /// flight): the same answer.
    #[error(transparent)]
    Shared(std::sync::Arc<QueryError>),
    /// Any other database failure; retrying will not help.
    #[error("read replica query failed")]
    Database(#[source] sqlx::Error),
    /// A row the projector wrote does not decode (unknown status, bad currency,
    /// malformed JSON). A projector bug, not a client error.
    #[error("read model is corrupt: {0}")]
    CorruptReadModel(String),
}

impl QueryError {
    /// The problem sent to the client.
    pub fn to_problem(&self) -> Problem {
        match self {
            Self::NotFound { resource, id } => Problem::new(StatusCode::NOT_FOUND)
                .with_detail(format!("{resource} {id} not found")),
            Self::ForbiddenCustomer => {
                Problem::typed(StatusCode::FORBIDDEN, "/problems/forbidden", "Forbidden")
                    .with_detail(self.to_string())
            }
            Self::InvalidRange(reason) => Problem::typed(
                StatusCode::BAD_REQUEST,
                "/problems/invalid-range",
                "Invalid range",
            )
            .with_detail(reason.clone()),
            Self::InvalidParameter { name, reason } => Problem::typed(
                StatusCode::BAD_REQUEST,
                "/problems/invalid-query",
                "Invalid query parameter",
            )
            .with_detail(format!("{name}: {reason}")),
            Self::Unavailable(_) => Problem::typed(
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/read-model-unavailable",
                "Read model temporarily unavailable",
            )
            .with_detail("the read replica did not answer in time; retry shortly")
            .with_retry_after(1),
            Self::DeadlineExceeded { .. } | Self::NoDatabase => Problem::typed(
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/read-model-unavailable",
                "Read model temporarily unavailable",
            )
            .with_detail("no read database answered in time; retry shortly")
            .with_retry_after(1),
            Self::NotYetConsistent => Problem::typed(
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/not-yet-consistent",
                "Not yet consistent",
            )
            .with_detail(
                "the read model has not caught up with the consistency token yet; retry shortly",
            )
            .with_retry_after(1),
            Self::InvalidToken(reason) => Problem::typed(
                StatusCode::BAD_REQUEST,
                "/problems/invalid-consistency-token",
                "Invalid consistency token",
            )
            .with_detail(reason.clone()),
            Self::Shared(error) => error.to_problem(),
            Self::Database(_) | Self::CorruptReadModel(_) => {
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
                    .with_detail("the read model could not be queried")
            }
        }
    }
}

impl QueryError {
    /// A failure another database (or a later attempt) may not have: the
    /// router moves on to the next database and takes this one out.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable(_) | Self::DeadlineExceeded { .. } => true,
            Self::Shared(error) => error.is_retryable(),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for QueryError {
    fn from(error: sqlx::Error) -> Self {
        if is_transient(&error) {
            Self::Unavailable(error)
        } else {
            Self::Database(error)
        }
    }
}

impl ResponseError for QueryError {
    fn status_code(&self) -> StatusCode {
        self.to_problem().status_code()
    }

    fn error_response(&self) -> HttpResponse {
        self.to_problem().to_response()
    }
}

/// Failures a client can cure by retrying a moment later: the replica is
/// unreachable, saturated or restarting, or cancelled the statement.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient_sqlstate(&code)),
        _ => false,
    }
}

/// SQLSTATEs that mean "not now" rather than "never".
fn is_transient_sqlstate(code: &str) -> bool {
    matches!(
        code,
        // query_canceled: statement_timeout fired
        "57014"
        // admin_shutdown, crash_shutdown, cannot_connect_now (replica starting)
        | "57P01" | "57P02" | "57P03"
        // a hot standby cancels reads that conflict with WAL replay with
        // serialization_failure
        | "40001"
        // too_many_connections
        | "53300"
    ) || code.starts_with("08") // connection_exception class
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_kind_to_its_status() {
        let cases = [
            (
                QueryError::NotFound {
                    resource: "order",
                    id: "x".into(),
                },
                404,
            ),
            (QueryError::InvalidRange("from >= to".into()), 400),
            (
                QueryError::InvalidParameter {
                    name: "limit",
                    reason: "must be at least 1".into(),
                },
                400,
            ),
            (QueryError::from(sqlx::Error::PoolTimedOut), 503),
            (
                QueryError::from(sqlx::Error::Io(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                ))),
                503,
            ),
            (QueryError::from(sqlx::Error::RowNotFound), 500),
            (QueryError::CorruptReadModel("status".into()), 500),
        ];
        for (error, status) in cases {
            assert_eq!(error.status_code().as_u16(), status, "{error:?}");
            assert_eq!(error.to_problem().status, status, "{error:?}");
        }
    }

    #[test]
    fn unavailable_asks_to_retry_after_one_second() {
        let response = QueryError::from(sqlx::Error::PoolTimedOut).error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response
                .headers()
                .get(actix_web::http::header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }

    #[test]
    fn server_errors_do_not_leak_the_database_message() {
        let error = QueryError::Database(sqlx::Error::Protocol(
            "SELECT secret FROM t: syntax error".into(),
        ));
        let json = serde_json::to_string(&error.to_problem()).expect("json");
        assert!(!json.contains("SELECT"), "{json}");
    }

    #[test]
    fn transient_sqlstates() {
        for code in ["57014", "57P03", "40001", "08006", "53300"] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in ["42P01", "42703", "22P02", "28P01"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
    }
}
