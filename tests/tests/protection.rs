//! Traffic protection end to end: the rate limit shared by every instance
//! (GCRA in Redis), the limiter's behaviour with Redis down (fail open or
//! closed), load shedding at the in-flight limit, the request deadline with a
//! hung primary, the relay's `kafka-producer` breaker, and a graceful SIGTERM
//! of a command-service process.
//!
//! Every test takes [`SERIAL`]: the fault tests freeze shared components
//! (Redis, the primary, the broker), and the load tests measure rates and
//! latencies that any concurrent test on this two-core machine would skew.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use access_control::Scope;
use e2e_tests::{
    client, client_builder, create_product, eventually, relay_role, stack, token,
    wait_for_relay_to_drain, CommandService, CommandServiceProcess, ProjectorProcess, QueryService,
    Stack,
};
use reqwest::header::{HeaderMap, AUTHORIZATION};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use traffic_control::{OnRedisError, RateLimitPolicy};
use uuid::Uuid;

/// Held by every test of this file (see the module documentation).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A product both replicas have, created once per binary.
static PRODUCT: tokio::sync::OnceCell<Uuid> = tokio::sync::OnceCell::const_new();

const OVERLOADED: &str = "/problems/overloaded";
const DEADLINE_EXCEEDED: &str = "/problems/deadline-exceeded";
const RATE_LIMITED: &str = "/problems/rate-limited";
const LIMITER_UNAVAILABLE: &str = "/problems/rate-limiter-unavailable";

/// Bypasses both cache tiers of query-service: the read goes to a database.
const NO_CACHE: (&str, &str) = ("cache-control", "no-cache");

/// Runs its closure when dropped: resumes a frozen component even when the
/// test panics half-way.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// SIGSTOPs a stack component (`redis`, `broker`) until the guard is dropped.
fn freeze(stack: &'static Stack, component: &'static str) -> OnDrop<impl FnMut()> {
    stack.signal(component, "STOP");
    OnDrop(move || stack.signal(component, "CONT"))
}

/// SIGSTOPs the primary (postmaster and backends) until the guard is dropped.
fn freeze_primary(stack: &'static Stack) -> OnDrop<impl FnMut()> {
    stack.signal_primary("STOP");
    OnDrop(move || stack.signal_primary("CONT"))
}

/// The product of this binary's read tests, on both replicas (so any
/// query-service routes its reads to a copy that has it). Every test calls
/// it first, under [`SERIAL`], so that it exists before any test freezes a
/// component the projector depends on: after the broker test's freeze the
/// in-process projector was seen not to rejoin its consumer group for
/// minutes, so nothing created after it would reach the replicas.
async fn replicated_product() -> Uuid {
    *PRODUCT
        .get_or_init(|| async {
            let stack = stack();
            let body = create_product(&client(), &stack.command_url, "Protected cup").await;
            let id: Uuid = body["aggregate_id"].as_str().unwrap().parse().unwrap();
            for url in &stack.replica_urls {
                let pool = sqlx::PgPool::connect(url).await.expect("replica");
                eventually(
                    "the product on the replica",
                    Duration::from_secs(60),
                    || {
                        let pool = pool.clone();
                        async move {
                            sqlx::query_scalar::<_, i32>(
                                "SELECT 1 FROM product_catalog WHERE product_id = $1",
                            )
                            .bind(id)
                            .fetch_optional(&pool)
                            .await
                            .ok()
                            .flatten()
                        }
                    },
                )
                .await;
                pool.close().await;
            }
            id
        })
        .await
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Retry-After` in whole seconds, if present and numeric.
fn retry_after(headers: &HeaderMap) -> Option<u64> {
    header(headers, "retry-after").and_then(|v| v.trim().parse().ok())
}

/// One answer, fully read.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    took: Duration,
}

impl Answer {
    fn problem_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or("")
    }

    fn describe(&self) -> String {
        format!(
            "{} after {:?}, retry-after {:?}, body {}",
            self.status,
            self.took,
            header(&self.headers, "retry-after"),
            self.body
        )
    }
}

async fn send(request: reqwest::RequestBuilder) -> Result<Answer, reqwest::Error> {
    let started = Instant::now();
    let response = request.send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await?;
    Ok(Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        took: started.elapsed(),
    })
}

/// The value of one series (`name` or `name{labels}`, as exposed) in a
/// Prometheus text exposition.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// One series of `base_url`'s `/metrics`; None if absent or not answered
/// within 5 s.
async fn metric(base_url: &str, series: &str) -> Option<f64> {
    let text = reqwest::Client::new()
        .get(format!("{base_url}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    sample(&text, series)
}

fn new_product_body() -> Value {
    json!({
        "sku": format!("SKU-{}", Uuid::new_v4().simple()),
        "name": "Shielded mug",
        "price": {"amount_minor": 250, "currency": "EUR"},
    })
}

/// `p` (0..=1) of `latencies` (nearest rank); zero when empty.
fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies.sort_unstable();
    let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
    latencies[rank - 1]
}

// ---------------------------------------------------------------------------
// 1. One rate limit for all instances
// ---------------------------------------------------------------------------

/// What one client of the rate-limit test saw.
#[derive(Default)]
struct ClientTally {
    admitted: u64,
    limited: u64,
    /// From just before the first request to just after the last answer.
    elapsed: Duration,
    /// PTTL (ms) of the client's key in Redis right after its first 429.
    key_ttl: Option<i64>,
    /// Answers that break the contract (headers, statuses), described.
    violations: Vec<String>,
}

const READS: RateLimitPolicy = RateLimitPolicy {
    class: "reads",
    rate: 20,
    period: Duration::from_secs(1),
    burst: 10,
};
const CLIENTS: usize = 200;
/// How long every client sends...
const HAMMER_FOR: Duration = Duration::from_secs(3);
/// ...and, if it has not been limited yet (a machine too busy to send over
/// 20/s per client), at most how long it goes on.
const HAMMER_AT_MOST: Duration = Duration::from_secs(10);

/// 200 clients, each with a token of its own, send reads as fast as they can
/// to two query-service instances in turn; the instances share the limiter's
/// Redis, so no client may get more than `burst + rate × elapsed` admitted
/// in total. Had each instance a limit of its own, a client offering more
/// than that (which every one must, to be limited at all) would get up to
/// twice as many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_shared_by_all_instances_and_never_exceeded() {
    let _serial = SERIAL.lock().await;
    let product = replicated_product().await;
    let limited = |config: &mut query_service::config::Config| {
        config.rate_limits.reads = Some(READS);
        // Every request must reach the limiter: an instance that could not
        // ask Redis must not admit (fail open would admit uncounted).
        config.rate_limits.on_redis_error = OnRedisError::Closed;
        config.rate_limits.redis_timeout = Duration::from_secs(2);
    };
    let instances = [
        QueryService::start(limited).await,
        QueryService::start(limited).await,
    ];
    let urls: Vec<String> = instances
        .iter()
        .map(|i| format!("{}/products/{product}", i.url))
        .collect();
    // Both serve the product (and have it in their local cache) before the
    // clocks start; through a subject of its own, outside the test's budget.
    for url in &urls {
        let warm = send(client().get(url)).await.unwrap();
        assert_eq!(warm.status, StatusCode::OK, "{}", warm.describe());
    }
    let redis = redis::Client::open(stack().redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let window_ms = i64::try_from(READS.window().as_millis()).unwrap();

    let run = Uuid::new_v4().simple().to_string();
    let run = &run[..8];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let subjects: Vec<String> = (0..CLIENTS).map(|i| format!("rl-{run}-{i}")).collect();
    let started = Instant::now();
    let (end, at_most) = (started + HAMMER_FOR, started + HAMMER_AT_MOST);
    let mut clients = JoinSet::new();
    for (index, subject) in subjects.iter().enumerate() {
        let http = http.clone();
        let urls = urls.clone();
        let mut redis = redis.clone();
        let key = format!("ratelimit:reads:sub:{subject}");
        let bearer = format!("Bearer {}", token(subject, &[Scope::Read], None));
        clients.spawn(async move {
            let mut tally = ClientTally::default();
            let first = Instant::now();
            let mut sent = index; // spread the first requests over both instances
            loop {
                let now = Instant::now();
                if now >= at_most || (now >= end && tally.limited > 0) {
                    break;
                }
                let url = &urls[sent % urls.len()];
                sent += 1;
                let answer = match send(http.get(url).header(AUTHORIZATION, &bearer)).await {
                    Ok(answer) => answer,
                    Err(error) => {
                        tally.violations.push(format!("request failed: {error}"));
                        continue;
                    }
                };
                let policy = header(&answer.headers, "ratelimit-policy").unwrap_or("");
                let state = header(&answer.headers, "ratelimit").unwrap_or("");
                if !policy.starts_with(r#""reads";q=10;w="#) || !state.starts_with(r#""reads";r="#)
                {
                    tally.violations.push(format!(
                        "missing/odd rate-limit headers (policy {policy:?}, state {state:?}): {}",
                        answer.describe()
                    ));
                }
                match answer.status {
                    StatusCode::TOO_MANY_REQUESTS => {
                        tally.limited += 1;
                        if retry_after(&answer.headers).is_none_or(|s| s < 1)
                            || answer.problem_type() != RATE_LIMITED
                        {
                            tally
                                .violations
                                .push(format!("bad 429: {}", answer.describe()));
                        }
                        if tally.key_ttl.is_none() {
                            // Limited means the client's TAT is more than
                            // (burst - 1) intervals ahead: its key is there,
                            // expiring within one window.
                            let ttl: i64 = redis::cmd("PTTL")
                                .arg(&key)
                                .query_async(&mut redis)
                                .await
                                .unwrap();
                            tally.key_ttl = Some(ttl);
                        }
                    }
                    StatusCode::OK | StatusCode::NOT_FOUND => tally.admitted += 1,
                    _ => tally
                        .violations
                        .push(format!("unexpected: {}", answer.describe())),
                }
            }
            tally.elapsed = first.elapsed();
            tally
        });
    }
    let mut tallies = Vec::with_capacity(CLIENTS);
    while let Some(tally) = clients.join_next().await {
        tallies.push(tally.unwrap());
    }
    let hammered = started.elapsed();
    drop(instances);

    let mut over = Vec::new();
    let mut never_limited = 0;
    let mut bad_ttls = Vec::new();
    let mut violations = Vec::new();
    let (mut admitted, mut limited, mut margin) = (0, 0, u64::MAX);
    for (subject, tally) in subjects.iter().zip(&tallies) {
        let allowed = u64::from(READS.burst)
            + (f64::from(READS.rate) * tally.elapsed.as_secs_f64()).ceil() as u64;
        if tally.admitted > allowed {
            over.push(format!(
                "{subject}: {} admitted in {:?}, allowed {allowed}",
                tally.admitted, tally.elapsed
            ));
        }
        margin = margin.min(allowed.saturating_sub(tally.admitted));
        if tally.limited == 0 {
            never_limited += 1;
        }
        if let Some(ttl) = tally.key_ttl.filter(|ttl| !(1..=window_ms).contains(ttl)) {
            bad_ttls.push(format!("{subject}: {ttl}"));
        }
        admitted += tally.admitted;
        limited += tally.limited;
        violations.extend(tally.violations.iter().take(3).cloned());
    }
    let most_admitted = tallies.iter().map(|t| t.admitted).max().unwrap_or(0);
    let least_offered = tallies
        .iter()
        .map(|t| t.admitted + t.limited)
        .min()
        .unwrap_or(0);
    let longest = tallies.iter().map(|t| t.elapsed).max().unwrap_or_default();
    eprintln!(
        "rate limit: {CLIENTS} clients, {admitted} admitted + {limited} limited in {hammered:?} \
         ({:.0} req/s, longest client {longest:?}); per client: most admitted {most_admitted}, \
         least offered {least_offered}, allowed {} + {}/s × elapsed (≈ {} for {HAMMER_FOR:?}), \
         smallest margin under the limit {margin}",
        (admitted + limited) as f64 / hammered.as_secs_f64(),
        READS.burst,
        READS.rate,
        u64::from(READS.burst) + u64::from(READS.rate) * HAMMER_FOR.as_secs(),
    );

    assert!(
        over.is_empty(),
        "{} clients got more than the limit admitted:\n{}",
        over.len(),
        over.join("\n")
    );
    assert!(
        violations.is_empty(),
        "answers breaking the contract:\n{}",
        violations.join("\n")
    );
    assert_eq!(
        never_limited, 0,
        "{never_limited} clients never got a 429 in {HAMMER_AT_MOST:?}: the test did not exceed \
         the limit"
    );
    assert!(
        bad_ttls.is_empty(),
        "rate-limit keys missing or without a TTL within the {window_ms} ms window right after \
         a 429 (-2 missing, -1 no TTL):\n{}",
        bad_ttls.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 2. Redis down: fail open, fail closed
// ---------------------------------------------------------------------------

const LIMITER_BREAKER: &str = r#"circuit_breaker_state{breaker="redis-rate-limit"}"#;

/// With Redis frozen, an instance failing open keeps answering reads (without
/// rate-limit state) and one failing closed answers 503
/// `/problems/rate-limiter-unavailable`, both quickly; after Redis is back
/// both limit again within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_or_closed_quickly_and_recovers() {
    let _serial = SERIAL.lock().await;
    let stack = stack();
    let product = replicated_product().await;
    let open = QueryService::start(|c| c.rate_limits.on_redis_error = OnRedisError::Open).await;
    let closed = QueryService::start(|c| c.rate_limits.on_redis_error = OnRedisError::Closed).await;
    let open_url = format!("{}/products/{product}", open.url);
    let closed_url = format!("{}/products/{product}", closed.url);
    let http = client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    // Limited (the limiter reached Redis) and answered, on both.
    let checked = |answer: &Answer| {
        answer.status == StatusCode::OK && header(&answer.headers, "ratelimit").is_some()
    };
    for url in [&open_url, &closed_url] {
        let answer = send(http.get(url)).await.unwrap();
        assert!(checked(&answer), "before the outage: {}", answer.describe());
    }

    let redis = freeze(stack, "redis");
    let outage = Instant::now();
    let mut open_took = Vec::new();
    let mut closed_took = Vec::new();
    for _ in 0..10 {
        let answer = send(http.get(&open_url)).await.unwrap();
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "fail-open instance with Redis down: {}",
            answer.describe()
        );
        assert!(
            answer.took < Duration::from_secs(1),
            "fail-open read took {:?}",
            answer.took
        );
        open_took.push(answer.took);

        let answer = send(http.get(&closed_url)).await.unwrap();
        assert_eq!(
            (answer.status, answer.problem_type()),
            (StatusCode::SERVICE_UNAVAILABLE, LIMITER_UNAVAILABLE),
            "fail-closed instance with Redis down: {}",
            answer.describe()
        );
        assert!(
            retry_after(&answer.headers).is_some_and(|s| s >= 1),
            "{}",
            answer.describe()
        );
        assert!(
            answer.took < Duration::from_secs(1),
            "fail-closed refusal took {:?}",
            answer.took
        );
        closed_took.push(answer.took);
    }
    let admitted_unchecked = metric(
        &open.url,
        r#"rate_limit_decisions_total{class="reads",decision="unavailable_admitted"}"#,
    )
    .await
    .unwrap_or(0.0);
    let rejected = metric(
        &closed.url,
        r#"rate_limit_decisions_total{class="reads",decision="unavailable_rejected"}"#,
    )
    .await
    .unwrap_or(0.0);
    assert!(
        admitted_unchecked >= 10.0 && rejected >= 10.0,
        "decisions counted: unavailable_admitted {admitted_unchecked}, unavailable_rejected {rejected}"
    );
    for service in [&open, &closed] {
        assert_eq!(
            metric(&service.url, LIMITER_BREAKER).await,
            Some(1.0),
            "the limiter's breaker is open during the outage"
        );
    }
    let outage_len = outage.elapsed();
    drop(redis);

    let resumed = Instant::now();
    for url in [&open_url, &closed_url] {
        eventually(
            "the limiter checks Redis again",
            Duration::from_secs(10),
            || async { send(http.get(url)).await.ok().filter(checked) },
        )
        .await;
    }
    for service in [&open, &closed] {
        assert_eq!(
            metric(&service.url, LIMITER_BREAKER).await,
            Some(0.0),
            "the limiter's breaker closed again"
        );
    }
    eprintln!(
        "redis down {outage_len:?}: fail-open reads {:?} (max {:?}), fail-closed 503s {:?} \
         (max {:?}); both limiting again {:?} after SIGCONT",
        open_took,
        open_took.iter().max().unwrap(),
        closed_took,
        closed_took.iter().max().unwrap(),
        resumed.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 3. Overload: shed, keep latency
// ---------------------------------------------------------------------------

const MAX_IN_FLIGHT: usize = 4;

/// What closed-loop clients saw.
#[derive(Default)]
struct LoadOutcome {
    /// Latencies of the answered (200) reads.
    accepted: Vec<Duration>,
    shed: u64,
    shed_took: Vec<Duration>,
    /// Any other answer, described.
    other: Vec<String>,
}

impl LoadOutcome {
    fn add(&mut self, other: LoadOutcome) {
        self.accepted.extend(other.accepted);
        self.shed += other.shed;
        self.shed_took.extend(other.shed_took);
        self.other.extend(other.other);
    }

    fn p(&mut self, p: f64) -> Duration {
        percentile(&mut self.accepted, p)
    }
}

/// `clients` closed-loop clients reading `url` with `Cache-Control: no-cache`
/// (a database round trip each) for `duration`; a client whose read was
/// shed sends the next one after `after_shed`.
async fn closed_loop(
    http: &reqwest::Client,
    url: &str,
    clients: usize,
    duration: Duration,
    after_shed: Duration,
) -> LoadOutcome {
    let end = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let http = http.clone();
        let url = url.to_owned();
        tasks.spawn(async move {
            let mut outcome = LoadOutcome::default();
            while Instant::now() < end {
                match send(http.get(&url).header(NO_CACHE.0, NO_CACHE.1)).await {
                    Ok(answer) if answer.status == StatusCode::OK => {
                        outcome.accepted.push(answer.took);
                    }
                    Ok(answer)
                        if answer.status == StatusCode::SERVICE_UNAVAILABLE
                            && answer.problem_type() == OVERLOADED
                            && retry_after(&answer.headers).is_some_and(|s| s >= 1) =>
                    {
                        outcome.shed += 1;
                        outcome.shed_took.push(answer.took);
                        tokio::time::sleep(after_shed).await;
                    }
                    Ok(answer) => outcome.other.push(answer.describe()),
                    Err(error) => outcome.other.push(format!("request failed: {error}")),
                }
            }
            outcome
        });
    }
    let mut total = LoadOutcome::default();
    while let Some(outcome) = tasks.join_next().await {
        total.add(outcome.unwrap());
    }
    total
}

/// Ten times more concurrent clients than the in-flight limit: the excess is
/// refused at once with 503 `/problems/overloaded` + `Retry-After`, never
/// queued, so what is accepted is served about as fast as without the
/// overload; afterwards the instance is idle again.
///
/// Two overloads, both of `10 × MAX_IN_FLIGHT` closed-loop clients:
///
/// - *Spinning*: a shed client retries at once. Every answer must be 200 or
///   a proper shed 503, and most must be shed; latency is printed, not
///   checked: on this two-core machine the clients, the service and
///   Postgres share the cores, and ~12 000 sheds/s saturate them, so every
///   latency there measures CPU starvation (of the clients' own tasks too)
///   rather than the service.
/// - *Impatient*: a shed client retries after 10 ms — a hundredth of the
///   `Retry-After` it was given, still 10× the concurrency the instance
///   admits and more requests per second than it serves. Its accepted reads'
///   p99 is held to the unloaded p99's double, or the unloaded p99 + 20 ms
///   if that is more: the reads take 1–2 ms (p99 3–6 ms) and the unloaded
///   p99 alone varies 2× between runs of this test on this shared box, so a
///   bare ratio of two p99s of a few ms measures the scheduler, not the
///   service. The medians are steadier (1.4× in runs so far) and held to a
///   bare 2×. A queueing limiter is caught by the shed count (it sheds
///   nothing) and by the latency (each read waiting behind ~9 others).
///   Unloaded and impatient phases alternate, so that load from outside the
///   test weighs on both alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_and_accepted_latency_holds() {
    const ROUNDS: u32 = 3;
    const IMPATIENCE: Duration = Duration::from_millis(10);
    let _serial = SERIAL.lock().await;
    let product = replicated_product().await;
    let service = QueryService::start(|c| c.protection.max_in_flight = MAX_IN_FLIGHT).await;
    let read = format!("{}/products/{product}", service.url);
    let http = client();
    let overload = 10 * MAX_IN_FLIGHT;
    // Connections and database pools warm.
    let warm = closed_loop(
        &http,
        &read,
        overload,
        Duration::from_millis(500),
        IMPATIENCE,
    )
    .await;
    assert!(warm.other.is_empty(), "warm-up: {:?}", warm.other);

    let mut unloaded = LoadOutcome::default();
    let mut impatient = LoadOutcome::default();
    for _ in 0..ROUNDS {
        let phase = Duration::from_millis(800);
        unloaded.add(closed_loop(&http, &read, MAX_IN_FLIGHT, phase, Duration::ZERO).await);
        impatient.add(closed_loop(&http, &read, overload, phase, IMPATIENCE).await);
    }
    let spin_for = Duration::from_secs(2);
    let mut spinning = closed_loop(&http, &read, overload, spin_for, Duration::ZERO).await;
    let stopped = Instant::now();

    let (unloaded_p50, unloaded_p99) = (unloaded.p(0.50), unloaded.p(0.99));
    let (impatient_p50, impatient_p99) = (impatient.p(0.50), impatient.p(0.99));
    let (spinning_p50, spinning_p99) = (spinning.p(0.50), spinning.p(0.99));
    let bound = (unloaded_p99 * 2).max(unloaded_p99 + Duration::from_millis(20));
    eprintln!(
        "overload (in-flight limit {MAX_IN_FLIGHT}, {overload} clients): unloaded {} reads p50 \
         {unloaded_p50:?} p99 {unloaded_p99:?}; impatient {} accepted p50 {impatient_p50:?} \
         p99 {impatient_p99:?} ({:.1}× unloaded; bound {bound:?}), {} shed (p99 {:?}); \
         spinning {} accepted p50 {spinning_p50:?} p99 {spinning_p99:?} ({:.1}× unloaded), \
         {} shed in {spin_for:?} (p99 {:?})",
        unloaded.accepted.len(),
        impatient.accepted.len(),
        impatient_p99.as_secs_f64() / unloaded_p99.as_secs_f64(),
        impatient.shed,
        percentile(&mut impatient.shed_took, 0.99),
        spinning.accepted.len(),
        spinning_p99.as_secs_f64() / unloaded_p99.as_secs_f64(),
        spinning.shed,
        percentile(&mut spinning.shed_took, 0.99),
    );
    let others: Vec<&String> = [&unloaded, &impatient, &spinning]
        .iter()
        .flat_map(|o| o.other.iter().take(5))
        .collect();
    assert!(
        others.is_empty(),
        "answers other than 200 or 503 overloaded with Retry-After: {others:?}"
    );
    assert_eq!(unloaded.shed, 0, "shed at the in-flight limit, not over it");
    for (name, outcome) in [("impatient", &impatient), ("spinning", &spinning)] {
        assert!(
            outcome.shed > 0 && !outcome.accepted.is_empty(),
            "{name} overload: {} shed, {} accepted",
            outcome.shed,
            outcome.accepted.len()
        );
    }
    assert!(
        spinning.shed > 5 * spinning.accepted.len() as u64,
        "spinning at 10× the limit, most requests must be shed"
    );
    assert!(
        impatient_p50 <= unloaded_p50 * 2,
        "accepted reads under overload: p50 {impatient_p50:?} > 2 × unloaded p50 \
         {unloaded_p50:?}"
    );
    assert!(
        impatient_p99 <= bound,
        "accepted reads under overload: p99 {impatient_p99:?} > {bound:?} (unloaded p99 \
         {unloaded_p99:?})"
    );

    // Idle again: answers, and nothing left counted in flight.
    eventually(
        "a read answered after the overload",
        Duration::from_secs(10),
        || async {
            send(http.get(&read))
                .await
                .ok()
                .filter(|a| a.status == StatusCode::OK)
        },
    )
    .await;
    eventually(
        "http_requests_in_flight back to 0",
        Duration::from_secs(10),
        || async {
            (metric(&service.url, "http_requests_in_flight").await == Some(0.0)).then_some(())
        },
    )
    .await;
    eprintln!(
        "overload: idle again {:?} after it stopped",
        stopped.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 4. Hung primary: commands fail fast
// ---------------------------------------------------------------------------

const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// With the primary frozen, every command is answered with a 503 by its
/// deadline (request timeout + 1 s at most), none hangs; once it is back,
/// commands succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_primary_commands_fail_fast_and_recover() {
    let _serial = SERIAL.lock().await;
    replicated_product().await;
    let stack = stack();
    let service = CommandService::start(|c| c.protection.request_timeout = REQUEST_TIMEOUT).await;
    let http = client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    create_product(&http, &service.url, "Before the freeze").await;

    let primary = freeze_primary(stack);
    let mut commands = JoinSet::new();
    for _ in 0..20 {
        let http = http.clone();
        let url = format!("{}/products", service.url);
        commands.spawn(async move {
            let started = Instant::now();
            (
                send(http.post(url).json(&new_product_body())).await,
                started.elapsed(),
            )
        });
    }
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = commands.join_next().await {
        match joined.unwrap() {
            (Ok(answer), _) => {
                let fast = answer.took <= REQUEST_TIMEOUT + Duration::from_secs(1);
                let unavailable = answer.status == StatusCode::SERVICE_UNAVAILABLE
                    && retry_after(&answer.headers).is_some_and(|s| s >= 1)
                    && [DEADLINE_EXCEEDED, "about:blank"].contains(&answer.problem_type());
                if !(fast && unavailable) {
                    failures.push(answer.describe());
                }
                answers.push((answer.took, answer.problem_type().to_owned()));
            }
            (Err(error), took) => failures.push(format!("no answer after {took:?}: {error}")),
        }
    }
    // Metrics still answer while the primary hangs: the scrape's database
    // queries give up after SCRAPE_QUERY_TIMEOUT and keep the last values.
    let scraped = Instant::now();
    let metrics = http
        .get(format!("{}/metrics", service.url))
        .send()
        .await
        .expect("/metrics answers while the primary hangs");
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(
        scraped.elapsed() < Duration::from_secs(2),
        "/metrics took {:?} with the primary frozen",
        scraped.elapsed()
    );
    drop(primary);
    eprintln!("hung primary: {answers:?}");
    assert!(
        failures.is_empty(),
        "commands not answered 503 within {:?}:\n{}",
        REQUEST_TIMEOUT + Duration::from_secs(1),
        failures.join("\n")
    );

    let resumed = Instant::now();
    eventually(
        "commands succeed again",
        Duration::from_secs(10),
        || async {
            send(
                http.post(format!("{}/products", service.url))
                    .json(&new_product_body()),
            )
            .await
            .ok()
            .filter(|a| a.status == StatusCode::ACCEPTED)
        },
    )
    .await;
    eprintln!(
        "hung primary: commands succeed {:?} after SIGCONT",
        resumed.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 5. The relay's Kafka breaker
// ---------------------------------------------------------------------------

const PRODUCER_BREAKER: &str = r#"circuit_breaker_state{breaker="kafka-producer"}"#;

/// A frozen broker opens the relay's `kafka-producer` breaker (commands are
/// still accepted: they only need the primary); once the broker is back the
/// breaker closes and the backlog is published.
///
/// The relay is the stack's own (it holds the relay lease, so a
/// command-service started here would only stand by), with the default
/// breaker: three failed batches of [`e2e_tests::RELAY_DELIVERY_TIMEOUT`]
/// (3 s) each plus backoff, 11–13 s to open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_breaker_opens_while_broker_is_down_and_closes_after() {
    let _serial = SERIAL.lock().await;
    replicated_product().await;
    let stack = stack();
    let http = client();
    assert_eq!(
        relay_role(&stack.command_url).await.as_deref(),
        Some("leader"),
        "the stack's command-service relays"
    );
    eventually(
        "the breaker closed to begin with",
        Duration::from_secs(30),
        || async {
            (metric(&stack.command_url, PRODUCER_BREAKER).await == Some(0.0)).then_some(())
        },
    )
    .await;

    let broker = freeze(stack, "broker");
    let frozen = Instant::now();
    for name in ["Queued 1", "Queued 2", "Queued 3"] {
        create_product(&http, &stack.command_url, name).await;
    }
    eventually(
        "the kafka-producer breaker opens",
        Duration::from_secs(40),
        || async {
            (metric(&stack.command_url, PRODUCER_BREAKER).await == Some(1.0)).then_some(())
        },
    )
    .await;
    let opened = frozen.elapsed();
    drop(broker);

    let resumed = Instant::now();
    eventually(
        "the kafka-producer breaker closes",
        Duration::from_secs(30),
        || async {
            (metric(&stack.command_url, PRODUCER_BREAKER).await == Some(0.0)).then_some(())
        },
    )
    .await;
    let closed = resumed.elapsed();
    let pool = sqlx::PgPool::connect(&stack.primary_url).await.unwrap();
    wait_for_relay_to_drain(&pool, Duration::from_secs(30)).await;
    eprintln!(
        "kafka breaker: open {opened:?} after SIGSTOP; closed {closed:?} and backlog drained {:?} \
         after SIGCONT",
        resumed.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 6. Graceful SIGTERM
// ---------------------------------------------------------------------------

/// SIGTERM with 20 commands in flight: every one is answered 202 (drained,
/// not reset), the process exits 0 within 10 s and its port is closed.
///
/// A command takes a few milliseconds, too little to send a signal into
/// reliably; so the test holds an `EXCLUSIVE` lock on `events` (appends
/// wait, reads do not) while the commands are sent, waits until the service
/// counts all 20 in flight, sends SIGTERM, and releases the lock half a
/// second later. (Freezing the primary instead would also hang the
/// service's `/metrics`, which reads the outbox lag from the primary.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_commands_and_exits_cleanly() {
    let _serial = SERIAL.lock().await;
    replicated_product().await;
    let stack = stack();
    // The held lock keeps the commands waiting about a second: well inside
    // the deadline, so they are drained, not timed out.
    let mut process =
        CommandServiceProcess::spawn_with("sigterm", &[("REQUEST_TIMEOUT_MS", "10000")]);
    let url = process.url();
    let http = client_builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    eventually("the process is ready", Duration::from_secs(30), || async {
        send(http.get(format!("{url}/health/ready")))
            .await
            .ok()
            .filter(|a| a.status == StatusCode::OK)
    })
    .await;
    create_product(&http, &url, "Before SIGTERM").await;

    let primary = sqlx::PgPool::connect(&stack.primary_url).await.unwrap();
    let mut hold = primary.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    let mut commands = JoinSet::new();
    for _ in 0..20 {
        let http = http.clone();
        let url = format!("{url}/products");
        commands.spawn(async move { send(http.post(url).json(&new_product_body())).await });
    }
    eventually(
        "all 20 commands in flight",
        Duration::from_secs(10),
        || async { (metric(&url, "http_requests_in_flight").await == Some(20.0)).then_some(()) },
    )
    .await;
    process.signal("TERM");
    let terminated = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let early_exit = process.exited();
    hold.rollback().await.unwrap();
    assert!(
        early_exit.is_none(),
        "the process exited ({early_exit:?}) with commands in flight"
    );

    let mut answered = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = commands.join_next().await {
        match joined.unwrap() {
            Ok(answer) if answer.status == StatusCode::ACCEPTED => answered.push(answer.took),
            Ok(answer) => failures.push(answer.describe()),
            Err(error) => failures.push(format!("no answer: {error}")),
        }
    }
    assert!(
        failures.is_empty(),
        "commands in flight at SIGTERM not answered 202:\n{}",
        failures.join("\n")
    );
    let exit = eventually("the process exits", Duration::from_secs(10), || {
        let exited = process.exited();
        async move { exited }
    })
    .await;
    let exited_after = terminated.elapsed();
    assert!(exit.success(), "exit status after SIGTERM: {exit}");
    let refused = std::net::TcpStream::connect(("127.0.0.1", process.port))
        .map_err(|e| e.kind())
        .err();
    assert_eq!(
        refused,
        Some(std::io::ErrorKind::ConnectionRefused),
        "the port still accepts connections after the exit"
    );
    eprintln!(
        "sigterm: {} commands answered 202 (slowest {:?}), exit {exit} {exited_after:?} after \
         SIGTERM",
        answered.len(),
        answered.iter().max().unwrap()
    );
}

// ---------------------------------------------------------------------------
// 7. The projector commits its batch on SIGTERM
// ---------------------------------------------------------------------------

/// SIGTERM while a batch is being applied: the projector finishes and
/// commits that batch (its offsets are stored with it), then exits 0; it
/// does not abandon the transaction. The batch is held in flight by a lock
/// on `product_catalog` that the test releases after the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_projector_commit_its_batch() {
    let _serial = SERIAL.lock().await;
    replicated_product().await;
    let stack = stack();
    let group = format!("sigterm-{}", Uuid::new_v4().simple());
    let primary = sqlx::PgPool::connect(&stack.primary_url).await.unwrap();
    let mut hold = primary.begin().await.unwrap();
    sqlx::query("LOCK TABLE product_catalog IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();

    // A group of its own reads the topics from the start: at least the
    // product above, so its first batch writes product_catalog and waits.
    let mut projector =
        ProjectorProcess::spawn_with(&group, &[("PROJECTOR_GROUP_ID", group.as_str())]);
    eventually(
        "the projector's batch waits for the lock",
        Duration::from_secs(30),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks
                  WHERE NOT granted AND relation = 'product_catalog'::regclass",
            )
            .fetch_one(&primary)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;

    projector.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let early = projector.exited();
    hold.rollback().await.unwrap();
    assert!(
        early.is_none(),
        "the projector exited ({early:?}) with its batch still open"
    );
    let signalled = Instant::now();
    let exit = loop {
        if let Some(exit) = projector.exited() {
            break exit;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "the projector did not exit within 10 s of its batch's lock being released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "projector exit status {exit}");
    // The batch committed: its offsets (written in the same transaction as
    // its read-model rows) are stored for the group.
    let stored: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM projector_offsets WHERE consumer_group = $1",
    )
    .bind(&group)
    .fetch_one(&primary)
    .await
    .unwrap();
    assert!(
        stored > 0,
        "no offsets stored for {group}: the in-flight batch was abandoned"
    );
    eprintln!(
        "projector SIGTERM: exited 0 {:?} after the lock was released, {stored} offsets committed",
        signalled.elapsed()
    );
}
