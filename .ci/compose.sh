#!/usr/bin/env bash
# CI's compose step, before `cargo test`: checks the Docker Engine and the compose tool,
# validates docker-compose.yml, makes the base image without a registry (.ci/docker-base.sh:
# debootstrap + docker import, once per machine, cached) and the Dockerfile's runtime stage on it
# (.ci/docker-image.sh --runtime-only). The demo itself runs in `cargo test` (tests/compose.rs):
# it puts the binary under test on that runtime stage (one layer) and runs the compose file;
# with MESHTRUST_REQUIRE_DOCKER=1 it fails instead of skipping when Docker is missing.
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
.ci/docker-image.sh --runtime-only
echo "compose: images ready in $((SECONDS - start))s"
