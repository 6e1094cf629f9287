-- Idempotency-Key records (IETF httpapi idempotency-key draft). Written by
-- command-service in the same transaction as the events the keyed command
-- appended, so a key exists if and only if its command's events do. The
-- stored response is the command's result (the 202 body and headers are
-- rebuilt from these columns byte for byte).
CREATE TABLE idempotency_keys
(
    key            text PRIMARY KEY,
    -- SHA-256 of method, path and the canonical JSON body: same key with a
    -- different request is refused instead of replayed.
    request_hash   bytea       NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    version        bigint      NOT NULL,
    position       bigint      NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
