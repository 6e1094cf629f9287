-- The event store of postgres-es 0.5 (its db/init.sql), owned here so that the
-- outbox columns live beside it. postgres-es inserts with an explicit column
-- list, so the extra columns below only need defaults.
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    -- Outbox columns. `position` is assigned at insert, which is NOT commit order:
    -- a reader that trusts it alone skips rows of transactions still open. The
    -- relay therefore reads in (transaction_id, position) order and only rows of
    -- transactions older than every transaction still running
    -- (pg_snapshot_xmin); see docs/adr/0002-gap-safe-outbox.md.
    position       bigint GENERATED ALWAYS AS IDENTITY,
    transaction_id xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at    timestamptz                  NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence),
    UNIQUE (position)
);

CREATE INDEX events_outbox_order ON events (transaction_id, position);

CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Where each relay has published up to: the (transaction_id, position) of the
-- last event the broker acknowledged. Advanced only after delivery reports.
CREATE TABLE outbox_cursor
(
    relay          text PRIMARY KEY,
    transaction_id xid8        NOT NULL,
    position       bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
