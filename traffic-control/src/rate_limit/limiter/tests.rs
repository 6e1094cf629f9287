//! The GCRA script and the connection handling, against a real Redis.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Encoder, Registry, TextEncoder};

use super::*;
use crate::testing::{black_hole, free_port, RedisServer};

/// The timeout against a missing or hanging Redis.
const TIMEOUT: Duration = Duration::from_millis(100);
/// Slack for scheduling on a loaded machine.
const SLACK: Duration = Duration::from_millis(100);
/// Generous against a live Redis, so a loaded test machine does not turn a
/// slow answer into `Unavailable`.
const LIVE_TIMEOUT: Duration = Duration::from_secs(1);

fn policy(rate: u32, burst: u32) -> RateLimitPolicy {
    RateLimitPolicy {
        class: "commands",
        rate,
        period: Duration::from_secs(1),
        burst,
    }
}

fn limiter(url: &str) -> RateLimiter {
    RateLimiter::new(url, TIMEOUT, OnRedisError::Open).expect("limiter")
}

fn live_limiter(server: &RedisServer) -> RateLimiter {
    RateLimiter::new(&server.url(), LIVE_TIMEOUT, OnRedisError::Open).expect("limiter")
}

fn pttl(server: &RedisServer, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query(&mut server.connection())
        .expect("PTTL")
}

#[tokio::test]
async fn admits_a_burst_then_limits_then_admits_at_the_rate() {
    let server = RedisServer::start();
    let limiter = live_limiter(&server);
    let policy = policy(4, 5); // one request per 250 ms, 5 at once

    for expected_remaining in (0..5).rev() {
        match limiter.check(&policy, "alice").await {
            Decision::Allowed { remaining, reset } => {
                assert_eq!(remaining, expected_remaining);
                assert!(reset <= policy.window(), "{reset:?}");
            }
            other => panic!("expected Allowed, got {other:?}"),
        }
    }
    let retry_after = match limiter.check(&policy, "alice").await {
        Decision::Limited { retry_after, reset } => {
            assert!(
                retry_after > Duration::ZERO && retry_after <= Duration::from_millis(250),
                "{retry_after:?}"
            );
            assert!(
                reset > Duration::from_millis(1000) && reset <= Duration::from_millis(1250),
                "{reset:?}"
            );
            retry_after
        }
        other => panic!("expected Limited, got {other:?}"),
    };

    tokio::time::sleep(retry_after + Duration::from_millis(5)).await;
    assert!(matches!(
        limiter.check(&policy, "alice").await,
        Decision::Allowed { remaining: 0, .. }
    ));
    assert!(matches!(
        limiter.check(&policy, "alice").await,
        Decision::Limited { .. }
    ));

    // Other clients and classes have their own buckets.
    assert!(matches!(
        limiter.check(&policy, "bob").await,
        Decision::Allowed { remaining: 4, .. }
    ));
    let reads = RateLimitPolicy {
        class: "reads",
        ..policy
    };
    assert!(matches!(
        limiter.check(&reads, "alice").await,
        Decision::Allowed { remaining: 4, .. }
    ));
}

#[tokio::test]
async fn the_key_expires_when_the_burst_is_back() {
    let server = RedisServer::start();
    let limiter = live_limiter(&server);
    let policy = policy(4, 5); // one request per 250 ms, 5 at once
    let key = "ratelimit:commands:carol";

    assert!(matches!(
        limiter.check(&policy, "carol").await,
        Decision::Allowed { .. }
    ));
    let ttl = pttl(&server, key);
    assert!(ttl > 0 && ttl <= 250, "one interval: {ttl}");

    for _ in 0..5 {
        limiter.check(&policy, "carol").await;
    }
    let ttl = pttl(&server, key);
    assert!(ttl > 1000 && ttl <= 1250, "a full window: {ttl}");

    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(pttl(&server, key), -2, "gone once the burst is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_never_admit_more_than_burst_plus_rate() {
    let server = RedisServer::start();
    let limiter = live_limiter(&server);
    // Connect first, so the measured window is only checks.
    limiter.check(&policy(1, 1), "warm-up").await;

    let policy = policy(100, 20);
    let admitted = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let run_for = Duration::from_millis(600);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (limiter, admitted) = (limiter.clone(), Arc::clone(&admitted));
            tokio::spawn(async move {
                while started.elapsed() < run_for {
                    match limiter.check(&policy, "dave").await {
                        Decision::Allowed { .. } => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Decision::Limited { .. } => {}
                        Decision::Unavailable(error) => panic!("redis failed: {error}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed);
    let bound = 20.0 + 100.0 * elapsed;
    assert!(
        f64::from(admitted) <= bound + 1.0,
        "admitted {admitted} in {elapsed:.3} s, bound {bound:.1}"
    );
    // And the limiter does not starve the client either.
    assert!(
        f64::from(admitted) >= 20.0 + 100.0 * 0.6 * 0.5,
        "admitted only {admitted} in {elapsed:.3} s"
    );
}

#[tokio::test]
async fn unreachable_redis_is_unavailable_within_the_timeout() {
    let limiter = limiter(&format!("redis://127.0.0.1:{}", free_port()));
    for _ in 0..5 {
        let started = Instant::now();
        let decision = limiter.check(&policy(10, 5), "erin").await;
        assert!(
            started.elapsed() < TIMEOUT + SLACK,
            "took {:?}",
            started.elapsed()
        );
        assert!(
            matches!(decision, Decision::Unavailable(_)),
            "got {decision:?}"
        );
    }
    // After a few failures, checks stop asking Redis for a while.
    assert!(matches!(
        limiter.check(&policy(10, 5), "erin").await,
        Decision::Unavailable(LimiterUnavailable::CircuitOpen)
    ));
    assert_eq!(limiter.breaker().name(), "redis-rate-limit");
    assert_eq!(limiter.breaker().state(), BreakerState::Open);
}

/// The value of `series` in the text exposition of `registry`.
fn sample(registry: &Registry, series: &str) -> Option<f64> {
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .expect("encode");
    String::from_utf8(text)
        .expect("utf-8")
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn an_open_breaker_answers_at_once_then_lets_one_probe_through() {
    // Redis hangs: every check that reaches it costs the whole timeout.
    let (_listener, url) = black_hole();
    let open_for = Duration::from_millis(300);
    let registry = Registry::new();
    let breakers = BreakerMetrics::new();
    breakers.register(&registry).expect("register");
    let limiter = limiter(&url).with_breaker(
        BreakerSettings {
            failures_to_open: 2,
            open_for,
            max_open_for: open_for,
        },
        &breakers,
    );
    let hana = policy(10, 5);
    let state = r#"circuit_breaker_state{breaker="redis-rate-limit"}"#;
    let rejected = r#"circuit_breaker_rejected_calls_total{breaker="redis-rate-limit"}"#;
    assert_eq!(sample(&registry, state), Some(0.0));

    for _ in 0..2 {
        let decision = limiter.check(&hana, "hana").await;
        assert!(
            matches!(
                decision,
                Decision::Unavailable(LimiterUnavailable::Timeout { .. })
            ),
            "got {decision:?}"
        );
    }
    assert_eq!(sample(&registry, state), Some(1.0), "open");

    // Open: no trip to Redis, so no timeout to wait for.
    let opened = Instant::now();
    for _ in 0..3 {
        let started = Instant::now();
        let decision = limiter.check(&hana, "hana").await;
        assert!(
            started.elapsed() < TIMEOUT / 2,
            "took {:?}",
            started.elapsed()
        );
        assert!(
            matches!(
                decision,
                Decision::Unavailable(LimiterUnavailable::CircuitOpen)
            ),
            "got {decision:?}"
        );
    }
    assert_eq!(sample(&registry, rejected), Some(3.0));

    // Once the open period is over, one check probes Redis (and waits for
    // it) while the others still answer at once.
    tokio::time::sleep(open_for.saturating_sub(opened.elapsed()) + Duration::from_millis(20)).await;
    let probe = limiter.check(&hana, "hana");
    let other = async {
        // Let the probe take its permit first.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        let decision = limiter.check(&hana, "hana").await;
        (decision, started.elapsed())
    };
    let started = Instant::now();
    let (probed, (other, other_took)) = tokio::join!(probe, other);
    assert!(started.elapsed() >= TIMEOUT, "the probe went to redis");
    assert!(
        matches!(
            probed,
            Decision::Unavailable(LimiterUnavailable::Timeout { .. })
        ),
        "got {probed:?}"
    );
    assert!(
        matches!(
            other,
            Decision::Unavailable(LimiterUnavailable::CircuitOpen)
        ),
        "got {other:?}"
    );
    assert!(other_took < TIMEOUT / 2, "took {other_took:?}");
    // The failed probe opened the breaker again.
    assert_eq!(limiter.breaker().state(), BreakerState::Open);
    assert_eq!(sample(&registry, state), Some(1.0));
    assert_eq!(
        sample(
            &registry,
            r#"circuit_breaker_transitions_total{breaker="redis-rate-limit",to="open"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_successful_probe_closes_the_breaker() {
    let server = RedisServer::start();
    let port = server.port();
    let open_for = Duration::from_millis(200);
    let limiter = RateLimiter::new(&server.url(), LIVE_TIMEOUT, OnRedisError::Open)
        .expect("limiter")
        .with_breaker(
            BreakerSettings {
                failures_to_open: 1,
                open_for,
                max_open_for: open_for,
            },
            &BreakerMetrics::new(),
        );
    let policy = policy(1000, 1000);
    assert!(matches!(
        limiter.check(&policy, "ines").await,
        Decision::Allowed { .. }
    ));

    drop(server);
    assert!(matches!(
        limiter.check(&policy, "ines").await,
        Decision::Unavailable(_)
    ));
    assert_eq!(limiter.breaker().state(), BreakerState::Open);
    assert!(matches!(
        limiter.check(&policy, "ines").await,
        Decision::Unavailable(LimiterUnavailable::CircuitOpen)
    ));

    let _server = RedisServer::start_on(port);
    // The first probe may still find the connection down (the manager
    // reconnects in the background); a later one gets through.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Decision::Allowed { .. } = limiter.check(&policy, "ines").await {
            break;
        }
        assert!(Instant::now() < deadline, "never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(limiter.breaker().state(), BreakerState::Closed);
}

#[tokio::test]
async fn hanging_redis_is_unavailable_within_the_timeout() {
    let (_listener, url) = black_hole();
    let limiter = limiter(&url);
    let started = Instant::now();
    let decision = limiter.check(&policy(10, 5), "frank").await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= TIMEOUT && elapsed < TIMEOUT + SLACK,
        "took {elapsed:?}"
    );
    assert!(
        matches!(
            decision,
            Decision::Unavailable(LimiterUnavailable::Timeout { .. })
        ),
        "got {decision:?}"
    );
}

#[tokio::test]
async fn recovers_when_redis_comes_back() {
    let server = RedisServer::start();
    let port = server.port();
    let limiter = limiter(&server.url());
    let policy = policy(1000, 1000);
    // The first check also connects; on a loaded machine that may take
    // longer than the timeout.
    admitted_within(&limiter, &policy, Duration::from_secs(5)).await;

    drop(server);
    assert!(matches!(
        limiter.check(&policy, "gina").await,
        Decision::Unavailable(_)
    ));

    let _server = RedisServer::start_on(port);
    admitted_within(&limiter, &policy, Duration::from_secs(5)).await;
}

/// Checks until one is admitted; every check returns within the timeout.
async fn admitted_within(limiter: &RateLimiter, policy: &RateLimitPolicy, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let started = Instant::now();
        let decision = limiter.check(policy, "gina").await;
        assert!(
            started.elapsed() < TIMEOUT + SLACK,
            "took {:?}",
            started.elapsed()
        );
        if matches!(decision, Decision::Allowed { .. }) {
            return;
        }
        assert!(Instant::now() < deadline, "still {decision:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
