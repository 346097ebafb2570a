#!/usr/bin/env bash
# Debian's PostgreSQL for the store tests (test/store.test.ts, through test/helpers/postgres.ts):
# installed when missing, its cluster listening on 127.0.0.1 only, and a role and database for the
# tests (the role may create databases: each test makes its own and drops it). Safe to run again:
# nothing is done that is already there.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
ROLE=${PG_TEST_ROLE:-lop}
PASSWORD=${PG_TEST_PASSWORD:-lop}
DB=${PG_TEST_DB:-lop_test}
PORT=${PG_TEST_PORT:-5432}

if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi

# the first cluster Debian made (e.g. 15 main)
read -r version cluster port status _ < <(pg_lsclusters -h | head -n 1)
conf=/etc/postgresql/$version/$cluster/postgresql.conf
if ! grep -qE "^listen_addresses = '127.0.0.1'" "$conf"; then
  echo "listen_addresses = '127.0.0.1'" >>"$conf"
  [ "$status" = online ] && pg_ctlcluster "$version" "$cluster" restart
fi
if [ "$port" != "$PORT" ]; then
  echo "postgres: cluster $version/$cluster listens on port $port, not $PORT (set PG_TEST_PORT and TEST_DATABASE_URL)" >&2
  exit 1
fi
if ! pg_ctlcluster "$version" "$cluster" status >/dev/null 2>&1; then
  pg_ctlcluster "$version" "$cluster" start
fi

psql_admin() { su postgres -c "psql -p $PORT -v ON_ERROR_STOP=1 -qtA $*"; }
until su postgres -c "pg_isready -q -h 127.0.0.1 -p $PORT"; do sleep 0.5; done
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'\"")" != 1 ]; then
  psql_admin "-c \"CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'\""
fi
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname = '$DB'\"")" != 1 ]; then
  psql_admin "-c \"CREATE DATABASE $DB OWNER $ROLE\""
fi
echo "postgres: $version/$cluster on 127.0.0.1:$PORT; TEST_DATABASE_URL=postgres://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
