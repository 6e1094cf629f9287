-- The projections the projector maintains, and their rebuilds.
--
-- `state` gates the live projector: it applies a projection's events only
-- while it is 'live'. A projection added later starts as 'building' (its
-- migration inserts it so), is filled by `projector rebuild <name>` from the
-- event store, and turns 'live' in the same transaction that swaps its tables
-- in, so the live stream takes over exactly where the rebuild ended.
CREATE TABLE projections
(
    name                text PRIMARY KEY,
    state               text   NOT NULL CHECK (state IN ('live', 'building')),
    -- progress of the running (or last) rebuild, for /metrics
    rebuild_done        bigint NOT NULL DEFAULT 0,
    rebuild_total       bigint NOT NULL DEFAULT 0,
    rebuild_started_at  timestamptz,
    rebuild_finished_at timestamptz
);

INSERT INTO projections (name, state)
VALUES ('catalog', 'live'),
       ('orders', 'live');

-- Creates schema `shadow` holding empty copies of `tables` (public), with
-- their columns, defaults, constraints and indexes; a partitioned table gets
-- the same partitions (bounds copied from the catalog). Drops a leftover
-- shadow of an interrupted rebuild first. Names are quoted with %I.
CREATE FUNCTION projection_create_shadow(shadow text, tables text[]) RETURNS void
    LANGUAGE plpgsql AS
$$
DECLARE
    t     text;
    kind  "char";
    child record;
BEGIN
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', shadow);
    EXECUTE format('CREATE SCHEMA %I', shadow);
    FOREACH t IN ARRAY tables
        LOOP
            SELECT c.relkind INTO kind FROM pg_class c WHERE c.oid = format('public.%I', t)::regclass;
            IF kind = 'p' THEN
                EXECUTE format('CREATE TABLE %I.%I (LIKE public.%I INCLUDING ALL) PARTITION BY %s',
                               shadow, t, t, pg_get_partkeydef(format('public.%I', t)::regclass));
                FOR child IN
                    SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
                      FROM pg_inherits i
                           JOIN pg_class c ON c.oid = i.inhrelid
                     WHERE i.inhparent = format('public.%I', t)::regclass
                    LOOP
                        EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.%I %s',
                                       shadow, child.relname, shadow, t, child.bound);
                    END LOOP;
            ELSE
                EXECUTE format('CREATE TABLE %I.%I (LIKE public.%I INCLUDING ALL)', shadow, t, t);
            END IF;
        END LOOP;
END;
$$;

-- Swaps the tables of `shadow` into public and the live ones out to
-- `retired` (partitions included), in the caller's transaction: readers wait
-- on the locks for the instant it takes and then see the new tables, never a
-- missing or half-built one.
CREATE FUNCTION projection_swap(shadow text, retired text, tables text[]) RETURNS void
    LANGUAGE plpgsql AS
$$
DECLARE
    t     text;
    child record;
BEGIN
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', retired);
    EXECUTE format('CREATE SCHEMA %I', retired);
    FOREACH t IN ARRAY tables
        LOOP
            FOR child IN
                SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = format('public.%I', t)::regclass
                LOOP
                    EXECUTE format('ALTER TABLE public.%I SET SCHEMA %I', child.relname, retired);
                END LOOP;
            EXECUTE format('ALTER TABLE public.%I SET SCHEMA %I', t, retired);
            FOR child IN
                SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = format('%I.%I', shadow, t)::regclass
                LOOP
                    EXECUTE format('ALTER TABLE %I.%I SET SCHEMA public', shadow, child.relname);
                END LOOP;
            EXECUTE format('ALTER TABLE %I.%I SET SCHEMA public', shadow, t);
        END LOOP;
END;
$$;
