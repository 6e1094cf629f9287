//! One W3C trace across the whole write path: the HTTP request's
//! `traceparent` → command-service's request span → the event's
//! `metadata.traceparent` → the relay's publish span as the Kafka header
//! `traceparent` → the projector's `project` span in its JSON log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use e2e_tests::{client, eventually, stack, ProjectorProcess};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use reqwest::StatusCode;
use schema::trace_context::TraceParent;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

const CONSISTENCY: Duration = Duration::from_secs(30);

/// `len` random lowercase hex digits (at most 32), never all zeros.
fn random_hex(len: usize) -> String {
    loop {
        let hex = format!("{:032x}", rand_u128());
        let hex = hex[..len].to_owned();
        if hex.bytes().any(|b| b != b'0') {
            return hex;
        }
    }
}

fn rand_u128() -> u128 {
    // Two v4 UUIDs' random bits, mixed: every hex digit position varies.
    Uuid::new_v4().as_u128() ^ Uuid::new_v4().as_u128().rotate_left(64)
}

/// The parts of a `traceparent`: (trace id, span id, flags).
fn parts(traceparent: &str) -> (String, String, String) {
    // Parsing proves the format; the parts are compared as text.
    traceparent
        .parse::<TraceParent>()
        .unwrap_or_else(|e| panic!("{traceparent:?} is not a traceparent: {e}"));
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[0], "00", "{traceparent}");
    (
        fields[1].to_owned(),
        fields[2].to_owned(),
        fields[3].to_owned(),
    )
}

async fn primary() -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&stack().primary_url)
        .await
        .unwrap()
}

/// Creates a product, with `traceparent` as the request header if given;
/// returns its id.
async fn create_product(traceparent: Option<&str>) -> String {
    let mut request = client()
        .post(format!("{}/products", stack().command_url))
        .json(&json!({
            "sku": format!("SKU-{}", Uuid::new_v4().simple()),
            "name": "Traced",
            "price": {"amount_minor": 100, "currency": "EUR"},
        }));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["aggregate_id"].as_str().unwrap().to_owned()
}

/// The `traceparent` stored with the (only) event of `aggregate_id`.
async fn stored_traceparent(pool: &PgPool, aggregate_id: &str) -> String {
    sqlx::query_scalar::<_, Option<String>>(
        "SELECT metadata ->> 'traceparent' FROM events WHERE aggregate_id = $1",
    )
    .bind(aggregate_id)
    .fetch_one(pool)
    .await
    .unwrap()
    .unwrap_or_else(|| panic!("the event of {aggregate_id} has no traceparent"))
}

/// The `traceparent` header of the Kafka message of `aggregate_id`'s event
/// on `aggregate_type`'s topic (read from the start, in a group of its own).
async fn published_traceparent(aggregate_type: &str, aggregate_id: &str) -> String {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack().brokers)
        .set("group.id", format!("e2e-trace-{}", Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let topic = schema::envelope::topic_for(&stack().topic_prefix, aggregate_type);
    consumer.subscribe(&[&topic]).unwrap();
    let deadline = tokio::time::Instant::now() + CONSISTENCY;
    loop {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("no message of {aggregate_id} on {topic}"))
            .unwrap();
        let Some(headers) = message.headers() else {
            continue;
        };
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        if header("aggregate_id").as_deref() == Some(aggregate_id) {
            return header("traceparent").unwrap_or_else(|| {
                panic!("the message of {aggregate_id} has no traceparent header")
            });
        }
    }
}

/// A projector binary of its own, in a consumer group of its own (so it
/// re-reads every topic without taking partitions from the stack's
/// projector), logging JSON with the trace target on, to a file.
struct TracingProjector(ProjectorProcess);

impl TracingProjector {
    fn spawn() -> Self {
        stack(); // processes join the binary's stack: start it first
        let group = format!("e2e-trace-{}", Uuid::new_v4().simple());
        Self(ProjectorProcess::spawn_with(
            &group,
            &[
                ("PROJECTOR_GROUP_ID", group.as_str()),
                ("LOG_FORMAT", "json"),
                ("RUST_LOG", "info,projector::trace=debug"),
            ],
        ))
    }

    /// Its log lines so far, as JSON.
    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.0.log_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .collect()
    }

    /// The `event projected` log lines so far.
    fn projected(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|line| line["fields"]["message"] == "event projected")
            .collect()
    }
}

/// The fields of the `project` span of a log line: the current span, or
/// the innermost of that name in the span list.
fn project_span(line: &Value) -> Option<&Value> {
    if line["span"]["name"] == "project" {
        return Some(&line["span"]);
    }
    line["spans"]
        .as_array()?
        .iter()
        .rev()
        .find(|span| span["name"] == "project")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commands_trace_runs_through_the_event_store_kafka_and_the_projector() {
    // Started first: joining its group takes a few seconds.
    let projector = TracingProjector::spawn();
    let pool = primary().await;

    let trace_id = random_hex(32);
    let client_span = random_hex(16);
    let sent = format!("00-{trace_id}-{client_span}-01");
    let id = create_product(Some(&sent)).await;

    // command-service: the request's span is a child of the caller's.
    let stored = stored_traceparent(&pool, &id).await;
    let (stored_trace, stored_span, stored_flags) = parts(&stored);
    assert_eq!(stored_trace, trace_id, "stored {stored}, sent {sent}");
    assert_ne!(
        stored_span, client_span,
        "the request must get a span of its own: stored {stored}, sent {sent}"
    );
    assert_eq!(stored_flags, "01", "the sampled flag travels: {stored}");

    // relay: the publish span is a child of the request's.
    let published = published_traceparent(schema::product::AGGREGATE_TYPE, &id).await;
    let (published_trace, published_span, published_flags) = parts(&published);
    assert_eq!(published_trace, trace_id, "published {published}");
    assert_ne!(
        published_span, stored_span,
        "the publish must get a span of its own: published {published}, stored {stored}"
    );
    assert_ne!(published_span, client_span, "published {published}");
    assert_eq!(published_flags, "01", "published {published}");

    // projector: the project span is a child of the publish span.
    let line = eventually(
        "the projector logs the event's project span",
        CONSISTENCY,
        || async {
            projector
                .projected()
                .into_iter()
                .find(|line| project_span(line).is_some_and(|s| s["trace_id"] == trace_id))
        },
    )
    .await;
    let span = project_span(&line).unwrap();
    assert_eq!(line["target"], "projector::trace", "{line}");
    assert_eq!(line["level"], "DEBUG", "{line}");
    assert_eq!(
        span["parent_span_id"], published_span,
        "the project span's parent is the Kafka header's span: {line}"
    );
    let project_span_id = span["span_id"].as_str().unwrap();
    assert_eq!(project_span_id.len(), 16, "{line}");
    assert!(
        ![&client_span, &stored_span, &published_span].contains(&&project_span_id.to_owned()),
        "the project span must be new: {line}"
    );
    assert_eq!(
        line["fields"]["topic"],
        schema::envelope::topic_for(&stack().topic_prefix, schema::product::AGGREGATE_TYPE),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_without_a_usable_traceparent_starts_a_trace_of_its_own() {
    let pool = primary().await;
    let mut traces = Vec::new();
    // No header, twice; then headers the W3C spec says to ignore.
    let invalid_trace = random_hex(32);
    let headers = [
        None,
        None,
        Some("nonsense".to_owned()),
        Some(format!("00-{}-{}-01", "0".repeat(32), random_hex(16))),
        Some(format!("00-{invalid_trace}-{}-01", "0".repeat(16))),
        Some(format!("ff-{invalid_trace}-{}-01", random_hex(16))),
        Some(format!(
            "00-{}-{}-01",
            invalid_trace.to_uppercase(),
            random_hex(16)
        )),
    ];
    for header in &headers {
        let id = create_product(header.as_deref()).await;
        let stored = stored_traceparent(&pool, &id).await;
        let (trace, span, _) = parts(&stored);
        assert_ne!(trace, "0".repeat(32), "{header:?}: {stored}");
        assert_ne!(span, "0".repeat(16), "{header:?}: {stored}");
        if let Some(header) = header {
            assert!(
                !header.contains(&trace),
                "an invalid traceparent must not be continued: sent {header}, stored {stored}"
            );
        }
        assert_ne!(trace, invalid_trace, "{header:?}: {stored}");
        traces.push(trace);
    }
    let distinct: std::collections::HashSet<&String> = traces.iter().collect();
    assert_eq!(
        distinct.len(),
        traces.len(),
        "every command without a usable traceparent starts a new trace: {traces:?}"
    );
}

/// Publishes `payload` as event 1 of a new product, with `traceparent` as a
/// Kafka header, the way the relay would; returns (partition, offset).
async fn produce_traced(aggregate_id: Uuid, payload: &str, traceparent: &str) -> (i32, i64) {
    let headers = schema::envelope::EventHeaders {
        aggregate_type: schema::product::AGGREGATE_TYPE.into(),
        aggregate_id: aggregate_id.to_string(),
        sequence: 1,
        position: 0,
        event_type: "ProductCreated".into(),
        event_version: "1".into(),
        occurred_at: chrono::Utc::now(),
    };
    let mut pairs = headers.to_pairs();
    pairs.push(("traceparent", traceparent.to_owned()));
    let kafka_headers =
        pairs
            .into_iter()
            .fold(rdkafka::message::OwnedHeaders::new(), |h, (key, value)| {
                h.insert(rdkafka::message::Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            });
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack().brokers)
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let topic = schema::envelope::topic_for(&stack().topic_prefix, &headers.aggregate_type);
    let delivery = producer
        .send(
            rdkafka::producer::FutureRecord::to(&topic)
                .key(&headers.aggregate_id)
                .payload(payload)
                .headers(kafka_headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .unwrap();
    (delivery.partition, delivery.offset)
}

/// An event the projector cannot apply is parked, not projected: its trace
/// ends in a dead-letter line that carries the trace id, never in an
/// `event projected` line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_event_ends_its_trace_as_a_dead_letter_not_as_projected() {
    let projector = TracingProjector::spawn();
    let trace_id = random_hex(32);
    let (partition, offset) = produce_traced(
        Uuid::new_v4(),
        "{not json",
        &format!("00-{trace_id}-{}-01", random_hex(16)),
    )
    .await;
    let topic = schema::envelope::topic_for(&stack().topic_prefix, schema::product::AGGREGATE_TYPE);
    let parked = eventually("the poison is parked", CONSISTENCY, || async {
        projector.lines().into_iter().find(|line| {
            line["fields"]["message"] == "event parked as a dead letter"
                && line.to_string().contains(&trace_id)
                && line["fields"]["topic"] == topic.as_str()
                && line["fields"]["partition"] == partition
                && line["fields"]["offset"] == offset
        })
    })
    .await;
    // A later traced event's line proves the poison's batch is done logging.
    let control_trace = random_hex(32);
    create_product(Some(&format!("00-{control_trace}-{}-01", random_hex(16)))).await;
    eventually("the control event is projected", CONSISTENCY, || async {
        projector
            .projected()
            .into_iter()
            .find(|line| project_span(line).is_some_and(|s| s["trace_id"] == control_trace))
    })
    .await;
    let projected: Vec<Value> = projector
        .projected()
        .into_iter()
        .filter(|line| project_span(line).is_some_and(|s| s["trace_id"] == trace_id))
        .collect();
    assert!(
        projected.is_empty(),
        "a parked event was logged as projected: {projected:?}"
    );
    assert!(
        parked.to_string().contains(&trace_id),
        "the dead-letter line does not name the trace: {parked}"
    );
}
