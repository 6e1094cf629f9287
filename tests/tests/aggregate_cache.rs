//! The aggregate cache is never trusted over the database: two
//! command-service instances take turns on one aggregate, so each one's
//! cached copy is always one event behind. Every command must still be
//! decided on the current state: an `If-Match` with the version the *other*
//! instance returned is accepted (a trusted stale copy would answer 412), a
//! rename to the name the other instance set is refused as unchanged (a
//! trusted stale copy would accept it), and the stream stays contiguous.
//! (A binary of its own: it loads the stack.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use e2e_tests::{create_product, eventually, stack, CommandServiceProcess};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_taking_turns_decide_on_the_current_state() {
    let here = stack().command_url.clone();
    let other = CommandServiceProcess::spawn("cache-peer");
    let client = e2e_tests::client();
    let urls = [here, format!("http://127.0.0.1:{}", other.port)];
    eventually(
        "the second instance is ready",
        Duration::from_secs(60),
        || async {
            let ready = client
                .get(format!("{}/health/ready", urls[1]))
                .send()
                .await
                .ok()?;
            ready.status().is_success().then_some(())
        },
    )
    .await;

    let created = create_product(&client, &urls[0], "n0").await;
    let id = created["aggregate_id"].as_str().unwrap().to_owned();
    let mut version = created["version"].as_i64().unwrap();

    for turn in 0..40_i64 {
        // Each instance loads (and caches) the product on its first turn;
        // from then on its copy is stale by the other's last command.
        let url = &urls[(turn % 2) as usize];
        let response = client
            .post(format!("{url}/products/{id}/change-price"))
            .header("If-Match", format!("\"{version}\""))
            .json(&json!({"price": {"amount_minor": 200 + turn, "currency": "EUR"}}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "turn {turn} on {url}: {body}");
        assert_eq!(
            body["version"].as_i64(),
            Some(version + 1),
            "turn {turn}: {body}"
        );
        version += 1;
    }

    // Rename on one instance, then ask the other for the same name: the
    // other's cached copy still has the old name.
    for (turn, name) in ["n1", "n2", "n3", "n4"].into_iter().enumerate() {
        let (here, there) = (&urls[turn % 2], &urls[(turn + 1) % 2]);
        let renamed = client
            .post(format!("{here}/products/{id}/rename"))
            .json(&json!({"name": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(renamed.status(), 202, "rename to {name} on {here}");
        version += 1;
        let again = client
            .post(format!("{there}/products/{id}/rename"))
            .json(&json!({"name": name}))
            .send()
            .await
            .unwrap();
        let status = again.status();
        let body: Value = again.json().await.unwrap();
        assert_eq!(status, 422, "the same name again on {there}: {body}");
    }

    let pool = PgPoolOptions::new()
        .connect(&stack().primary_url)
        .await
        .unwrap();
    let sequences: Vec<i64> = sqlx::query_scalar(
        "SELECT sequence FROM events WHERE aggregate_type = 'Product' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(&id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(sequences, (1..=version).collect::<Vec<_>>());
}
