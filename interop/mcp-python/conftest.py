"""A real node and a provider of test tools, for the tests of this directory.

The binaries come from the workspace: FOVEA_BIN (default target/release/fovea) and
FOVEA_FIXTURE (default target/release/examples/mcp-fixture); scripts/interop-python.sh
builds both.
"""

import os
import pathlib
import re
import subprocess
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _binary(env: str, default: str) -> str:
    path = os.environ.get(env, str(ROOT / default))
    if not os.path.exists(path):
        pytest.exit(f"{path} not found: build it (scripts/interop-python.sh does) or set {env}", returncode=2)
    return path


def _wait_for(pattern: str, path: pathlib.Path, proc: subprocess.Popen, what: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        found = re.search(pattern, text)
        if found:
            return found.group(0)
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {text}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start: {path.read_text()}")


@pytest.fixture(scope="session")
def node():
    """A node on loopback with the MCP fixture's tools registered: (fovea binary, url, ca)."""
    fovea = _binary("FOVEA_BIN", "target/release/fovea")
    fixture = _binary("FOVEA_FIXTURE", "target/release/examples/mcp-fixture")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        out = tmp / "node.out"
        with open(out, "w") as o, open(tmp / "node.err", "w") as e:
            proc = subprocess.Popen(
                [fovea, "node", "--listen", "127.0.0.1:0", "--admin", "off", "--data-dir", str(tmp / "data")],
                stdout=o,
                stderr=e,
            )
        try:
            url = _wait_for(r"quic://[0-9.]+:[0-9]+", out, proc, "the node")
            ca = str(tmp / "data" / "node.crt")
            fix_out = tmp / "fixture.out"
            with open(fix_out, "w") as o:
                fix = subprocess.Popen([fixture, url, ca], stdout=o, stderr=subprocess.STDOUT)
            try:
                _wait_for("ready", fix_out, fix, "the fixture")
                yield fovea, url, ca
            finally:
                fix.kill()
                fix.wait()
        finally:
            proc.kill()
            proc.wait()
