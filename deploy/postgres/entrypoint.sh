#!/bin/bash
# PostgreSQL for meshtrust replicas, in a container (deploy/postgres/Dockerfile). At the first
# start (an empty $PGDATA volume): initdb, the role `meshtrust` with the password read from
# $PG_PASSWORD_FILE and the database `meshtrust` it owns; only that role may connect over TCP
# (scram-sha-256), the superuser only through the local socket (peer). Then, every start: the
# server in the foreground (PID 1 under the container's init; SIGTERM = smart shutdown).
# The socket and lock live in /tmp (a tmpfs: the root filesystem is read-only).
set -euo pipefail

: "${PGDATA:?}" "${PG_PASSWORD_FILE:?PG_PASSWORD_FILE names the meshtrust role password file}"
sockets=/tmp

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ ! -s "$PG_PASSWORD_FILE" ]; then
    echo "meshtrust-postgres: no password in $PG_PASSWORD_FILE" >&2
    exit 64
  fi
  echo "meshtrust-postgres: first start: initdb in $PGDATA"
  initdb -D "$PGDATA" --username=postgres --auth-local=peer --auth-host=reject \
    --encoding=UTF8 --no-locale >/dev/null
  pg_ctl -D "$PGDATA" -w -t 60 -o "-c listen_addresses='' -c unix_socket_directories=$sockets" \
    -l /tmp/init.log start >/dev/null
  # The password goes from the file to psql's variable, never on a command line.
  psql -v ON_ERROR_STOP=1 -q -h "$sockets" -U postgres -d postgres <<'SQL'
\set pw `cat "$PG_PASSWORD_FILE"`
SET password_encryption = 'scram-sha-256';
CREATE ROLE meshtrust LOGIN PASSWORD :'pw';
CREATE DATABASE meshtrust OWNER meshtrust;
SQL
  pg_ctl -D "$PGDATA" -w -m fast stop >/dev/null
  cat >"$PGDATA/pg_hba.conf" <<'HBA'
# TYPE  DATABASE   USER       ADDRESS  METHOD
local   all        postgres            peer
host    meshtrust  meshtrust  all      scram-sha-256
HBA
  echo "meshtrust-postgres: role and database meshtrust created"
fi

exec postgres -D "$PGDATA" -c jit=off -c listen_addresses='*' -c unix_socket_directories="$sockets"
