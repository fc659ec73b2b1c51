#!/usr/bin/env bash
# Fuzz smoke run (issue 9): builds the fuzz crate (fuzz/) and runs every target for a short,
# bounded time on the committed seed corpus. A crash, an assertion failure, a timeout or an OOM
# fails the run and leaves the input under fuzz/artifacts/<target>/ (the log says how to replay it).
#
# Usage: .ci/fuzz.sh [SECONDS_PER_TARGET]   (default 20; MESHTRUST_FUZZ_SECS also sets it)
# cargo-fuzz runs on stable Rust with RUSTC_BOOTSTRAP=1 (it needs -Z flags for the
# sanitizer-coverage instrumentation). FUZZING.md has the long runs and the exact commands.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-${MESHTRUST_FUZZ_SECS:-20}}"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
# The fuzz crate has its own workspace, lockfile and target dir, whatever the caller set.
unset CARGO_TARGET_DIR
fuzz_target_dir="$PWD/fuzz/target"

# cargo-fuzz: use one on PATH if it is 0.13, else the cached install, else install it into the
# cache (bounded by a 15 min timeout; it took 1.5-4 min on the shared 2-core machine).
cargo_fuzz_version=0.13.2
cache="${MESHTRUST_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshtrust-ci}/cargo-fuzz-$cargo_fuzz_version"
if ! cargo fuzz --version 2>/dev/null | grep -q "^cargo-fuzz 0\.13\."; then
  if [ ! -x "$cache/bin/cargo-fuzz" ]; then
    echo "== installing cargo-fuzz $cargo_fuzz_version into $cache"
    timeout 900 cargo install --locked --quiet --root "$cache" "cargo-fuzz@$cargo_fuzz_version"
  fi
  export PATH="$cache/bin:$PATH"
fi
cargo fuzz --version

# No sanitizer: the code under test is unsafe-free (unsafe_code = "forbid"), so what a target can
# find is a panic, a failed invariant, a hang or unbounded memory, none of which needs ASan, and
# build and runs are faster without it.
fuzz_flags=(--sanitizer none --target-dir "$fuzz_target_dir")

echo "== cargo fuzz build (all targets)"
start=$(date +%s)
cargo fuzz build "${fuzz_flags[@]}"
echo "fuzz build took $(( $(date +%s) - start )) s"

targets=$(cargo fuzz list)
failed=()
for target in $targets; do
  [ -d "fuzz/corpus/$target" ] || { echo "no seed corpus fuzz/corpus/$target"; exit 1; }
  # New inputs go to a scratch dir: the committed corpus is read, never written.
  scratch=$(mktemp -d)
  mkdir -p "fuzz/artifacts/$target"
  echo "== fuzz $target for ${secs}s ($(ls "fuzz/corpus/$target" | wc -l) seeds)"
  if ! cargo fuzz run "${fuzz_flags[@]}" "$target" "$scratch" "fuzz/corpus/$target" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$target/" 2>"$scratch.log"; then
    tail -n 60 "$scratch.log"
    echo "FUZZ FAILURE in $target; replay with:"
    echo "  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none $target fuzz/artifacts/$target/<file>"
    failed+=("$target")
  else
    grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)|^Done ' "$scratch.log" || true
  fi
  rm -rf "$scratch" "$scratch.log"
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]}"
  exit 1
fi
echo "fuzz: $(echo $targets | wc -w) targets ran ${secs}s each, no failure"
