#!/usr/bin/env bash
# CI's compose step, before `cargo test`: checks the Docker Engine and the compose tool,
# validates docker-compose.yml and docker-compose.hosts.yml, makes the base image without a
# registry (.ci/docker-base.sh: debootstrap + docker import, once per machine, cached), the
# Dockerfile's runtime stage on it (.ci/docker-image.sh --runtime-only) and the PostgreSQL image
# of the mesh across hosts (.ci/docker-postgres.sh, cached). The compose files themselves run
# in `cargo test` (tests/compose.rs, tests/compose_hosts.rs): they put the binary under test on
# that runtime stage (one layer) and run the compose file; with MESHTRUST_REQUIRE_DOCKER=1 they
# fail instead of skipping when Docker is missing.
# No `cargo build` here: a bin-only build resolves other features than `cargo test` and would
# compile the dependencies twice.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$SECONDS
docker info --format 'docker engine {{.ServerVersion}}, storage {{.Driver}}'
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "compose: neither \`docker compose\` nor \`docker-compose\` is installed" >&2
  exit 1
fi
echo "compose tool: ${compose[*]} $("${compose[@]}" version --short)"

"${compose[@]}" -f docker-compose.yml config -q
"${compose[@]}" -f docker-compose.hosts.yml config -q
.ci/docker-image.sh --runtime-only
# The mesh across hosts (tests/compose_hosts.rs) runs PostgreSQL from the same local base plus
# Debian's package: built once here (Docker's layer cache keeps it between runs).
.ci/docker-postgres.sh
echo "compose: images ready in $((SECONDS - start))s"
