#!/usr/bin/env bash
# Runs every meshtrust benchmark on this machine and prints ONE table: figure, value, baseline
# (measured in the same run), ratio, target, met. Also writes it, with the machine and the notes,
# to target/bench/results.md (or $MESHTRUST_BENCH_OUT).
#
#   benches/run.sh            full run, release build (about 10 minutes plus the wait for an idle machine)
#   benches/run.sh --smoke    every bench builds and runs once with tiny sizes; no figures recorded
#                             (dev profile, so it reuses the debug build of `cargo test`)
#
# Needs root or the tools already present: installs nginx and wrk from Debian when missing.
# Everything runs on loopback; every load run is bounded in time and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
if [[ "${1:-}" == "--smoke" || "${MESHTRUST_BENCH_SMOKE:-}" == "1" ]]; then
    smoke=1
fi

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    echo "run.sh: installing nginx and wrk from Debian" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nginx-light wrk >/dev/null || apt-get install -y -qq nginx wrk >/dev/null
fi
for tool in nginx wrk curl openssl taskset; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is missing" >&2; exit 1; }
done

# Figure 4b, agent failover and the replicas run on PostgreSQL: a private throwaway cluster unless one is given.
if [[ -z "${MESHTRUST_TEST_PG_URL_FILE:-}" && -z "${MESHTRUST_TEST_PG_URL:-}" ]]; then
    pg_dir=$(mktemp -d /tmp/meshtrust-bench-pg.XXXXXX)
    eval "$(.ci/postgres.sh start "$pg_dir")"
    trap '.ci/postgres.sh stop "$pg_dir" >/dev/null 2>&1 || true' EXIT
fi

# The Workload API bench holds thousands of sockets open in each of two processes.
ulimit -n "$(ulimit -Hn)" || true

benches=(issuance footprint bundle_endpoint workload_api federation_scale hostile store agents replicas)
if ((smoke)); then
    profile=(--profile dev)
    bench_args=(--smoke)
    export MESHTRUST_BENCH_SMOKE=1
else
    profile=()
    bench_args=()
fi
build_args=()
for b in "${benches[@]}"; do build_args+=(--bench "$b"); done
cargo bench "${profile[@]}" "${build_args[@]}" --no-run

load1() { cut -d' ' -f1 /proc/loadavg; }
if ((!smoke)); then
    # Figures taken while other jobs compile are noise: wait (up to 20 min) for an idle machine.
    # MESHTRUST_BENCH_MAX_LOAD (default 0.5) for a machine whose load average has a floor with
    # an idle CPU (a kernel thread counted as runnable).
    max_load=${MESHTRUST_BENCH_MAX_LOAD:-0.5}
    for _ in $(seq 40); do
        awk -v l="$(load1)" -v m="$max_load" 'BEGIN { exit !(l < m) }' && break
        echo "run.sh: load average $(load1), waiting for < $max_load" >&2
        sleep 30
    done
fi
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

out_dir=target/bench
mkdir -p "$out_dir"
raw="$out_dir/raw.log"
: >"$raw"
failed=()
for b in "${benches[@]}"; do
    echo "run.sh: $b (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    pin=()
    # Figure 1 is per core: one thread, pinned.
    [[ "$b" == issuance ]] && pin=(taskset -c 0)
    # A failed bench does not hide the others' figures; the run still exits non-zero.
    if ! "${pin[@]}" cargo bench "${profile[@]}" --bench "$b" -- "${bench_args[@]}" >"$out_dir/$b.log" 2>&1; then
        failed+=("$b")
        echo "ROW|$b: FAILED, see $out_dir/$b.log|-|-|-|-|**NO**" >>"$raw"
        tail -5 "$out_dir/$b.log" | sed 's/^/    /' >&2
    fi
    grep '^\(ROW\|NOTE\)|' "$out_dir/$b.log" >>"$raw" || true
    echo "NOTE|load average after $b: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$raw"
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

table() {
    echo "| figure | value | baseline (same run) | ratio | target | met? |"
    echo "|---|---|---|---|---|---|"
    grep '^ROW|' "$raw" | awk -F'|' '{ printf "|"; for (i = 2; i <= NF; i++) printf " %s |", $i; print "" }'
}

if ((smoke)); then
    table
    rows=$(grep -c '^ROW|' "$raw" || true)
    if ((${#failed[@]})); then
        echo "run.sh --smoke: FAILED: ${failed[*]}"
        exit 1
    fi
    echo "run.sh --smoke: ${#benches[@]} benches built and ran, $rows rows (no figures recorded)"
    exit 0
fi

result="${MESHTRUST_BENCH_OUT:-$out_dir/results.md}"
{
    echo "# meshtrust benchmarks, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r), $(rustc -V)"
    echo "- load average (1, 5, 15 min): $load_start at the start, $load_end at the end"
    echo "- command: benches/run.sh"
    echo
    table
    echo
    echo "Notes:"
    echo
    grep '^NOTE|' "$raw" | sed 's/^NOTE|/- /'
} >"$result"
cat "$result"
echo "run.sh: written to $result" >&2
if ((${#failed[@]})); then
    echo "run.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
