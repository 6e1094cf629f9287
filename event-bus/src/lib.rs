//! The Kafka side of the event stream, shared by the relay (producer) and the
//! projector (consumer): one topic per aggregate type, keyed by aggregate id.
//!
//! Only standard Kafka APIs are used, so the same code runs against Apache
//! Kafka, Redpanda, MSK or the Tansu broker of the local stack.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Where the event topics live and how they are shaped.
#[derive(Debug, Clone)]
pub struct TopicSettings {
    /// Bootstrap servers, e.g. `127.0.0.1:9092`.
    pub brokers: String,
    /// Topic name prefix: events of `Order` go to `{prefix}.order`.
    pub prefix: String,
    /// Partitions of a topic when this code creates it. Per-aggregate order
    /// holds for any count, since an aggregate's key always maps to one partition.
    pub partitions: i32,
    /// Replication factor when this code creates a topic (1 on a local broker,
    /// 3 on a production cluster).
    pub replication: i32,
}

impl TopicSettings {
    /// `KAFKA_BROKERS` (default `127.0.0.1:9092`), `KAFKA_TOPIC_PREFIX`
    /// (`events`), `KAFKA_TOPIC_PARTITIONS` (4), `KAFKA_TOPIC_REPLICATION` (1).
    pub fn from_env() -> Result<Self, service_runtime::config::ConfigError> {
        use service_runtime::config::optional;
        Ok(Self {
            brokers: optional("KAFKA_BROKERS", "127.0.0.1:9092".to_owned())?,
            prefix: optional("KAFKA_TOPIC_PREFIX", "events".to_owned())?,
            partitions: optional("KAFKA_TOPIC_PARTITIONS", 4)?,
            replication: optional("KAFKA_TOPIC_REPLICATION", 1)?,
        })
    }

    /// The topic of every aggregate type, in a fixed order.
    pub fn topics(&self) -> Vec<String> {
        schema::envelope::AGGREGATE_TYPES
            .iter()
            .map(|t| schema::envelope::topic_for(&self.prefix, t))
            .collect()
    }

    /// A client config with the bootstrap servers set; callers add their role's settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config
    }
}

/// Topic provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("kafka admin client: {0}")]
    Client(#[source] KafkaError),
    #[error("creating topic {topic}: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// Creates the event topics that do not exist yet. Safe to call from every
/// instance at every start: "already exists" is success.
pub async fn ensure_topics(settings: &TopicSettings) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = settings
        .client_config()
        .create()
        .map_err(TopicError::Client)?;
    let names = settings.topics();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(TopicError::Client)?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, code }),
        }
    }
    Ok(())
}
