//! Per-route request counts and latencies.
//!
//! Labels are bounded on purpose: the route is the matched pattern
//! (`/orders/{id}`), never the raw path, and unusual HTTP methods share one
//! label, so a scanner cannot create a time series per URL it tries.

use std::future::{ready, Ready};
use std::rc::Rc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::Method;
use futures::future::LocalBoxFuture;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Route label of requests that matched no resource (404s, default services).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Buckets of `http_request_duration_seconds`: 0.5 ms (a cache hit) to 10 s
/// (past any sensible request deadline).
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The request collectors of one service:
/// `http_requests_total{method, route, status}` and
/// `http_request_duration_seconds{method, route}`.
///
/// Cloning shares the collectors.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Creates the collectors, not registered anywhere yet.
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            requests: IntCounterVec::new(
                Opts::new("http_requests_total", "HTTP requests answered"),
                &["method", "route", "status"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "Time from receiving a request to its response head",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["method", "route"],
            )?,
        })
    }

    /// Registers the collectors in the service's registry.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.requests.clone()))?;
        registry.register(Box::new(self.duration.clone()))?;
        Ok(())
    }

    fn observe(&self, method: &str, route: &str, status: u16, started: Instant) {
        self.requests
            .with_label_values(&[method, route, status.to_string().as_str()])
            .inc();
        self.duration
            .with_label_values(&[method, route])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The route label of a request: its matched pattern, or [`UNMATCHED_ROUTE`].
pub(crate) fn route_label(req: &ServiceRequest) -> String {
    req.match_pattern()
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned())
}

/// The method label: the standard methods by name, anything else `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Middleware recording every request in [`HttpMetrics`]. Wrap it outermost
/// (registered last) so the 503s of the protection layers are counted too.
#[derive(Clone)]
pub struct RequestMetrics {
    metrics: HttpMetrics,
}

impl RequestMetrics {
    /// Records into `metrics` (shared, so all workers count into the same
    /// collectors).
    pub fn new(metrics: &HttpMetrics) -> Self {
        Self {
            metrics: metrics.clone(),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for RequestMetrics
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = RequestMetricsService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestMetricsService {
            service: Rc::new(service),
            metrics: self.metrics.clone(),
        }))
    }
}

/// The service [`RequestMetrics`] wraps around the inner one.
pub struct RequestMetricsService<S> {
    service: Rc<S>,
    metrics: HttpMetrics,
}

impl<S, B> Service<ServiceRequest> for RequestMetricsService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let method = method_label(req.method());
        let route = route_label(&req);
        let metrics = self.metrics.clone();
        let service = Rc::clone(&self.service);
        Box::pin(async move {
            let result = service.call(req).await;
            let status = match &result {
                Ok(response) => response.status(),
                // actix turns the error into a response further out; count
                // the status that response will have.
                Err(error) => error.as_response_error().status_code(),
            };
            metrics.observe(method, &route, status.as_u16(), started);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use actix_web::{test, web, App, HttpResponse};

    use super::*;

    fn count(registry: &Registry, method: &str, route: &str, status: &str) -> u64 {
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == "http_requests_total")
            .flat_map(|family| family.get_metric().to_vec())
            .filter(|metric| {
                let labels: Vec<(&str, &str)> = metric
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                labels.contains(&("method", method))
                    && labels.contains(&("route", route))
                    && labels.contains(&("status", status))
            })
            .map(|metric| metric.get_counter().get_value() as u64)
            .sum()
    }

    fn histogram_count(registry: &Registry, route: &str) -> u64 {
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == "http_request_duration_seconds")
            .flat_map(|family| family.get_metric().to_vec())
            .filter(|metric| {
                metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == "route" && l.value() == route)
            })
            .map(|metric| metric.get_histogram().get_sample_count())
            .sum()
    }

    #[actix_web::test]
    async fn labels_use_the_route_pattern_not_the_path() {
        let metrics = HttpMetrics::new().expect("metrics");
        let registry = Registry::new();
        metrics.register(&registry).expect("register");
        let app = test::init_service(
            App::new()
                .service(
                    web::scope("/orders")
                        .route("/{id}", web::get().to(HttpResponse::Ok))
                        .route("", web::post().to(HttpResponse::Accepted)),
                )
                .wrap(RequestMetrics::new(&metrics)),
        )
        .await;

        for id in ["a", "b", "c"] {
            let req = test::TestRequest::get()
                .uri(&format!("/orders/{id}"))
                .to_request();
            assert_eq!(test::call_service(&app, req).await.status(), 200);
        }
        let req = test::TestRequest::post().uri("/orders").to_request();
        assert_eq!(test::call_service(&app, req).await.status(), 202);
        let req = test::TestRequest::get().uri("/nowhere/42").to_request();
        assert_eq!(test::call_service(&app, req).await.status(), 404);

        assert_eq!(count(&registry, "GET", "/orders/{id}", "200"), 3);
        assert_eq!(count(&registry, "POST", "/orders", "202"), 1);
        assert_eq!(count(&registry, "GET", UNMATCHED_ROUTE, "404"), 1);
        assert_eq!(histogram_count(&registry, "/orders/{id}"), 3);
        let raw_paths = registry
            .gather()
            .iter()
            .flat_map(|family| family.get_metric().to_vec())
            .flat_map(|metric| metric.get_label().to_vec())
            .filter(|label| {
                label.value().starts_with("/orders/a") || label.value() == "/nowhere/42"
            })
            .count();
        assert_eq!(raw_paths, 0, "raw paths must never become labels");
    }

    #[actix_web::test]
    async fn unusual_methods_share_one_label() {
        let metrics = HttpMetrics::new().expect("metrics");
        let registry = Registry::new();
        metrics.register(&registry).expect("register");
        let app = test::init_service(
            App::new()
                .route("/x", web::get().to(HttpResponse::Ok))
                .wrap(RequestMetrics::new(&metrics)),
        )
        .await;
        let method = Method::from_bytes(b"PROPFIND").expect("method");
        let req = test::TestRequest::default()
            .method(method)
            .uri("/x")
            .to_request();
        test::call_service(&app, req).await;
        assert_eq!(
            count(&registry, "OTHER", "/x", "404") + count(&registry, "OTHER", "/x", "405"),
            1
        );
    }

    #[actix_web::test]
    async fn two_registries_in_one_process() {
        let a = HttpMetrics::new().expect("metrics");
        let b = HttpMetrics::new().expect("metrics");
        a.register(&Registry::new()).expect("first");
        b.register(&Registry::new()).expect("second");
    }
}
