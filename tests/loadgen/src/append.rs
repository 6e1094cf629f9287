//! The command-append workload: `clients` closed-loop clients, each changing
//! the price of its own product as fast as the service answers.
//!
//! One product per client, so that the measurement is the append path
//! (load the aggregate, decide, one transaction) and not optimistic-lock
//! conflicts, which `tests/tests/write_contention.rs` covers. Each client
//! holds one keep-alive connection, like pgbench's one session per client.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use uuid::Uuid;

use crate::auth;
use crate::stats::{latency_histogram, Latency, Measurement};

/// Name of the measurement in reports.
pub const NAME: &str = "command_append";

#[derive(Debug, Clone)]
pub struct AppendOptions {
    /// Base URL of command-service.
    pub url: String,
    pub clients: usize,
    /// Run but do not measure this long first (connections, caches).
    pub warmup: Duration,
    pub duration: Duration,
    /// Print a progress line every second.
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("http client: {0}")]
    Client(#[from] reqwest::Error),
    #[error(transparent)]
    Token(#[from] auth::TokenError),
    #[error("creating the benchmark product failed with {status}: {body}")]
    Setup {
        status: reqwest::StatusCode,
        body: String,
    },
}

/// What one client saw in the measured window.
struct ClientResult {
    histogram: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

/// The clients, each with its product, ready to run: made by [`prepare`]
/// before the run, so that creating the products stays out of its warm-up
/// and window (and out of anything sampled in step with them).
pub struct Prepared {
    options: AppendOptions,
    products: Vec<(reqwest::Client, Uuid)>,
}

/// [`prepare`], then [`Prepared::run`].
pub async fn run(options: &AppendOptions) -> Result<Measurement, AppendError> {
    Ok(prepare(options).await?.run().await)
}

/// Creates one product per client.
pub async fn prepare(options: &AppendOptions) -> Result<Prepared, AppendError> {
    let mut products = Vec::with_capacity(options.clients);
    for _ in 0..options.clients {
        let client = client()?;
        let product = create_product(&client, &options.url).await?;
        products.push((client, product));
    }
    Ok(Prepared {
        options: options.clone(),
        products,
    })
}

impl Prepared {
    /// Warm-up, then the measured window, starting now. Failed commands are
    /// counted in the measurement's errors, not returned.
    pub async fn run(self) -> Measurement {
        let Self { options, products } = self;
        let started = Instant::now();
        let window_start = started + options.warmup;
        let window_end = window_start + options.duration;
        let done = Arc::new(AtomicU64::new(0));
        let progress = options.progress.then(|| {
            let done = done.clone();
            let clients = options.clients;
            tokio::spawn(async move {
                let mut last = 0;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let now = done.load(Ordering::Relaxed);
                    eprintln!(
                        "[{NAME} c={clients}] {:>5.1}s {:>7} ops/s",
                        started.elapsed().as_secs_f64(),
                        now - last
                    );
                    last = now;
                }
            })
        });

        let tasks: Vec<_> = products
            .into_iter()
            .map(|(client, product)| {
                let url = format!(
                    "{}/products/{product}/change-price",
                    options.url.trim_end_matches('/')
                );
                let done = done.clone();
                tokio::spawn(drive(client, url, window_start, window_end, done))
            })
            .collect();
        let mut histogram = latency_histogram();
        let mut errors = BTreeMap::new();
        for result in futures::future::join_all(tasks).await {
            // A panicking client task is a bug in this tool: surface it.
            let result = result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            histogram.add(&result.histogram).ok();
            for (cause, count) in result.errors {
                *errors.entry(cause).or_default() += count;
            }
        }
        if let Some(progress) = progress {
            progress.abort();
        }
        let seconds = options.duration.as_secs_f64();
        Measurement {
            name: NAME.to_owned(),
            clients: options.clients,
            seconds,
            ops: histogram.len(),
            ops_per_s: histogram.len() as f64 / seconds,
            latency: Latency::from_histogram(&histogram),
            errors,
        }
    }
}

fn client() -> Result<reqwest::Client, AppendError> {
    Ok(auth::authorized_client()?
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn create_product(client: &reqwest::Client, base: &str) -> Result<Uuid, AppendError> {
    let response = client
        .post(format!("{}/products", base.trim_end_matches('/')))
        .json(&json!({
            "sku": format!("BENCH-{}", Uuid::new_v4().simple()),
            "name": "benchmark product",
            "price": {"amount_minor": 100, "currency": "EUR"},
        }))
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    let id = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["aggregate_id"].as_str().and_then(|s| s.parse().ok()));
    match (status, id) {
        (reqwest::StatusCode::ACCEPTED, Some(id)) => Ok(id),
        _ => Err(AppendError::Setup { status, body }),
    }
}

/// One closed-loop client: send, wait for the answer, repeat until the
/// window closes. Every command changes the price, so none is rejected as
/// "unchanged".
async fn drive(
    client: reqwest::Client,
    url: String,
    window_start: Instant,
    window_end: Instant,
    done: Arc<AtomicU64>,
) -> ClientResult {
    let mut result = ClientResult {
        histogram: latency_histogram(),
        errors: BTreeMap::new(),
    };
    let mut amount: u64 = 100;
    loop {
        amount += 1;
        let sent = Instant::now();
        if sent >= window_end {
            return result;
        }
        let outcome = client
            .post(&url)
            .json(&json!({"price": {"amount_minor": amount, "currency": "EUR"}}))
            .send()
            .await;
        let outcome = match outcome {
            Ok(response) => {
                let status = response.status();
                // Read the body so the connection can be reused.
                match response.bytes().await {
                    Ok(_) if status == reqwest::StatusCode::ACCEPTED => Ok(()),
                    Ok(_) => Err(status.as_u16().to_string()),
                    Err(_) => Err("io".to_owned()),
                }
            }
            Err(_) => Err("io".to_owned()),
        };
        let answered = Instant::now();
        done.fetch_add(1, Ordering::Relaxed);
        if sent < window_start || answered > window_end {
            continue;
        }
        match outcome {
            Ok(()) => {
                let micros = answered.duration_since(sent).as_micros();
                result
                    .histogram
                    .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
            }
            Err(cause) => *result.errors.entry(cause).or_default() += 1,
        }
    }
}
