#!/usr/bin/env bash
# Entrypoint of postgres-replica: on first start (empty data volume) clone the
# primary with pg_basebackup as a hot standby, then hand over to the official
# image's entrypoint, which finds an initialised data directory and just runs
# the command (postgres -c ...) as the postgres user.
set -euo pipefail

primary="${PRIMARY_HOST:?}"
slot="${REPLICATION_SLOT:?}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  # In the environment, not on the command line: -R copies it into
  # primary_conninfo (postgresql.auto.conf), which the standby needs to
  # reconnect after a restart.
  export PGPASSWORD="${REPLICATION_PASSWORD:?}"
  for attempt in $(seq 1 30); do
    echo "replica: pg_basebackup from ${primary} (attempt ${attempt})"
    # -R: standby.signal + primary_conninfo; -S: stream and keep WAL through
    # the slot the primary's init script created; -X stream: WAL written
    # during the copy comes along, so the clone is consistent.
    if gosu postgres pg_basebackup --host="$primary" --username=replicator \
      --pgdata="$PGDATA" --write-recovery-conf --slot="$slot" \
      --wal-method=stream --checkpoint=fast; then
      break
    fi
    # A half-written clone must not be mistaken for a finished one.
    find "$PGDATA" -mindepth 1 -delete
    sleep 2
  done
  unset PGPASSWORD
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "replica: could not clone ${primary}; giving up" >&2
    exit 1
  fi
fi

exec docker-entrypoint.sh "$@"
