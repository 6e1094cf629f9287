//! Circuit breakers for calls to a dependency that can fail or hang: the
//! Kafka producer behind the outbox relay, Redis behind query-service's cache
//! tier, and each database behind query-service's read router.
//!
//! A [`Breaker`] is failsafe's [`StateMachine`] with a consecutive-failures
//! policy. `failures_to_open` failed calls in a row open it; while it is open
//! calls are rejected at once. Once `open_for` has passed, exactly one call
//! is let through as the probe (half-open): its success closes the breaker,
//! its failure opens it again for twice as long as before, up to
//! `max_open_for`. Closing starts the durations over.
//!
//! Calls are not wrapped in a closure or future here, because the callers'
//! calls are not one future (the relay's produce and delivery reports, a
//! read with its own timeout whose errors are not all the database's
//! fault). Instead [`Breaker::try_acquire`] hands out a [`CallPermit`] and
//! the caller settles it with [`CallPermit::success`] or
//! [`CallPermit::failure`]. A permit dropped without a verdict (a cancelled
//! call, or an outcome that says nothing about the dependency) records
//! nothing.
//!
//! What this adds to failsafe 1.3, whose source says:
//! - **One probe.** failsafe's `HalfOpen` lets *every* call through until a
//!   verdict arrives. Here the first permitted call in half-open is the
//!   probe and the others are rejected (and counted as rejected) until it is
//!   settled; a probe dropped without a verdict frees the slot for the next
//!   call.
//! - **Lazy half-open, reported as it is.** failsafe leaves `Open` only when a
//!   call asks for permission after the open period. [`Breaker::state`]
//!   reports failsafe's state, so it stays [`BreakerState::Open`] (gauge 1)
//!   until that call; [`Breaker::is_call_permitted`] (a side-effect-free peek)
//!   already answers `true` then, and [`Breaker::open_remaining`] says when
//!   that will be.
//! - **Sub-second durations.** failsafe's `backoff::exponential` counts whole
//!   seconds and panics below one; the doubling backoff here is failsafe's
//!   `Iterator<Item = Duration>` extension point, in nanoseconds.
//! - **Stale verdicts are ignored.** A call permitted before the breaker last
//!   changed state (say, one that was in flight when it opened) does not get
//!   to close or re-open it: only the probe decides in half-open.
//!
//! Metrics ([`BreakerMetrics`], one per application registry, shared by its
//! breakers; names must be unique within one):
//! - `circuit_breaker_state{breaker}`: 0 closed, 1 open, 2 half-open;
//! - `circuit_breaker_transitions_total{breaker, to}`, `to` being `closed`,
//!   `open` or `half_open`;
//! - `circuit_breaker_rejected_calls_total{breaker}`.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use failsafe::failure_policy::{consecutive_failures, ConsecutiveFailures};
use failsafe::{Instrument, StateMachine};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::config::{optional, ConfigError};

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failed calls that open the breaker (at least 1).
    pub failures_to_open: u32,
    /// How long the breaker stays open the first time.
    pub open_for: Duration,
    /// Longest open period: each failed probe doubles it up to this.
    pub max_open_for: Duration,
}

impl Default for BreakerSettings {
    /// 3 failures, open for 1 s doubling up to 30 s.
    fn default() -> Self {
        Self {
            failures_to_open: 3,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(30),
        }
    }
}

impl BreakerSettings {
    /// Reads the three variables named (a count and two durations in ms),
    /// each defaulting to `default`'s value; the maximum defaults to the
    /// larger of `default.max_open_for` and the open duration read. Zero
    /// failures, a zero duration and a maximum below the open duration are
    /// refused.
    pub fn from_env(
        failures_var: &'static str,
        open_ms_var: &'static str,
        max_open_ms_var: &'static str,
        default: BreakerSettings,
    ) -> Result<Self, ConfigError> {
        let failures_to_open: u32 = optional(failures_var, default.failures_to_open)?;
        if failures_to_open == 0 {
            return Err(invalid(failures_var, 0, "must be at least 1"));
        }
        let open_ms: u64 = optional(open_ms_var, millis(default.open_for))?;
        if open_ms == 0 {
            return Err(invalid(open_ms_var, 0, "must be greater than 0"));
        }
        let max_open_ms: u64 =
            optional(max_open_ms_var, millis(default.max_open_for).max(open_ms))?;
        if max_open_ms < open_ms {
            return Err(invalid(
                max_open_ms_var,
                max_open_ms,
                &format!("must be at least {open_ms_var} ({open_ms})"),
            ));
        }
        Ok(Self {
            failures_to_open,
            open_for: Duration::from_millis(open_ms),
            max_open_for: Duration::from_millis(max_open_ms),
        })
    }
}

fn invalid(name: &'static str, value: u64, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_string(),
        reason: reason.to_owned(),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A breaker's state, as failsafe holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are rejected. Stays reported until the first call after the
    /// open period asks for permission (see the module documentation).
    Open,
    /// One probe call decides: success closes, failure re-opens.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open`, `half_open`: the `to` label of the transitions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of `circuit_breaker_state`: 0, 1, 2.
    pub fn gauge_value(self) -> i64 {
        i64::from(self.code())
    }

    fn code(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

/// The Prometheus collectors of every breaker of one application. Create one
/// per registry, [`register`](Self::register) it, and hand it to each
/// [`Breaker::new`]; clones share the collectors.
#[derive(Clone)]
pub struct BreakerMetrics {
    state: IntGaugeVec,
    transitions: IntCounterVec,
    rejected: IntCounterVec,
}

impl BreakerMetrics {
    /// Unregistered collectors.
    pub fn new() -> Self {
        // Constant, valid names and labels: construction cannot fail.
        let state = IntGaugeVec::new(
            Opts::new(
                "circuit_breaker_state",
                "State of each circuit breaker: 0 closed, 1 open, 2 half-open",
            ),
            &["breaker"],
        )
        .expect("valid circuit_breaker_state options");
        let transitions = IntCounterVec::new(
            Opts::new(
                "circuit_breaker_transitions_total",
                "Circuit breaker state changes, by breaker and state entered",
            ),
            &["breaker", "to"],
        )
        .expect("valid circuit_breaker_transitions_total options");
        let rejected = IntCounterVec::new(
            Opts::new(
                "circuit_breaker_rejected_calls_total",
                "Calls a circuit breaker refused (open, or half-open with its probe out)",
            ),
            &["breaker"],
        )
        .expect("valid circuit_breaker_rejected_calls_total options");
        Self {
            state,
            transitions,
            rejected,
        }
    }

    /// Adds the collectors to `registry`. Fails if that registry already has
    /// them.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.state.clone()))?;
        registry.register(Box::new(self.transitions.clone()))?;
        registry.register(Box::new(self.rejected.clone()))?;
        Ok(())
    }

    /// Sets `circuit_breaker_state` of `breaker` from its current state, for
    /// a breaker that reports to another `BreakerMetrics` (or none that is
    /// registered). Breakers built with these metrics keep it current
    /// themselves.
    pub fn observe(&self, breaker: &Breaker) {
        self.state
            .with_label_values(&[breaker.name()])
            .set(breaker.state().gauge_value());
    }
}

impl Default for BreakerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for BreakerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerMetrics").finish_non_exhaustive()
    }
}

/// failsafe's instrument: keeps the state (which failsafe does not expose)
/// and the metrics of one breaker.
struct Hooks {
    name: Arc<str>,
    state: Arc<AtomicU8>,
    gauge: IntGauge,
    to_closed: IntCounter,
    to_open: IntCounter,
    to_half_open: IntCounter,
    rejected: IntCounter,
}

impl Hooks {
    fn new(name: Arc<str>, state: Arc<AtomicU8>, metrics: &BreakerMetrics) -> Self {
        let to = |state: BreakerState| {
            metrics
                .transitions
                .with_label_values(&[name.as_ref(), state.as_str()])
        };
        Self {
            gauge: metrics.state.with_label_values(&[name.as_ref()]),
            to_closed: to(BreakerState::Closed),
            to_open: to(BreakerState::Open),
            to_half_open: to(BreakerState::HalfOpen),
            rejected: metrics.rejected.with_label_values(&[name.as_ref()]),
            name,
            state,
        }
    }

    fn enter(&self, to: BreakerState) {
        let from = BreakerState::from_code(self.state.swap(to.code(), Ordering::SeqCst));
        self.gauge.set(to.gauge_value());
        // failsafe reports "closed" once at construction: not a transition.
        if from == to {
            return;
        }
        match to {
            BreakerState::Closed => {
                self.to_closed.inc();
                tracing::info!(breaker = %self.name, "circuit breaker closed");
            }
            BreakerState::Open => {
                self.to_open.inc();
                tracing::warn!(breaker = %self.name, from = from.as_str(), "circuit breaker opened");
            }
            BreakerState::HalfOpen => {
                self.to_half_open.inc();
                tracing::info!(breaker = %self.name, "circuit breaker half-open: probing");
            }
        }
    }
}

impl Instrument for Hooks {
    fn on_call_rejected(&self) {
        self.rejected.inc();
    }

    fn on_open(&self) {
        self.enter(BreakerState::Open);
    }

    fn on_half_open(&self) {
        self.enter(BreakerState::HalfOpen);
    }

    fn on_closed(&self) {
        self.enter(BreakerState::Closed);
    }
}

/// Open durations: `open_for`, doubling up to `max_open_for`. Records the
/// last one handed to failsafe, so that the breaker knows when its open
/// period ends (failsafe keeps that to itself).
#[derive(Debug, Clone)]
struct OpenDurations {
    upcoming: Duration,
    max: Duration,
    last: Arc<AtomicU64>,
}

impl Iterator for OpenDurations {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.upcoming;
        self.upcoming = current.saturating_mul(2).min(self.max);
        self.last.store(nanos(current), Ordering::SeqCst);
        Some(current)
    }
}

type Machine = StateMachine<ConsecutiveFailures<OpenDurations>, Hooks>;

/// What failsafe does not track. Every call into the state machine happens
/// under this lock, so the hooks' state and this stay consistent.
#[derive(Debug, Default)]
struct Gate {
    /// Bumped on every state change; a permit's verdict counts only in the
    /// epoch it was granted in.
    epoch: u64,
    /// While open: when failsafe lets the next call through (this instant is
    /// taken just after failsafe's own, so never earlier).
    open_until: Option<Instant>,
    /// Half-open with the probe handed out and not yet settled.
    probe_out: bool,
}

struct Inner {
    name: Arc<str>,
    machine: Machine,
    state: Arc<AtomicU8>,
    last_open_for: Arc<AtomicU64>,
    gate: Mutex<Gate>,
    rejected: IntCounter,
}

/// A circuit breaker around one dependency; see the module documentation.
/// Clones share the state.
#[derive(Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
}

impl Breaker {
    /// A closed breaker named `name` (the `breaker` label) reporting to
    /// `metrics`.
    pub fn new(name: &str, settings: BreakerSettings, metrics: &BreakerMetrics) -> Self {
        let name: Arc<str> = Arc::from(name);
        let state = Arc::new(AtomicU8::new(BreakerState::Closed.code()));
        let last_open_for = Arc::new(AtomicU64::new(nanos(settings.open_for)));
        let durations = OpenDurations {
            upcoming: settings.open_for,
            max: settings.max_open_for.max(settings.open_for),
            last: Arc::clone(&last_open_for),
        };
        let hooks = Hooks::new(Arc::clone(&name), Arc::clone(&state), metrics);
        let rejected = hooks.rejected.clone();
        let machine = failsafe::Config::new()
            .failure_policy(consecutive_failures(
                settings.failures_to_open.max(1),
                durations,
            ))
            .instrument(hooks)
            .build();
        Self {
            inner: Arc::new(Inner {
                name,
                machine,
                state,
                last_open_for,
                gate: Mutex::new(Gate::default()),
                rejected,
            }),
        }
    }

    /// The `breaker` label.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// failsafe's state: `Open` until a call asks for permission after the
    /// open period, then `HalfOpen` until the probe is settled.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_code(self.inner.state.load(Ordering::SeqCst))
    }

    /// Whether [`try_acquire`](Self::try_acquire) would grant a permit now,
    /// without asking (no state change, nothing counted): closed, half-open
    /// with the probe slot free, or open with the open period over.
    pub fn is_call_permitted(&self) -> bool {
        let gate = self.gate();
        match self.state() {
            BreakerState::Closed => true,
            BreakerState::HalfOpen => !gate.probe_out,
            BreakerState::Open => gate.open_until.is_some_and(|until| Instant::now() > until),
        }
    }

    /// While open: how long until a call will be let through as the probe
    /// (zero once due). `None` when not open.
    pub fn open_remaining(&self) -> Option<Duration> {
        let gate = self.gate();
        match self.state() {
            BreakerState::Open => Some(gate.open_until.map_or(Duration::ZERO, |until| {
                until.saturating_duration_since(Instant::now())
            })),
            BreakerState::Closed | BreakerState::HalfOpen => None,
        }
    }

    /// Asks to make a call: a permit if the breaker is closed, or if this is
    /// the half-open probe (possibly entering half-open now); `None` (and a
    /// rejected call counted) otherwise.
    pub fn try_acquire(&self) -> Option<CallPermit> {
        let mut gate = self.gate();
        let before = self.state();
        let permitted = self.inner.machine.is_call_permitted();
        self.after_transition(&mut gate, before);
        if !permitted {
            return None;
        }
        let probe = match self.state() {
            BreakerState::Closed => false,
            BreakerState::HalfOpen if !gate.probe_out => {
                gate.probe_out = true;
                true
            }
            BreakerState::HalfOpen | BreakerState::Open => {
                self.inner.rejected.inc();
                return None;
            }
        };
        Some(CallPermit {
            breaker: self.clone(),
            epoch: gate.epoch,
            probe,
            settled: false,
        })
    }

    /// Closes the breaker now (if not closed), as if a probe had succeeded.
    pub fn reset(&self) {
        let mut gate = self.gate();
        let before = self.state();
        self.inner.machine.reset();
        self.after_transition(&mut gate, before);
    }

    fn settle(&self, epoch: u64, probe: bool, outcome: Option<Outcome>) {
        let mut gate = self.gate();
        let current = gate.epoch == epoch;
        if probe && current {
            gate.probe_out = false;
        }
        let Some(outcome) = outcome else {
            return;
        };
        if !current {
            // Granted before the last state change: it says nothing about
            // the state the breaker is in now.
            return;
        }
        let before = self.state();
        match outcome {
            Outcome::Success => self.inner.machine.on_success(),
            Outcome::Failure => self.inner.machine.on_error(),
        }
        self.after_transition(&mut gate, before);
    }

    /// Brings the gate up to date after a call into the state machine.
    fn after_transition(&self, gate: &mut Gate, before: BreakerState) {
        let after = self.state();
        if after == before {
            return;
        }
        gate.epoch = gate.epoch.wrapping_add(1);
        gate.probe_out = false;
        gate.open_until = (after == BreakerState::Open).then(|| {
            Instant::now() + Duration::from_nanos(self.inner.last_open_for.load(Ordering::SeqCst))
        });
    }

    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.inner
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    Failure,
}

/// Permission for one call. Settle it with [`success`](Self::success) or
/// [`failure`](Self::failure) once the call's outcome is known; dropping it
/// records nothing (and frees the probe slot if it was the probe).
#[must_use = "a permit records nothing unless settled with success() or failure()"]
pub struct CallPermit {
    breaker: Breaker,
    epoch: u64,
    probe: bool,
    settled: bool,
}

impl CallPermit {
    /// Whether this call is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The call succeeded: resets the failure count; a probe closes the
    /// breaker.
    pub fn success(mut self) {
        self.settle(Some(Outcome::Success));
    }

    /// The call failed: counts towards opening; a probe re-opens the
    /// breaker for longer.
    pub fn failure(mut self) {
        self.settle(Some(Outcome::Failure));
    }

    fn settle(&mut self, outcome: Option<Outcome>) {
        self.settled = true;
        self.breaker.settle(self.epoch, self.probe, outcome);
    }
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(None);
        }
    }
}

impl fmt::Debug for CallPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallPermit")
            .field("breaker", &self.breaker.name())
            .field("probe", &self.probe)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    const OPEN: Duration = Duration::from_millis(40);

    fn settings(failures_to_open: u32, max_open_for: Duration) -> BreakerSettings {
        BreakerSettings {
            failures_to_open,
            open_for: OPEN,
            max_open_for,
        }
    }

    fn breaker(failures_to_open: u32) -> (Breaker, BreakerMetrics) {
        let metrics = BreakerMetrics::new();
        let breaker = Breaker::new("test", settings(failures_to_open, OPEN * 4), &metrics);
        (breaker, metrics)
    }

    fn fail(breaker: &Breaker) {
        breaker.try_acquire().expect("permitted").failure();
    }

    fn succeed(breaker: &Breaker) {
        breaker.try_acquire().expect("permitted").success();
    }

    /// Waits out the current open period.
    fn wait_open(breaker: &Breaker) {
        let remaining = breaker.open_remaining().expect("open");
        std::thread::sleep(remaining + Duration::from_millis(5));
    }

    fn exposition(metrics: &BreakerMetrics) -> String {
        let registry = Registry::new();
        metrics.register(&registry).expect("register");
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .expect("encode");
        String::from_utf8(text).expect("utf-8")
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let (breaker, _) = breaker(3);
        fail(&breaker);
        fail(&breaker);
        succeed(&breaker);
        // The success reset the count.
        fail(&breaker);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.is_call_permitted());
        assert!(breaker.try_acquire().is_none());
        assert!(breaker.open_remaining().expect("open") <= OPEN);
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through_and_its_success_closes() {
        let (breaker, _) = breaker(1);
        fail(&breaker);
        wait_open(&breaker);
        // failsafe moves to half-open only when a call asks.
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.is_call_permitted());
        assert_eq!(breaker.open_remaining(), Some(Duration::ZERO));

        let probe = breaker.try_acquire().expect("the probe");
        assert!(probe.is_probe());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(!breaker.is_call_permitted());
        assert!(breaker.try_acquire().is_none(), "a second probe");
        assert!(breaker.try_acquire().is_none(), "a third probe");

        probe.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        let permits: Vec<_> = (0..5).map(|_| breaker.try_acquire()).collect();
        assert!(permits
            .iter()
            .all(|p| p.as_ref().is_some_and(|p| !p.is_probe())));
    }

    /// The open period failsafe was last given.
    fn open_for(breaker: &Breaker) -> Duration {
        Duration::from_nanos(breaker.inner.last_open_for.load(Ordering::SeqCst))
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_up_to_the_maximum() {
        let metrics = BreakerMetrics::new();
        let breaker = Breaker::new("grow", settings(1, Duration::from_millis(100)), &metrics);
        fail(&breaker);
        assert_eq!(open_for(&breaker), OPEN);
        assert!(breaker.open_remaining().expect("open") <= OPEN);

        wait_open(&breaker);
        fail(&breaker);
        assert_eq!(open_for(&breaker), OPEN * 2);
        let second = breaker.open_remaining().expect("reopened");
        assert!(second > OPEN / 2 && second <= OPEN * 2, "{second:?}");

        wait_open(&breaker);
        fail(&breaker);
        assert_eq!(open_for(&breaker), Duration::from_millis(100), "capped");
        assert!(breaker.open_remaining().expect("reopened") <= Duration::from_millis(100));

        // Closing starts the durations over.
        wait_open(&breaker);
        succeed(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker);
        assert_eq!(open_for(&breaker), OPEN);
        assert!(breaker.open_remaining().expect("open") <= OPEN);
    }

    #[test]
    fn open_durations_double_up_to_the_maximum() {
        let last = Arc::new(AtomicU64::new(0));
        let durations = OpenDurations {
            upcoming: Duration::from_millis(300),
            max: Duration::from_millis(1000),
            last: Arc::clone(&last),
        };
        let millis: Vec<u128> = durations.take(5).map(|d| d.as_millis()).collect();
        assert_eq!(millis, [300, 600, 1000, 1000, 1000]);
        assert_eq!(last.load(Ordering::SeqCst), 1_000_000_000);
    }

    #[test]
    fn a_probe_dropped_without_a_verdict_frees_the_slot() {
        let (breaker, _) = breaker(1);
        fail(&breaker);
        wait_open(&breaker);
        let probe = breaker.try_acquire().expect("probe");
        drop(probe);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.is_call_permitted());
        let next = breaker.try_acquire().expect("the next probe");
        assert!(next.is_probe());
        next.failure();
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn verdicts_from_before_a_state_change_are_ignored() {
        let (breaker, _) = breaker(1);
        let early = breaker.try_acquire().expect("closed");
        let late = breaker.try_acquire().expect("closed");
        let later = breaker.try_acquire().expect("closed");
        early.failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        // In flight when it opened: says nothing about now.
        late.success();
        assert_eq!(breaker.state(), BreakerState::Open);

        wait_open(&breaker);
        let probe = breaker.try_acquire().expect("probe");
        later.success();
        assert_eq!(
            breaker.state(),
            BreakerState::HalfOpen,
            "only the probe decides"
        );
        probe.failure();
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn reset_closes_and_a_stale_probe_cannot_reopen() {
        let (breaker, _) = breaker(1);
        fail(&breaker);
        breaker.reset();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.is_call_permitted());

        fail(&breaker);
        wait_open(&breaker);
        let probe = breaker.try_acquire().expect("probe");
        breaker.reset();
        probe.failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
        // Reset is a no-op when closed.
        breaker.reset();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn clones_share_the_state() {
        let (breaker, _) = breaker(1);
        let clone = breaker.clone();
        fail(&clone);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            format!("{breaker:?}"),
            r#"Breaker { name: "test", state: Open }"#
        );
    }

    #[test]
    fn metrics_follow_the_transitions() {
        let metrics = BreakerMetrics::new();
        let breaker = Breaker::new("kafka", settings(1, OPEN * 4), &metrics);
        let other = Breaker::new("redis", settings(1, OPEN * 4), &metrics);
        let text = exposition(&metrics);
        assert_eq!(
            sample(&text, r#"circuit_breaker_state{breaker="kafka"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"circuit_breaker_transitions_total{breaker="kafka",to="open"}"#
            ),
            Some(0.0),
            "series exist from the start: {text}"
        );

        fail(&breaker);
        assert!(breaker.try_acquire().is_none());
        assert!(breaker.try_acquire().is_none());
        let text = exposition(&metrics);
        assert_eq!(
            sample(&text, r#"circuit_breaker_state{breaker="kafka"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"circuit_breaker_state{breaker="redis"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"circuit_breaker_transitions_total{breaker="kafka",to="open"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"circuit_breaker_rejected_calls_total{breaker="kafka"}"#
            ),
            Some(2.0)
        );

        wait_open(&breaker);
        let probe = breaker.try_acquire().expect("probe");
        assert!(breaker.try_acquire().is_none(), "probe out");
        let text = exposition(&metrics);
        assert_eq!(
            sample(&text, r#"circuit_breaker_state{breaker="kafka"}"#),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"circuit_breaker_transitions_total{breaker="kafka",to="half_open"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"circuit_breaker_rejected_calls_total{breaker="kafka"}"#
            ),
            Some(3.0)
        );

        probe.success();
        let text = exposition(&metrics);
        assert_eq!(
            sample(&text, r#"circuit_breaker_state{breaker="kafka"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"circuit_breaker_transitions_total{breaker="kafka",to="closed"}"#
            ),
            Some(1.0),
            "construction is not a transition"
        );
        assert_eq!(
            sample(
                &text,
                r#"circuit_breaker_transitions_total{breaker="redis",to="closed"}"#
            ),
            Some(0.0)
        );
        drop(other);
    }

    #[test]
    fn each_registry_takes_its_own_metrics_once() {
        let (first, second) = (BreakerMetrics::new(), BreakerMetrics::new());
        let (a, b) = (Registry::new(), Registry::new());
        first.register(&a).expect("first app");
        second.register(&b).expect("second app");
        assert!(first.register(&a).is_err(), "registered twice");
    }

    #[test]
    fn observe_copies_the_state_of_a_breaker_reporting_elsewhere() {
        let (breaker, _) = breaker(1);
        fail(&breaker);
        let exported = BreakerMetrics::new();
        exported.observe(&breaker);
        let text = exposition(&exported);
        assert_eq!(
            sample(&text, r#"circuit_breaker_state{breaker="test"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn settings_from_env_default_and_validate() {
        let default = BreakerSettings::default();
        let read = |f, o, m| BreakerSettings::from_env(f, o, m, default);
        assert_eq!(
            read("BRK_T_UNSET_F", "BRK_T_UNSET_O", "BRK_T_UNSET_M").expect("defaults"),
            default
        );

        std::env::set_var("BRK_T1_F", "0");
        assert!(read("BRK_T1_F", "BRK_T1_O", "BRK_T1_M").is_err());

        std::env::set_var("BRK_T2_O", "0");
        assert!(read("BRK_T2_F", "BRK_T2_O", "BRK_T2_M").is_err());

        std::env::set_var("BRK_T3_O", "500");
        std::env::set_var("BRK_T3_M", "400");
        assert!(read("BRK_T3_F", "BRK_T3_O", "BRK_T3_M").is_err());

        // An open duration above the default maximum raises the maximum.
        std::env::set_var("BRK_T4_F", "5");
        std::env::set_var("BRK_T4_O", "60000");
        assert_eq!(
            read("BRK_T4_F", "BRK_T4_O", "BRK_T4_M").expect("valid"),
            BreakerSettings {
                failures_to_open: 5,
                open_for: Duration::from_secs(60),
                max_open_for: Duration::from_secs(60),
            }
        );
    }
}
