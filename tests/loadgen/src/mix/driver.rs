//! When requests are sent and how they are counted, independent of what
//! they are.
//!
//! Open loop ([`Load::Rate`]): arrival `i` is scheduled at `start + i / rate`
//! (fixed intervals, not Poisson: the same schedule every run, so two runs
//! differ only by the system under test), whatever the answers so far; its
//! operation is the next of the mix's [`Sequence`](super::ops::Sequence),
//! which follows the weights exactly, not by chance. Each
//! arrival is sent as its own task at its scheduled time; if the driver
//! itself falls behind (a busy machine, a paused runtime), the late arrivals
//! are sent at once, never dropped. Every latency is measured from the
//! *scheduled* start, so a stall of the server, or of this client, shows up
//! in the percentiles of every request that should have been sent during it
//! (no coordinated omission). At most `max_in_flight` requests are
//! outstanding: an arrival beyond that is counted as the error
//! [`SATURATED`] of its operation, not sent and not skipped silently.
//!
//! Closed loop ([`Load::Concurrency`]): `n` clients each send a request,
//! wait for its answer and send the next. Latency is then from the actual
//! send (there is no schedule to fall behind); use it to find the maximum
//! rate, the open loop to measure at a given one.
//!
//! Only arrivals scheduled inside the measured window (after the warm-up)
//! are counted; for each operation every such arrival ends up in exactly one
//! of `ok` or `errors`, so `scheduled = ok + Σ errors`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::ops::{Mix, Op, OpKind, Rng};
use crate::stats::{latency_histogram, Latency};

/// Error key of an arrival not sent because `max_in_flight` requests were
/// outstanding.
pub const SATURATED: &str = "not sent: client saturated";
/// Error key of an arrival whose operation had nothing to act on (no placed
/// order to confirm, every product busy, ...).
pub const NO_TARGET: &str = "not sent: no target";
/// Error key of a request still outstanding when the run was stopped by a
/// signal.
pub const INTERRUPTED: &str = "interrupted";
/// Error key of a request still outstanding when the drain after the
/// schedule timed out.
pub const UNFINISHED: &str = "unfinished";

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Open loop: this many arrivals per second.
    Rate(f64),
    /// Closed loop: this many clients, each one request at a time.
    Concurrency(usize),
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer, body read.
    Ok,
    /// Any other HTTP status.
    Status(u16),
    /// No HTTP answer.
    Transport(Transport),
    /// Not sent: the operation had nothing to act on.
    NoTarget,
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The client's request timeout.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// Anything else: reset, malformed answer, body cut short.
    Io,
}

impl Outcome {
    /// The outcome of an answer with `status`: 2xx is success.
    pub fn from_status(status: u16) -> Self {
        if (200..300).contains(&status) {
            Self::Ok
        } else {
            Self::Status(status)
        }
    }

    pub fn from_error(error: &reqwest::Error) -> Self {
        Self::Transport(if error.is_timeout() {
            Transport::Timeout
        } else if error.is_connect() {
            Transport::Connect
        } else {
            Transport::Io
        })
    }

    /// The key the outcome is counted under in `errors`; None for success.
    pub fn error_key(&self) -> Option<String> {
        match self {
            Self::Ok => None,
            Self::Status(status) => Some(status.to_string()),
            Self::Transport(Transport::Timeout) => Some("timeout".to_owned()),
            Self::Transport(Transport::Connect) => Some("connect".to_owned()),
            Self::Transport(Transport::Io) => Some("io".to_owned()),
            Self::NoTarget => Some(NO_TARGET.to_owned()),
        }
    }
}

/// One arrival, handed to the [`Executor`].
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub op: Op,
    /// Seed for the executor's own random choices (target, price, ...).
    pub seed: u64,
    /// When it was scheduled (open loop) or sent (closed loop).
    pub scheduled: Instant,
    /// Inside the measured window.
    pub measured: bool,
}

/// What sends a request of an operation.
pub trait Executor: Send + Sync + 'static {
    fn execute(self: Arc<Self>, request: Request)
        -> impl Future<Output = Outcome> + Send + 'static;
}

#[derive(Debug, Clone)]
pub struct DriverOptions {
    pub load: Load,
    pub warmup: Duration,
    pub duration: Duration,
    /// Most requests outstanding at once (open loop).
    pub max_in_flight: usize,
    /// Longest wait for outstanding requests after the schedule ends.
    pub drain_timeout: Duration,
    /// A progress line on stderr every second.
    pub progress: bool,
    /// Keep (scheduled offset, latency) of every measured success.
    pub trace: bool,
}

/// One operation's figures over the measured window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpStats {
    pub kind: OpKind,
    /// Arrivals scheduled in the window (sent or not).
    pub scheduled: u64,
    /// 2xx answers.
    pub ok: u64,
    /// `ok` per second of the window.
    pub ok_per_s: f64,
    /// Latency of the successes, from the scheduled start; None without any.
    pub latency: Option<Latency>,
    /// Everything else, by cause: HTTP status (`"409"`), `timeout`,
    /// `connect`, `io`, [`SATURATED`], [`NO_TARGET`], [`INTERRUPTED`],
    /// [`UNFINISHED`].
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
}

impl OpStats {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Errors that are answers of the server with a 5xx status.
    pub fn server_errors(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(key, _)| key.len() == 3 && key.starts_with('5'))
            .map(|(_, n)| n)
            .sum()
    }
}

/// A measured success, for tests and debugging.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TracePoint {
    pub op: Op,
    /// Scheduled start after the run's start.
    pub scheduled: Duration,
    pub latency: Duration,
}

/// What a run of the driver measured.
#[derive(Debug, Clone)]
pub struct DriverReport {
    /// Length of the measured window (shorter if interrupted).
    pub measured_s: f64,
    pub interrupted: bool,
    pub peak_in_flight: usize,
    pub ops: BTreeMap<Op, OpStats>,
    /// All commands and all reads together.
    pub commands: OpStats,
    pub reads: OpStats,
    /// Empty unless [`DriverOptions::trace`].
    pub trace: Vec<TracePoint>,
}

/// Drives `executor` with the operations of `mix` until the schedule ends or
/// `stop` completes.
pub async fn run<E: Executor>(
    executor: Arc<E>,
    mix: &Mix,
    options: &DriverOptions,
    rng: &mut Rng,
    stop: impl Future<Output = ()>,
) -> DriverReport {
    let start = Instant::now();
    let recorder = Arc::new(Recorder::new(start, options));
    let progress = options
        .progress
        .then(|| tokio::spawn(progress(Arc::clone(&recorder))));
    let mut tasks = JoinSet::new();
    tokio::pin!(stop);
    let end = start + options.warmup + options.duration;
    let mut interrupted = false;
    let mut unfinished = false;

    match options.load {
        Load::Rate(rate) => {
            let at =
                |i: u64| start + Duration::from_secs_f64(i as f64 / rate.max(f64::MIN_POSITIVE));
            let mut i = 0u64;
            let mut sequence = mix.sequence();
            'schedule: loop {
                let now = Instant::now();
                loop {
                    let due = at(i);
                    if due >= end {
                        break 'schedule;
                    }
                    if due > now {
                        break;
                    }
                    let op = sequence.next_op();
                    let request = Request {
                        op,
                        seed: rng.next_u64(),
                        scheduled: due,
                        measured: recorder.in_window(due),
                    };
                    if recorder.admit(request, options.max_in_flight) {
                        let (executor, recorder) = (Arc::clone(&executor), Arc::clone(&recorder));
                        tasks.spawn(async move {
                            let outcome = executor.execute(request).await;
                            recorder.complete(request, outcome);
                        });
                    }
                    i += 1;
                }
                while tasks.try_join_next().is_some() {}
                tokio::select! {
                    () = tokio::time::sleep_until(at(i)) => {}
                    () = &mut stop => {
                        interrupted = true;
                        break 'schedule;
                    }
                }
            }
        }
        Load::Concurrency(clients) => {
            let sequence = Arc::new(Mutex::new(mix.sequence()));
            for _ in 0..clients {
                let (executor, recorder) = (Arc::clone(&executor), Arc::clone(&recorder));
                let (sequence, mut rng) = (Arc::clone(&sequence), Rng::new(rng.next_u64()));
                tasks.spawn(async move {
                    loop {
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        let request = Request {
                            op: lock(&sequence).next_op(),
                            seed: rng.next_u64(),
                            scheduled: now,
                            measured: recorder.in_window(now),
                        };
                        recorder.admit(request, usize::MAX);
                        let outcome = Arc::clone(&executor).execute(request).await;
                        recorder.complete(request, outcome);
                        if outcome == Outcome::NoTarget {
                            // Nothing to act on yet: let other clients make some.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                });
            }
        }
    }

    if !interrupted {
        let drain = async { while tasks.join_next().await.is_some() {} };
        tokio::select! {
            () = drain => {}
            () = tokio::time::sleep_until(end + options.drain_timeout) => unfinished = true,
            () = &mut stop => interrupted = true,
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    if let Some(progress) = progress {
        progress.abort();
    }
    let cut = if interrupted { INTERRUPTED } else { UNFINISHED };
    if interrupted || unfinished {
        recorder.close_outstanding(cut);
    }
    recorder.report(Instant::now().min(end), interrupted)
}

/// Per-operation counts of the measured window.
#[derive(Debug)]
struct OpRecord {
    scheduled: u64,
    ok: u64,
    /// Sent and not yet completed.
    outstanding: u64,
    histogram: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl OpRecord {
    fn new() -> Self {
        Self {
            scheduled: 0,
            ok: 0,
            outstanding: 0,
            histogram: latency_histogram(),
            errors: BTreeMap::new(),
        }
    }
}

/// The last second, for the progress line.
#[derive(Debug)]
struct Window {
    sent: u64,
    ok: u64,
    histogram: Histogram<u64>,
}

/// Shared counters of a run.
struct Recorder {
    start: Instant,
    measure_from: Instant,
    measure_until: Instant,
    ops: Mutex<BTreeMap<Op, OpRecord>>,
    window: Mutex<Window>,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    errors_total: AtomicU64,
    trace: Option<Mutex<Vec<TracePoint>>>,
}

/// A lock whose holder panicked still guards plain counters.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Microseconds for the histograms (1 µs to their 60 s bound).
fn micros(elapsed: Duration) -> u64 {
    (elapsed.as_micros() as u64).clamp(1, 60_000_000)
}

impl Recorder {
    fn new(start: Instant, options: &DriverOptions) -> Self {
        let measure_from = start + options.warmup;
        Self {
            start,
            measure_from,
            measure_until: measure_from + options.duration,
            ops: Mutex::new(BTreeMap::new()),
            window: Mutex::new(Window {
                sent: 0,
                ok: 0,
                histogram: latency_histogram(),
            }),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            errors_total: AtomicU64::new(0),
            trace: options.trace.then(|| Mutex::new(Vec::new())),
        }
    }

    fn in_window(&self, at: Instant) -> bool {
        at >= self.measure_from && at < self.measure_until
    }

    /// Counts an arrival; false (and counted as [`SATURATED`]) if
    /// `max_in_flight` requests are outstanding, else it is in flight.
    fn admit(&self, request: Request, max_in_flight: usize) -> bool {
        let sent = self.in_flight.load(Ordering::Relaxed) < max_in_flight;
        if sent {
            let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
            lock(&self.window).sent += 1;
        } else {
            self.errors_total.fetch_add(1, Ordering::Relaxed);
        }
        if request.measured {
            let mut ops = lock(&self.ops);
            let record = ops.entry(request.op).or_insert_with(OpRecord::new);
            record.scheduled += 1;
            if sent {
                record.outstanding += 1;
            } else {
                *record.errors.entry(SATURATED.to_owned()).or_default() += 1;
            }
        }
        sent
    }

    fn complete(&self, request: Request, outcome: Outcome) {
        let latency = Instant::now().saturating_duration_since(request.scheduled);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let error = outcome.error_key();
        {
            let mut window = lock(&self.window);
            if error.is_none() {
                window.ok += 1;
                window.histogram.saturating_record(micros(latency));
            }
        }
        if error.is_some() {
            self.errors_total.fetch_add(1, Ordering::Relaxed);
        }
        if !request.measured {
            return;
        }
        let mut ops = lock(&self.ops);
        let record = ops.entry(request.op).or_insert_with(OpRecord::new);
        record.outstanding = record.outstanding.saturating_sub(1);
        match error {
            None => {
                record.ok += 1;
                record.histogram.saturating_record(micros(latency));
                if let Some(trace) = &self.trace {
                    lock(trace).push(TracePoint {
                        op: request.op,
                        scheduled: request.scheduled.saturating_duration_since(self.start),
                        latency,
                    });
                }
            }
            Some(key) => *record.errors.entry(key).or_default() += 1,
        }
    }

    /// Counts every measured request still outstanding as `key`.
    fn close_outstanding(&self, key: &str) {
        let mut ops = lock(&self.ops);
        for record in ops.values_mut() {
            if record.outstanding > 0 {
                *record.errors.entry(key.to_owned()).or_default() += record.outstanding;
                record.outstanding = 0;
            }
        }
    }

    fn report(&self, until: Instant, interrupted: bool) -> DriverReport {
        let measured_s = until
            .saturating_duration_since(self.measure_from)
            .as_secs_f64();
        let ops = lock(&self.ops);
        let stats = |kind: OpKind, records: &[&OpRecord]| {
            let mut histogram = latency_histogram();
            let mut errors = BTreeMap::new();
            let (mut scheduled, mut ok) = (0, 0);
            for record in records {
                scheduled += record.scheduled;
                ok += record.ok;
                // Same bounds on both sides: adding cannot fail.
                let _ = histogram.add(&record.histogram);
                for (key, n) in &record.errors {
                    *errors.entry(key.clone()).or_default() += n;
                }
            }
            OpStats {
                kind,
                scheduled,
                ok,
                ok_per_s: if measured_s > 0.0 {
                    ok as f64 / measured_s
                } else {
                    0.0
                },
                latency: (ok > 0).then(|| Latency::from_histogram(&histogram)),
                errors,
            }
        };
        let of_kind = |kind: OpKind| -> Vec<&OpRecord> {
            ops.iter()
                .filter(|(op, _)| op.kind() == kind)
                .map(|(_, r)| r)
                .collect()
        };
        DriverReport {
            measured_s,
            interrupted,
            peak_in_flight: self.peak_in_flight.load(Ordering::Relaxed),
            ops: ops
                .iter()
                .map(|(&op, record)| (op, stats(op.kind(), &[record])))
                .collect(),
            commands: stats(OpKind::Command, &of_kind(OpKind::Command)),
            reads: stats(OpKind::Read, &of_kind(OpKind::Read)),
            trace: self
                .trace
                .as_ref()
                .map(|trace| lock(trace).clone())
                .unwrap_or_default(),
        }
    }

    /// The progress line of the second that just ended (and a new second).
    fn tick(&self) -> String {
        let mut window = lock(&self.window);
        let p99 = if window.histogram.is_empty() {
            "-".to_owned()
        } else {
            format!(
                "{:.1} ms",
                window.histogram.value_at_quantile(0.99) as f64 / 1000.0
            )
        };
        let line = progress_line(
            self.start.elapsed(),
            window.sent,
            window.ok,
            self.errors_total.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
            &p99,
        );
        window.sent = 0;
        window.ok = 0;
        window.histogram.reset();
        line
    }
}

fn progress_line(
    elapsed: Duration,
    sent: u64,
    ok: u64,
    errors: u64,
    in_flight: usize,
    p99: &str,
) -> String {
    format!(
        "mix {:>6.1} s  sent {sent}/s  ok {ok}/s  errors {errors}  in flight {in_flight}  p99 {p99}",
        elapsed.as_secs_f64()
    )
}

async fn progress(recorder: Arc<Recorder>) {
    let mut every = tokio::time::interval_at(
        recorder.start + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        eprintln!("{}", recorder.tick());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use actix_web::{web, App, HttpResponse, HttpServer};

    use super::*;

    fn options(load: Load, warmup_ms: u64, duration_ms: u64) -> DriverOptions {
        DriverOptions {
            load,
            warmup: Duration::from_millis(warmup_ms),
            duration: Duration::from_millis(duration_ms),
            max_in_flight: 10_000,
            drain_timeout: Duration::from_secs(5),
            progress: false,
            trace: true,
        }
    }

    fn only(op: Op) -> Mix {
        Mix::from_weights([(op, 1)]).unwrap()
    }

    /// Sleeps `delay`, then answers `outcome`.
    struct Fixed {
        delay: Duration,
        outcome: Outcome,
    }

    impl Executor for Fixed {
        async fn execute(self: Arc<Self>, _: Request) -> Outcome {
            tokio::time::sleep(self.delay).await;
            self.outcome
        }
    }

    /// A GET to a local HTTP server.
    struct Get {
        client: reqwest::Client,
        url: String,
    }

    impl Executor for Get {
        async fn execute(self: Arc<Self>, _: Request) -> Outcome {
            match self.client.get(&self.url).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.bytes().await {
                        Ok(_) => Outcome::from_status(status),
                        Err(error) => Outcome::from_error(&error),
                    }
                }
                Err(error) => Outcome::from_error(&error),
            }
        }
    }

    /// A server that answers at once, except that the first request after
    /// `stall_after` holds every request (its own and all that arrive
    /// meanwhile) until `stall` has passed: a stop-the-world pause.
    async fn stalling_server(stall_after: Duration, stall: Duration) -> String {
        struct Gate {
            started: std::time::Instant,
            stall_after: Duration,
            stall: Duration,
            until: Mutex<Option<std::time::Instant>>,
        }
        let gate = web::Data::new(Gate {
            started: std::time::Instant::now(),
            stall_after,
            stall,
            until: Mutex::new(None),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            App::new().app_data(gate.clone()).default_service(web::to(
                |gate: web::Data<Gate>| async move {
                    let now = std::time::Instant::now();
                    let until = {
                        let mut until = lock(&gate.until);
                        if until.is_none() && now >= gate.started + gate.stall_after {
                            *until = Some(now + gate.stall);
                        }
                        *until
                    };
                    if let Some(until) = until.filter(|&u| u > now) {
                        tokio::time::sleep(until - now).await;
                    }
                    HttpResponse::Ok().body("ok")
                },
            ))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        url
    }

    // A stalled server: the open loop keeps sending during the stall, and
    // every request scheduled in it waits for its end. (A sender that waited
    // for answers would send them after the stall; measured from that send
    // they would look fast. The next test makes the send itself late.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_stall_shows_in_the_latency_of_every_request_scheduled_during_it() {
        let url = stalling_server(Duration::from_millis(400), Duration::from_millis(500)).await;
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        // Connections ready before the schedule starts.
        for _ in 0..4 {
            client.get(&url).send().await.unwrap();
        }
        let executor = Arc::new(Get { client, url });
        let report = run(
            executor,
            &only(Op::GetOrder),
            &options(Load::Rate(100.0), 0, 1500),
            &mut Rng::new(1),
            std::future::pending(),
        )
        .await;
        let stats = &report.ops[&Op::GetOrder];
        assert_eq!(stats.scheduled, 150, "{stats:?}");
        assert_eq!(stats.ok, 150, "{stats:?}");
        // The stall starts with the first request at or after 400 ms.
        let stalled_from = report
            .trace
            .iter()
            .filter(|p| p.scheduled >= Duration::from_millis(400))
            .map(|p| p.scheduled)
            .min()
            .unwrap();
        // Requests scheduled in the stall's first 100 ms waited at least
        // the 400 ms that were left of it, measured from their schedule.
        let early: Vec<&TracePoint> = report
            .trace
            .iter()
            .filter(|p| {
                p.scheduled >= stalled_from
                    && p.scheduled < stalled_from + Duration::from_millis(100)
            })
            .collect();
        assert!(early.len() >= 8, "{early:?}");
        for point in &early {
            assert!(
                point.latency >= Duration::from_millis(380),
                "scheduled at {:?}, latency {:?}",
                point.scheduled,
                point.latency
            );
        }
        assert!(stats.latency.unwrap().max_ms >= 450.0, "{stats:?}");
    }

    #[test]
    fn a_client_pause_counts_from_the_schedule_not_from_the_late_send() {
        // One thread: blocking it stops the scheduler too, as a pause of the
        // load generator would. The arrivals due during the pause are sent
        // late, all at once when it ends; measured from their actual send
        // they would look instant.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // On a busy machine the pause may begin later than asked: the
        // window checked below is taken from when it really began.
        let started = std::time::Instant::now();
        let (report, pause_began) = runtime.block_on(async {
            let paused = Arc::new(AtomicBool::new(false));
            let pause = {
                let paused = Arc::clone(&paused);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    paused.store(true, Ordering::SeqCst);
                    let began = started.elapsed();
                    std::thread::sleep(Duration::from_millis(500));
                    began
                })
            };
            let executor = Arc::new(Fixed {
                delay: Duration::ZERO,
                outcome: Outcome::Ok,
            });
            let report = run(
                executor,
                &only(Op::GetOrder),
                &options(Load::Rate(100.0), 0, 1200),
                &mut Rng::new(2),
                std::future::pending(),
            )
            .await;
            let began = pause.await.unwrap();
            assert!(paused.load(Ordering::SeqCst));
            (report, began)
        });
        let stats = &report.ops[&Op::GetOrder];
        assert_eq!(stats.scheduled, 120, "late arrivals are sent, not dropped");
        assert_eq!(stats.ok, 120);
        let during: Vec<&TracePoint> = report
            .trace
            .iter()
            .filter(|p| {
                p.scheduled >= pause_began + Duration::from_millis(20)
                    && p.scheduled < pause_began + Duration::from_millis(100)
            })
            .collect();
        assert!(during.len() >= 6, "{during:?}");
        // Due at most 100 ms into a 500 ms pause: sent at least 400 ms late.
        for point in &during {
            assert!(
                point.latency >= Duration::from_millis(380),
                "scheduled at {:?}, latency {:?}",
                point.scheduled,
                point.latency
            );
        }
    }

    #[tokio::test]
    async fn arrivals_beyond_the_cap_are_counted_not_skipped() {
        let executor = Arc::new(Fixed {
            delay: Duration::from_millis(400),
            outcome: Outcome::Ok,
        });
        let mut options = options(Load::Rate(100.0), 0, 300);
        options.max_in_flight = 5;
        let report = run(
            executor,
            &only(Op::PlaceOrder),
            &options,
            &mut Rng::new(3),
            std::future::pending(),
        )
        .await;
        let stats = &report.ops[&Op::PlaceOrder];
        assert_eq!(stats.scheduled, 30);
        assert_eq!(stats.ok, 5, "{stats:?}");
        assert_eq!(stats.errors.get(SATURATED), Some(&25), "{stats:?}");
        assert_eq!(report.peak_in_flight, 5);
        assert_eq!(report.commands.scheduled, 30);
        assert_eq!(report.reads.scheduled, 0);
    }

    #[tokio::test]
    async fn warmup_arrivals_are_not_counted_and_errors_are_by_cause() {
        struct Alternating(AtomicU64);
        impl Executor for Alternating {
            async fn execute(self: Arc<Self>, _: Request) -> Outcome {
                match self.0.fetch_add(1, Ordering::SeqCst) % 4 {
                    0 => Outcome::Ok,
                    1 => Outcome::Status(503),
                    2 => Outcome::Transport(Transport::Timeout),
                    _ => Outcome::NoTarget,
                }
            }
        }
        let report = run(
            Arc::new(Alternating(AtomicU64::new(0))),
            &only(Op::ConfirmOrder),
            &options(Load::Rate(200.0), 100, 200),
            &mut Rng::new(4),
            std::future::pending(),
        )
        .await;
        let stats = &report.ops[&Op::ConfirmOrder];
        assert_eq!(stats.scheduled, 40, "only the measured 200 ms: {stats:?}");
        assert_eq!(stats.ok + stats.error_count(), 40);
        assert_eq!(stats.ok, 10);
        assert_eq!(stats.errors["503"], 10);
        assert_eq!(stats.errors["timeout"], 10);
        assert_eq!(stats.errors[NO_TARGET], 10);
        assert_eq!(stats.server_errors(), 10);
        assert!(
            (report.measured_s - 0.2).abs() < 0.05,
            "{}",
            report.measured_s
        );
        assert!((stats.ok_per_s - 50.0).abs() < 15.0, "{stats:?}");
    }

    #[tokio::test]
    async fn a_stop_counts_outstanding_requests_as_interrupted() {
        let executor = Arc::new(Fixed {
            delay: Duration::from_secs(30),
            outcome: Outcome::Ok,
        });
        let started = std::time::Instant::now();
        let report = run(
            executor,
            &only(Op::GetProduct),
            &options(Load::Rate(100.0), 0, 10_000),
            &mut Rng::new(5),
            tokio::time::sleep(Duration::from_millis(200)),
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(2), "stops promptly");
        assert!(report.interrupted);
        let stats = &report.ops[&Op::GetProduct];
        assert!((19..=22).contains(&stats.scheduled), "{stats:?}");
        assert_eq!(stats.errors[INTERRUPTED], stats.scheduled);
        assert!(report.measured_s < 0.5);
    }

    #[tokio::test]
    async fn closed_loop_clients_send_one_at_a_time() {
        let executor = Arc::new(Fixed {
            delay: Duration::from_millis(20),
            outcome: Outcome::Ok,
        });
        let report = run(
            executor,
            &only(Op::ChangePrice),
            &options(Load::Concurrency(4), 0, 500),
            &mut Rng::new(6),
            std::future::pending(),
        )
        .await;
        let stats = &report.ops[&Op::ChangePrice];
        // 4 clients × 500 ms / 20 ms = 100 at most.
        assert!((60..=100).contains(&stats.ok), "{stats:?}");
        assert_eq!(report.peak_in_flight, 4);
        assert_eq!(stats.ok + stats.error_count(), stats.scheduled);
    }

    #[tokio::test]
    async fn transport_failures_have_their_own_keys() {
        // Accepts connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let outcome = |url: String| {
            let client = client.clone();
            async move {
                let executor = Arc::new(Get { client, url });
                executor
                    .execute(Request {
                        op: Op::GetOrder,
                        seed: 0,
                        scheduled: Instant::now(),
                        measured: true,
                    })
                    .await
            }
        };
        let timeout = outcome(format!("http://{silent_addr}/")).await;
        assert_eq!(timeout.error_key().as_deref(), Some("timeout"));
        let connect = outcome(format!("http://{refused}/")).await;
        assert_eq!(connect.error_key().as_deref(), Some("connect"));
        assert_eq!(Outcome::from_status(202), Outcome::Ok);
        assert_eq!(
            Outcome::from_status(304).error_key().as_deref(),
            Some("304")
        );
        assert_eq!(Outcome::Ok.error_key(), None);
    }

    #[test]
    fn the_progress_line_has_every_figure() {
        let line = progress_line(Duration::from_millis(3_050), 40, 39, 2, 7, "12.5 ms");
        assert_eq!(
            line,
            "mix    3.0 s  sent 40/s  ok 39/s  errors 2  in flight 7  p99 12.5 ms"
        );
    }
}
