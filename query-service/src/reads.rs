//! How a read is answered: from which cache tier or database, honouring the
//! caller's cache directives and consistency token. Handlers call one of
//! these two functions.

use std::future::Future;
use std::sync::Arc;

use actix_web::HttpRequest;
use serde::Serialize;
use service_runtime::postgres::DbPool;
use uuid::Uuid;

use crate::cache::{Document, DocumentCache, Tier};
use crate::conditional;
use crate::consistency::{Aggregate, Requirement};
use crate::error::QueryError;
use crate::replicas::{ReadRouter, Served};

/// What a document read asks for.
#[derive(Debug, Clone)]
pub struct DocumentRead {
    /// The cache key (`schema::views` key functions).
    pub key: String,
    /// The aggregate the document is of, and its id.
    pub aggregate: Aggregate,
    pub id: Uuid,
    /// `false` when the client sent `Cache-Control: no-cache`: answer from a
    /// database, without reading or writing the caches.
    pub use_cache: bool,
    /// From the `consistency-token` header.
    pub requirement: Option<Requirement>,
}

impl DocumentRead {
    /// The read of the document at `key` (aggregate `aggregate`, `id`) as
    /// the request's `Cache-Control` and `consistency-token` ask for it;
    /// 400 for a token that does not decode.
    pub fn from_request(
        request: &HttpRequest,
        key: String,
        aggregate: Aggregate,
        id: Uuid,
    ) -> Result<Self, QueryError> {
        Ok(Self {
            key,
            aggregate,
            id,
            use_cache: !conditional::wants_no_cache(request),
            requirement: Requirement::from_request(request)?,
        })
    }
}

/// A read-model value as a cacheable document: its JSON and its version.
pub fn as_document<T: Serialize>(
    value: Option<T>,
    version: impl FnOnce(&T) -> i64,
) -> Result<Option<Document>, QueryError> {
    value
        .map(|value| {
            Ok(Document {
                version: version(&value),
                body: conditional::json_body(&value)?,
            })
        })
        .transpose()
}

/// A per-aggregate document: local tier, then Redis (one load per key at a
/// time), then a database; `Ok(None)` if it does not exist.
///
/// With a consistency token naming this document, a cached copy is served
/// only if at least that version, else a database that has it
/// ([`ReadRouter::read_consistent`]). With a token naming another
/// aggregate, no cache can prove freshness: the database answering must
/// satisfy the token first.
pub async fn document<F, Fut>(
    cache: &DocumentCache,
    router: &ReadRouter,
    read: DocumentRead,
    load: F,
) -> Result<Option<Served<Document>>, QueryError>
where
    F: Fn(DbPool) -> Fut,
    Fut: Future<Output = Result<Option<Document>, QueryError>>,
{
    let key = read.key.as_str();
    let min_version = match read.requirement {
        None => 0,
        Some(requirement) if requirement.names(read.aggregate, read.id) => requirement.version,
        Some(requirement) => {
            let generation = cache.generation();
            let served = router
                .read_consistent(|db| {
                    let load = &load;
                    async move {
                        if !requirement.is_met(&db).await? {
                            return Ok(None);
                        }
                        load(db).await.map(Some)
                    }
                })
                .await?;
            return Ok(filled(cache, key, served, generation).await);
        }
    };

    if read.use_cache {
        if let Some(document) = cache.local(key, min_version).await {
            return Ok(Some(from_tier(document, Tier::Local)));
        }
    }
    if min_version > 0 {
        if read.use_cache {
            if let Some(document) = cache.redis(key, min_version).await {
                return Ok(Some(from_tier(document, Tier::Redis)));
            }
        }
        let generation = cache.generation();
        let served = router
            .read_consistent(|db| {
                let load = &load;
                async move {
                    let document = load(db).await?;
                    Ok(document.filter(|d| d.version >= min_version).map(Some))
                }
            })
            .await?;
        return Ok(filled(cache, key, served, generation).await);
    }
    if !read.use_cache {
        // Fresh data was asked for, not a cache refresh: no Redis round trip.
        let served = router.read(&load).await?;
        return Ok(served.value.map(|document| Served {
            value: document,
            from: served.from,
        }));
    }
    cache
        .load_once(key, || async {
            if let Some(document) = cache.redis(key, 0).await {
                return Ok(Some(from_tier(document, Tier::Redis)));
            }
            let generation = cache.generation();
            let served = router.read(&load).await?;
            Ok(filled(cache, key, served, generation).await)
        })
        .await
}

/// A read that is not cached (lists, reports): any qualifying database, or
/// with a consistency token one that satisfies it.
pub async fn uncached<T, F, Fut>(
    router: &ReadRouter,
    requirement: Option<Requirement>,
    read: F,
) -> Result<Served<T>, QueryError>
where
    F: Fn(DbPool) -> Fut,
    Fut: Future<Output = Result<T, QueryError>>,
{
    match requirement {
        None => router.read(read).await,
        Some(requirement) => {
            router
                .read_consistent(|db| {
                    let read = &read;
                    async move {
                        if !requirement.is_met(&db).await? {
                            return Ok(None);
                        }
                        read(db).await.map(Some)
                    }
                })
                .await
        }
    }
}

/// Stores what a database said in the caches; passes it on.
async fn filled(
    cache: &DocumentCache,
    key: &str,
    served: Served<Option<Document>>,
    generation: u64,
) -> Option<Served<Document>> {
    let document = served.value?;
    cache.fill(key, &document, generation).await;
    Some(Served {
        value: document,
        from: served.from,
    })
}

fn from_tier(document: Document, tier: Tier) -> Served<Document> {
    Served {
        value: document,
        from: Arc::from(tier.as_str()),
    }
}
