//! Two projectors in one consumer group while commands keep coming, and
//! faults: kill -9 a projector 20 times, freeze Postgres for 10 s 5 times,
//! pause the broker for 15 s 5 times. Afterwards, within 30 s, the read
//! models equal a fold of the event store and the message counter (a
//! projection without any version check) equals the number of messages in
//! the topics: nothing lost, nothing applied twice.
//! (A binary of its own: it runs its own projectors and freezes its stack.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_tests::read_models::ReadModels;
use e2e_tests::{stack_without_projector as stack, wait_for_relay_to_drain, ProjectorProcess};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

/// Events committed over the run (at least); `FAULT_EVENTS` overrides.
fn target_events() -> i64 {
    std::env::var("FAULT_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
}

const KILLS: usize = 20;
const WRITERS: usize = 16;
/// How long the fault schedule takes, roughly: the writers spread the target
/// number of events over it, so the projectors face faults, not a flood.
const FAULT_RUN: Duration = Duration::from_secs(165);

/// One client's loop: a product, an order of it, confirm (or cancel), now
/// and then cancel a confirmed order (reversing its sales), rename the product.
async fn write(
    client: reqwest::Client,
    customers: Arc<Vec<Uuid>>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
) {
    let started = Instant::now();
    let per_second = target_events() as f64 / FAULT_RUN.as_secs_f64();
    let url = &stack().command_url;
    let post = |path: String, body: Value| {
        let client = client.clone();
        let accepted = accepted.clone();
        async move {
            let response = client
                .post(format!("{url}{path}"))
                .json(&body)
                .send()
                .await
                .ok()?;
            if response.status() != 202 {
                return None;
            }
            accepted.fetch_add(1, Ordering::Relaxed);
            let body: Value = response.json().await.ok()?;
            body["aggregate_id"].as_str().map(str::to_owned)
        }
    };
    let mut round = 0_usize;
    while !stop.load(Ordering::Relaxed) {
        if accepted.load(Ordering::Relaxed) as f64 > per_second * started.elapsed().as_secs_f64() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        round += 1;
        let price = json!({"amount_minor": 100 + (round % 7) as i64, "currency": "EUR"});
        let Some(product) = post(
            "/products".into(),
            json!({"sku": format!("F-{}", Uuid::new_v4().simple()), "name": "fault", "price": price}),
        )
        .await
        else {
            continue;
        };
        let customer = customers[round % customers.len()];
        let Some(order) = post(
            "/orders".into(),
            json!({"customer_id": customer, "lines": [
                {"product_id": product, "quantity": 1 + round % 3, "unit_price": price}]}),
        )
        .await
        else {
            continue;
        };
        if round.is_multiple_of(4) {
            post(format!("/orders/{order}/cancel"), json!({})).await;
        } else {
            post(format!("/orders/{order}/confirm"), json!({})).await;
            if round.is_multiple_of(5) {
                post(format!("/orders/{order}/cancel"), json!({})).await;
            }
        }
        post(
            format!("/products/{product}/rename"),
            json!({"name": format!("fault {round}")}),
        )
        .await;
    }
}

/// Freezes a component for `down`, resuming it even if the test panics.
async fn freeze(component: &str, down: Duration) {
    struct Thaw<'a>(&'a str);
    impl Drop for Thaw<'_> {
        fn drop(&mut self) {
            signal(self.0, "CONT");
        }
    }
    fn signal(component: &str, signal: &str) {
        if component == "postgres" {
            stack().signal_primary(signal);
        } else {
            stack().signal(component, signal);
        }
    }
    eprintln!("freezing {component} for {down:?}");
    signal(component, "STOP");
    let _thaw = Thaw(component);
    tokio::time::sleep(down).await;
}

/// What a partition holds, read from its start to its end (not asked of the
/// broker: Tansu's ListOffsets answer was seen lagging behind what consumers
/// fetch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Partition {
    /// The offset after the last message.
    end: i64,
    /// Messages in it: fewer than `end` if the broker's offsets have holes.
    messages: i64,
}

/// Every partition of each event topic, and the identity (aggregate id,
/// sequence) of every message in them.
async fn messages_in_topics() -> (
    BTreeMap<(String, i32), Partition>,
    std::collections::HashMap<(String, i64), (String, i32, i64)>,
) {
    let brokers = stack().brokers.clone();
    let prefix = stack().topic_prefix.clone();
    tokio::task::spawn_blocking(move || {
        use rdkafka::message::{Headers, Message};
        use rdkafka::{Offset, TopicPartitionList};
        let mut identities = std::collections::HashMap::new();
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("e2e-ends-{}", Uuid::new_v4()))
            .set("enable.partition.eof", "true")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut ends = BTreeMap::new();
        for aggregate_type in ["Product", "Order"] {
            let topic = schema::envelope::topic_for(&prefix, aggregate_type);
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .unwrap();
            for partition in metadata.topics()[0].partitions() {
                // One partition at a time, so the end-of-partition signal
                // (which names only the partition number) is unambiguous.
                let mut assignment = TopicPartitionList::new();
                assignment
                    .add_partition_offset(&topic, partition.id(), Offset::Beginning)
                    .unwrap();
                consumer.assign(&assignment).unwrap();
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut seen = Partition::default();
                loop {
                    assert!(Instant::now() < deadline, "reading {topic} took over 60 s");
                    match consumer.poll(Duration::from_secs(1)) {
                        Some(Ok(message)) => {
                            seen.end = message.offset() + 1;
                            seen.messages += 1;
                            let pairs = message.headers().map(|h| {
                                h.iter()
                                    .filter_map(|h| h.value.map(|v| (h.key, v)))
                                    .collect::<Vec<_>>()
                            });
                            let headers = schema::envelope::EventHeaders::from_pairs(
                                pairs.unwrap_or_default(),
                            )
                            .unwrap();
                            identities.insert(
                                (headers.aggregate_id, headers.sequence),
                                (topic.clone(), partition.id(), message.offset()),
                            );
                        }
                        Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                        Some(Err(error)) => panic!("reading {topic}: {error}"),
                        None => {}
                    }
                }
                ends.insert((topic.clone(), partition.id()), seen);
            }
        }
        (ends, identities)
    })
    .await
    .unwrap()
}

/// Whether the group has applied every message in the topics, by its stored
/// offsets and by its counter.
async fn caught_up(pool: &PgPool) -> Option<(i64, i64)> {
    let (partitions, _) = messages_in_topics().await;
    let total: i64 = partitions.values().map(|p| p.messages).sum();
    let ends: BTreeMap<(String, i32), i64> =
        partitions.iter().map(|(k, p)| (k.clone(), p.end)).collect();
    let offsets: BTreeMap<(String, i32), i64> = sqlx::query_as::<_, (String, i32, i64)>(
        "SELECT topic, partition, next_offset FROM projector_offsets WHERE consumer_group = 'projector'",
    )
    .fetch_all(pool)
    .await
    .ok()?
    .into_iter()
    .map(|(t, p, o)| ((t, p), o))
    .collect();
    let applied: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(applied), 0)::bigint FROM projector_message_counts WHERE consumer_group = 'projector'",
    )
    .fetch_one(pool)
    .await
    .ok()?;
    if offsets != ends {
        let behind: i64 = ends
            .iter()
            .map(|(k, end)| end - offsets.get(k).copied().unwrap_or(0))
            .sum();
        eprintln!("projectors {behind} messages behind ({applied} applied of {total})");
        tokio::time::sleep(Duration::from_millis(500)).await;
        return None;
    }
    Some((applied, total))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_starved_projectors_lose_and_double_nothing() {
    // Thousands of commands fail on purpose while Postgres is frozen; their
    // error logs would bury the test's own output. RUST_LOG still overrides.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var(
            "RUST_LOG",
            "error,command_service=off,tracing_actix_web=off,sqlx=off",
        );
    }
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&stack().primary_url)
        .await
        .unwrap();
    let mut projectors = vec![
        ProjectorProcess::spawn("a-0"),
        ProjectorProcess::spawn("b-0"),
    ];

    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let customers = Arc::new((0..50).map(|_| Uuid::new_v4()).collect::<Vec<_>>());
    let client = e2e_tests::client();
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            tokio::spawn(write(
                client.clone(),
                customers.clone(),
                stop.clone(),
                accepted.clone(),
            ))
        })
        .collect();

    let started = Instant::now();
    for round in 0..KILLS {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match round % 4 {
            1 => freeze("broker", Duration::from_secs(15)).await,
            3 => freeze("postgres", Duration::from_secs(10)).await,
            _ => {}
        }
        let victim = round % 2;
        eprintln!(
            "{:?}: kill -9 projector {victim} ({} commands accepted)",
            started.elapsed(),
            accepted.load(Ordering::Relaxed)
        );
        drop(projectors.remove(victim));
        projectors.insert(
            victim,
            ProjectorProcess::spawn(&format!("{victim}-{}", round + 1)),
        );
    }
    let faults_over = Instant::now();
    // At least the target number of events, however slow this machine is.
    let mut last = Instant::now();
    loop {
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap();
        if events >= target_events() {
            break;
        }
        if last.elapsed() > Duration::from_secs(5) {
            eprintln!("{events} events so far");
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let writes_over = Instant::now();
    eprintln!(
        "faults over after {:?}; {} commands accepted; writers stopped {:?} later",
        faults_over - started,
        accepted.load(Ordering::Relaxed),
        writes_over - faults_over
    );

    wait_for_relay_to_drain(&pool, Duration::from_secs(30)).await;
    let (applied, in_topics) = e2e_tests::eventually(
        "the projectors apply every message in the topics",
        Duration::from_secs(30).saturating_sub(writes_over.elapsed()),
        || caught_up(&pool),
    )
    .await;
    eprintln!("caught up {:?} after the last write", writes_over.elapsed());

    // Jepsen-style first: is every committed event in Kafka at all? (If not,
    // the relay or the broker lost it, not the projectors.)
    let (_, in_kafka) = messages_in_topics().await;
    let committed: Vec<(String, i64)> =
        sqlx::query_as("SELECT aggregate_id, sequence FROM events ORDER BY position")
            .fetch_all(&pool)
            .await
            .unwrap();
    let lost: Vec<&(String, i64)> = committed
        .iter()
        .filter(|e| !in_kafka.contains_key(*e))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} committed events are not in Kafka, e.g. {:?}",
        lost.len(),
        committed.len(),
        &lost[..lost.len().min(5)]
    );
    let folded = ReadModels::folded_from_event_store(&pool).await;
    let stored = ReadModels::stored(&pool).await;
    if folded != stored {
        // Where the events the read models lack sit in Kafka, for the logs.
        for (order, want) in folded
            .orders
            .iter()
            .filter(|(id, v)| stored.orders.get(id) != Some(v))
            .take(5)
        {
            let have = stored.orders.get(order);
            let from = have
                .and_then(|h| h.rsplit('|').next()?.parse::<i64>().ok())
                .unwrap_or(0);
            let want_version: i64 = want.rsplit('|').next().unwrap().parse().unwrap();
            for sequence in from + 1..=want_version {
                eprintln!(
                    "order {order} event {sequence} not applied; in Kafka at {:?}",
                    in_kafka.get(&(order.to_string(), sequence))
                );
            }
        }
    }
    folded.assert_equal(&stored);
    let letters: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT topic, kafka_offset, error FROM projector_dead_letters ORDER BY id LIMIT 5",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(letters.is_empty(), "no event is a dead letter: {letters:?}");
    if applied != in_topics {
        let (partitions, _) = messages_in_topics().await;
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT topic, applied FROM projector_message_counts WHERE consumer_group = 'projector'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        eprintln!("applied per topic: {counts:?}\nin the topics: {partitions:?}");
    }
    assert_eq!(
        applied, in_topics,
        "messages applied (counted without any version check) vs messages in the topics"
    );
    eprintln!("{in_topics} messages; the read models equal the fold of the event store: {folded}");
}
