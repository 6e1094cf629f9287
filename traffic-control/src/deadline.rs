//! A time budget per request.
//!
//! A request still running when its budget is spent is abandoned: the inner
//! future (auth, rate limit, handler) is dropped, which cancels whatever it
//! was awaiting, and the client gets 503 `/problems/deadline-exceeded`. This
//! bounds how long a slow dependency can hold a connection and an in-flight
//! permit.
//!
//! **Dropping is not rolling back.** A command whose transaction had already
//! been sent to Postgres may still commit after the client was told 503 (the
//! commit may even be what was slow). Clients must therefore retry commands
//! with the same `Idempotency-Key`, so the retry returns the first outcome
//! instead of applying the command twice.

use std::future::{ready, Ready};
use std::rc::Rc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use futures::future::LocalBoxFuture;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::http_metrics::route_label;
use crate::problem::service_unavailable;

/// Problem type of a request abandoned at its deadline.
pub const DEADLINE_EXCEEDED_PROBLEM: &str = "/problems/deadline-exceeded";

/// Deadline collectors: `http_request_deadline_exceeded_total{route}`
/// (route = matched pattern or `unmatched`). Cloning shares them.
#[derive(Clone)]
pub struct DeadlineMetrics {
    exceeded: IntCounterVec,
}

impl DeadlineMetrics {
    /// Creates the collectors, not registered anywhere yet.
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            exceeded: IntCounterVec::new(
                Opts::new(
                    "http_request_deadline_exceeded_total",
                    "Requests abandoned with 503 because they ran past REQUEST_TIMEOUT_MS",
                ),
                &["route"],
            )?,
        })
    }

    /// Registers the collectors in the service's registry.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.exceeded.clone()))
    }
}

/// Middleware answering 503 `/problems/deadline-exceeded` (`Retry-After: 1`)
/// when the inner service has not answered within `duration`; see the module
/// documentation for what abandoning a command implies.
#[derive(Clone)]
pub struct Deadline {
    duration: Duration,
    metrics: DeadlineMetrics,
}

impl Deadline {
    /// A budget of `duration` per request, counted into `metrics`.
    pub fn new(duration: Duration, metrics: &DeadlineMetrics) -> Self {
        Self {
            duration,
            metrics: metrics.clone(),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Deadline
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = DeadlineService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(DeadlineService {
            service: Rc::new(service),
            deadline: self.clone(),
        }))
    }
}

/// The service [`Deadline`] wraps around the inner one.
pub struct DeadlineService<S> {
    service: Rc<S>,
    deadline: Deadline,
}

impl<S, B> Service<ServiceRequest> for DeadlineService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let route = route_label(&req);
        let duration = self.deadline.duration;
        let metrics = self.deadline.metrics.clone();
        let service = Rc::clone(&self.service);
        Box::pin(async move {
            match tokio::time::timeout(duration, service.call(req)).await {
                Ok(result) => result,
                // Answered as an error, which actix renders with the problem's
                // status and headers: the request went down with the inner
                // future, and a clone of it kept to build a response here
                // would break the inner router (it needs the only reference).
                Err(_elapsed) => {
                    metrics.exceeded.with_label_values(&[route.as_str()]).inc();
                    tracing::warn!(
                        route = %route,
                        timeout_ms = duration.as_millis() as u64,
                        "request abandoned at its deadline"
                    );
                    let problem = service_unavailable(
                        DEADLINE_EXCEEDED_PROBLEM,
                        "Deadline exceeded",
                        format!(
                            "the request did not complete within {} ms; a command may still \
                             have been applied, retry it with the same Idempotency-Key",
                            duration.as_millis()
                        ),
                    );
                    Err(problem.into())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use actix_web::http::header;
    use actix_web::{test, web, App, HttpResponse};

    use super::*;
    use crate::testing::respond;

    #[actix_web::test]
    async fn answers_503_when_the_handler_overruns() {
        let metrics = DeadlineMetrics::new().expect("metrics");
        let registry = Registry::new();
        metrics.register(&registry).expect("register");
        let app = test::init_service(
            App::new()
                .route(
                    "/slow/{id}",
                    web::get().to(|| async {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        HttpResponse::Ok().finish()
                    }),
                )
                .route("/fast", web::get().to(HttpResponse::Ok))
                .wrap(Deadline::new(Duration::from_millis(50), &metrics)),
        )
        .await;

        let started = Instant::now();
        let req = test::TestRequest::get().uri("/slow/7").to_request();
        let response = respond(&app, req).await;
        let elapsed = started.elapsed();
        // ~50 ms; the slack is for a loaded test machine, the point is that
        // the 1 s handler is not waited for.
        assert!(
            elapsed >= Duration::from_millis(50) && elapsed < Duration::from_millis(250),
            "took {elapsed:?}"
        );
        assert_eq!(response.status(), 503);
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(problem_details::CONTENT_TYPE.as_bytes())
        );
        let body = actix_web::body::to_bytes(response.into_body())
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["type"], DEADLINE_EXCEEDED_PROBLEM);
        assert_eq!(metrics.exceeded.with_label_values(&["/slow/{id}"]).get(), 1);

        let req = test::TestRequest::get().uri("/fast").to_request();
        assert_eq!(test::call_service(&app, req).await.status(), 200);
        assert_eq!(metrics.exceeded.with_label_values(&["/fast"]).get(), 0);
    }
}
