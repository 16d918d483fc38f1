#!/usr/bin/env bash
# The Python SDK (sdks/python) as a new user gets it: a fresh virtualenv, `pip install
# ./sdks/python[test]` (maturin builds the extension from the workspace, release profile),
# then ruff (lint, format), mypy --strict, and pytest against real nodes (with a short run of
# the mesh chaos driver, scripts/mesh_chaos.py).
#
#   scripts/python-sdk.sh [PYTEST ARGS…]
#   PY_SDK_VENV=DIR to put the virtualenv elsewhere (default target/py-sdk-ci-venv, remade each run)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --locked --release -q -p fovea --bin fovea
VENV=${PY_SDK_VENV:-$ROOT/target/py-sdk-ci-venv}
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "./sdks/python[test]"
cd sdks/python
"$VENV/bin/ruff" check . ../../scripts/mesh_chaos.py
"$VENV/bin/ruff" format --check . ../../scripts/mesh_chaos.py
"$VENV/bin/mypy"
# The installed package, not the source tree's python/ (which has no extension in it).
FOVEA_BIN="$ROOT/target/release/fovea" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
