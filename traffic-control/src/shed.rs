//! Load shedding: a bound on the requests one instance handles at once.
//!
//! Past the bound a request is refused immediately with 503 rather than
//! queued: a queue only adds latency to every request behind it and keeps
//! work alive for clients that may already have given up, while a quick 503
//! lets the client (or the load balancer) retry elsewhere or later.

use std::future::{ready, Ready};
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use futures::future::LocalBoxFuture;
use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::problem::service_unavailable;

/// Problem type of a request refused because the instance is at its bound.
pub const OVERLOADED_PROBLEM: &str = "/problems/overloaded";

/// Load-shedding collectors: `http_requests_in_flight` (gauge) and
/// `http_requests_shed_total` (counter). Cloning shares them.
#[derive(Clone)]
pub struct ShedMetrics {
    in_flight: IntGauge,
    shed: IntCounter,
}

impl ShedMetrics {
    /// Creates the collectors, not registered anywhere yet.
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            in_flight: IntGauge::new(
                "http_requests_in_flight",
                "Requests admitted by the in-flight limit and not answered yet",
            )?,
            shed: IntCounter::new(
                "http_requests_shed_total",
                "Requests refused with 503 because the in-flight limit was reached",
            )?,
        })
    }

    /// Registers the collectors in the service's registry.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.in_flight.clone()))?;
        registry.register(Box::new(self.shed.clone()))?;
        Ok(())
    }
}

/// Middleware admitting at most `max` requests at once; the others get 503
/// `/problems/overloaded` with `Retry-After: 1` without being queued.
///
/// Create it **once**, outside `HttpServer::new`, and clone it into the app
/// factory: clones share one semaphore, whereas an `InFlightLimit` built in
/// the factory would give every worker its own `max`.
///
/// A permit is held until the inner service has produced the response head;
/// streaming a large body afterwards does not count.
#[derive(Clone)]
pub struct InFlightLimit {
    permits: Arc<Semaphore>,
    metrics: ShedMetrics,
}

impl InFlightLimit {
    /// At most `max` requests at once (`max` = 0 is raised to 1: refusing
    /// everything is never what a configuration means).
    pub fn new(max: usize, metrics: &ShedMetrics) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            metrics: metrics.clone(),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for InFlightLimit
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = InFlightLimitService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(InFlightLimitService {
            service: Rc::new(service),
            limit: self.clone(),
        }))
    }
}

/// The service [`InFlightLimit`] wraps around the inner one.
pub struct InFlightLimitService<S> {
    service: Rc<S>,
    limit: InFlightLimit,
}

/// A held permit; the gauge follows it, including when the request future is
/// dropped half-way (deadline, client gone).
struct InFlight {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl<S, B> Service<ServiceRequest> for InFlightLimitService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let permit = match Arc::clone(&self.limit.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.limit.metrics.shed.inc();
                let response = service_unavailable(
                    OVERLOADED_PROBLEM,
                    "Service overloaded",
                    "too many requests are in progress on this instance; retry shortly",
                )
                .to_response();
                return Box::pin(ready(Ok(req.into_response(response).map_into_right_body())));
            }
        };
        self.limit.metrics.in_flight.inc();
        let guard = InFlight {
            _permit: permit,
            gauge: self.limit.metrics.in_flight.clone(),
        };
        let service = Rc::clone(&self.service);
        Box::pin(async move {
            let response = service.call(req).await;
            drop(guard);
            response.map(ServiceResponse::map_into_left_body)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix_web::http::header;
    use actix_web::{test, web, App, HttpResponse};
    use tokio::sync::Notify;

    use super::*;

    #[actix_web::test]
    async fn refuses_at_once_while_full_and_admits_after() {
        let metrics = ShedMetrics::new().expect("metrics");
        let registry = Registry::new();
        metrics.register(&registry).expect("register");
        let entered = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let (entered_h, release_h) = (Arc::clone(&entered), Arc::clone(&release));
        let app = test::init_service(
            App::new()
                .route(
                    "/slow",
                    web::get().to(move || {
                        let (entered, release) = (Arc::clone(&entered_h), Arc::clone(&release_h));
                        async move {
                            entered.notify_one();
                            release.notified().await;
                            HttpResponse::Ok().finish()
                        }
                    }),
                )
                .route("/fast", web::get().to(HttpResponse::Ok))
                .wrap(InFlightLimit::new(1, &metrics)),
        )
        .await;
        let app = Rc::new(app);

        let first = {
            let app = Rc::clone(&app);
            actix_web::rt::spawn(async move {
                let req = test::TestRequest::get().uri("/slow").to_request();
                test::call_service(&*app, req).await.status()
            })
        };
        entered.notified().await;
        assert_eq!(metrics.in_flight.get(), 1);

        let started = std::time::Instant::now();
        let req = test::TestRequest::get().uri("/fast").to_request();
        let second = test::call_service(&*app, req).await;
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        assert_eq!(second.status(), 503);
        assert_eq!(
            second
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(
            second
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(problem_details::CONTENT_TYPE.as_bytes())
        );
        let body: serde_json::Value = test::read_body_json(second).await;
        assert_eq!(body["type"], OVERLOADED_PROBLEM);
        assert_eq!(body["status"], 503);
        assert_eq!(metrics.shed.get(), 1);

        release.notify_one();
        assert_eq!(first.await.expect("first request"), 200);
        assert_eq!(metrics.in_flight.get(), 0);

        let req = test::TestRequest::get().uri("/fast").to_request();
        assert_eq!(test::call_service(&*app, req).await.status(), 200);
        assert_eq!(metrics.shed.get(), 1);
    }
}
