//! Two cache tiers in front of the read databases, invalidated by the
//! projector's signals (docs/adr/0012).
//!
//! - **Local**: an in-process [`moka`] cache per endpoint. Used only while
//!   the invalidation feed is up ([`Feed`]); flushed when it drops and when
//!   it comes back, because signals in between were lost.
//! - **Redis** ([`RedisTier`]): shared by every instance. The projector
//!   writes order summaries there and leaves tombstones for other changed
//!   documents; query-service fills misses.
//!
//! Both tiers hold **versioned** entries and refuse to store a version older
//! than the newest they have seen for the key. That closes the classic race:
//! a miss reads an old row from a lagging replica, the invalidation for the
//! newer version arrives, and then the old row would land in the cache and
//! be served until its TTL. Here the invalidation leaves a *floor* (a slot
//! with the new version and no body) and the late fill is refused. TTLs stay
//! as the safety net for lost signals.
//!
//! Misses are loaded once per key at a time ([`SingleFlight`]), so a hot key
//! expiring does not send every waiting request to the database.

mod feed;
mod redis_tier;
mod single_flight;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use moka::future::Cache;
use moka::ops::compute::Op;

pub use feed::{follow_invalidations, Feed};

use crate::error::QueryError;
use crate::replicas::Served;
pub use redis_tier::{keep_connecting, RedisTier, FAILURE_BACKOFF};
pub use single_flight::SingleFlight;

/// A serialized read-model document and its version (the aggregate's
/// sequence for per-aggregate documents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub version: i64,
    pub body: Bytes,
}

/// Which tier answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Local,
    Redis,
}

impl Tier {
    /// The `x-read-source` header value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Redis => "redis",
        }
    }
}

/// The document caches of query-service, one per cached endpoint.
pub struct Caches {
    /// `GET /orders/{id}`: order summaries (Redis filled by the projector).
    pub orders: Arc<DocumentCache>,
    /// `GET /products/{id}`.
    pub products: Arc<DocumentCache>,
}

impl Caches {
    /// Every cache, for the invalidation feed.
    pub fn all(&self) -> Vec<Arc<DocumentCache>> {
        vec![Arc::clone(&self.orders), Arc::clone(&self.products)]
    }
}

/// A local-tier slot: a document, or only a floor (`body: None`): the
/// newest version announced by an invalidation, not loaded yet.
#[derive(Debug, Clone)]
struct Slot {
    version: i64,
    body: Option<Bytes>,
}

/// What concurrent misses of one key share: the first one's result.
type SharedLoad = Result<Option<Served<Document>>, Arc<QueryError>>;

/// The cache of one kind of document (one endpoint), both tiers.
pub struct DocumentCache {
    /// What the keys start with (`schema::views` key functions), to route
    /// invalidation signals.
    key_prefix: &'static str,
    local: Cache<String, Slot>,
    redis: Arc<RedisTier>,
    redis_ttl: Duration,
    feed: Arc<Feed>,
    flights: SingleFlight<String, SharedLoad>,
}

impl DocumentCache {
    pub fn new(
        key_prefix: &'static str,
        capacity: u64,
        local_ttl: Duration,
        redis: Arc<RedisTier>,
        redis_ttl: Duration,
        feed: Arc<Feed>,
    ) -> Self {
        Self {
            key_prefix,
            local: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(local_ttl)
                .build(),
            redis,
            redis_ttl,
            feed,
            flights: SingleFlight::default(),
        }
    }

    /// Whether invalidation signals for `key` concern this cache.
    pub fn owns(&self, key: &str) -> bool {
        key.starts_with(self.key_prefix)
    }

    /// The local tier's document at `key` if it has one of at least
    /// `min_version`, and the feed is up.
    pub async fn local(&self, key: &str, min_version: i64) -> Option<Document> {
        if !self.feed.is_up() {
            return None;
        }
        let slot = self.local.get(key).await?;
        let body = slot.body?;
        (slot.version >= min_version).then_some(Document {
            version: slot.version,
            body,
        })
    }

    /// The Redis tier's document at `key` if it has one of at least
    /// `min_version`; copied into the local tier.
    pub async fn redis(&self, key: &str, min_version: i64) -> Option<Document> {
        let generation = self.feed.generation();
        let document = self.redis.get(key).await?;
        if document.version < min_version {
            return None;
        }
        self.fill_local(key, &document, generation).await;
        Some(document)
    }

    /// The current feed generation: pass it to [`DocumentCache::fill`] for a
    /// document loaded after this call.
    pub fn generation(&self) -> u64 {
        self.feed.generation()
    }

    /// Stores a document read from a database in both tiers, unless either
    /// holds (or has been told of) a newer version. `generation` is the
    /// feed's generation from before the read: if the feed dropped since,
    /// signals may have been missed and the local tier is not filled.
    pub async fn fill(&self, key: &str, document: &Document, generation: u64) {
        self.redis.fill(key, document, self.redis_ttl).await;
        self.fill_local(key, document, generation).await;
    }

    async fn fill_local(&self, key: &str, document: &Document, generation: u64) {
        if !self.feed.is_up() || self.feed.generation() != generation {
            return;
        }
        let offered = document.clone();
        self.local
            .entry_by_ref(key)
            .and_compute_with(|current| async move {
                let newer_known = current.is_some_and(|entry| {
                    let slot = entry.into_value();
                    slot.version > offered.version
                        || (slot.version == offered.version && slot.body.is_some())
                });
                if newer_known {
                    Op::Nop
                } else {
                    Op::Put(Slot {
                        version: offered.version,
                        body: Some(offered.body),
                    })
                }
            })
            .await;
    }

    /// An invalidation signal: `key` now exists at `version`. Drops an older
    /// local entry and leaves a floor that refuses fills older than
    /// `version` (even for a key never cached: a load may be in flight).
    pub async fn invalidate(&self, key: &str, version: i64) {
        self.local
            .entry_by_ref(key)
            .and_compute_with(|current| async move {
                match current {
                    Some(entry) if entry.value().version >= version => Op::Nop,
                    _ => Op::Put(Slot {
                        version,
                        body: None,
                    }),
                }
            })
            .await;
    }

    /// Empties the local tier (the feed dropped or came back).
    pub fn flush_local(&self) {
        self.local.invalidate_all();
    }

    /// Loads `key` with `load` unless a load of it is already running, in
    /// which case this waits for that one and shares its result.
    pub async fn load_once<F, Fut>(
        &self,
        key: &str,
        load: F,
    ) -> Result<Option<Served<Document>>, QueryError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Served<Document>>, QueryError>>,
    {
        self.flights
            .run(key.to_owned(), || async { load().await.map_err(Arc::new) })
            .await
            .map_err(QueryError::Shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> DocumentCache {
        let redis = Arc::new(
            RedisTier::new("redis://127.0.0.1:1/", Duration::from_millis(20)).expect("url"),
        );
        let feed = Arc::new(Feed::default());
        feed.came_up();
        DocumentCache::new(
            "product:",
            100,
            Duration::from_secs(60),
            redis,
            Duration::from_secs(60),
            feed,
        )
    }

    fn doc(version: i64) -> Document {
        Document {
            version,
            body: Bytes::from(format!("{{\"version\":{version}}}")),
        }
    }

    #[tokio::test]
    async fn a_fill_older_than_an_invalidation_is_refused() {
        let cache = cache();
        let generation = cache.generation();
        // The load read version 1 from a lagging replica; meanwhile the
        // signal for version 2 arrived.
        cache.invalidate("product:a", 2).await;
        cache.fill("product:a", &doc(1), generation).await;
        assert_eq!(cache.local("product:a", 0).await, None);
        cache.fill("product:a", &doc(2), generation).await;
        assert_eq!(cache.local("product:a", 0).await, Some(doc(2)));
    }

    #[tokio::test]
    async fn an_older_fill_never_replaces_a_newer_entry() {
        let cache = cache();
        let generation = cache.generation();
        cache.fill("product:a", &doc(3), generation).await;
        cache.fill("product:a", &doc(2), generation).await;
        assert_eq!(cache.local("product:a", 0).await, Some(doc(3)));
        assert_eq!(
            cache.local("product:a", 4).await,
            None,
            "below the asked version"
        );
        // A late, older signal does not evict it either.
        cache.invalidate("product:a", 2).await;
        assert_eq!(cache.local("product:a", 0).await, Some(doc(3)));
    }

    #[tokio::test]
    async fn concurrent_misses_of_a_key_make_one_load() {
        let cache = Arc::new(cache());
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let misses = (0..32).map(|_| {
            let (cache, loads) = (Arc::clone(&cache), Arc::clone(&loads));
            tokio::spawn(async move {
                cache
                    .load_once("product:a", || async {
                        loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(Some(Served {
                            value: doc(1),
                            from: Arc::from("replica-1"),
                        }))
                    })
                    .await
                    .map(|served| served.map(|s| s.value))
            })
        });
        for miss in futures::future::join_all(misses).await {
            assert_eq!(miss.expect("task").expect("load"), Some(doc(1)));
        }
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn nothing_is_served_or_stored_while_the_feed_is_down() {
        let cache = cache();
        let generation = cache.generation();
        cache.fill("product:a", &doc(1), generation).await;
        cache.feed.went_down();
        assert_eq!(cache.local("product:a", 0).await, None);
        cache.feed.came_up();
        // A load that started before the drop may hold data whose signal
        // was lost: refused.
        cache.fill("product:b", &doc(1), generation).await;
        assert_eq!(cache.local("product:b", 0).await, None);
    }
}
