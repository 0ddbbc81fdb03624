#!/bin/sh
# The official postgres image's contract, reduced: on first start create the cluster in
# $PGDATA with POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, then run postgres.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pwfile --encoding=UTF8 --locale=C.UTF-8 --auth-host=scram-sha-256 --auth-local=trust >/dev/null
  rm -f /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  postgres -D "$PGDATA" -c listen_addresses='' -k /run/postgresql &
  until pg_isready -h /run/postgresql -q; do sleep 0.2; done
  if [ "${POSTGRES_DB:-$POSTGRES_USER}" != "postgres" ]; then
    createdb -h /run/postgresql -U "$POSTGRES_USER" "${POSTGRES_DB:-$POSTGRES_USER}"
  fi
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -k /run/postgresql "$@"
