//! Raw rdkafka produce and consume on the stack's broker: what the broker and
//! the client library do without the relay's and the projector's code around
//! them.
//!
//! "Raw" means the same client settings as the relay's producer
//! (`command-service/src/relay.rs`, `create_producer`) and the projector's
//! consumer (`projector/src/consumer.rs`), on a topic of the same shape (made
//! by [`event_bus::ensure_topics`]), with messages of the same size as the
//! events the write-path benchmark appends (a `ProductPriceChanged` payload,
//! an aggregate-id key and the event headers the relay sends); the tests
//! below fail if either service changes a setting this copy does not.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::stats::{latency_histogram, Latency, Measurement};

/// Name of the produce measurement.
pub const PRODUCE: &str = "rdkafka_produce";
/// Name of the consume measurement.
pub const CONSUME: &str = "rdkafka_consume";

/// The relay's producer settings (`create_producer` in
/// `command-service/src/relay.rs`), `message.timeout.ms` at the relay's
/// default `RELAY_DELIVERY_TIMEOUT_MS`.
pub const PRODUCER_SETTINGS: [(&str, &str); 6] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("max.in.flight.requests.per.connection", "5"),
    ("partitioner", "murmur2_random"),
    ("linger.ms", "5"),
    ("message.timeout.ms", "30000"),
];

/// The projector's consumer settings (`Projector::new` in
/// `projector/src/consumer.rs`) at its default
/// `PROJECTOR_SESSION_TIMEOUT_MS`; `group.id` is a fresh group per run.
pub const CONSUMER_SETTINGS: [(&str, &str); 6] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("statistics.interval.ms", "1000"),
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "3333"),
];

/// Deliveries awaited at once: far below librdkafka's queue (100 000
/// messages), enough to keep every partition's batches full.
const MAX_IN_FLIGHT: usize = 20_000;

/// Aggregates the messages are keyed by (so they spread over the partitions
/// as events of that many products would).
const AGGREGATES: usize = 1024;

/// The payload of a `ProductPriceChanged` event as command-service stores
/// and the relay publishes it (compact JSON, `schema/fixtures/events`).
const PAYLOAD: &str = r#"{"ProductPriceChanged":{"price":{"amount_minor":2590,"currency":"EUR"}}}"#;

#[derive(Debug, thiserror::Error)]
pub enum KafkaBaselineError {
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
    #[error("creating the baseline topic: {0}")]
    Topic(#[from] event_bus::TopicError),
    #[error("producing: {0}")]
    Produce(KafkaError),
    #[error("no message was acknowledged in the measured window")]
    EmptyWindow,
    #[error("the consumer read {read} of {expected} messages within {timeout:?}")]
    ConsumeTimeout {
        read: u64,
        expected: u64,
        timeout: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// Bootstrap servers (`KAFKA_BROKERS`).
    pub brokers: String,
    /// Topic prefix of this run (the messages go to `{prefix}.product`).
    pub topic_prefix: String,
    pub warmup: Duration,
    pub duration: Duration,
    /// Longest wait for the consumer to read every message back.
    pub consume_timeout: Duration,
}

/// Reading a backlog back with a fresh consumer group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consume {
    pub messages: u64,
    /// From the first message received to the last (the group's join and
    /// the first fetch are not counted).
    pub seconds: f64,
    pub messages_per_s: f64,
    /// From subscribing to the first message: joining the group.
    pub first_message_after_s: f64,
}

/// Both halves of the Kafka baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KafkaBaseline {
    pub topic: String,
    pub partitions: i32,
    pub key_bytes: usize,
    pub payload_bytes: usize,
    /// Header names and values of one message.
    pub header_bytes: usize,
    pub producer_settings: BTreeMap<String, String>,
    pub consumer_settings: BTreeMap<String, String>,
    /// Messages acknowledged in the whole run (warm-up included), all read
    /// back by the consumer.
    pub produced: u64,
    /// Acknowledged messages per second in the window after the warm-up,
    /// with enqueue-to-acknowledgement latency.
    pub produce: Measurement,
    pub consume: Consume,
}

impl KafkaBaseline {
    /// The consume rate in the shape of every other measurement; it has no
    /// latency of its own (a backlog read), so its percentiles are zero.
    pub fn consume_measurement(&self) -> Measurement {
        Measurement {
            name: CONSUME.to_owned(),
            clients: 1,
            seconds: self.consume.seconds,
            ops: self.consume.messages,
            ops_per_s: self.consume.messages_per_s,
            latency: Latency {
                p50_ms: 0.0,
                p95_ms: 0.0,
                p99_ms: 0.0,
                max_ms: 0.0,
            },
            errors: BTreeMap::new(),
        }
    }
}

/// Produces for warm-up + duration, then reads every message back.
pub async fn run(options: &KafkaOptions) -> Result<KafkaBaseline, KafkaBaselineError> {
    let topics = event_bus::TopicSettings {
        brokers: options.brokers.clone(),
        prefix: options.topic_prefix.clone(),
        partitions: 4,
        replication: 1,
    };
    event_bus::ensure_topics(&topics).await?;
    let topic = schema::envelope::topic_for(&topics.prefix, "Product");
    let messages = Messages::new();
    let (produce, produced) = produce(&topics, &topic, &messages, options).await?;
    let consume = consume(&topics, &topic, produced, options.consume_timeout).await?;
    Ok(KafkaBaseline {
        topic,
        partitions: topics.partitions,
        key_bytes: messages.key_bytes(),
        payload_bytes: PAYLOAD.len(),
        header_bytes: messages.header_bytes,
        producer_settings: settings_map(&PRODUCER_SETTINGS),
        consumer_settings: settings_map(&CONSUMER_SETTINGS),
        produced,
        produce,
        consume,
    })
}

fn settings_map(settings: &[(&str, &str)]) -> BTreeMap<String, String> {
    settings
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Keys and headers of [`AGGREGATES`] products, built once so the loop
/// measures the client, not the formatting.
struct Messages {
    keys: Vec<String>,
    headers: Vec<OwnedHeaders>,
    header_bytes: usize,
}

impl Messages {
    fn new() -> Self {
        let occurred_at = chrono::Utc::now();
        let mut header_bytes = 0;
        let (keys, headers) = (0..AGGREGATES)
            .map(|i| {
                let id = Uuid::new_v4().to_string();
                let pairs = schema::envelope::EventHeaders {
                    aggregate_type: "Product".to_owned(),
                    aggregate_id: id.clone(),
                    sequence: 2,
                    position: 1_000_000 + i as i64,
                    event_type: "ProductPriceChanged".to_owned(),
                    event_version: "1".to_owned(),
                    occurred_at,
                }
                .to_pairs();
                header_bytes = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
                let headers = pairs
                    .into_iter()
                    .fold(OwnedHeaders::new(), |h, (key, value)| {
                        h.insert(Header {
                            key,
                            value: Some(value.as_bytes()),
                        })
                    });
                (id, headers)
            })
            .unzip();
        Self {
            keys,
            headers,
            header_bytes,
        }
    }

    fn key_bytes(&self) -> usize {
        self.keys.first().map_or(0, String::len)
    }
}

fn client_config(topics: &event_bus::TopicSettings, settings: &[(&str, &str)]) -> ClientConfig {
    let mut config = topics.client_config();
    for (key, value) in settings {
        config.set(*key, *value);
    }
    config
}

/// Enqueues as fast as the client accepts, up to [`MAX_IN_FLIGHT`]
/// unacknowledged; counts the acknowledgements that arrive in the window.
/// Returns the measurement and every message acknowledged.
async fn produce(
    topics: &event_bus::TopicSettings,
    topic: &str,
    messages: &Messages,
    options: &KafkaOptions,
) -> Result<(Measurement, u64), KafkaBaselineError> {
    let producer: FutureProducer = client_config(topics, &PRODUCER_SETTINGS).create()?;
    // One message first, acknowledged before the clock starts: the
    // connection, the idempotent producer id and the topic's metadata are
    // set-up, not throughput (pgbench, too, connects before it measures).
    let first = FutureRecord::to(topic)
        .key(messages.keys[0].as_str())
        .payload(PAYLOAD)
        .headers(messages.headers[0].clone());
    producer
        .send(first, Duration::from_secs(30))
        .await
        .map_err(|(error, _)| KafkaBaselineError::Produce(error))?;
    let started = Instant::now();
    let window_start = started + options.warmup;
    let window_end = window_start + options.duration;
    let mut histogram = latency_histogram();
    let mut in_flight = FuturesUnordered::new();
    let mut acknowledged = 1u64;
    let mut sent = 1usize;
    let mut record_ack =
        |enqueued: Instant, result: Result<_, _>| -> Result<(), KafkaBaselineError> {
            let acked = Instant::now();
            match result {
                Ok(Ok(_)) => {
                    acknowledged += 1;
                    if enqueued >= window_start && acked <= window_end {
                        histogram.saturating_record((acked - enqueued).as_micros().max(1) as u64);
                    }
                    Ok(())
                }
                Ok(Err((error, _))) => Err(KafkaBaselineError::Produce(error)),
                Err(_) => Err(KafkaBaselineError::Produce(KafkaError::Canceled)),
            }
        };
    while Instant::now() < window_end {
        while in_flight.len() < MAX_IN_FLIGHT {
            let i = sent % AGGREGATES;
            let record = FutureRecord::to(topic)
                .key(messages.keys[i].as_str())
                .payload(PAYLOAD)
                .headers(messages.headers[i].clone());
            match producer.send_result(record) {
                Ok(delivery) => {
                    let enqueued = Instant::now();
                    in_flight.push(async move { (enqueued, delivery.await) });
                    sent += 1;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => break,
                Err((error, _)) => return Err(KafkaBaselineError::Produce(error)),
            }
        }
        if let Some((enqueued, result)) = in_flight.next().await {
            record_ack(enqueued, result)?;
        }
    }
    while let Some((enqueued, result)) = in_flight.next().await {
        record_ack(enqueued, result)?;
    }
    producer.flush(Duration::from_secs(30))?;
    if histogram.is_empty() {
        return Err(KafkaBaselineError::EmptyWindow);
    }
    let seconds = options.duration.as_secs_f64();
    Ok((
        Measurement {
            name: PRODUCE.to_owned(),
            clients: 1,
            seconds,
            ops: histogram.len(),
            ops_per_s: histogram.len() as f64 / seconds,
            latency: Latency::from_histogram(&histogram),
            errors: BTreeMap::new(),
        },
        acknowledged,
    ))
}

/// Reads `expected` messages from the start of `topic` with a fresh group.
async fn consume(
    topics: &event_bus::TopicSettings,
    topic: &str,
    expected: u64,
    timeout: Duration,
) -> Result<Consume, KafkaBaselineError> {
    let group = format!("{}-consumer", topics.prefix);
    let consumer: StreamConsumer = client_config(topics, &CONSUMER_SETTINGS)
        .set("group.id", &group)
        .create()?;
    consumer.subscribe(&[topic])?;
    let subscribed = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut read = 0u64;
    let mut first = None;
    let mut last = subscribed;
    while read < expected {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(_)) => {
                last = Instant::now();
                first.get_or_insert(last);
                read += 1;
            }
            // A transient fetch error: librdkafka retries by itself.
            Ok(Err(error)) => eprintln!("   consumer: {error}"),
            Err(_) => {
                return Err(KafkaBaselineError::ConsumeTimeout {
                    read,
                    expected,
                    timeout,
                })
            }
        }
    }
    let first = first.unwrap_or(subscribed);
    let seconds = (last - first).as_secs_f64();
    Ok(Consume {
        messages: read,
        seconds,
        messages_per_s: if seconds > 0.0 {
            read as f64 / seconds
        } else {
            0.0
        },
        first_message_after_s: (first - subscribed).as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `.set("key", "value")` pairs with literal values in `source`.
    fn literal_sets(source: &str) -> Vec<(String, String)> {
        source
            .split(".set(")
            .skip(1)
            .filter(|rest| rest.trim_start().starts_with('"'))
            .filter_map(|rest| {
                let mut quoted = rest.split('"');
                let key = quoted.nth(1)?;
                let between = quoted.next()?;
                let value = quoted.next()?;
                (between.trim() == ",").then(|| (key.to_owned(), value.to_owned()))
            })
            .collect()
    }

    #[test]
    fn producer_settings_are_the_relays() {
        let relay = include_str!("../../../../command-service/src/relay.rs");
        let literal = literal_sets(relay);
        assert!(literal.len() >= 5, "{literal:?}");
        for (key, value) in &literal {
            assert!(
                PRODUCER_SETTINGS.contains(&(key.as_str(), value.as_str())),
                "the relay sets {key}={value}; PRODUCER_SETTINGS does not"
            );
        }
        assert!(relay.contains("\"message.timeout.ms\""));
        assert!(PRODUCER_SETTINGS
            .iter()
            .any(|(k, _)| *k == "message.timeout.ms"));
    }

    #[test]
    fn consumer_settings_are_the_projectors() {
        let projector = include_str!("../../../../projector/src/consumer.rs");
        let literal = literal_sets(projector);
        assert!(literal.len() >= 4, "{literal:?}");
        for (key, value) in &literal {
            assert!(
                CONSUMER_SETTINGS.contains(&(key.as_str(), value.as_str())),
                "the projector sets {key}={value}; CONSUMER_SETTINGS does not"
            );
        }
        for computed in ["session.timeout.ms", "heartbeat.interval.ms"] {
            assert!(projector.contains(&format!("\"{computed}\"")));
            assert!(CONSUMER_SETTINGS.iter().any(|(k, _)| *k == computed));
        }
    }

    #[test]
    fn literal_sets_skip_computed_values() {
        let source = r#"c.set("a", "1").set("b", x.to_string()).set("c","2")"#;
        assert_eq!(
            literal_sets(source),
            vec![("a".into(), "1".into()), ("c".into(), "2".into())]
        );
    }

    #[test]
    fn messages_are_sized_like_events() {
        let messages = Messages::new();
        assert_eq!(messages.key_bytes(), 36);
        assert!(messages.header_bytes > 100, "{}", messages.header_bytes);
        let payload: serde_json::Value = serde_json::from_str(PAYLOAD).unwrap_or_default();
        assert_eq!(payload["ProductPriceChanged"]["price"]["currency"], "EUR");
    }
}
