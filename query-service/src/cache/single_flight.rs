//! One load per key at a time: concurrent misses of a key wait for the
//! first one's result instead of each asking the database (no stampede when
//! a hot entry expires or is invalidated).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

/// Loads in flight, by key.
pub struct SingleFlight<K, V> {
    calls: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            calls: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `load` for `key`, or waits for the load already running for it
    /// and returns a clone of its value. If the request running the load is
    /// cancelled, one of the waiters runs its own `load` instead (tokio's
    /// `OnceCell` semantics), so a dropped client never strands the others.
    pub async fn run<F, Fut>(&self, key: K, load: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = Arc::clone(
            self.calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key.clone())
                .or_default(),
        );
        let value = cell.get_or_init(load).await.clone();
        // The next miss after this one must load anew, not reuse this value.
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        if calls
            .get(&key)
            .is_some_and(|current| Arc::ptr_eq(current, &cell))
        {
            calls.remove(&key);
        }
        value
    }

    /// Loads in flight.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_misses_share_one_load() {
        let flights: Arc<SingleFlight<&str, u32>> = Arc::default();
        let loads = Arc::new(AtomicUsize::new(0));
        let waiters = (0..50).map(|_| {
            let flights = Arc::clone(&flights);
            let loads = Arc::clone(&loads);
            tokio::spawn(async move {
                flights
                    .run("k", || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        7
                    })
                    .await
            })
        });
        for waiter in futures::future::join_all(waiters).await {
            assert_eq!(waiter.expect("task"), 7);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_later_miss_loads_again() {
        let flights: SingleFlight<&str, u32> = SingleFlight::default();
        assert_eq!(flights.run("k", || async { 1 }).await, 1);
        assert_eq!(flights.run("k", || async { 2 }).await, 2);
    }
}
