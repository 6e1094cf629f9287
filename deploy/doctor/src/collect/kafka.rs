//! The projector's consumer group on the broker: per partition, the high
//! watermark against the group's position. The group is never joined: the
//! client carries the group id only to fetch its committed offsets, and
//! commits nothing (no subscribe, no auto commit).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A failed broker call.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("creating the client: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    #[error("{what}: {source}")]
    Call {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("the blocking broker call panicked or was cancelled")]
    Join,
}

/// A client for one group's offsets.
#[derive(Clone)]
pub struct GroupProbe {
    consumer: Arc<BaseConsumer>,
    group: String,
    timeout: Duration,
}

/// Partitions of the group's topics, learnt once.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub partitions: Vec<(String, i32)>,
    pub members: Option<usize>,
}

/// One moment: per partition (end, the group's committed offset if any,
/// start).
#[derive(Debug, Clone, Default)]
pub struct Positions {
    pub partitions: HashMap<(String, i32), (i64, Option<i64>, i64)>,
}

impl GroupProbe {
    pub fn new(brokers: &str, group: &str, timeout: Duration) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("client.id", "doctor")
            .set("log_level", "3")
            .create()
            .map_err(KafkaError::Client)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            group: group.to_owned(),
            timeout,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&BaseConsumer, &str, Duration) -> Result<T, KafkaError> + Send + 'static,
    ) -> Result<T, KafkaError> {
        let consumer = Arc::clone(&self.consumer);
        let group = self.group.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || call(&consumer, &group, timeout))
            .await
            .map_err(|_| KafkaError::Join)?
    }

    /// The partitions of `topics` (missing topics have none) and the
    /// group's member count if the broker describes groups.
    pub async fn layout(&self, topics: Vec<String>) -> Result<Layout, KafkaError> {
        self.blocking(move |consumer, group, timeout| {
            let mut partitions = Vec::new();
            for topic in &topics {
                let metadata = consumer
                    .fetch_metadata(Some(topic), timeout)
                    .map_err(|source| KafkaError::Call {
                        what: format!("metadata of {topic}"),
                        source,
                    })?;
                for t in metadata.topics() {
                    if t.error().is_some() {
                        continue;
                    }
                    for p in t.partitions() {
                        partitions.push((t.name().to_owned(), p.id()));
                    }
                }
            }
            partitions.sort();
            let members = consumer
                .fetch_group_list(Some(group), timeout)
                .ok()
                .and_then(|list| {
                    list.groups()
                        .iter()
                        .find(|g| g.name() == group)
                        .map(|g| g.members().len())
                });
            Ok(Layout {
                partitions,
                members,
            })
        })
        .await
    }

    /// Watermarks of `partitions`, now, with no group offsets yet (see
    /// [`GroupProbe::committed`]).
    pub async fn watermarks(
        &self,
        partitions: Vec<(String, i32)>,
    ) -> Result<Positions, KafkaError> {
        self.blocking(move |consumer, _, timeout| {
            let mut positions = Positions::default();
            for (topic, partition) in partitions {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, partition, timeout)
                    .map_err(|source| KafkaError::Call {
                        what: format!("watermarks of {topic}/{partition}"),
                        source,
                    })?;
                positions
                    .partitions
                    .insert((topic, partition), (high, None, low));
            }
            Ok(positions)
        })
        .await
    }

    /// The group's committed offsets, filled into `positions`. A separate
    /// call from [`GroupProbe::watermarks`] because it needs the group
    /// coordinator, and these offsets are only a hint: a sample stands
    /// without them when the projector's own record was read.
    pub async fn committed(&self, mut positions: Positions) -> Result<Positions, KafkaError> {
        self.blocking(move |consumer, _, timeout| {
            let mut list = TopicPartitionList::new();
            for (topic, partition) in positions.partitions.keys() {
                list.add_partition(topic, *partition);
            }
            let committed = consumer
                .committed_offsets(list, timeout)
                .map_err(|source| KafkaError::Call {
                    what: "committed offsets".to_owned(),
                    source,
                })?;
            for ((topic, partition), (_, offset, _)) in &mut positions.partitions {
                *offset =
                    committed
                        .find_partition(topic, *partition)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(n) => Some(n),
                            _ => None,
                        });
            }
            Ok(positions)
        })
        .await
    }
}

/// Sums over partitions: (the group's position, the ends). Per partition the
/// position is the furthest of the stored offset (`projector_offsets`),
/// Kafka's committed offset and the partition's start (nothing before it can
/// be applied any more). The end is at least the position: a watermark read
/// below an offset already applied is stale, and capping the position at it
/// instead would make a stopped projector look as if it moved when the next
/// read is current.
pub fn totals(positions: &Positions, stored: &HashMap<(String, i32), i64>) -> (i64, i64) {
    let mut committed = 0;
    let mut end = 0;
    for (key, (high, kafka, low)) in &positions.partitions {
        let position = [Some(*low), *kafka, stored.get(key).copied()]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0);
        committed += position;
        end += (*high).max(position);
    }
    (committed, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_is_the_furthest_known_offset_and_the_end_never_below_it() {
        let mut positions = Positions::default();
        positions
            .partitions
            .insert(("t".to_owned(), 0), (100, Some(40), 0));
        positions
            .partitions
            .insert(("t".to_owned(), 1), (50, None, 10));
        positions
            .partitions
            .insert(("t".to_owned(), 2), (30, Some(30), 0));
        let stored = HashMap::from([(("t".to_owned(), 0), 60), (("t".to_owned(), 2), 35)]);
        // Partition 2's watermark (30) is stale: 35 were applied.
        assert_eq!(totals(&positions, &stored), (60 + 10 + 35, 100 + 50 + 35));
    }
}
