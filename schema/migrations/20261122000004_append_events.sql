-- Appends for one or more commands in one statement, so in one transaction
-- with one commit and one round trip: their events, the snapshots due with
-- them and their Idempotency-Key records. command-service calls it for a
-- batch of concurrent commands (group commit), and for a single command when
-- a batch failed. Marten appends through a function for the same reason
-- (mt_append_event). See docs/adr/0007-one-round-trip-commands.md.
--
-- Events are given one array element per event; commands one element per
-- command (its aggregate, the sequence of its last event, its snapshot or
-- NULL, its Idempotency-Key or NULL).
--
-- Every conflict is raised as unique_violation (23505), which command-service
-- maps to an optimistic-lock conflict:
--   * a (aggregate_type, aggregate_id, sequence) that exists: another command
--     appended to the aggregate first;
--   * a snapshot that moved since it was loaded (postgres-es' protocol: the
--     first snapshot is inserted, a later one replaces number n-1 only);
--   * an Idempotency-Key held by a live record: another request with the key
--     got here first (the caller then replays that request's result).
-- Any of them rolls back the whole statement: no event, snapshot or key of
-- any command in it.
CREATE OR REPLACE FUNCTION append_events(
    p_aggregate_types   text[],
    p_aggregate_ids     text[],
    p_sequences         bigint[],
    p_event_types       text[],
    p_event_versions    text[],
    p_payloads          text[],
    p_metadata          text[],
    p_command_types     text[],
    p_command_ids       text[],
    p_command_sequences bigint[],
    p_snapshots         jsonb[],
    p_snapshot_numbers  bigint[],
    p_idempotency_keys  text[],
    p_request_hashes    bytea[],
    p_key_ttl_seconds   double precision
) RETURNS bigint[] -- per command, the position of its last event
LANGUAGE plpgsql AS
$$
DECLARE
    v_positions bigint[];
    v_keys      integer;
    v_recorded  integer;
BEGIN
    WITH appended AS (
        INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
        SELECT t, id, seq, et, ev, p::json, m::json
          FROM UNNEST(p_aggregate_types, p_aggregate_ids, p_sequences, p_event_types, p_event_versions,
                      p_payloads, p_metadata) AS e(t, id, seq, et, ev, p, m)
        RETURNING aggregate_type, aggregate_id, sequence, position)
    SELECT array_agg(a.position ORDER BY c.ord) INTO v_positions
      FROM UNNEST(p_command_types, p_command_ids, p_command_sequences) WITH ORDINALITY AS c(t, id, seq, ord)
      JOIN appended a ON a.aggregate_type = c.t AND a.aggregate_id = c.id AND a.sequence = c.seq;

    FOR i IN 1 .. coalesce(array_length(p_command_ids, 1), 0) LOOP
        CONTINUE WHEN p_snapshots[i] IS NULL;
        IF p_snapshot_numbers[i] = 1 THEN
            INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
            VALUES (p_command_types[i], p_command_ids[i], p_command_sequences[i], 1, p_snapshots[i]::json);
        ELSE
            UPDATE snapshots
               SET last_sequence = p_command_sequences[i], payload = p_snapshots[i]::json,
                   current_snapshot = p_snapshot_numbers[i]
             WHERE aggregate_type = p_command_types[i] AND aggregate_id = p_command_ids[i]
               AND current_snapshot = p_snapshot_numbers[i] - 1;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'snapshot % of % % was replaced concurrently',
                    p_snapshot_numbers[i] - 1, p_command_types[i], p_command_ids[i]
                    USING ERRCODE = 'unique_violation';
            END IF;
        END IF;
    END LOOP;

    SELECT count(*) INTO v_keys FROM UNNEST(p_idempotency_keys) AS k WHERE k IS NOT NULL;
    IF v_keys > 0 THEN
        -- An expired record of a key is replaced, a live one is not. (The
        -- same key twice in one call fails with cardinality_violation; the
        -- caller then appends the commands one by one.)
        INSERT INTO idempotency_keys
               (key, request_hash, aggregate_type, aggregate_id, version, position, expires_at)
        SELECT k, h, t, id, seq, pos, now() + make_interval(secs => p_key_ttl_seconds)
          FROM UNNEST(p_idempotency_keys, p_request_hashes, p_command_types, p_command_ids,
                      p_command_sequences, v_positions) AS c(k, h, t, id, seq, pos)
         WHERE k IS NOT NULL
        ON CONFLICT (key) DO UPDATE
           SET request_hash = EXCLUDED.request_hash,
               aggregate_type = EXCLUDED.aggregate_type,
               aggregate_id = EXCLUDED.aggregate_id,
               version = EXCLUDED.version,
               position = EXCLUDED.position,
               created_at = now(),
               expires_at = EXCLUDED.expires_at
         WHERE idempotency_keys.expires_at <= now();
        GET DIAGNOSTICS v_recorded = ROW_COUNT;
        IF v_recorded < v_keys THEN
            RAISE EXCEPTION 'an Idempotency-Key is held by another request'
                USING ERRCODE = 'unique_violation';
        END IF;
    END IF;

    RETURN v_positions;
END
$$;
