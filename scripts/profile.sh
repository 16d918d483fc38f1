#!/usr/bin/env bash
# Profiles one `fovea bench` workload against a node started by hand on loopback, the way
# BENCHMARKS.md's profiles were taken. Run from the repo root after
# `cargo build --release -p fovea`.
#
#   scripts/profile.sh instructions <bench args>   # user-space instructions per operation
#   scripts/profile.sh flame OUT.svg <bench args>  # flame graph of the whole machine
#
# e.g. scripts/profile.sh instructions rpc --callers 64 --calls 60000
#      scripts/profile.sh flame /tmp/rpc64.svg rpc --callers 64 --calls 600000
#
# instructions: runs the node, then the load generator, each under valgrind's callgrind
# (deterministic instruction counts: a change of a few percent shows, which no timing on
# this machine resolves). The node's counters are zeroed after a warm-up of the same
# workload (valgrind's instrumentation is switched on only then), so its figure excludes
# start-up and the warm-up's handshakes; the load generator's includes
# its own connection set-up. Prints instructions per operation (calls, or messages
# delivered) for each process and the node's top functions; keeps the callgrind files
# (open them with `callgrind_annotate` or kcachegrind). Needs valgrind.
#
# flame: `perf record -a -g` while the workload runs against a node running natively,
# folded with inferno (`cargo install inferno`) into an SVG: kernel and both processes in
# one picture, which is where wake-ups show. Needs perf and inferno.
set -euo pipefail
mode=${1:?usage: scripts/profile.sh instructions|flame [OUT.svg] <bench args>}
shift
F=${FOVEA:-./target/release/fovea}
[ -x "$F" ] || { echo "error: $F not found; run cargo build --release -p fovea first (or set FOVEA)" >&2; exit 2; }
port=${PROFILE_PORT:-17877}
url=quic://127.0.0.1:$port
out=${PROFILE_DIR:-/tmp/fovea-profile}
mkdir -p "$out"
node_pid=
cleanup() { [ -n "$node_pid" ] && kill -INT "$node_pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

# Operations a bench run reports: `calls=` for RPC, `delivered=` for pub/sub and fan-out.
ops_of() { grep -o '\b\(calls\|delivered\)=[0-9]*' <<<"$1" | head -1 | cut -d= -f2; }

wait_ready() {
  for _ in $(seq 300); do
    grep -q "ready" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: the node did not print its ready line; see $1" >&2
  exit 1
}

case "$mode" in
instructions)
  command -v valgrind >/dev/null || { echo "error: valgrind is missing (apt-get install valgrind)" >&2; exit 2; }
  rm -f "$out"/node.cg.* "$out"/loadgen.cg.*
  # No idle spinning: a spin is instructions spent waiting, not work.
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/node.cg.%p" \
    "$F" node --listen "127.0.0.1:$port" --admin 127.0.0.1:0 --idle-spin 0 >"$out/node.log" 2>&1 &
  node_pid=$!
  wait_ready "$out/node.log"
  "$F" bench "$@" --url "$url" --insecure >/dev/null 2>&1 || true # warm-up
  callgrind_control -i on "$node_pid" >/dev/null 2>&1
  lg=$(valgrind --tool=callgrind --callgrind-out-file="$out/loadgen.cg.%p" \
    "$F" bench "$@" --url "$url" --insecure 2>/dev/null | tail -1)
  kill -INT "$node_pid"
  wait "$node_pid" 2>/dev/null || true
  node_pid=
  ops=$(ops_of "$lg")
  [ -n "$ops" ] && [ "$ops" -gt 0 ] || { echo "error: the bench reported no operations: $lg" >&2; exit 1; }
  node_file=$(ls -t "$out"/node.cg.* | head -1)
  lg_file=$(ls -t "$out"/loadgen.cg.* | head -1)
  total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'; }
  node_ir=$(total "$node_file")
  lg_ir=$(total "$lg_file")
  echo "$lg"
  echo "operations $ops"
  echo "node: $node_ir instructions, $((node_ir / ops)) per operation ($node_file)"
  echo "load generator: $lg_ir instructions, $((lg_ir / ops)) per operation, set-up included ($lg_file)"
  echo "node, top functions (self):"
  callgrind_annotate "$node_file" 2>/dev/null | sed -n '/file:function/,$p' | sed -n '3,22p' | cut -c1-160
  ;;
flame)
  svg=${1:?usage: scripts/profile.sh flame OUT.svg <bench args>}
  shift
  command -v perf >/dev/null || { echo "error: perf is missing (apt-get install linux-perf)" >&2; exit 2; }
  command -v inferno-flamegraph >/dev/null || { echo "error: inferno is missing (cargo install inferno)" >&2; exit 2; }
  "$F" node --listen "127.0.0.1:$port" --admin 127.0.0.1:0 >"$out/node.log" 2>&1 &
  node_pid=$!
  wait_ready "$out/node.log"
  "$F" bench "$@" --url "$url" --insecure >"$out/bench.txt" 2>&1 &
  bench_pid=$!
  sleep 1 # past connection set-up
  perf record -a -g -F 999 -o "$out/perf.data" -- sleep "${PROFILE_SECONDS:-2}" 2>/dev/null
  wait "$bench_pid" || true
  tail -1 "$out/bench.txt"
  perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf >"$out/folded.txt"
  inferno-flamegraph --title "fovea bench $*" <"$out/folded.txt" >"$svg"
  echo "samples by thread and object (fovea-node: the node's workers; tokio-rt-worker: the load generator's; swapper: an idle core):"
  perf report -i "$out/perf.data" -g none --no-children --sort comm,dso --stdio 2>/dev/null | grep -v '^#' | grep . | head -8
  echo "samples by function (self):"
  perf report -i "$out/perf.data" -g none --no-children --sort sym --stdio 2>/dev/null | grep -v '^#' | grep '%' | head -15
  echo "flame graph: $svg (folded stacks: $out/folded.txt)"
  ;;
*)
  echo "error: unknown mode '$mode': use instructions or flame" >&2
  exit 2
  ;;
esac
