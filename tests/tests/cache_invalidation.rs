//! Event-driven cache invalidation under load: 1,000 products, 8 writers
//! changing prices, 32 readers on two query-service instances, and the
//! invalidation subscriptions killed 10 times meanwhile. Five seconds after
//! the writes stop, no cache tier of either instance may serve a product
//! older than the read model.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_tests::{eventually, stack, QueryService};
use futures::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

const KEYS: usize = 1_000;
const WRITERS: usize = 8;
const READERS: usize = 32;
const FEED_RESTARTS: usize = 10;
const WRITE_PHASE: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(5);

/// A random index below `n` (v4 UUIDs are random; no extra crate needed).
fn random(n: usize) -> usize {
    (Uuid::new_v4().as_u128() % n as u128) as usize
}

fn client() -> reqwest::Client {
    e2e_tests::client_builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_serves_a_stale_product_after_a_write_heavy_run() {
    let stack = stack();
    let http = client();
    // At most 64 at once: command-service sheds what exceeds its in-flight
    // limit (MAX_IN_FLIGHT_REQUESTS, 256) with 503, as it should.
    let products: Arc<Vec<Uuid>> = Arc::new(
        futures::stream::iter((0..KEYS).map(|i| {
            let http = http.clone();
            async move {
                let body =
                    e2e_tests::create_product(&http, &stack.command_url, &format!("P{i}")).await;
                body["aggregate_id"]
                    .as_str()
                    .unwrap()
                    .parse::<Uuid>()
                    .unwrap()
            }
        }))
        .buffered(64)
        .collect::<Vec<_>>()
        .await,
    );
    // Readers start once every replica has every product (a 404 before
    // that is the projection's latency, not this test's subject).
    let ids: Vec<Uuid> = products.to_vec();
    for replica in &stack.replica_urls {
        let pool = sqlx::PgPool::connect(replica).await.unwrap();
        eventually(
            "products on the replica",
            Duration::from_secs(60),
            || async {
                let count: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM product_catalog WHERE product_id = ANY($1)",
                )
                .bind(&ids)
                .fetch_one(&pool)
                .await
                .unwrap();
                (count == KEYS as i64).then_some(())
            },
        )
        .await;
    }
    let instances = [
        QueryService::start(|_| {}).await,
        QueryService::start(|_| {}).await,
    ];
    let urls: Arc<Vec<String>> = Arc::new(instances.iter().map(|q| q.url.clone()).collect());

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (http, products, stop, writes) = (
            http.clone(),
            Arc::clone(&products),
            Arc::clone(&stop),
            Arc::clone(&writes),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (product, amount) = (products[random(products.len())], 1 + random(999_999));
                let response = http
                    .post(format!(
                        "{}/products/{product}/change-price",
                        stack.command_url
                    ))
                    .json(&json!({"price": {"amount_minor": amount, "currency": "EUR"}}))
                    .send()
                    .await
                    .unwrap();
                // 409: a concurrent writer on the same product; 503: the
                // command side shedding load. Neither is this test's subject.
                assert!(
                    [202, 409, 503].contains(&response.status().as_u16()),
                    "write: {}",
                    response.status()
                );
                writes.fetch_add(1, Ordering::Relaxed);
            }
            BTreeMap::new()
        }));
    }
    for _ in 0..READERS {
        let (http, products, urls, stop, reads) = (
            http.clone(),
            Arc::clone(&products),
            Arc::clone(&urls),
            Arc::clone(&stop),
            Arc::clone(&reads),
        );
        tasks.push(tokio::spawn(async move {
            let mut failures = BTreeMap::<u16, u64>::new();
            while !stop.load(Ordering::Relaxed) {
                let url = format!(
                    "{}/products/{}",
                    urls[random(urls.len())],
                    products[random(products.len())]
                );
                let status = http.get(url).send().await.unwrap().status();
                if status != 200 {
                    *failures.entry(status.as_u16()).or_default() += 1;
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }

    // Kill every subscription now and then: the instances must notice,
    // flush their local tier, resubscribe.
    let started = Instant::now();
    let mut redis = redis::Client::open(stack.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for _ in 0..FEED_RESTARTS {
        tokio::time::sleep(WRITE_PHASE / (FEED_RESTARTS as u32 + 1)).await;
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(
            killed >= 2,
            "expected both instances subscribed, killed {killed}"
        );
    }
    tokio::time::sleep(WRITE_PHASE.saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let writes_stopped = Instant::now();
    let mut read_failures = BTreeMap::<u16, u64>::new();
    for task in tasks {
        for (status, count) in task.await.unwrap() {
            *read_failures.entry(status).or_default() += count;
        }
    }
    eprintln!(
        "{} writes, {} reads in {:?}",
        writes.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
        WRITE_PHASE
    );
    assert!(read_failures.is_empty(), "reads failed: {read_failures:?}");

    // The projector has applied every write before the caches are judged.
    let primary = sqlx::PgPool::connect(&stack.primary_url).await.unwrap();
    eventually("projector caught up", Duration::from_secs(60), || async {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM product_catalog c
             JOIN (SELECT aggregate_id, max(sequence) AS version FROM events
                   WHERE aggregate_type = 'Product' AND aggregate_id = ANY($1::text[])
                   GROUP BY aggregate_id) e ON e.aggregate_id = c.product_id::text
             WHERE c.version < e.version",
        )
        .bind(ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
        .fetch_one(&primary)
        .await
        .unwrap();
        (behind == 0).then_some(())
    })
    .await;
    tokio::time::sleep(SETTLE.saturating_sub(writes_stopped.elapsed())).await;

    let truth: BTreeMap<Uuid, i64> = sqlx::query_as::<_, (Uuid, i64)>(
        "SELECT product_id, version FROM product_catalog WHERE product_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&primary)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let mut stale = Vec::new();
    let mut sources = BTreeMap::<String, usize>::new();
    for url in urls.iter() {
        for product in products.iter() {
            // Twice: the first read may fill a tier, the second is served
            // by it.
            for _ in 0..2 {
                let response = http
                    .get(format!("{url}/products/{product}"))
                    .send()
                    .await
                    .unwrap();
                let source = response
                    .headers()
                    .get("x-read-source")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let body: Value = response.json().await.unwrap();
                let served = body["version"].as_i64().unwrap();
                *sources.entry(source.clone()).or_default() += 1;
                if served < truth[product] {
                    stale.push((url.clone(), *product, served, truth[product], source));
                }
            }
        }
    }
    eprintln!("final reads by source: {sources:?}");
    assert!(
        stale.is_empty(),
        "{} stale reads, e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
    assert!(
        sources.get("local").copied().unwrap_or(0) > 0,
        "the local tier was never used: {sources:?}"
    );
}
