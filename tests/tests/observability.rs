//! Every process exposes the signals an operator needs to find the
//! bottleneck: after real traffic, each `/metrics` carries the families
//! below, with the labels that make them useful (the route pattern, not
//! the raw path; one series per pool, partition, breaker, tier). Labelled
//! counters that only count failures (deadlines exceeded, per route) have
//! no sample before the first failure, as Prometheus exposes them; the
//! protection tests see them move.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use e2e_tests::{client, create_product, eventually, repo_root, stack, Stack};
use reqwest::StatusCode;

async fn scrape(base: &str) -> String {
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{base}/metrics");
    response.text().await.unwrap()
}

/// The sample lines of `family` (`name{labels} value`, or `name value`).
fn samples<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

fn assert_has(text: &str, service: &str, family: &str, label_fragment: &str) {
    let found = samples(text, family);
    assert!(
        found.iter().any(|line| line.contains(label_fragment)),
        "{service}: no {family} sample with {label_fragment:?}; samples: {found:?}"
    );
}

/// Traffic on every path the families describe: a command (append, relay,
/// projector), reads that miss and hit the caches. Returns the product's id.
async fn traffic(stack: &Stack) -> String {
    let client = client();
    let created = create_product(&client, &stack.command_url, "Metered mug").await;
    let id = created["aggregate_id"].as_str().unwrap().to_owned();
    let product = format!("{}/products/{id}", stack.query_url);
    eventually(
        "the product is readable",
        Duration::from_secs(30),
        || async {
            let response = client.get(&product).send().await.unwrap();
            (response.status() == StatusCode::OK).then_some(())
        },
    )
    .await;
    for _ in 0..3 {
        client.get(&product).send().await.unwrap();
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_reports_where_the_time_goes() {
    let stack = stack();
    let id = traffic(stack).await;

    let command = scrape(&stack.command_url).await;
    for (family, labels) in [
        ("http_requests_total", r#"route="/products""#),
        (
            "http_request_duration_seconds_bucket",
            r#"route="/products""#,
        ),
        ("http_requests_in_flight", ""),
        ("http_requests_shed_total", ""),
        ("rate_limit_decisions_total", r#"class="commands""#),
        ("db_pool_connections", r#"pool="primary""#),
        ("db_pool_max_connections", r#"pool="primary""#),
        ("outbox_lag_events", ""),
        ("outbox_lag_seconds", ""),
        ("circuit_breaker_state", r#"breaker="kafka-producer""#),
        ("circuit_breaker_state", r#"breaker="redis-rate-limit""#),
    ] {
        assert_has(&command, "command-service", family, labels);
    }

    let query = scrape(&stack.query_url).await;
    for (family, labels) in [
        ("http_requests_total", r#"route="/products/{id}""#),
        (
            "http_request_duration_seconds_bucket",
            r#"route="/products/{id}""#,
        ),
        ("rate_limit_decisions_total", r#"class="reads""#),
        ("db_pool_connections", r#"pool="replica-1""#),
        ("db_pool_connections", r#"pool="primary""#),
        // Hit ratio per tier: reads by the source that answered.
        ("query_reads_total", r#"source="local""#),
        ("query_database_lag_seconds", "replica-1"),
        ("circuit_breaker_state", r#"breaker="redis-cache""#),
        ("circuit_breaker_state", r#"breaker="db-replica-1""#),
        ("circuit_breaker_state", r#"breaker="redis-rate-limit""#),
    ] {
        assert_has(&query, "query-service", family, labels);
    }

    // A request is counted once answered: the second scrape sees the first.
    scrape(stack.projector_url.as_deref().unwrap()).await;
    let projector = scrape(stack.projector_url.as_deref().unwrap()).await;
    for (family, labels) in [
        ("projector_lag_events", "partition="),
        ("projector_lag_seconds", "partition="),
        ("projector_batch_seconds_bucket", ""),
        ("db_pool_connections", r#"pool="primary""#),
        ("http_requests_total", r#"route="/metrics""#),
    ] {
        assert_has(&projector, "projector", family, labels);
    }
    // Cardinality: a raw id never becomes a label value.
    assert!(
        !query.contains(&id),
        "an aggregate id leaked into query-service's metric labels"
    );
}

/// The Grafana dashboard (deploy/compose/grafana/dashboards/) queries only
/// metrics the services export: `deploy/compose/check` keeps
/// `metrics-used.txt` equal to the names in the dashboard's PromQL, and this
/// test holds that list against the running services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    let stack = stack();
    traffic(stack).await;
    let exported = [
        scrape(&stack.command_url).await,
        scrape(&stack.query_url).await,
        scrape(stack.projector_url.as_deref().unwrap()).await,
    ]
    .join("\n");
    let used = std::fs::read_to_string(
        repo_root().join("deploy/compose/grafana/dashboards/metrics-used.txt"),
    )
    .unwrap();
    let missing: Vec<&str> = used
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .filter(|name| {
            // `# TYPE` names a family even before its first labelled sample.
            !exported.contains(&format!("# TYPE {name} "))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no service exports: {missing:?}"
    );
}
