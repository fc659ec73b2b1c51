#!/usr/bin/env bash
# A private, throwaway PostgreSQL cluster for the tests.
#
#   .ci/postgres.sh start DIR   installs Debian's postgresql when missing, creates a cluster in
#                               DIR (initdb as the postgres user when run as root), starts it on a
#                               free 127.0.0.1 port with its socket in DIR, creates the role
#                               `meshtrust` (CREATEDB: each test creates and drops its own
#                               database) and the database `meshtrust`, and writes the URL to
#                               DIR/url. Prints `export MESHTRUST_TEST_PG_URL_FILE=DIR/url`.
#                               TLS is on: DIR/ca.pem authenticates the server (localhost,
#                               127.0.0.1); the role `meshtrust_tls` may log in over TLS only.
#   .ci/postgres.sh stop DIR    stops that cluster (fast shutdown).
#   .ci/postgres.sh restart DIR starts it again after a stop (same port, same data).
#
# Tests read the URL from the file named by MESHTRUST_TEST_PG_URL_FILE (or the URL itself from
# MESHTRUST_TEST_PG_URL). They skip with a note when neither is set, and fail instead when
# MESHTRUST_REQUIRE_POSTGRES=1 (CI). Nothing here touches the system's own cluster.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
  echo "usage: $0 start|stop|restart DIR" >&2
  exit 64
fi

find_bin() {
  local b
  for b in /usr/lib/postgresql/*/bin; do
    if [ -x "$b/initdb" ]; then echo "$b"; return 0; fi
  done
  return 1
}

if ! bin=$(find_bin); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
  bin=$(find_bin)
fi

# As root, the server runs as the postgres user (it refuses to run as root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pg_start() {
  if as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then return 0; fi
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

case "$cmd" in
  start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$dir"; fi
    chmod 0700 "$dir"
    if [ ! -e "$dir/data/PG_VERSION" ]; then
      as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
      port=$(free_port)
      cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
      echo "$port" >"$dir/port"
      # TLS: a throwaway CA and a server certificate for localhost/127.0.0.1. The role
      # meshtrust_tls may connect over TLS only (tests prove verify-full is really used).
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=meshtrust test CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=localhost" -keyout "$dir/data/server.key" -out "$dir/server.csr" 2>/dev/null
      printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$dir/server.ext"
      openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 30 -extfile "$dir/server.ext" -out "$dir/data/server.crt" 2>/dev/null
      chmod 0600 "$dir/data/server.key"
      if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$dir/data/server.key" "$dir/data/server.crt"; fi
      chmod 0644 "$dir/ca.pem"
      printf "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n" >>"$dir/data/postgresql.conf"
      { echo "hostnossl all meshtrust_tls 0.0.0.0/0 reject"; cat "$dir/data/pg_hba.conf"; } >"$dir/hba.tmp"
      cat "$dir/hba.tmp" >"$dir/data/pg_hba.conf" && rm -f "$dir/hba.tmp"
    fi
    port=$(cat "$dir/port")
    pg_start
    as_pg "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 <<'EOF' >/dev/null
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'meshtrust') THEN
    CREATE ROLE meshtrust LOGIN CREATEDB PASSWORD 'meshtrust';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'meshtrust_tls') THEN
    CREATE ROLE meshtrust_tls LOGIN PASSWORD 'meshtrust';
  END IF;
END $$;
SELECT 'CREATE DATABASE meshtrust OWNER meshtrust'
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'meshtrust') \gexec
EOF
    echo "postgres://meshtrust:meshtrust@127.0.0.1:$port/meshtrust" >"$dir/url"
    chmod 0644 "$dir/url"
    echo "export MESHTRUST_TEST_PG_URL_FILE=$dir/url"
    ;;
  stop)
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  restart)
    pg_start
    ;;
  *)
    echo "usage: $0 start|stop|restart DIR" >&2
    exit 64
    ;;
esac
