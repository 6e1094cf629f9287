#!/bin/sh
# Entrypoint of the pgbouncer service: writes the auth file pgbouncer.ini
# names from the environment, then runs PgBouncer in the foreground.
# The password lives in .env only, never in a committed file.
set -eu

: "${APP_DB_USER:?}" "${APP_DB_PASSWORD:?}"
case "$APP_DB_PASSWORD" in
  *'"'*)
    echo "start-pgbouncer: APP_DB_PASSWORD must not contain a double quote (userlist.txt syntax)" >&2
    exit 1
    ;;
esac

mkdir -p /tmp/pgbouncer
umask 077
printf '"%s" "%s"\n' "$APP_DB_USER" "$APP_DB_PASSWORD" >/tmp/pgbouncer/userlist.txt

exec pgbouncer /etc/pgbouncer/pgbouncer.ini
