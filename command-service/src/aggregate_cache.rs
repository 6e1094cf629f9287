//! In-process cache of loaded aggregates, in front of cqrs-es'
//! `PersistedEventStore`.
//!
//! Loading an aggregate costs two queries (its snapshot, the events after
//! it) and deserializing up to `SNAPSHOT_EVERY` events; with the aggregate
//! cached, a command on a warm aggregate reads nothing, only appends. The
//! cache is never trusted for correctness: the append's unique key
//! (aggregate_type, aggregate_id, sequence) rejects a command decided on a
//! stale copy (another instance appended meanwhile), the entry is evicted,
//! and the command bus decides again on the database's state (see
//! `docs/adr/0007-one-round-trip-commands.md`).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope};
use lru::LruCache;

use crate::event_store::{bypass_cache, update_scope, EventStore};

/// An aggregate as committed, with what cqrs-es tracks beside it.
#[derive(Debug, Clone, PartialEq)]
struct Cached<A> {
    aggregate: A,
    sequence: usize,
    snapshot: Option<usize>,
}

/// cqrs-es' snapshotting store with a bounded LRU of aggregates in front;
/// capacity 0 disables the cache.
pub struct CachedEventStore<A: Aggregate> {
    inner: PersistedEventStore<EventStore, A>,
    cache: Option<Mutex<LruCache<String, Cached<A>>>>,
}

impl<A: Aggregate + Clone> CachedEventStore<A> {
    pub fn new(inner: PersistedEventStore<EventStore, A>, capacity: usize) -> Self {
        Self {
            inner,
            cache: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut LruCache<String, Cached<A>>) -> T) -> Option<T> {
        let cache = self.cache.as_ref()?;
        // A poisoned lock only means another thread panicked mid-update; the
        // cache is advisory, so carry on with it.
        let mut guard = cache.lock().unwrap_or_else(|e| e.into_inner());
        Some(f(&mut guard))
    }

    /// Keeps `entry` unless a newer copy is cached already.
    fn remember(&self, id: &str, entry: Cached<A>) {
        self.with(|c| {
            if c.peek(id)
                .is_none_or(|cached| cached.sequence < entry.sequence)
            {
                c.put(id.to_owned(), entry);
            }
        });
    }

    fn forget(&self, id: &str) {
        self.with(|c| c.pop(id));
    }
}

impl<A: Aggregate + Clone> cqrs_es::EventStore<A> for CachedEventStore<A> {
    type AC = EventStoreAggregateContext<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        self.inner.load_events(aggregate_id).await
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<Self::AC, AggregateError<A::Error>> {
        if !bypass_cache() {
            if let Some(hit) = self.with(|c| c.get(aggregate_id).cloned()).flatten() {
                update_scope(|scope| scope.served_from_cache = true);
                return Ok(EventStoreAggregateContext {
                    aggregate_id: aggregate_id.to_owned(),
                    aggregate: hit.aggregate,
                    current_sequence: hit.sequence,
                    current_snapshot: hit.snapshot,
                });
            }
        }
        let context = self.inner.load_aggregate(aggregate_id).await?;
        if self.cache.is_some() {
            self.remember(
                aggregate_id,
                Cached {
                    aggregate: context.aggregate.clone(),
                    sequence: context.current_sequence,
                    snapshot: context.current_snapshot,
                },
            );
        }
        Ok(context)
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: Self::AC,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let id = context.aggregate_id.clone();
        // The context's aggregate is as loaded (domain::emit leaves it so):
        // the state after this commit is it plus the new events.
        let mut after = self.cache.as_ref().map(|_| Cached {
            aggregate: context.aggregate.clone(),
            sequence: context.current_sequence + events.len(),
            snapshot: context.current_snapshot,
        });
        if let Some(after) = after.as_mut() {
            for event in &events {
                after.aggregate.apply(event.clone());
            }
        }
        match self.inner.commit(events, context, metadata).await {
            Ok(committed) => {
                if let Some(mut after) = after {
                    if let Some(number) = crate::event_store::snapshot_taken() {
                        after.snapshot = Some(number);
                    }
                    self.remember(&id, after);
                }
                Ok(committed)
            }
            Err(error) => {
                // A conflict may mean the cached copy was stale.
                self.forget(&id);
                Err(error)
            }
        }
    }
}
