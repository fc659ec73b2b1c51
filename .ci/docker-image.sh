#!/usr/bin/env bash
# Builds the meshtrust image on a machine without an image registry, from the binary built on
# the host: the base image (.ci/docker-base.sh, cached), the Dockerfile's `runtime` stage
# (`--target runtime`, shared with the users' image), then the binary copied in
# (.ci/prebuilt.Dockerfile). The binary is stripped of debug info on the way (symbols kept).
#   .ci/docker-image.sh [BINARY [TAG]]     default: target/debug/meshtrust, meshtrust:dev
#   .ci/docker-image.sh --runtime-only     the base image and the runtime stage alone
set -euo pipefail
cd "$(dirname "$0")/.."

runtime="${MESHTRUST_RUNTIME_IMAGE:-meshtrust-runtime:local}"
runtime_only=false
if [ "${1:-}" = "--runtime-only" ]; then
  runtime_only=true
else
  bin="${1:-${CARGO_TARGET_DIR:-target}/debug/meshtrust}"
  tag="${2:-meshtrust:dev}"
  if [ ! -x "$bin" ]; then
    echo "docker-image: no binary at $bin (run cargo build first)" >&2
    exit 1
  fi
fi

.ci/docker-base.sh

ctx="$(mktemp -d "${TMPDIR:-/tmp}/meshtrust-image.XXXXXX")"
trap 'rm -rf "$ctx" "$ctx.log"' EXIT
# The classic builder (no buildx here) warns that it is deprecated on every build: its output is
# shown only when the build fails.
build() {
  docker build --quiet "$@" >"$ctx.log" 2>&1 || { cat "$ctx.log" >&2; return 1; }
}

build --target runtime --tag "$runtime" .
if $runtime_only; then
  echo "docker-image: $runtime ($(docker image inspect -f '{{.Size}}' "$runtime") bytes)"
  exit 0
fi
if command -v strip >/dev/null 2>&1; then
  strip --strip-debug -o "$ctx/meshtrust" "$bin"
else
  cp "$bin" "$ctx/meshtrust"
fi
build --build-arg RUNTIME="$runtime" --tag "$tag" --file .ci/prebuilt.Dockerfile "$ctx"
echo "docker-image: $tag from $bin ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
