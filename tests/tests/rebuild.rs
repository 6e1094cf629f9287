//! `projector rebuild`: a projection rebuilt from the event store while
//! writes go on equals the fold of the event store, readers of the replica
//! never see it missing, empty or going backwards, and a projection added
//! later (state 'building') is filled by the same path and then goes live.
//! (A binary of its own: it swaps the stack's read-model tables.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e_tests::read_models::ReadModels;
use e2e_tests::{create_product, eventually, stack};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

/// Both tests swap tables of the one stack: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn primary() -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&stack().primary_url)
        .await
        .unwrap()
}

async fn post(client: &reqwest::Client, path: &str, body: Value) -> Option<Value> {
    let response = client
        .post(format!("{}{path}", stack().command_url))
        .json(&body)
        .send()
        .await
        .ok()?;
    (response.status() == 202).then_some(())?;
    response.json().await.ok()
}

/// Places an order of one new product and confirms it; returns the order id.
async fn confirmed_order(client: &reqwest::Client) -> Option<Uuid> {
    let product = create_product(client, &stack().command_url, "Rebuilt").await;
    let placed = post(
        client,
        "/orders",
        json!({"customer_id": Uuid::new_v4(), "lines": [{"product_id": product["aggregate_id"],
               "quantity": 2, "unit_price": {"amount_minor": 100, "currency": "EUR"}}]}),
    )
    .await?;
    let order = placed["aggregate_id"].as_str()?.to_owned();
    post(client, &format!("/orders/{order}/confirm"), json!({})).await?;
    order.parse().ok()
}

/// Waits until the live projection has applied every committed event.
async fn projected(pool: &PgPool) {
    eventually(
        "the read models equal the fold of the event store",
        Duration::from_secs(60),
        || async {
            let want = ReadModels::folded_from_event_store(pool).await;
            (want
                .differences(&ReadModels::stored(pool).await, 1)
                .is_empty())
            .then_some(())
        },
    )
    .await;
}

/// Runs `projector rebuild <projection>`, pausing `pause_ms` before the swap
/// (the live projection moves ahead meanwhile: the swap must catch up with
/// it); returns its standard output.
fn rebuild(projection: &str, pause_ms: u64) -> String {
    let pause = pause_ms.to_string();
    e2e_tests::projector_cli(
        &["rebuild", projection],
        &[("REBUILD_PAUSE_BEFORE_SWAP_MS", pause.as_str())],
    )
}

async fn metric(name_and_labels: &str) -> Option<f64> {
    let text = reqwest::get(format!(
        "{}/metrics",
        stack().projector_url.as_deref().unwrap()
    ))
    .await
    .ok()?
    .text()
    .await
    .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_under_writes_equals_the_fold_and_readers_never_see_a_gap() {
    let _serial = SERIAL.lock().await;
    let pool = primary().await;
    let client = e2e_tests::client();
    let mut orders = Vec::new();
    for _ in 0..100 {
        orders.push(confirmed_order(&client).await.unwrap());
    }
    projected(&pool).await;

    let stop = Arc::new(AtomicBool::new(false));
    // Writers keep the live projection busy during the whole rebuild.
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, client) = (stop.clone(), client.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    confirmed_order(&client).await;
                }
            })
        })
        .collect();
    // Readers go to the replica (no-cache skips Redis): every read must find
    // the order, at a version never below the one seen before.
    let reads = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..4)
        .map(|reader| {
            let (stop, client, orders, reads) =
                (stop.clone(), client.clone(), orders.clone(), reads.clone());
            tokio::spawn(async move {
                let mut seen: HashMap<Uuid, i64> = HashMap::new();
                let mut failures = Vec::new();
                let mut i = reader;
                while !stop.load(Ordering::Relaxed) {
                    let order = orders[i % orders.len()];
                    i += 1;
                    let response = client
                        .get(format!("{}/orders/{order}", stack().query_url))
                        .header("cache-control", "no-cache")
                        .send()
                        .await
                        .unwrap();
                    let status = response.status();
                    let body: Value = response.json().await.unwrap_or_default();
                    reads.fetch_add(1, Ordering::Relaxed);
                    let version = body["version"].as_i64().unwrap_or(0);
                    if status != 200 || version < seen.get(&order).copied().unwrap_or(2) {
                        failures.push(format!("{order}: {status} {body}"));
                    }
                    seen.insert(order, version);
                }
                failures
            })
        })
        .collect();

    let output = tokio::task::spawn_blocking(|| rebuild("orders", 2_000))
        .await
        .unwrap();
    assert!(output.contains("rebuild orders: swapped in"), "{output}");
    // Keep reading and writing a moment on the swapped-in tables.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let mut failures = Vec::new();
    for reader in readers {
        failures.extend(reader.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of {} reads failed or went backwards, e.g. {:?}",
        failures.len(),
        reads.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );

    // The live projector carries on on the new tables: after the last write
    // they equal the fold of the event store.
    projected(&pool).await;
    let order_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Order'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let done = metric(r#"projector_rebuild_events_done{projection="orders"}"#)
        .await
        .unwrap();
    assert!(
        done >= 200.0 && done <= order_events as f64,
        "{done} of {order_events}"
    );
    assert_eq!(
        metric(r#"projector_rebuild_running{projection="orders"}"#).await,
        Some(0.0)
    );
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname IN ('rebuild_orders', 'retired_orders')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leftovers, 0, "shadow and retired schemas are dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_added_later_is_filled_by_a_rebuild_then_goes_live() {
    let _serial = SERIAL.lock().await;
    let pool = primary().await;
    let client = e2e_tests::client();
    // What a migration adding a new projection leaves: its (empty) table,
    // registered as 'building'.
    sqlx::query("UPDATE projections SET state = 'building' WHERE name = 'catalog'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("TRUNCATE product_catalog")
        .execute(&pool)
        .await
        .unwrap();
    let mut products = Vec::new();
    for i in 0..20 {
        let created = create_product(&client, &stack().command_url, &format!("Late {i}")).await;
        products.push(created["aggregate_id"].as_str().unwrap().to_owned());
    }
    let renamed = post(
        &client,
        &format!("/products/{}/rename", products[0]),
        json!({"name": "renamed while building"}),
    )
    .await
    .unwrap();
    // The live projector acknowledges the events without applying them.
    let counted = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM projector_offsets
              WHERE consumer_group = 'projector' AND topic LIKE '%product'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let product_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Product'")
            .fetch_one(&pool)
            .await
            .unwrap();
    eventually(
        "the live projector consumes the product events",
        Duration::from_secs(30),
        || async { (counted(pool.clone()).await >= product_events).then_some(()) },
    )
    .await;
    let in_catalog: i64 = sqlx::query_scalar("SELECT count(*) FROM product_catalog")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(in_catalog, 0, "a 'building' projection is not applied live");
    assert!(renamed["version"].as_i64().unwrap() >= 2);

    let output = tokio::task::spawn_blocking(|| rebuild("catalog", 0))
        .await
        .unwrap();
    assert!(output.contains("rebuild catalog: swapped in"), "{output}");
    let state: String = sqlx::query_scalar("SELECT state FROM projections WHERE name = 'catalog'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "live");
    let want = ReadModels::folded_from_event_store(&pool).await;
    let have = ReadModels::stored(&pool).await;
    assert_eq!(
        want.products, have.products,
        "the rebuilt catalog is the fold of every product event"
    );

    // Live again: the next event is applied by the live projector.
    post(
        &client,
        &format!("/products/{}/rename", products[1]),
        json!({"name": "renamed when live"}),
    )
    .await
    .unwrap();
    eventually(
        "the live projector applies the catalog again",
        Duration::from_secs(30),
        || async {
            let name: Option<String> =
                sqlx::query_scalar("SELECT name FROM product_catalog WHERE product_id = $1::uuid")
                    .bind(&products[1])
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
            (name.as_deref() == Some("renamed when live")).then_some(())
        },
    )
    .await;
}
