#!/usr/bin/env bash
# Tests fovea against third-party Python clients (interop/*/requirements.txt pins them).
#
#   scripts/interop-python.sh [PYTEST ARGS…]
#
# Builds the fovea binary and the MCP fixture service (release), makes a virtualenv under
# target/interop-venv with the pinned packages, and runs pytest on interop/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --locked --release -q -p fovea --bin fovea
cargo build --locked --release -q -p fovea-client --example mcp-fixture
VENV=${INTEROP_VENV:-$ROOT/target/interop-venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r interop/mcp-python/requirements.txt
exec "$VENV/bin/python" -m pytest -q interop "$@"
