//! The invalidation feed: the projector's signals on Redis pub/sub
//! (`schema::views::INVALIDATION_CHANNEL`, docs/adr/0009), applied to every
//! local cache tier of this instance.
//!
//! Pub/sub delivers at most once: while this instance is not subscribed,
//! signals are lost. So the local tiers are only used while the feed is up,
//! and flushed both when it drops and when it comes back; each (re)connect
//! starts a new [`Feed::generation`], and a load that began in an earlier
//! generation does not fill the local tier (its data may be older than a
//! signal that was lost).
//!
//! A dropped TCP connection ends the message stream; a hung Redis would not,
//! so the loop also re-subscribes every [`HEARTBEAT`] (a harmless round trip
//! on a live connection) and treats a slow answer as a drop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use schema::views::{Invalidations, INVALIDATION_CHANNEL};
use service_runtime::shutdown::CancellationToken;

use super::DocumentCache;

/// How often a live subscription is checked.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long the subscription round trip may take, connecting included.
/// Generous: on a saturated host a 1 s budget was seen to expire on a live
/// connection, and a false "dropped" costs a flush of the local tier.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before reconnecting after a drop or a failed attempt.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Whether the feed is up, and which subscription this is.
#[derive(Debug, Default)]
pub struct Feed {
    up: AtomicBool,
    generation: AtomicU64,
}

impl Feed {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Changes whenever the feed drops or comes back.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Subscribed (again): a new generation starts.
    pub fn came_up(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.up.store(true, Ordering::Release);
    }

    /// The subscription is gone: signals are being lost from now on.
    pub fn went_down(&self) {
        self.up.store(false, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Subscribes to the invalidation channel and applies every signal to the
/// cache owning its key, until `stop` is cancelled; reconnects after drops.
pub async fn follow_invalidations(
    client: redis::Client,
    caches: Vec<Arc<DocumentCache>>,
    feed: Arc<Feed>,
    stop: CancellationToken,
) {
    loop {
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(&client)).await {
            Ok(Ok(pubsub)) => {
                // Signals published while we were away are lost.
                flush(&caches);
                feed.came_up();
                tracing::info!("invalidation feed up");
                let stopped = follow(pubsub, &caches, &stop).await;
                feed.went_down();
                flush(&caches);
                if stopped {
                    return;
                }
                tracing::warn!(
                    "invalidation feed dropped; local cache flushed and bypassed until it is back"
                );
            }
            Ok(Err(error)) => tracing::debug!(%error, "invalidation feed: subscribe failed"),
            Err(_) => tracing::debug!("invalidation feed: subscribe timed out"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RECONNECT_DELAY) => {}
        }
    }
}

async fn subscribe(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(INVALIDATION_CHANNEL).await?;
    Ok(pubsub)
}

/// Applies messages until the subscription drops (`false`) or `stop` is
/// cancelled (`true`).
async fn follow(
    pubsub: redis::aio::PubSub,
    caches: &[Arc<DocumentCache>],
    stop: &CancellationToken,
) -> bool {
    let (mut sink, mut messages) = pubsub.split();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return true,
            message = messages.next() => match message {
                Some(message) => apply(message.get_payload_bytes(), caches).await,
                None => return false,
            },
            _ = heartbeat.tick() => {
                let alive = tokio::time::timeout(SUBSCRIBE_TIMEOUT, sink.subscribe(INVALIDATION_CHANNEL)).await;
                if !matches!(alive, Ok(Ok(()))) {
                    return false;
                }
            }
        }
    }
}

async fn apply(payload: &[u8], caches: &[Arc<DocumentCache>]) {
    let signals: Invalidations = match serde_json::from_slice(payload) {
        Ok(signals) => signals,
        Err(error) => {
            tracing::warn!(%error, "undecodable invalidation message ignored");
            return;
        }
    };
    for signal in &signals.changed {
        if let Some(cache) = caches.iter().find(|cache| cache.owns(&signal.key)) {
            cache.invalidate(&signal.key, signal.version).await;
        }
    }
}

fn flush(caches: &[Arc<DocumentCache>]) {
    for cache in caches {
        cache.flush_local();
    }
}
