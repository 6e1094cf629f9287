-- The projector's own bookkeeping, written in the same transaction as the
-- read-model changes of each batch.

-- Where each consumer group is in each Kafka partition: the offset of the next
-- message to apply. This, not Kafka's committed offset, is the truth: a batch
-- and its offsets commit or roll back together, so a crash or a rebalance
-- replays nothing that was applied and skips nothing that was not.
CREATE TABLE projector_offsets
(
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- A deliberately naive projection: messages applied per topic, counted
-- without any version check. It equals the number of messages in the topic
-- only if no message was ever applied twice (or skipped), which is what the
-- fault tests compare.
CREATE TABLE projector_message_counts
(
    consumer_group text   NOT NULL,
    topic          text   NOT NULL,
    applied        bigint NOT NULL,
    PRIMARY KEY (consumer_group, topic)
);

-- Events that could not be applied, and the later events of the same
-- aggregate parked behind them so that per-aggregate order holds. The raw
-- message is kept so a fixed projector can apply it later (`projector dlq retry`).
CREATE TABLE projector_dead_letters
(
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    kafka_offset   bigint      NOT NULL,
    -- null when the message's headers are unreadable: nothing can queue behind it
    aggregate_type text,
    aggregate_id   text,
    sequence       bigint,
    -- the Kafka headers as a JSON object
    headers        jsonb       NOT NULL,
    payload        bytea,
    -- 'failed': applying it failed; 'behind': an earlier event of its aggregate is parked
    reason         text        NOT NULL CHECK (reason IN ('failed', 'behind')),
    error          text        NOT NULL,
    parked_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX projector_dead_letters_by_aggregate
    ON projector_dead_letters (consumer_group, aggregate_id, id);
