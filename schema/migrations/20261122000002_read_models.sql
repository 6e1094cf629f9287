-- Read models written by the projector and served (from a replica) by
-- query-service. Every row records the version of the aggregate it reflects
-- (the per-aggregate event sequence), so a replayed or duplicated event whose
-- sequence is not newer changes nothing.

CREATE TABLE product_catalog
(
    product_id   uuid PRIMARY KEY,
    sku          text        NOT NULL,
    name         text        NOT NULL,
    price_minor  bigint      NOT NULL,
    currency     text        NOT NULL,
    discontinued boolean     NOT NULL DEFAULT false,
    version      bigint      NOT NULL,
    updated_at   timestamptz NOT NULL
);

CREATE TABLE order_summary
(
    order_id    uuid PRIMARY KEY,
    customer_id uuid        NOT NULL,
    status      text        NOT NULL,
    -- [schema::views::OrderSummaryLine] as JSON, the same document Redis holds
    lines       jsonb       NOT NULL,
    total_minor bigint      NOT NULL,
    currency    text        NOT NULL,
    placed_at   timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    version     bigint      NOT NULL
);

CREATE INDEX order_summary_by_customer ON order_summary (customer_id, placed_at);

-- One row per order event of a customer. Range-partitioned by month on the
-- event's business time: queries bounded by time touch only the months they
-- need, and old months are detached/dropped cheaply. The projector creates the
-- monthly partitions before it writes into them.
CREATE TABLE customer_order_history
(
    customer_id  uuid        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    order_id     uuid        NOT NULL,
    version      bigint      NOT NULL,
    kind         text        NOT NULL,
    -- the order total after this event, in minor units
    amount_minor bigint      NOT NULL,
    currency     text        NOT NULL,
    PRIMARY KEY (customer_id, occurred_at, order_id, version)
) PARTITION BY RANGE (occurred_at);

-- Units and revenue per product per day (UTC), booked when an order is
-- confirmed and reversed on the day a confirmed order is cancelled. A row sums
-- many orders, so instead of one aggregate's version it records the global
-- position of the last event folded into it; idempotency comes from the
-- per-order version check in order_summary, done in the same transaction.
CREATE TABLE daily_sales
(
    day           date   NOT NULL,
    product_id    uuid   NOT NULL,
    currency      text   NOT NULL,
    units         bigint NOT NULL,
    revenue_minor bigint NOT NULL,
    last_position bigint NOT NULL,
    PRIMARY KEY (day, product_id, currency)
);
