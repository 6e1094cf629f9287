//! The mix's operations against the running stack: what each request is,
//! which entity it targets, and the freshness probes that follow commands.
//!
//! The client keeps a model of what it created, as a real client would: the
//! products with their current price, the orders that are placed (open for
//! lines, confirmation, cancellation) or confirmed (open for cancellation).
//! A command checks its order or product out of that model while it is in
//! flight, so two commands of this client never race on one aggregate (no
//! 409s of its own making). Reads target only entities known to be readable:
//! the seeded ones (waited for before the run) and new ones a freshness
//! probe saw appear; so a 404 on a read is an error, not the projection
//! being behind.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use hdrhistogram::Histogram;
use reqwest::header::{CACHE_CONTROL, ETAG};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use super::driver::{Executor, Outcome, Request, Transport};
use super::ops::{Op, Rng};
use super::MixError;
use crate::stats::{latency_histogram, Latency};

/// Requests at a time while seeding.
const SEED_CONCURRENCY: usize = 16;
/// Longest wait for the seeded entities to be readable on query-service.
const SEED_VISIBLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Tries of one seeding command (see `seed_command`).
const SEED_ATTEMPTS: u32 = 6;
/// Most freshness probes polling at once; a sampled command beyond that is
/// counted as `skipped_busy`, so polling cannot swamp query-service.
pub const MAX_PROBES: usize = 256;
/// The only currency the mix uses (an order's lines share one).
const CURRENCY: &str = "EUR";

/// How the stack is driven (the addresses, the seed, freshness sampling).
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub command_url: String,
    pub query_url: String,
    pub products: usize,
    pub customers: usize,
    pub seed_orders: usize,
    pub request_timeout: Duration,
    /// Fraction of the commands whose effect is polled for, 0 to 1.
    pub freshness_sample: f64,
    pub freshness_timeout: Duration,
    /// Time between the starts of two polls of one probe.
    pub freshness_poll: Duration,
}

/// What was seeded before the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeedSummary {
    pub products: usize,
    pub orders: usize,
    /// Size of the customer pool orders are placed for.
    pub customers: usize,
    /// Creating the products and placing the orders.
    pub write_seconds: f64,
    /// From then until every seeded entity was readable on query-service.
    pub visible_seconds: f64,
}

/// Time from a command's 202 until query-service's replica path
/// (`Cache-Control: no-cache`) answered with the command's version or later.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FreshnessStats {
    /// Each probe polls with this period (its resolution: a change is seen
    /// up to one period plus one read after it happened).
    pub poll_interval_ms: f64,
    pub sample_fraction: f64,
    pub timeout_ms: f64,
    /// Probes that saw the effect.
    pub samples: u64,
    /// Probes that gave up after `timeout_ms`.
    pub timeouts: u64,
    /// Sampled commands not probed because [`MAX_PROBES`] were polling.
    pub skipped_busy: u64,
    /// Probes still polling when the run was stopped.
    pub interrupted: u64,
    pub latency: Option<Latency>,
    /// By the command whose effect was awaited.
    pub by_op: BTreeMap<String, FreshnessOp>,
    /// Polls sent (not counted as reads of the mix).
    pub polls: u64,
    /// Polls answered other than 200 or 404, or not at all, by cause.
    #[serde(default)]
    pub poll_errors: BTreeMap<String, u64>,
    /// Where the answer that showed the effect came from (`x-read-source`:
    /// `replica-1`, `primary`, ...).
    #[serde(default)]
    pub sources: BTreeMap<String, u64>,
}

/// Freshness of one command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FreshnessOp {
    pub samples: u64,
    pub timeouts: u64,
    pub latency: Option<Latency>,
}

/// A lock whose holder panicked still guards plain data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Clone)]
struct Product {
    id: Uuid,
    price: i64,
    busy: bool,
}

#[derive(Debug, Clone)]
struct PlacedOrder {
    id: Uuid,
    /// Products the order has a line for.
    lines: Vec<Uuid>,
}

/// The client's model of what exists.
#[derive(Debug, Default)]
struct World {
    products: Vec<Product>,
    readable_products: Vec<Uuid>,
    /// Placed orders not checked out by a command in flight.
    placed: Vec<PlacedOrder>,
    /// Confirmed orders not checked out.
    confirmed: Vec<Uuid>,
    readable_orders: Vec<Uuid>,
    customers: Vec<Uuid>,
    customers_with_orders: Vec<Uuid>,
    known_customers: HashSet<Uuid>,
}

impl World {
    /// Checks out a product for a command: its index and price.
    fn checkout_product(&mut self, rng: &mut Rng) -> Option<(usize, Uuid, i64)> {
        let n = self.products.len();
        let first = rng.below(n);
        (0..n).map(|k| (first + k) % n).find_map(|i| {
            let product = &mut self.products[i];
            (!product.busy).then(|| {
                product.busy = true;
                (i, product.id, product.price)
            })
        })
    }

    fn release_product(&mut self, index: usize, price: Option<i64>) {
        if let Some(product) = self.products.get_mut(index) {
            product.busy = false;
            if let Some(price) = price {
                product.price = price;
            }
        }
    }

    fn checkout_placed(&mut self, rng: &mut Rng) -> Option<PlacedOrder> {
        (!self.placed.is_empty()).then(|| {
            let i = rng.below(self.placed.len());
            self.placed.swap_remove(i)
        })
    }

    fn readable_order(&mut self, id: Uuid, customer: Uuid) {
        self.readable_orders.push(id);
        if self.known_customers.insert(customer) {
            self.customers_with_orders.push(customer);
        }
    }
}

fn pick<T: Copy>(items: &[T], rng: &mut Rng) -> Option<T> {
    (!items.is_empty()).then(|| items[rng.below(items.len())])
}

/// Freshness figures while the run goes.
#[derive(Debug)]
struct FreshnessRecord {
    histogram: Histogram<u64>,
    by_op: BTreeMap<Op, (u64, u64, Histogram<u64>)>,
    samples: u64,
    timeouts: u64,
    skipped_busy: u64,
    interrupted: u64,
    polls: u64,
    poll_errors: BTreeMap<String, u64>,
    sources: BTreeMap<String, u64>,
}

/// What a probe waits for: `GET {query}/{collection}/{id}` at `version`.
#[derive(Debug, Clone, Copy)]
struct Probe {
    op: Op,
    collection: &'static str,
    id: Uuid,
    version: i64,
    /// When the 202 arrived.
    accepted: Instant,
    measured: bool,
    /// What becomes readable once seen.
    then: Readable,
}

#[derive(Debug, Clone, Copy)]
enum Readable {
    Nothing,
    Product(Uuid),
    Order { id: Uuid, customer: Uuid },
}

/// The mix's [`Executor`] against command-service and query-service.
pub struct StackExecutor {
    client: reqwest::Client,
    command: String,
    query: String,
    options: StackOptions,
    world: Mutex<World>,
    freshness: Mutex<FreshnessRecord>,
    /// Sampling accumulator: a command is sampled each time it passes 1.
    sampler: Mutex<f64>,
    probes: Mutex<JoinSet<()>>,
    /// Probes of the measured window still polling.
    measured_probes: AtomicUsize,
    probing: AtomicUsize,
}

/// The fields of a 202 the mix uses.
#[derive(Debug, Deserialize)]
struct Accepted {
    aggregate_id: Uuid,
    version: i64,
}

/// What came back for one request.
enum Answer {
    Accepted(Accepted),
    Read,
    Failed(Outcome),
}

impl StackExecutor {
    pub fn new(options: StackOptions) -> Result<Self, MixError> {
        let client = crate::auth::authorized_client()?
            .timeout(options.request_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(MixError::Client)?;
        let world = World {
            customers: (0..options.customers.max(1))
                .map(|_| Uuid::new_v4())
                .collect(),
            ..World::default()
        };
        Ok(Self {
            client,
            command: options.command_url.trim_end_matches('/').to_owned(),
            query: options.query_url.trim_end_matches('/').to_owned(),
            freshness: Mutex::new(FreshnessRecord {
                histogram: latency_histogram(),
                by_op: BTreeMap::new(),
                samples: 0,
                timeouts: 0,
                skipped_busy: 0,
                interrupted: 0,
                polls: 0,
                poll_errors: BTreeMap::new(),
                sources: BTreeMap::new(),
            }),
            // The first command is sampled.
            sampler: Mutex::new(1.0 - options.freshness_sample.clamp(0.0, 1.0)),
            options,
            world: Mutex::new(world),
            probes: Mutex::new(JoinSet::new()),
            measured_probes: AtomicUsize::new(0),
            probing: AtomicUsize::new(0),
        })
    }

    /// Creates the products, places the orders (round robin over the first
    /// customers), and waits until query-service reads all of them.
    pub async fn seed(&self) -> Result<SeedSummary, MixError> {
        let started = Instant::now();
        let products: Vec<(Uuid, i64)> = futures::stream::iter(0..self.options.products)
            .map(|i| async move {
                let price = 100 + 37 * i as i64 % 9_900;
                let body = json!({
                    "sku": format!("MIX-{}", Uuid::new_v4().simple()),
                    "name": format!("Mix product {i}"),
                    "price": {"amount_minor": price, "currency": CURRENCY},
                });
                self.seed_command("/products", body)
                    .await
                    .map(|id| (id, price))
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        if products.is_empty() {
            return Err(MixError::NoProducts);
        }
        let customers = lock(&self.world).customers.clone();
        let buyers = customers.len().min(self.options.seed_orders.max(1));
        let orders: Vec<(Uuid, Uuid, Vec<Uuid>)> =
            futures::stream::iter(0..self.options.seed_orders)
                .map(|i| {
                    let customer = customers[i % buyers];
                    let mut lines: Vec<(Uuid, i64)> = Vec::new();
                    for k in 0..1 + i % 3 {
                        let line = products[(i + 7 * k) % products.len()];
                        if !lines.contains(&line) {
                            lines.push(line);
                        }
                    }
                    async move {
                        let body = order_body(customer, &lines);
                        self.seed_command("/orders", body)
                            .await
                            .map(|id| (id, customer, lines.iter().map(|(p, _)| *p).collect()))
                    }
                })
                .buffer_unordered(SEED_CONCURRENCY)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
        let write_seconds = started.elapsed().as_secs_f64();

        let written = Instant::now();
        let paths: Vec<String> = products
            .iter()
            .map(|(id, _)| format!("/products/{id}"))
            .chain(orders.iter().map(|(id, _, _)| format!("/orders/{id}")))
            .collect();
        self.wait_readable(paths).await?;
        let visible_seconds = written.elapsed().as_secs_f64();

        let mut world = lock(&self.world);
        for &(id, price) in &products {
            world.products.push(Product {
                id,
                price,
                busy: false,
            });
            world.readable_products.push(id);
        }
        for (id, customer, lines) in orders {
            world.readable_order(id, customer);
            world.placed.push(PlacedOrder { id, lines });
        }
        Ok(SeedSummary {
            products: products.len(),
            orders: world.readable_orders.len(),
            customers: world.customers.len(),
            write_seconds,
            visible_seconds,
        })
    }

    /// Sends one seeding command, retrying what a real client retries (503
    /// and 429, honouring `Retry-After`, and transport errors) with the same
    /// `Idempotency-Key`, so that a stall of the primary (a slow checkpoint
    /// once held commits for 8 s here) does not fail a whole benchmark run.
    async fn seed_command(&self, path: &str, body: serde_json::Value) -> Result<Uuid, MixError> {
        let url = format!("{}{path}", self.command);
        let key = Uuid::new_v4().to_string();
        let mut attempt = 1;
        loop {
            let failure = match self
                .client
                .post(&url)
                .header("idempotency-key", &key)
                .json(&body)
                .send()
                .await
            {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let text = response.text().await.unwrap_or_default();
                    match serde_json::from_str::<Accepted>(&text) {
                        Ok(accepted) if status == reqwest::StatusCode::ACCEPTED => {
                            return Ok(accepted.aggregate_id)
                        }
                        _ if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                            || status == reqwest::StatusCode::TOO_MANY_REQUESTS =>
                        {
                            (format!("{status}: {text}"), retry_after.unwrap_or(1))
                        }
                        _ => {
                            return Err(MixError::Seed {
                                url,
                                detail: format!("{status}: {text}"),
                            })
                        }
                    }
                }
                Err(source) => (source.to_string(), 1),
            };
            if attempt >= SEED_ATTEMPTS {
                return Err(MixError::Seed {
                    url,
                    detail: format!("{} (after {attempt} attempts)", failure.0),
                });
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_secs(failure.1.min(5))).await;
        }
    }

    /// Polls every path on query-service (no cache) until each answers 200.
    async fn wait_readable(&self, mut paths: Vec<String>) -> Result<(), MixError> {
        let deadline = Instant::now() + SEED_VISIBLE_TIMEOUT;
        loop {
            let answers: Vec<bool> = futures::stream::iter(paths.iter())
                .map(|path| async move {
                    self.client
                        .get(format!("{}{path}", self.query))
                        .header(CACHE_CONTROL, "no-cache")
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
                })
                .buffered(SEED_CONCURRENCY)
                .collect()
                .await;
            let mut answers = answers.into_iter();
            paths.retain(|_| !answers.next().unwrap_or(false));
            if paths.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(MixError::SeedNotVisible {
                    missing: paths.len(),
                    timeout: SEED_VISIBLE_TIMEOUT,
                    example: paths.swap_remove(0),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the probes still polling, until `deadline` or `stop`; the
    /// rest are counted as interrupted.
    pub async fn finish_probes(
        &self,
        deadline: Instant,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut probes = std::mem::take(&mut *lock(&self.probes));
        tokio::select! {
            () = async { while probes.join_next().await.is_some() {} } => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = stop => {}
        }
        probes.abort_all();
        while probes.join_next().await.is_some() {}
        let left = self.measured_probes.swap(0, Ordering::SeqCst) as u64;
        lock(&self.freshness).interrupted += left;
    }

    /// The freshness figures so far.
    pub fn freshness(&self) -> FreshnessStats {
        let record = lock(&self.freshness);
        let latency = |h: &Histogram<u64>| (!h.is_empty()).then(|| Latency::from_histogram(h));
        FreshnessStats {
            poll_interval_ms: self.options.freshness_poll.as_secs_f64() * 1000.0,
            sample_fraction: self.options.freshness_sample,
            timeout_ms: self.options.freshness_timeout.as_secs_f64() * 1000.0,
            samples: record.samples,
            timeouts: record.timeouts,
            skipped_busy: record.skipped_busy,
            interrupted: record.interrupted,
            latency: latency(&record.histogram),
            by_op: record
                .by_op
                .iter()
                .map(|(op, (samples, timeouts, h))| {
                    (
                        op.name().to_owned(),
                        FreshnessOp {
                            samples: *samples,
                            timeouts: *timeouts,
                            latency: latency(h),
                        },
                    )
                })
                .collect(),
            polls: record.polls,
            poll_errors: record.poll_errors.clone(),
            sources: record.sources.clone(),
        }
    }

    /// Whether this command's effect is polled for (every 1/fraction-th).
    fn sample(&self) -> bool {
        let mut acc = lock(&self.sampler);
        *acc += self.options.freshness_sample.clamp(0.0, 1.0);
        if *acc >= 1.0 {
            *acc -= 1.0;
            true
        } else {
            false
        }
    }

    /// Sends a command; a 202's body is parsed.
    async fn command(&self, path: String, body: Option<serde_json::Value>) -> Answer {
        let mut request = self
            .client
            .post(format!("{}{path}", self.command))
            .header("idempotency-key", Uuid::new_v4().to_string());
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Err(error) => Answer::Failed(Outcome::from_error(&error)),
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Err(error) => Answer::Failed(Outcome::from_error(&error)),
                    Ok(_) if status != 202 => Answer::Failed(Outcome::from_status(status)),
                    Ok(bytes) => match serde_json::from_slice::<Accepted>(&bytes) {
                        Ok(accepted) => Answer::Accepted(accepted),
                        // A 202 without its documented body.
                        Err(_) => Answer::Failed(Outcome::Transport(Transport::Io)),
                    },
                }
            }
        }
    }

    async fn read(&self, path: String, no_cache: bool) -> Answer {
        let mut request = self.client.get(format!("{}{path}", self.query));
        if no_cache {
            request = request.header(CACHE_CONTROL, "no-cache");
        }
        match request.send().await {
            Err(error) => Answer::Failed(Outcome::from_error(&error)),
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Err(error) => Answer::Failed(Outcome::from_error(&error)),
                    Ok(_) => match Outcome::from_status(status) {
                        Outcome::Ok => Answer::Read,
                        other => Answer::Failed(other),
                    },
                }
            }
        }
    }

    /// Starts a probe for a command accepted now, if it is sampled.
    fn follow(self: &Arc<Self>, probe: Probe) {
        if !self.sample() {
            return;
        }
        if self.probing.load(Ordering::Relaxed) >= MAX_PROBES {
            if probe.measured {
                lock(&self.freshness).skipped_busy += 1;
            }
            return;
        }
        self.probing.fetch_add(1, Ordering::Relaxed);
        if probe.measured {
            self.measured_probes.fetch_add(1, Ordering::Relaxed);
        }
        let this = Arc::clone(self);
        let mut probes = lock(&self.probes);
        while probes.try_join_next().is_some() {}
        probes.spawn(async move {
            this.poll(probe).await;
            this.probing.fetch_sub(1, Ordering::Relaxed);
            if probe.measured {
                this.measured_probes.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }

    /// Polls until query-service's replica path shows `probe.version`.
    async fn poll(&self, probe: Probe) {
        let url = format!("{}/{}/{}", self.query, probe.collection, probe.id);
        let deadline = probe.accepted + self.options.freshness_timeout;
        loop {
            let sent = Instant::now();
            let answer = self
                .client
                .get(&url)
                .header(CACHE_CONTROL, "no-cache")
                .send()
                .await;
            let seen = match answer {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let version = response
                        .headers()
                        .get(ETAG)
                        .and_then(|v| v.to_str().ok())
                        .and_then(etag_version);
                    let source = response
                        .headers()
                        .get("x-read-source")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("unknown")
                        .to_owned();
                    let _ = response.bytes().await;
                    let mut record = lock(&self.freshness);
                    record.polls += 1;
                    if status != 200 && status != 404 {
                        *record.poll_errors.entry(status.to_string()).or_default() += 1;
                    }
                    (status == 200 && version.is_some_and(|v| v >= probe.version)).then_some(source)
                }
                Err(error) => {
                    let key = Outcome::from_error(&error).error_key().unwrap_or_default();
                    let mut record = lock(&self.freshness);
                    record.polls += 1;
                    *record.poll_errors.entry(key).or_default() += 1;
                    None
                }
            };
            let now = Instant::now();
            if let Some(source) = seen {
                self.seen(probe, now.saturating_duration_since(probe.accepted), source);
                return;
            }
            if now >= deadline {
                if probe.measured {
                    let mut record = lock(&self.freshness);
                    record.timeouts += 1;
                    record
                        .by_op
                        .entry(probe.op)
                        .or_insert_with(|| (0, 0, latency_histogram()))
                        .1 += 1;
                }
                return;
            }
            tokio::time::sleep_until((sent + self.options.freshness_poll).min(deadline)).await;
        }
    }

    fn seen(&self, probe: Probe, freshness: Duration, source: String) {
        match probe.then {
            Readable::Nothing => {}
            Readable::Product(id) => lock(&self.world).readable_products.push(id),
            Readable::Order { id, customer } => lock(&self.world).readable_order(id, customer),
        }
        if !probe.measured {
            return;
        }
        let micros = (freshness.as_micros() as u64).max(1);
        let mut record = lock(&self.freshness);
        record.samples += 1;
        record.histogram.saturating_record(micros);
        let by_op = record
            .by_op
            .entry(probe.op)
            .or_insert_with(|| (0, 0, latency_histogram()));
        by_op.0 += 1;
        by_op.2.saturating_record(micros);
        *record.sources.entry(source).or_default() += 1;
    }

    async fn execute_op(self: Arc<Self>, request: Request) -> Outcome {
        let mut rng = Rng::new(request.seed);
        let probe = |op, collection, accepted: &Accepted, then| Probe {
            op,
            collection,
            id: accepted.aggregate_id,
            version: accepted.version,
            accepted: Instant::now(),
            measured: request.measured,
            then,
        };
        match request.op {
            Op::CreateProduct => {
                let price = 100 + rng.below(99_900) as i64;
                let body = json!({
                    "sku": format!("MIX-{}", Uuid::new_v4().simple()),
                    "name": format!("Mix product {}", rng.next_u64() % 1_000_000),
                    "price": {"amount_minor": price, "currency": CURRENCY},
                });
                match self.command("/products".to_owned(), Some(body)).await {
                    Answer::Accepted(accepted) => {
                        lock(&self.world).products.push(Product {
                            id: accepted.aggregate_id,
                            price,
                            busy: false,
                        });
                        let then = Readable::Product(accepted.aggregate_id);
                        self.follow(probe(request.op, "products", &accepted, then));
                        Outcome::Ok
                    }
                    other => outcome(other),
                }
            }
            Op::ChangePrice | Op::RenameProduct => {
                let Some((index, id, price)) = lock(&self.world).checkout_product(&mut rng) else {
                    return Outcome::NoTarget;
                };
                let (path, body, new_price) = if request.op == Op::ChangePrice {
                    let mut new = 100 + rng.below(99_900) as i64;
                    if new == price {
                        new += 1;
                    }
                    (
                        format!("/products/{id}/change-price"),
                        json!({"price": {"amount_minor": new, "currency": CURRENCY}}),
                        Some(new),
                    )
                } else {
                    (
                        format!("/products/{id}/rename"),
                        json!({"name": format!("Mix product {}", Uuid::new_v4().simple())}),
                        None,
                    )
                };
                let answer = self.command(path, Some(body)).await;
                let accepted = matches!(answer, Answer::Accepted(_));
                lock(&self.world).release_product(index, new_price.filter(|_| accepted));
                if let Answer::Accepted(accepted) = &answer {
                    self.follow(probe(request.op, "products", accepted, Readable::Nothing));
                }
                outcome(answer)
            }
            Op::PlaceOrder => {
                let (customer, lines) = {
                    let world = lock(&self.world);
                    if world.products.is_empty() {
                        return Outcome::NoTarget;
                    }
                    let Some(customer) = pick(&world.customers, &mut rng) else {
                        return Outcome::NoTarget;
                    };
                    let mut lines: Vec<(Uuid, i64)> = Vec::new();
                    for _ in 0..1 + rng.below(3) {
                        let product = &world.products[rng.below(world.products.len())];
                        if !lines.iter().any(|(id, _)| *id == product.id) {
                            lines.push((product.id, product.price));
                        }
                    }
                    (customer, lines)
                };
                match self
                    .command("/orders".to_owned(), Some(order_body(customer, &lines)))
                    .await
                {
                    Answer::Accepted(accepted) => {
                        lock(&self.world).placed.push(PlacedOrder {
                            id: accepted.aggregate_id,
                            lines: lines.iter().map(|(id, _)| *id).collect(),
                        });
                        let then = Readable::Order {
                            id: accepted.aggregate_id,
                            customer,
                        };
                        self.follow(probe(request.op, "orders", &accepted, then));
                        Outcome::Ok
                    }
                    other => outcome(other),
                }
            }
            Op::AddLine => {
                let (order, product) = {
                    let mut world = lock(&self.world);
                    let Some(order) = world.checkout_placed(&mut rng) else {
                        return Outcome::NoTarget;
                    };
                    if world.products.is_empty() {
                        world.placed.push(order);
                        return Outcome::NoTarget;
                    }
                    let product = (0..8)
                        .map(|_| &world.products[rng.below(world.products.len())])
                        .find(|p| !order.lines.contains(&p.id))
                        .map(|p| (p.id, p.price));
                    let Some(product) = product else {
                        world.placed.push(order);
                        return Outcome::NoTarget;
                    };
                    (order, product)
                };
                let body = json!({
                    "product_id": product.0,
                    "quantity": 1 + rng.below(5),
                    "unit_price": {"amount_minor": product.1, "currency": CURRENCY},
                });
                let answer = self
                    .command(format!("/orders/{}/lines", order.id), Some(body))
                    .await;
                match &answer {
                    Answer::Accepted(accepted) => {
                        let mut order = order;
                        order.lines.push(product.0);
                        lock(&self.world).placed.push(order);
                        self.follow(probe(request.op, "orders", accepted, Readable::Nothing));
                    }
                    Answer::Failed(failed) if not_applied(*failed) => {
                        lock(&self.world).placed.push(order)
                    }
                    // Its state is unknown now: leave it alone.
                    _ => {}
                }
                outcome(answer)
            }
            Op::ConfirmOrder => {
                let Some(order) = lock(&self.world).checkout_placed(&mut rng) else {
                    return Outcome::NoTarget;
                };
                let answer = self
                    .command(format!("/orders/{}/confirm", order.id), None)
                    .await;
                match &answer {
                    Answer::Accepted(accepted) => {
                        lock(&self.world).confirmed.push(order.id);
                        self.follow(probe(request.op, "orders", accepted, Readable::Nothing));
                    }
                    Answer::Failed(failed) if not_applied(*failed) => {
                        lock(&self.world).placed.push(order)
                    }
                    _ => {}
                }
                outcome(answer)
            }
            Op::CancelOrder => {
                // Placed or confirmed, in proportion to how many there are.
                let (id, placed) = {
                    let mut world = lock(&self.world);
                    let (placed, confirmed) = (world.placed.len(), world.confirmed.len());
                    if placed + confirmed == 0 {
                        return Outcome::NoTarget;
                    }
                    let i = rng.below(placed + confirmed);
                    if i < placed {
                        let order = world.placed.swap_remove(i);
                        (order.id, Some(order))
                    } else {
                        (world.confirmed.swap_remove(i - placed), None)
                    }
                };
                let body = json!({"reason": "load test", "cancelled_by": "customer"});
                let answer = self
                    .command(format!("/orders/{id}/cancel"), Some(body))
                    .await;
                match &answer {
                    Answer::Accepted(accepted) => {
                        self.follow(probe(request.op, "orders", accepted, Readable::Nothing));
                    }
                    Answer::Failed(failed) if not_applied(*failed) => {
                        let mut world = lock(&self.world);
                        match placed {
                            Some(order) => world.placed.push(order),
                            None => world.confirmed.push(id),
                        }
                    }
                    _ => {}
                }
                outcome(answer)
            }
            Op::GetOrder | Op::GetOrderUncached => {
                let Some(id) = pick(&lock(&self.world).readable_orders, &mut rng) else {
                    return Outcome::NoTarget;
                };
                outcome(
                    self.read(format!("/orders/{id}"), request.op == Op::GetOrderUncached)
                        .await,
                )
            }
            Op::CustomerOrders => {
                let Some(id) = pick(&lock(&self.world).customers_with_orders, &mut rng) else {
                    return Outcome::NoTarget;
                };
                outcome(
                    self.read(format!("/customers/{id}/orders?limit=50"), false)
                        .await,
                )
            }
            Op::GetProduct => {
                let Some(id) = pick(&lock(&self.world).readable_products, &mut rng) else {
                    return Outcome::NoTarget;
                };
                outcome(self.read(format!("/products/{id}"), false).await)
            }
            Op::ListProducts => {
                // The first page, or the page after a random product.
                let after = if rng.below(2) == 0 {
                    pick(&lock(&self.world).readable_products, &mut rng)
                } else {
                    None
                };
                let path = match after {
                    Some(id) => format!("/products?limit=20&after={id}"),
                    None => "/products?limit=20".to_owned(),
                };
                outcome(self.read(path, false).await)
            }
        }
    }
}

impl Executor for StackExecutor {
    fn execute(
        self: Arc<Self>,
        request: Request,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'static {
        self.execute_op(request)
    }
}

/// Failures after which a command certainly left its aggregate as it was:
/// a conflict (409), a refusal before it ran (429 rate limited, 503 shed
/// or unavailable), no connection. After any other failure (a timeout, a
/// 422) its state is unknown, and the client leaves that order alone.
fn not_applied(outcome: Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Status(409 | 429 | 503) | Outcome::Transport(Transport::Connect)
    )
}

fn outcome(answer: Answer) -> Outcome {
    match answer {
        Answer::Accepted(_) | Answer::Read => Outcome::Ok,
        Answer::Failed(outcome) => outcome,
    }
}

fn order_body(customer: Uuid, lines: &[(Uuid, i64)]) -> serde_json::Value {
    let lines: Vec<serde_json::Value> = lines
        .iter()
        .enumerate()
        .map(|(k, (product, price))| {
            json!({
                "product_id": product,
                "quantity": 1 + k,
                "unit_price": {"amount_minor": price, "currency": CURRENCY},
            })
        })
        .collect();
    json!({"customer_id": customer, "lines": lines})
}

/// The version in one of query-service's document ETags (`"v12"`, or
/// `W/"v12"` if a proxy weakened it).
fn etag_version(etag: &str) -> Option<i64> {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .strip_prefix('v')?
        .parse()
        .ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_versions_from_document_etags() {
        assert_eq!(etag_version("\"v12\""), Some(12));
        assert_eq!(etag_version("W/\"v3\""), Some(3));
        assert_eq!(etag_version("\"12\""), None);
        assert_eq!(etag_version("W/\"abc\""), None);
    }

    #[test]
    fn products_are_checked_out_one_command_at_a_time() {
        let mut world = World::default();
        for price in [10, 20] {
            world.products.push(Product {
                id: Uuid::new_v4(),
                price,
                busy: false,
            });
        }
        let mut rng = Rng::new(9);
        let (a, _, _) = world.checkout_product(&mut rng).unwrap();
        let (b, _, _) = world.checkout_product(&mut rng).unwrap();
        assert_ne!(a, b);
        assert!(world.checkout_product(&mut rng).is_none());
        world.release_product(a, Some(99));
        let (again, _, price) = world.checkout_product(&mut rng).unwrap();
        assert_eq!((again, price), (a, 99));
    }

    #[test]
    fn order_bodies_follow_the_api() {
        let (customer, product) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let body = order_body(customer, &[(product, 250)]);
        assert_eq!(
            body,
            json!({"customer_id": customer, "lines": [
                {"product_id": product, "quantity": 1,
                 "unit_price": {"amount_minor": 250, "currency": "EUR"}}
            ]})
        );
    }

    #[test]
    fn customers_with_orders_are_listed_once() {
        let mut world = World::default();
        let customer = Uuid::new_v4();
        world.readable_order(Uuid::new_v4(), customer);
        world.readable_order(Uuid::new_v4(), customer);
        assert_eq!(world.readable_orders.len(), 2);
        assert_eq!(world.customers_with_orders, vec![customer]);
    }
}
