//! Query side against two real streaming replicas: lag-aware routing with
//! failover, read-your-writes under injected lag, the stale-fill race, Redis
//! down, and HTTP caching. Each test starts query-service instances of its
//! own (configured for what it checks) on the shared stack; the tests that
//! fault a replica or Redis take [`FAULTS`] so they never overlap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e_tests::{eventually, stack, QueryService};
use query_service::config::PrimaryFallback;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

static FAULTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CONSISTENCY: Duration = Duration::from_secs(30);

use e2e_tests::client;

/// A command's 202 body and consistency token.
async fn command(path: &str, body: Value) -> (Value, String) {
    let response = client()
        .post(format!("{}{path}", stack().command_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let token = response
        .headers()
        .get("consistency-token")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::ACCEPTED, "{path}: {body}");
    (body, token)
}

async fn new_product() -> Uuid {
    let (body, _) = command(
        "/products",
        json!({"sku": format!("SKU-{}", Uuid::new_v4().simple()), "name": "Cup",
               "price": {"amount_minor": 100, "currency": "EUR"}}),
    )
    .await;
    body["aggregate_id"].as_str().unwrap().parse().unwrap()
}

async fn change_price(product: Uuid, amount: i64) -> (Value, String) {
    command(
        &format!("/products/{product}/change-price"),
        json!({"price": {"amount_minor": amount, "currency": "EUR"}}),
    )
    .await
}

async fn place_order(product: Uuid) -> (Uuid, String) {
    let (body, token) = command(
        "/orders",
        json!({"customer_id": Uuid::new_v4(), "lines": [
            {"product_id": product, "quantity": 1, "unit_price": {"amount_minor": 100, "currency": "EUR"}}
        ]}),
    )
    .await;
    (
        body["aggregate_id"].as_str().unwrap().parse().unwrap(),
        token,
    )
}

/// One GET: status, `x-read-source`, body, time taken.
struct Read {
    status: StatusCode,
    source: String,
    body: Value,
    headers: reqwest::header::HeaderMap,
    took: Duration,
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Read {
    let mut request = client().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let started = Instant::now();
    let response = request.send().await.unwrap();
    let took = started.elapsed();
    let status = response.status();
    let headers = response.headers().clone();
    let source = headers
        .get("x-read-source")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.json().await.unwrap_or(Value::Null);
    Read {
        status,
        source,
        body,
        headers,
        took,
    }
}

/// Bypasses both cache tiers: the read goes to a database.
const NO_CACHE: (&str, &str) = ("cache-control", "no-cache");

/// Waits until `query` reports `database` healthy (or not) in /health/ready.
async fn wait_health(query: &QueryService, database: &str, healthy: bool) {
    eventually(
        &format!("{database} healthy={healthy}"),
        CONSISTENCY,
        || async {
            let ready = get(&format!("{}/health/ready", query.url), &[]).await;
            let entry = ready.body["databases"]
                .as_array()?
                .iter()
                .find(|d| d["name"] == database)?
                .clone();
            (entry["healthy"] == healthy).then_some(())
        },
    )
    .await;
}

/// A figure of `database` (`lag_ms`, `checkpoint_lag`) as /health/ready
/// reports it.
async fn reported(query: &QueryService, database: &str, field: &str) -> Option<u64> {
    let ready = get(&format!("{}/health/ready", query.url), &[]).await;
    ready.body["databases"]
        .as_array()?
        .iter()
        .find(|d| d["name"] == database)?[field]
        .as_u64()
}

/// A product the replicas already have.
async fn replicated_product(query: &QueryService) -> Uuid {
    let product = new_product().await;
    let url = format!("{}/products/{product}", query.url);
    eventually("product on the replicas", CONSISTENCY, || async {
        (get(&url, &[NO_CACHE]).await.status == StatusCode::OK).then_some(())
    })
    .await;
    product
}

/// The (`version`, `body`) of a document hash in Redis.
async fn redis_entry(
    redis: &redis::aio::MultiplexedConnection,
    key: &str,
) -> (Option<i64>, Option<String>) {
    redis::cmd("HMGET")
        .arg(key)
        .arg("version")
        .arg("body")
        .query_async(&mut redis.clone())
        .await
        .unwrap()
}

/// Keeps writing until dropped, so a delayed replica shows lag (an idle
/// primary has nothing for it to trail).
struct Writer(tokio::task::JoinHandle<()>);

impl Writer {
    fn start(product: Uuid) -> Self {
        Self(tokio::spawn(async move {
            for amount in 200.. {
                change_price(product, amount).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Undoes a replica fault on both replicas, even when the test fails.
enum Heal {
    /// `SIGCONT` after a `SIGSTOP`.
    Resume,
    /// `recovery_min_apply_delay` back to 0.
    NoDelay,
}

impl Drop for Heal {
    fn drop(&mut self) {
        let stack = stack();
        for index in 0..2 {
            match self {
                Self::Resume => stack.signal_replica(index, "CONT"),
                Self::NoDelay => stack.set_replica_apply_delay(index, None),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_is_routed_around_within_the_deadline() {
    let _faults = FAULTS.lock().await;
    let query = QueryService::start(|c| c.primary_fallback = PrimaryFallback::Deny).await;
    let product = replicated_product(&query).await;
    let url = format!("{}/products/{product}", query.url);

    stack().signal_replica(0, "STOP");
    let heal = Heal::Resume;
    let mut sources = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..100 {
        let read = get(&url, &[NO_CACHE]).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.body);
        // The read deadline (2 s) bounds every request, the one that finds
        // the replica stuck included.
        assert!(
            read.took < Duration::from_millis(2500),
            "took {:?}",
            read.took
        );
        *sources.entry(read.source).or_default() += 1;
    }
    // At most the first attempts hit the stopped replica before it was taken
    // out; none of them was answered by it.
    assert_eq!(sources.get("replica-1"), None, "{sources:?}");
    assert_eq!(sources.get("replica-2"), Some(&100), "{sources:?}");

    drop(heal);
    wait_health(&query, "replica-1", true).await;
    eventually("replica-1 serving again", CONSISTENCY, || async {
        (get(&url, &[NO_CACHE]).await.source == "replica-1").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_is_avoided_until_it_catches_up() {
    let _faults = FAULTS.lock().await;
    let query = QueryService::start(|c| {
        c.primary_fallback = PrimaryFallback::Deny;
        c.replica_max_lag = Duration::from_millis(1000);
    })
    .await;
    let product = replicated_product(&query).await;
    let url = format!("{}/products/{product}", query.url);

    stack().set_replica_apply_delay(1, Some(Duration::from_secs(4)));
    let heal = Heal::NoDelay;
    let writer = Writer::start(replicated_product(&query).await);
    // Both measures: replay lag in time, and the projector checkpoints its
    // copy is missing.
    eventually("replica-2 reported lagging", CONSISTENCY, || async {
        let lagging = reported(&query, "replica-2", "lag_ms")
            .await
            .is_some_and(|lag| lag > 1000);
        let trailing = reported(&query, "replica-2", "checkpoint_lag")
            .await
            .is_some_and(|messages| messages > 0);
        (lagging && trailing).then_some(())
    })
    .await;
    for _ in 0..100 {
        let read = get(&url, &[NO_CACHE]).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.body);
        assert_eq!(read.source, "replica-1");
    }

    drop(heal);
    eventually("replica-2 caught up and serving", CONSISTENCY, || async {
        (get(&url, &[NO_CACHE]).await.source == "replica-2").then_some(())
    })
    .await;
    drop(writer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replicas_reads_fall_back_or_get_503_as_configured() {
    let _faults = FAULTS.lock().await;
    let allow = QueryService::start(|c| c.primary_fallback = PrimaryFallback::Allow).await;
    let deny = QueryService::start(|c| c.primary_fallback = PrimaryFallback::Deny).await;
    let product = replicated_product(&allow).await;

    stack().signal_replica(0, "STOP");
    stack().signal_replica(1, "STOP");
    let heal = Heal::Resume;
    for query in [&allow, &deny] {
        wait_health(query, "replica-1", false).await;
        wait_health(query, "replica-2", false).await;
    }
    let path = format!("/products/{product}");
    for _ in 0..20 {
        let read = get(&format!("{}{path}", allow.url), &[NO_CACHE]).await;
        assert_eq!(
            (read.status, read.source.as_str()),
            (StatusCode::OK, "primary")
        );
        let read = get(&format!("{}{path}", deny.url), &[NO_CACHE]).await;
        assert_eq!(
            read.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            read.body
        );
        assert_eq!(read.body["type"], "/problems/read-model-unavailable");
        assert_eq!(read.headers.get("retry-after").unwrap(), "1");
        assert!(
            read.took < Duration::from_millis(2500),
            "took {:?}",
            read.took
        );
    }
    let ready = get(&format!("{}/health/ready", deny.url), &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    drop(heal);
    wait_health(&deny, "replica-1", true).await;
    let read = get(&format!("{}{path}", deny.url), &[NO_CACHE]).await;
    assert_eq!(read.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistency_token_always_sees_the_write_under_replica_lag() {
    let _faults = FAULTS.lock().await;
    // Lagging replicas stay in rotation (bound 30 s), so reads without a
    // token see them.
    let query = QueryService::start(|c| c.replica_max_lag = Duration::from_secs(30)).await;
    let product = replicated_product(&query).await;
    // Both replicas apply WAL 2 s late: longer than the token wait (1 s).
    stack().set_replica_apply_delay(0, Some(Duration::from_secs(2)));
    stack().set_replica_apply_delay(1, Some(Duration::from_secs(2)));
    let heal = Heal::NoDelay;

    let mut stale_without_token = 0;
    let mut not_yet = 0;
    for _ in 0..15 {
        let (order, _) = place_order(product).await;
        let (_, token) = command(&format!("/orders/{order}/confirm"), json!({})).await;
        let url = format!("{}/orders/{order}", query.url);
        // The caches are skipped so the databases answer (Redis is fed
        // by the projector, not by the lagging replicas).
        let plain = get(&url, &[NO_CACHE]).await;
        if plain.status != StatusCode::OK || plain.body["status"] != "confirmed" {
            stale_without_token += 1;
        }
        let token_header = ("consistency-token", token.as_str());
        for headers in [vec![token_header, NO_CACHE], vec![token_header]] {
            let read = get(&url, &headers).await;
            match read.status {
                StatusCode::OK => {
                    assert_eq!(
                        read.body["status"], "confirmed",
                        "{} from {}",
                        read.body, read.source
                    )
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(read.body["type"], "/problems/not-yet-consistent");
                    not_yet += 1;
                }
                other => panic!("{other}: {}", read.body),
            }
        }
    }
    // The lag was real: without the token the same read saw the past.
    assert!(stale_without_token > 0, "no stale read without a token");
    // The primary (fallback allowed) answers within the wait when the
    // projector has caught up, which it normally has.
    assert!(not_yet <= 3, "{not_yet} of 30 not yet consistent");

    // Primary fallback denied and every replica 2 s behind: the token
    // cannot be met within 1 s, and the answer says so instead of serving
    // the stale order.
    let deny = QueryService::start(|c| {
        c.primary_fallback = PrimaryFallback::Deny;
        c.replica_max_lag = Duration::from_secs(30);
    })
    .await;
    let (order, _) = place_order(product).await;
    let (_, token) = command(&format!("/orders/{order}/confirm"), json!({})).await;
    let token_header = ("consistency-token", token.as_str());
    let read = get(
        &format!("{}/orders/{order}", deny.url),
        &[token_header, NO_CACHE],
    )
    .await;
    assert_eq!(
        read.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        read.body
    );
    assert_eq!(read.body["type"], "/problems/not-yet-consistent");
    assert_eq!(read.headers.get("retry-after").unwrap(), "1");
    drop(heal);
    let read = eventually(
        "token met once the replicas catch up",
        CONSISTENCY,
        || async {
            let read = get(
                &format!("{}/orders/{order}", deny.url),
                &[token_header, NO_CACHE],
            )
            .await;
            (read.status == StatusCode::OK).then_some(read)
        },
    )
    .await;
    assert_eq!(read.body["status"], "confirmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_fill_from_a_lagging_replica_never_lands_in_a_cache() {
    let _faults = FAULTS.lock().await;
    // Lagging replicas are read on purpose here (bound 60 s, no primary).
    let query = QueryService::start(|c| {
        c.primary_fallback = PrimaryFallback::Deny;
        c.replica_max_lag = Duration::from_secs(60);
    })
    .await;
    let product = replicated_product(&query).await;
    let url = format!("{}/products/{product}", query.url);
    stack().set_replica_apply_delay(0, Some(Duration::from_secs(4)));
    stack().set_replica_apply_delay(1, Some(Duration::from_secs(4)));
    let heal = Heal::NoDelay;

    // Version 2 is committed and projected on the primary; its invalidation
    // reaches query-service while both replicas still show version 1.
    let (_, _) = change_price(product, 555).await;
    let primary = sqlx::PgPool::connect(&stack().primary_url).await.unwrap();
    eventually("version 2 projected", CONSISTENCY, || async {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM product_catalog WHERE product_id = $1")
                .bind(product)
                .fetch_optional(&primary)
                .await
                .unwrap();
        (version == Some(2)).then_some(())
    })
    .await;
    let redis = redis::Client::open(stack().redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = schema::views::product_key(product);
    eventually(
        "the projector's tombstone for version 2",
        CONSISTENCY,
        || async {
            let (version, body) = redis_entry(&redis, &key).await;
            (version == Some(2) && body.is_none()).then_some(())
        },
    )
    .await;
    // Give the signal a moment past the tombstone to reach the subscriber.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The miss reads version 1 from a lagging replica (allowed: no token)...
    let first = get(&url, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first.source.starts_with("replica-"), "{}", first.source);
    assert_eq!(first.body["version"], 1, "{}", first.body);
    // ...but neither tier keeps it: the next read goes to a database again.
    let second = get(&url, &[]).await;
    assert!(
        second.source.starts_with("replica-"),
        "served {} from {}",
        second.body,
        second.source
    );
    let (version, body) = redis_entry(&redis, &key).await;
    assert_eq!(
        (version, body),
        (Some(2), None),
        "redis took the stale fill"
    );

    drop(heal);
    let fresh = eventually(
        "version 2 once the replicas catch up",
        CONSISTENCY,
        || async {
            let read = get(&url, &[]).await;
            (read.body["version"] == 2).then_some(read)
        },
    )
    .await;
    assert_eq!(fresh.body["price"]["amount_minor"], 555);
    // Now cached at version 2.
    let cached = get(&url, &[]).await;
    assert_eq!(
        (cached.source.as_str(), &cached.body["version"]),
        ("local", &json!(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_means_database_reads_and_a_flushed_local_tier() {
    let _faults = FAULTS.lock().await;
    let query = QueryService::start(|_| {}).await;
    let product = replicated_product(&query).await;
    let url = format!("{}/products/{product}", query.url);
    eventually("cached locally", CONSISTENCY, || async {
        (get(&url, &[]).await.source == "local").then_some(())
    })
    .await;

    stack().signal("redis", "STOP");
    struct Resume;
    impl Drop for Resume {
        fn drop(&mut self) {
            stack().signal("redis", "CONT");
        }
    }
    let resume = Resume;
    // The feed notices within its heartbeat, flushes and bypasses the local
    // tier; every read is answered by a database, none fails.
    eventually("feed down", CONSISTENCY, || async {
        let metrics = client()
            .get(format!("{}/metrics", query.url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metrics
            .contains("query_invalidation_feed_up 0")
            .then_some(())
    })
    .await;
    for _ in 0..30 {
        let read = get(&url, &[]).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.body);
        assert!(
            read.source.starts_with("replica-") || read.source == "primary",
            "{}",
            read.source
        );
        assert!(
            read.took < Duration::from_millis(1000),
            "took {:?}",
            read.took
        );
    }
    drop(resume);
    eventually(
        "local tier back after redis returns",
        CONSISTENCY,
        || async { (get(&url, &[]).await.source == "local").then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_revalidate_to_304_and_cache_control_follows_the_policy() {
    let query = QueryService::start(|_| {}).await;
    let product = replicated_product(&query).await;
    let (order, _) = place_order(product).await;
    let order_url = format!("{}/orders/{order}", query.url);
    let first = eventually("order projected", CONSISTENCY, || async {
        let read = get(&order_url, &[]).await;
        (read.status == StatusCode::OK).then_some(read)
    })
    .await;
    let etag = first
        .headers
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(etag, "\"v1\"");
    assert_eq!(
        first.headers.get("cache-control").unwrap(),
        "private, no-cache"
    );
    let again = get(&order_url, &[("if-none-match", &etag)]).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers.get("etag").unwrap().to_str().unwrap(), etag);

    let product_read = get(&format!("{}/products/{product}", query.url), &[]).await;
    assert_eq!(
        product_read.headers.get("cache-control").unwrap(),
        "public, max-age=5"
    );

    // A list's validator follows its content.
    let list_url = format!("{}/products?limit=5", query.url);
    let list = get(&list_url, &[]).await;
    let list_etag = list
        .headers
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(list_etag.starts_with("W/"), "{list_etag}");
    let revalidated = get(&list_url, &[("if-none-match", &list_etag)]).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);

    // The order changes: the old validator no longer matches.
    command(&format!("/orders/{order}/confirm"), json!({})).await;
    let changed = eventually("confirmed order", CONSISTENCY, || async {
        let read = get(&order_url, &[("if-none-match", &etag)]).await;
        (read.status == StatusCode::OK).then_some(read)
    })
    .await;
    assert_eq!(changed.body["status"], "confirmed");
    assert_eq!(changed.headers.get("etag").unwrap(), "\"v2\"");
}
