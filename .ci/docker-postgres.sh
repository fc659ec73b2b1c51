#!/usr/bin/env bash
# Builds the PostgreSQL image of docker-compose.hosts.yml without an image registry: the local
# base image (.ci/docker-base.sh, cached) plus Debian's `postgresql` package
# (deploy/postgres/Dockerfile). Docker's layer cache keeps it between runs: a second build with
# the same Dockerfile and entrypoint downloads nothing.
#   .ci/docker-postgres.sh [TAG]     default: meshtrust-postgres:local (MESHTRUST_PG_IMAGE)
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${1:-${MESHTRUST_PG_IMAGE:-meshtrust-postgres:local}}"
.ci/docker-base.sh

log="$(mktemp "${TMPDIR:-/tmp}/meshtrust-pg-image.XXXXXX")"
trap 'rm -f "$log"' EXIT
# The classic builder warns that it is deprecated on every build: shown only on failure.
docker build --quiet --tag "$tag" deploy/postgres >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
echo "docker-postgres: $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
