#!/usr/bin/env bash
# Runs once, when the primary's data volume is first initialised (the official
# image sources /docker-entrypoint-initdb.d/*.sh as the postgres user).
#
# - role `app` (not a superuser) owning database `app`: what the services and
#   migrations connect as;
# - role `replicator` and the physical slot `replica_1` for postgres-replica.
#   The slot exists before the replica's first pg_basebackup, so a replica
#   rebuilt from an empty volume reuses it rather than failing on -C;
# - pg_stat_statements in `app` (shared_preload_libraries is set on the
#   command line in compose.yaml), for deploy/doctor and query analysis.
#
# No `set -u`: if the file loses its exec bit the image sources it into its
# own entrypoint, whose later steps read unset variables.
set -eo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v app_password="${APP_DB_PASSWORD:?}" \
  -v replication_password="${REPLICATION_PASSWORD:?}" <<'SQL'
CREATE ROLE app LOGIN PASSWORD :'app_password';
CREATE DATABASE app OWNER app;
CREATE ROLE replicator LOGIN REPLICATION PASSWORD :'replication_password';
SELECT pg_create_physical_replication_slot('replica_1');
\connect app
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
SQL

# The image's pg_hba.conf admits every *database* from the network, but
# replication connections match only lines naming `replication`.
echo "host replication replicator all scram-sha-256" >>"$PGDATA/pg_hba.conf"
