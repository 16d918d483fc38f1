#!/usr/bin/env bash
# Real nodes under churn (scripts/mesh_chaos.py): builds the node (release) and installs the
# Python SDK into a virtualenv (target/chaos-venv, kept between runs), then runs the driver.
#
#   scripts/mesh-chaos.sh [--nodes 30] [--minutes 3] [--seed 1] [--rate MSGS_PER_S]
#
# The last line it prints: nodes= kills= delivered= expected= dropped= lost_silently=
# calls_ok= calls_failed= recover_p50_ms= recover_p99_ms= rss_kb_per_node= links_per_node=
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --locked --release -q -p fovea --bin fovea
VENV=${CHAOS_VENV:-$ROOT/target/chaos-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check ./sdks/python
exec "$VENV/bin/python" scripts/mesh_chaos.py --fovea "$ROOT/target/release/fovea" "$@"
