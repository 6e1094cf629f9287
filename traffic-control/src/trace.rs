//! The request's place in a distributed trace (W3C `traceparent`).
//!
//! [`TraceRootSpan`] is the root span builder for `tracing-actix-web`'s
//! `TracingLogger`: it continues the caller's trace (or starts one), gives the
//! request a span id of its own, records `trace_id`, `span_id` and
//! `parent_span_id` on the request's root span (so every log line of the
//! request carries them), and leaves the context in the request extensions,
//! where handlers take it with the [`RequestTrace`] extractor to pass it on
//! (command-service writes it into the events' metadata).

use std::future::{ready, Ready};

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::{Error, FromRequest, HttpMessage, HttpRequest};
use schema::trace_context::{TraceParent, TRACEPARENT};
use tracing::Span;
use tracing_actix_web::{root_span, DefaultRootSpanBuilder, RootSpanBuilder};

/// Root span builder: `TracingLogger::<TraceRootSpan>::new()`.
pub struct TraceRootSpan;

impl RootSpanBuilder for TraceRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let parent = request
            .headers()
            .get(TRACEPARENT)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<TraceParent>().ok());
        let context = parent.map_or_else(TraceParent::new_root, |p| p.child());
        request.extensions_mut().insert(RequestTrace(context));
        let span = root_span!(
            request,
            span_id = %context.span_id(),
            parent_span_id = tracing::field::Empty
        );
        span.record("trace_id", context.trace_id());
        if let Some(parent) = parent {
            span.record("parent_span_id", parent.span_id());
        }
        span
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

/// The trace context of the current request's span: its `traceparent` is
/// the parent of whatever the request causes downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTrace(pub TraceParent);

impl FromRequest for RequestTrace {
    type Error = Error;
    type Future = Ready<Result<Self, Error>>;

    /// The context [`TraceRootSpan`] stored; a new root trace in an app
    /// built without it (never an error: tracing must not fail requests).
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let trace = req
            .extensions()
            .get::<RequestTrace>()
            .copied()
            .unwrap_or_else(|| RequestTrace(TraceParent::new_root()));
        ready(Ok(trace))
    }
}

#[cfg(test)]
mod tests {
    use actix_web::{test, web, App, HttpResponse};
    use tracing_actix_web::TracingLogger;

    use super::*;

    async fn echo(trace: RequestTrace) -> HttpResponse {
        HttpResponse::Ok().body(trace.0.to_string())
    }

    #[actix_web::test]
    async fn continues_the_callers_trace_with_a_new_span() {
        let app = test::init_service(
            App::new()
                .wrap(TracingLogger::<TraceRootSpan>::new())
                .route("/", web::get().to(echo)),
        )
        .await;
        let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let req = test::TestRequest::get()
            .uri("/")
            .insert_header((TRACEPARENT, sent))
            .to_request();
        let body = test::call_and_read_body(&app, req).await;
        let got: TraceParent = std::str::from_utf8(&body)
            .expect("utf-8")
            .parse()
            .expect("a traceparent");
        assert_eq!(got.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(got.span_id(), "00f067aa0ba902b7");
    }

    #[actix_web::test]
    async fn starts_a_trace_when_the_caller_sent_none_or_garbage() {
        let app = test::init_service(
            App::new()
                .wrap(TracingLogger::<TraceRootSpan>::new())
                .route("/", web::get().to(echo)),
        )
        .await;
        let req = test::TestRequest::get()
            .uri("/")
            .insert_header((TRACEPARENT, "nonsense"))
            .to_request();
        let body = test::call_and_read_body(&app, req).await;
        let got: Result<TraceParent, _> = std::str::from_utf8(&body).expect("utf-8").parse();
        assert!(got.is_ok());
    }
}
