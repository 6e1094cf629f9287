//! Property: an aggregate loaded through a snapshot equals the one a full
//! replay of its events gives, including its `version()`, for random
//! histories of both aggregates.
//!
//! Two levels, neither needing a database:
//!
//! - pure: for every prefix length `k` of a random history (0 and all
//!   included), the state after `k` events goes through the JSON round trip
//!   that `snapshots.payload` is, and the remaining events are applied on top;
//! - through cqrs-es itself: random commands run through `CqrsFramework`
//!   over `PersistedEventStore::new_snapshot_store` (with the upcasters, as
//!   command-service wires it) on an in-memory repository that follows
//!   postgres-es' protocol ([`super::mem_repo`]), with a random
//!   `SNAPSHOT_EVERY`; after every command the snapshot-loaded aggregate is
//!   compared with a full replay and the snapshot row is checked.
//!
//! cqrs-es' `mem_store::MemStore` cannot be used instead: it only stores
//! events, never snapshots.
//!
//! # How cqrs-es 0.5.0 snapshots (`persist/event_store.rs`)
//!
//! - Trigger: on commit of `m` events to an aggregate at sequence `s`,
//!   `SourceOfTruth::Snapshot(n).commit_snapshot_with_addl_events(s, m)`
//!   returns how many of them, `k`, go into a new snapshot: with
//!   `next = n - s % n`, `k = 0` if `m < next`, else the largest
//!   `next + j·n <= m`. Our commands emit exactly one event (`m = 1`), so a
//!   snapshot is taken exactly when the new event's sequence is a multiple of
//!   `n`: at sequences `n, 2n, 3n, ...`.
//! - Content: `update_snapshot_with_events` applies the first `k` new events
//!   to the commit context's aggregate, serializes it as the payload and
//!   numbers it `current_snapshot = previous + 1` (1 for the first).
//! - Recorded sequence: the repository stores `last_sequence` = the sequence
//!   of the last event of the append, `s + m` (postgres-es'
//!   `persist_events`, and command-service's own append path). That equals
//!   `s + k`, the sequence the payload was folded to, only because `k = m`
//!   whenever we snapshot; a command emitting several events across a
//!   boundary (`0 < k < m`) would record a snapshot claiming events it does
//!   not contain, and loading would skip them. Keep one event per command.
//! - Loading: `load_aggregate` deserializes the payload with
//!   `current_sequence = last_sequence`, then applies the events with
//!   `sequence > last_sequence`. So the payload's `version` must equal
//!   `last_sequence`, which is what these tests check.
//!
//! **Off-by-one found (and fixed in our aggregates):** `CqrsFramework`
//! runs `handle` on the loaded context's aggregate, and
//! `EventSink::write(event, aggregate)` applies the event to the aggregate it
//! is given. `commit` then hands that same, already advanced, aggregate to
//! `update_snapshot_with_events`, which applies the new event a second time:
//! the snapshot held `version = last_sequence + 1` (a later `If-Match` with
//! the real version got 412) and state changed twice (an added line
//! appeared twice). `Product::handle` and `Order::handle` therefore write
//! their event against a scratch copy and leave the context's aggregate as
//! loaded; the `*_through_cqrs_es_*` tests below fail without that.

use std::fmt::Debug;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, CqrsFramework, EventStore};
use schema::money::{Currency, Money};
use schema::order::{CancelledBy, OrderLine};
use uuid::Uuid;

use super::mem_repo::MemRepo;
use super::*;

/// Random histories per aggregate and level.
const CASES: u64 = 150;
/// Most commands in one history (rejected ones included).
const MAX_COMMANDS: usize = 120;
const ID: &str = "0193a1c2-0000-7000-8000-0000000000ff";

/// SplitMix64: a tiny deterministic PRNG, so that a failing case is
/// reproduced by its seed alone.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with `percent` % probability.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// What the property needs of an aggregate.
trait Model:
    Aggregate<Command = Guarded<Self::Plain>, Services = ()> + Clone + PartialEq + Debug
{
    /// The command without its version guard.
    type Plain;
    /// The aggregate's own event count.
    fn events_applied(&self) -> u64;
    /// A random command, often valid and sometimes not; `None` once nothing
    /// can change the aggregate any more.
    fn random_command(&self, rng: &mut Rng) -> Option<Self::Plain>;
    /// Whether `error` is the `If-Match` mismatch.
    fn is_stale(error: &Self::Error) -> bool;
}

fn money(amount_minor: i64, currency: &str) -> Money {
    Money::new(
        amount_minor,
        Currency::try_from(currency).expect("valid currency"),
    )
}

impl Model for Product {
    type Plain = ProductCommand;

    fn events_applied(&self) -> u64 {
        self.version()
    }

    fn random_command(&self, rng: &mut Rng) -> Option<ProductCommand> {
        const NAMES: [&str; 5] = ["Espresso", "Espresso 1 kg", "Filter", " ", "Ристретто"];
        if self.is_discontinued() {
            return None;
        }
        let price = |rng: &mut Rng| {
            // -50 is rejected; the same price twice is rejected too.
            let amount_minor = rng.below(6) as i64 * 50 - 50;
            let currency = *rng.pick(&["EUR", "EUR", "USD"]);
            money(amount_minor, currency)
        };
        if !self.exists() || rng.chance(3) {
            return Some(ProductCommand::CreateProduct {
                sku: (*rng.pick(&["SKU-1", "sku.2", "bad sku"])).to_owned(),
                name: (*rng.pick(&NAMES)).to_owned(),
                price: price(rng),
            });
        }
        Some(match rng.below(100) {
            0..=47 => ProductCommand::RenameProduct {
                name: (*rng.pick(&NAMES)).to_owned(),
            },
            48..=96 => ProductCommand::ChangeProductPrice { price: price(rng) },
            _ => ProductCommand::DiscontinueProduct,
        })
    }

    fn is_stale(error: &ProductError) -> bool {
        error.kind() == RuleKind::StaleVersion
    }
}

fn random_line(rng: &mut Rng) -> OrderLine {
    OrderLine {
        product_id: Uuid::from_u128(1 + u128::from(rng.below(16))),
        quantity: if rng.chance(3) {
            0
        } else {
            1 + rng.below(9) as u32
        },
        unit_price: money(
            rng.below(10_000) as i64,
            if rng.chance(5) { "USD" } else { "EUR" },
        ),
    }
}

fn random_cancel(rng: &mut Rng) -> OrderCommand {
    OrderCommand::CancelOrder {
        reason: if rng.chance(5) {
            "r".repeat(order::MAX_REASON_LEN + 1)
        } else {
            (*rng.pick(&["", "changed my mind", "out of stock"])).to_owned()
        },
        cancelled_by: *rng.pick(&[
            CancelledBy::Customer,
            CancelledBy::Merchant,
            CancelledBy::System,
            CancelledBy::Unknown,
        ]),
    }
}

impl Model for Order {
    type Plain = OrderCommand;

    fn events_applied(&self) -> u64 {
        self.version()
    }

    fn random_command(&self, rng: &mut Rng) -> Option<OrderCommand> {
        let place = |rng: &mut Rng| OrderCommand::PlaceOrder {
            customer_id: Uuid::from_u128(0xc0 + u128::from(rng.below(3))),
            lines: (0..rng.below(4)).map(|_| random_line(rng)).collect(),
        };
        Some(match self.status() {
            None => place(rng),
            Some(OrderStatus::Placed) => match rng.below(100) {
                0..=44 => OrderCommand::AddOrderLine {
                    line: random_line(rng),
                },
                45..=89 => OrderCommand::RemoveOrderLine {
                    product_id: match self.lines() {
                        lines if !lines.is_empty() && rng.chance(80) => rng.pick(lines).product_id,
                        _ => Uuid::from_u128(1 + u128::from(rng.below(16))),
                    },
                },
                90..=92 => OrderCommand::ConfirmOrder,
                93..=94 => random_cancel(rng),
                95..=97 => OrderCommand::ShipOrder,
                _ => place(rng),
            },
            Some(OrderStatus::Confirmed) => match rng.below(100) {
                0..=44 => OrderCommand::ShipOrder,
                45..=89 => random_cancel(rng),
                _ => OrderCommand::AddOrderLine {
                    line: random_line(rng),
                },
            },
            Some(OrderStatus::Shipped | OrderStatus::Cancelled) => return None,
        })
    }

    fn is_stale(error: &OrderError) -> bool {
        error.kind() == RuleKind::StaleVersion
    }
}

fn replay<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> A {
    let mut aggregate = A::default();
    for event in events {
        aggregate.apply(event);
    }
    aggregate
}

/// `aggregate` as it comes back from `snapshots.payload`: serialized by
/// cqrs-es, stored as JSON text, read back and deserialized.
fn through_snapshot_payload<A: Aggregate>(aggregate: &A) -> A {
    let payload = serde_json::to_value(aggregate).expect("serializable");
    let stored: serde_json::Value = serde_json::from_str(&payload.to_string()).expect("JSON text");
    serde_json::from_value(stored).expect("snapshot deserializes")
}

/// A random history: the events of the accepted commands, decided by the
/// aggregate's own `handle` (rejected commands add nothing).
async fn random_history<A: Model>(seed: u64) -> Vec<A::Event> {
    let mut rng = Rng::new(seed);
    let mut aggregate = A::default();
    let mut events = Vec::new();
    for _ in 0..MAX_COMMANDS {
        let Some(command) = aggregate.random_command(&mut rng) else {
            break;
        };
        let sink = EventSink::default();
        let mut scratch = aggregate.clone();
        if scratch.handle(command.into(), &(), &sink).await.is_ok() {
            for event in sink.collect().await {
                aggregate.apply(event.clone());
                events.push(event);
            }
        }
    }
    events
}

/// The pure property, for every snapshot point `k` of one random history.
async fn snapshot_at_every_point_equals_full_replay<A: Model>(seed: u64) -> usize {
    let events = random_history::<A>(seed).await;
    let full: A = replay(events.iter().cloned());
    assert_eq!(full.events_applied(), events.len() as u64, "seed {seed}");
    for k in 0..=events.len() {
        let prefix: A = replay(events[..k].iter().cloned());
        let mut loaded = through_snapshot_payload(&prefix);
        assert_eq!(loaded, prefix, "seed {seed}: snapshot after {k} events");
        assert_eq!(loaded.events_applied(), k as u64, "seed {seed}, k {k}");
        for event in &events[k..] {
            loaded.apply(event.clone());
        }
        assert_eq!(
            loaded,
            full,
            "seed {seed}: snapshot after {k} of {} events, then the rest",
            events.len()
        );
        assert_eq!(loaded.events_applied(), full.events_applied());
    }
    events.len()
}

/// Random commands through cqrs-es with snapshots every `snapshot_every`
/// events; after each, the snapshot-loaded aggregate must be the replayed one.
async fn snapshot_store_loads_what_full_replay_gives<A: Model>(
    seed: u64,
    snapshot_every: usize,
) -> usize {
    let repo = MemRepo::default();
    let store = || {
        PersistedEventStore::<_, A>::new_snapshot_store(repo.clone(), snapshot_every)
            .with_upcasters(upcasters())
    };
    let cqrs = CqrsFramework::new(store(), vec![], ());
    let reader = store();
    let mut rng = Rng::new(seed);
    let mut replayed = A::default();
    let case = format!("seed {seed}, snapshot every {snapshot_every}");
    for _ in 0..MAX_COMMANDS {
        let Some(command) = replayed.random_command(&mut rng) else {
            break;
        };
        // A client sends the version it last read as If-Match; it must
        // never be called stale, however the aggregate was loaded.
        let version = replayed.events_applied();
        match cqrs.execute(ID, Guarded::expecting(version, command)).await {
            Ok(()) => {}
            Err(AggregateError::UserError(error)) => {
                assert!(!A::is_stale(&error), "{case}: at {version}: {error}");
            }
            Err(error) => panic!("{case}: {error}"),
        }

        let events: Vec<A::Event> = reader
            .load_events(ID)
            .await
            .expect("events load")
            .into_iter()
            .map(|envelope| envelope.payload)
            .collect();
        replayed = replay(events.iter().cloned());
        let loaded = reader.load_aggregate(ID).await.expect("aggregate loads");
        assert_eq!(loaded.aggregate, replayed, "{case}: after {}", events.len());
        assert_eq!(loaded.aggregate.events_applied(), events.len() as u64);
        assert_eq!(loaded.current_sequence, events.len(), "{case}");

        let snapshots_taken = events.len() / snapshot_every;
        match repo.snapshot(A::TYPE, ID) {
            None => assert_eq!(snapshots_taken, 0, "{case}: no snapshot"),
            Some(row) => {
                assert_eq!(row.current_snapshot, snapshots_taken, "{case}");
                assert_eq!(
                    row.last_sequence,
                    snapshots_taken * snapshot_every,
                    "{case}"
                );
                let state: A = serde_json::from_value(row.payload).expect("payload");
                assert_eq!(state.events_applied(), row.last_sequence as u64, "{case}");
                assert_eq!(
                    state,
                    replay(events[..row.last_sequence].iter().cloned()),
                    "{case}: snapshot {}",
                    row.current_snapshot
                );
            }
        }
    }
    replayed.events_applied() as usize
}

/// Runs `CASES` seeds and checks the histories were not trivially short.
async fn run_cases<F, Fut>(check: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut lengths = Vec::new();
    for seed in 0..CASES {
        lengths.push(check(seed).await);
    }
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let total: usize = lengths.iter().sum();
    assert!(longest >= 20, "longest history only {longest} events");
    assert!(
        total >= CASES as usize * 5,
        "histories too short: {total} events"
    );
}

#[tokio::test]
async fn product_snapshot_at_any_point_equals_full_replay() {
    run_cases(snapshot_at_every_point_equals_full_replay::<Product>).await;
}

#[tokio::test]
async fn order_snapshot_at_any_point_equals_full_replay() {
    run_cases(snapshot_at_every_point_equals_full_replay::<Order>).await;
}

#[tokio::test]
async fn product_through_cqrs_es_snapshot_store_equals_full_replay() {
    run_cases(|seed| {
        snapshot_store_loads_what_full_replay_gives::<Product>(seed, 1 + (seed % 7) as usize)
    })
    .await;
}

#[tokio::test]
async fn order_through_cqrs_es_snapshot_store_equals_full_replay() {
    run_cases(|seed| {
        snapshot_store_loads_what_full_replay_gives::<Order>(seed, 1 + (seed % 7) as usize)
    })
    .await;
}

#[test]
fn rng_is_deterministic_per_seed() {
    let draw = |seed| {
        let mut rng = Rng::new(seed);
        [rng.next(), rng.next(), rng.below(10)]
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
}
