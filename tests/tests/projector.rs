//! Projector guarantees on the shared stack: a poison event parks its
//! aggregate (and only its aggregate) in order, operators resolve it through
//! the admin API and the CLI, Redis never moves backwards, and every
//! committed batch publishes its invalidation signals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use e2e_tests::{eventually, produce_raw, stack, workspace_binary};
use futures::StreamExt;
use schema::envelope::EventHeaders;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

async fn primary() -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&stack().primary_url)
        .await
        .unwrap()
}

fn product_headers(id: Uuid, sequence: i64, event_type: &str) -> EventHeaders {
    EventHeaders {
        aggregate_type: "Product".into(),
        aggregate_id: id.to_string(),
        sequence,
        position: 0,
        event_type: event_type.into(),
        event_version: "1".into(),
        occurred_at: chrono::Utc::now(),
    }
}

fn created(sku: &str) -> String {
    json!({"ProductCreated": {"sku": sku, "name": "original",
            "price": {"amount_minor": 100, "currency": "EUR"}}})
    .to_string()
}

fn renamed(name: &str) -> String {
    json!({"ProductRenamed": {"name": name}}).to_string()
}

/// (version, name) of a product in the catalog, if it is there.
async fn catalog(pool: &PgPool, id: Uuid) -> Option<(i64, String)> {
    sqlx::query_as("SELECT version, name FROM product_catalog WHERE product_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

fn admin(path: &str) -> String {
    format!("{}{path}", stack().projector_url.as_deref().unwrap())
}

/// The parked letters of aggregate `id`, from the admin API.
async fn letters_of(id: Uuid) -> Vec<Value> {
    let all: Vec<Value> = e2e_tests::client()
        .get(admin("/admin/dead-letters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    all.into_iter()
        .filter(|l| l["aggregate_id"] == id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_parks_later_events_of_its_aggregate_while_others_flow() {
    let pool = primary().await;
    let (poisoned, healthy) = (Uuid::new_v4(), Uuid::new_v4());
    produce_raw(
        &product_headers(poisoned, 1, "ProductCreated"),
        &created(&format!("P-{poisoned}")),
    )
    .await;
    produce_raw(&product_headers(poisoned, 2, "ProductRenamed"), "{not json").await;
    produce_raw(
        &product_headers(poisoned, 3, "ProductRenamed"),
        &renamed("after the poison"),
    )
    .await;
    produce_raw(
        &product_headers(healthy, 1, "ProductCreated"),
        &created(&format!("H-{healthy}")),
    )
    .await;
    produce_raw(
        &product_headers(healthy, 2, "ProductRenamed"),
        &renamed("healthy renamed"),
    )
    .await;

    // The healthy aggregate is applied in full; the poisoned one stops
    // before the poison, and the event behind it waits, parked.
    let letters = eventually("the poison is parked", Duration::from_secs(30), || async {
        let letters = letters_of(poisoned).await;
        (letters.len() == 2).then_some(letters)
    })
    .await;
    // The healthy aggregate may sit on another partition, applied a moment
    // before or after the poison is parked.
    eventually(
        "the healthy aggregate is applied",
        Duration::from_secs(30),
        || async {
            (catalog(&pool, healthy).await == Some((2, "healthy renamed".into()))).then_some(())
        },
    )
    .await;
    assert_eq!(catalog(&pool, poisoned).await, Some((1, "original".into())));
    assert_eq!(
        (
            letters[0]["sequence"].as_i64(),
            letters[0]["reason"].as_str()
        ),
        (Some(2), Some("failed"))
    );
    assert_eq!(
        (
            letters[1]["sequence"].as_i64(),
            letters[1]["reason"].as_str()
        ),
        (Some(3), Some("behind"))
    );
    assert!(
        letters[0]["error"].as_str().unwrap().contains("not valid"),
        "{}",
        letters[0]
    );
    let (poison, behind) = (
        letters[0]["id"].as_i64().unwrap(),
        letters[1]["id"].as_i64().unwrap(),
    );

    let client = e2e_tests::client();
    // Skipping the letter behind would reorder the aggregate's events.
    let response = client
        .post(admin(&format!("/admin/dead-letters/{behind}/skip")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["oldest"], poison, "{problem}");

    // A retry fails the same way and leaves both parked.
    let response = client
        .post(admin(&format!("/admin/dead-letters/{poison}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let retried: Value = response.json().await.unwrap();
    assert_eq!(retried["still_parked"], 2, "{retried}");
    assert_eq!(letters_of(poisoned).await.len(), 2);

    // Skipping the poison applies the event behind it.
    let response = client
        .post(admin(&format!("/admin/dead-letters/{poison}/skip")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let skipped: Value = response.json().await.unwrap();
    assert_eq!(skipped["skipped"], poison, "{skipped}");
    assert_eq!(skipped["applied"], json!([behind]), "{skipped}");
    assert_eq!(
        catalog(&pool, poisoned).await,
        Some((3, "after the poison".into()))
    );
    assert!(letters_of(poisoned).await.is_empty());

    // Later events of the aggregate flow normally again.
    produce_raw(
        &product_headers(poisoned, 4, "ProductRenamed"),
        &renamed("flowing again"),
    )
    .await;
    eventually(
        "the next event is applied",
        Duration::from_secs(30),
        || async {
            (catalog(&pool, poisoned).await == Some((4, "flowing again".into()))).then_some(())
        },
    )
    .await;

    let response = client
        .post(admin("/admin/dead-letters/999999999/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

fn projector_cli(args: &[&str]) -> String {
    e2e_tests::projector_cli(args, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_retries_and_skips_dead_letters() {
    let pool = primary().await;
    let product = Uuid::new_v4();
    produce_raw(
        &product_headers(product, 1, "ProductCreated"),
        r#"{"ProductCreated": {"sku": 7}}"#,
    )
    .await;
    let id = eventually("the poison is parked", Duration::from_secs(30), || async {
        letters_of(product)
            .await
            .first()
            .and_then(|l| l["id"].as_i64())
    })
    .await;

    let listed = projector_cli(&["dlq", "list"]);
    let line = listed
        .lines()
        .find(|l| l.starts_with(&format!("{id}\t")))
        .unwrap_or_else(|| panic!("letter {id} missing from:\n{listed}"));
    assert!(
        line.contains(&product.to_string()) && line.contains("failed"),
        "{line}"
    );

    let retried = projector_cli(&["dlq", "retry", &id.to_string()]);
    assert!(retried.contains("still parked: 1"), "{retried}");
    let skipped = projector_cli(&["dlq", "skip", &id.to_string()]);
    assert!(skipped.contains(&format!("skipped {id}")), "{skipped}");
    assert!(letters_of(product).await.is_empty());
    assert_eq!(catalog(&pool, product).await, None);

    let usage = std::process::Command::new(workspace_binary("projector"))
        .args(["dlq", "skip", "seven"])
        .output()
        .unwrap();
    assert!(!usage.status.success());
    assert!(String::from_utf8_lossy(&usage.stderr).contains("usage: projector"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_batch_publishes_the_keys_it_changed() {
    let client = redis::Client::open(stack().redis_url.as_str()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(schema::views::INVALIDATION_CHANNEL)
        .await
        .unwrap();
    let mut signals = pubsub.on_message();

    let created =
        e2e_tests::create_product(&e2e_tests::client(), &stack().command_url, "Signalled").await;
    let product: Uuid = created["aggregate_id"].as_str().unwrap().parse().unwrap();
    let customer = Uuid::new_v4();
    let placed: Value = e2e_tests::client()
        .post(format!("{}/orders", stack().command_url))
        .json(&json!({"customer_id": customer, "lines": [
            {"product_id": product, "quantity": 1, "unit_price": {"amount_minor": 100, "currency": "EUR"}}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let order: Uuid = placed["aggregate_id"].as_str().unwrap().parse().unwrap();

    let mut wanted = vec![
        (schema::views::product_key(product), 1),
        (schema::views::order_summary_key(order), 1),
        (
            schema::views::customer_history_key(customer),
            placed["position"].as_i64().unwrap(),
        ),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !wanted.is_empty() {
        let message = tokio::time::timeout_at(deadline, signals.next())
            .await
            .unwrap_or_else(|_| panic!("no invalidation for {wanted:?}"))
            .unwrap();
        let signal: schema::views::Invalidations =
            serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
        wanted.retain(|(key, version)| {
            !signal
                .changed
                .iter()
                .any(|i| &i.key == key && i.version == *version)
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refuses_a_summary_older_than_the_one_it_holds() {
    use schema::money::{Currency, Money};
    use schema::views::{OrderStatus, OrderSummary};
    let client = redis::Client::open(stack().redis_url.as_str()).unwrap();
    let sink = projector::redis_sink::RedisSink::new(
        redis::aio::ConnectionManager::new(client.clone())
            .await
            .unwrap(),
    );
    let summary = |version: i64, status: OrderStatus| OrderSummary {
        order_id: Uuid::from_u128(0xfeed),
        customer_id: Uuid::from_u128(0xbeef),
        status,
        lines: vec![],
        total: Money::new(0, Currency::try_from("EUR".to_owned()).unwrap()),
        placed_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
        version,
    };
    sink.write(&[summary(2, OrderStatus::Confirmed)])
        .await
        .unwrap();
    // A replay, a duplicate or a slower projector during a rebalance.
    sink.write(&[summary(1, OrderStatus::Placed)])
        .await
        .unwrap();
    sink.write(&[summary(2, OrderStatus::Cancelled)])
        .await
        .unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let body: String = redis::cmd("HGET")
        .arg(schema::views::order_summary_key(Uuid::from_u128(0xfeed)))
        .arg("body")
        .query_async(&mut connection)
        .await
        .unwrap();
    let stored: OrderSummary = serde_json::from_str(&body).unwrap();
    assert_eq!((stored.version, stored.status), (2, OrderStatus::Confirmed));
    // Several summaries in one call (one per batch): each key is judged on
    // its own, the newer lands, the older next to it does not.
    let other = OrderSummary {
        order_id: Uuid::from_u128(0xf00d),
        ..summary(1, OrderStatus::Placed)
    };
    sink.write(&[
        summary(3, OrderStatus::Shipped),
        other.clone(),
        summary(2, OrderStatus::Cancelled),
    ])
    .await
    .unwrap();
    let version = |order: u128| {
        let mut connection = connection.clone();
        async move {
            redis::cmd("HGET")
                .arg(schema::views::order_summary_key(Uuid::from_u128(order)))
                .arg("version")
                .query_async::<i64>(&mut connection)
                .await
                .unwrap()
        }
    };
    assert_eq!(version(0xfeed).await, 3);
    assert_eq!(version(0xf00d).await, 1);
    // Every summary expires eventually: the safety net for a lost write.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(schema::views::order_summary_key(Uuid::from_u128(0xfeed)))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= projector::redis_sink::DOCUMENT_TTL.as_millis() as i64,
        "{ttl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_changed_documents_leave_tombstones_that_never_move_back() {
    use projector::store::BatchEffects;
    use schema::views::{product_key, Invalidation};
    let client = redis::Client::open(stack().redis_url.as_str()).unwrap();
    let sink = projector::redis_sink::RedisSink::new(
        redis::aio::ConnectionManager::new(client.clone())
            .await
            .unwrap(),
    );
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let key = product_key(Uuid::new_v4());
    // query-service cached version 1 of the product.
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("version")
        .arg(1)
        .arg("body")
        .arg("{}")
        .query_async(&mut connection)
        .await
        .unwrap();
    let changed = |version: i64| BatchEffects {
        summaries: vec![],
        invalidations: vec![Invalidation {
            key: key.clone(),
            version,
        }],
    };
    sink.apply(&changed(3)).await;
    let read = |mut connection: redis::aio::MultiplexedConnection| {
        let key = key.clone();
        async move {
            redis::cmd("HMGET")
                .arg(&key)
                .arg("version")
                .arg("body")
                .query_async::<(Option<i64>, Option<String>)>(&mut connection)
                .await
                .unwrap()
        }
    };
    assert_eq!(read(connection.clone()).await, (Some(3), None));
    // A late, older signal (a replayed batch) leaves it alone.
    sink.apply(&changed(2)).await;
    assert_eq!(read(connection.clone()).await, (Some(3), None));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= projector::redis_sink::TOMBSTONE_TTL.as_millis() as i64,
        "{ttl}"
    );
    // Histories are lists no tier caches in Redis: no tombstone for them.
    let history = schema::views::customer_history_key(Uuid::new_v4());
    sink.apply(&BatchEffects {
        summaries: vec![],
        invalidations: vec![Invalidation {
            key: history.clone(),
            version: 9,
        }],
    })
    .await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&history)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

/// Sum of `projector_lag_events` and max of `projector_lag_seconds` over the
/// partitions of the stack's projector.
async fn lag() -> (f64, f64) {
    let text = reqwest::get(admin("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let values = |name: &str| -> Vec<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    (
        values("projector_lag_events").iter().sum(),
        values("projector_lag_seconds")
            .into_iter()
            .fold(0.0, f64::max),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_per_partition_grows_while_the_projector_is_stuck_and_clears_after() {
    let pool = primary().await;
    let client = e2e_tests::client();
    // Make sure every partition has been applied at least once, so the
    // gauges exist, then wait for them to read zero.
    for i in 0..8 {
        e2e_tests::create_product(&client, &stack().command_url, &format!("Lag {i}")).await;
    }
    eventually(
        "the projector is caught up",
        Duration::from_secs(30),
        || async { (lag().await == (0.0, 0.0)).then_some(()) },
    )
    .await;

    // Holding the group's offset rows stalls every batch at its first statement.
    let mut hold = pool.begin().await.unwrap();
    sqlx::query("SELECT * FROM projector_offsets WHERE consumer_group = 'projector' FOR UPDATE")
        .execute(&mut *hold)
        .await
        .unwrap();
    for i in 0..3 {
        e2e_tests::create_product(&client, &stack().command_url, &format!("Stuck {i}")).await;
    }
    let (events, seconds) = eventually(
        "/metrics shows the stalled messages and their age",
        Duration::from_secs(20),
        || async {
            let (events, seconds) = lag().await;
            (events >= 1.0 && seconds >= 2.0).then_some((events, seconds))
        },
    )
    .await;
    eprintln!("while stuck: lag {events} events, {seconds:.1} s");
    hold.rollback().await.unwrap();
    eventually("the lag clears", Duration::from_secs(30), || async {
        (lag().await == (0.0, 0.0)).then_some(())
    })
    .await;
}

/// The `(topic, partition)` labels of the `projector_lag_events` gauges on a
/// `/metrics` page.
fn lag_partitions(metrics: &str) -> std::collections::BTreeSet<(String, i32)> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("projector_lag_events{"))
        .filter_map(|line| {
            let labels = &line[..line.find('}')?];
            let label = |name: &str| {
                let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
                let end = start + labels[start..].find('"')?;
                Some(labels[start..end].to_owned())
            };
            Some((label("topic")?, label("partition")?.parse().ok()?))
        })
        .collect()
}

/// The partitions of `topic` whose lag `projector` reports.
async fn reported(
    projector: &e2e_tests::ProjectorProcess,
    topic: &str,
) -> Option<std::collections::BTreeSet<i32>> {
    Some(
        lag_partitions(&projector.metrics().await?)
            .into_iter()
            .filter(|(reported, _)| reported == topic)
            .map(|(_, partition)| partition)
            .collect(),
    )
}

/// A partition that moves to another member of the group leaves the old
/// owner's lag gauges: otherwise the old owner reports the lag it last saw
/// there, frozen, and a sum over instances (a dashboard, an autoscaler)
/// counts the partition twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_moves_away_leaves_the_old_owners_lag_gauges() {
    let client = e2e_tests::client();
    let group = format!("lag-owner-{}", Uuid::new_v4().simple());
    let env = [("PROJECTOR_GROUP_ID", group.as_str())];
    let product_topic = schema::envelope::topic_for(&stack().topic_prefix, "Product");
    let partitions = e2e_tests::command_service_config(stack()).topics.partitions as usize;
    // Fresh products on every product partition (random keys), so that each
    // owner applies something there and reports it.
    let traffic = |round: &'static str| {
        let client = client.clone();
        async move {
            for i in 0..40 {
                e2e_tests::create_product(&client, &stack().command_url, &format!("{round} {i}"))
                    .await;
            }
        }
    };
    let first = e2e_tests::ProjectorProcess::spawn_with("lag-first", &env);
    traffic("alone").await;
    eventually(
        "the only member reports every product partition",
        Duration::from_secs(60),
        || async { (reported(&first, &product_topic).await?.len() == partitions).then_some(()) },
    )
    .await;

    let second = e2e_tests::ProjectorProcess::spawn_with("lag-second", &env);
    eventually(
        "both members hold product partitions, each reported once",
        Duration::from_secs(90),
        || async {
            traffic("shared").await;
            let (a, b) = (
                reported(&first, &product_topic).await?,
                reported(&second, &product_topic).await?,
            );
            let disjoint = a.is_disjoint(&b);
            let complete = a.len() + b.len() == partitions;
            (disjoint && complete && !a.is_empty() && !b.is_empty()).then_some(())
        },
    )
    .await;
}
