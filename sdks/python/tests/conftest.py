"""Real fovea nodes for the tests: the workspace's binary (FOVEA_BIN, else
target/release/fovea or target/debug/fovea from the repository root), on loopback."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[3]
T = TypeVar("T")


def fovea_bin() -> str:
    candidates = [os.environ.get("FOVEA_BIN"), ROOT / "target/release/fovea", ROOT / "target/debug/fovea"]
    for c in candidates:
        if c and Path(c).is_file():
            return str(c)
    raise RuntimeError("no fovea binary: run `cargo build --release -p fovea` first, or set FOVEA_BIN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Node:
    """A running `fovea node` with every transport: `quic`, `tls` and `ws` URLs, and
    `mcp` (its MCP endpoint's URL) when started with `mcp=True`."""

    args: list[str]
    dir: str
    proc: subprocess.Popen[bytes] | None = None
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def cert(self) -> str:
        return os.path.join(self.dir, "node.crt")

    @property
    def quic(self) -> str:
        return self.urls["quic"]

    @property
    def tls(self) -> str:
        return self.urls["tls"]

    @property
    def ws(self) -> str:
        return self.urls["ws"]

    @property
    def mcp(self) -> str:
        return self.urls["mcp"]

    def start(self) -> Node:
        log = open(os.path.join(self.dir, "log"), "ab")
        self.proc = subprocess.Popen([fovea_bin(), *self.args], stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 20
        out = b""
        while b"ready" not in out:
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the node did not start: {open(os.path.join(self.dir, 'log')).read()}")
            out += line
        text = out.decode()
        for scheme in ("quic", "tls", "ws"):
            m = re.search(scheme + r"://[^ ,)]+", text)
            if m:
                self.urls[scheme] = m.group(0)
        m = re.search(r"mcp (http://[^ ,)]+)", text)
        if m:
            self.urls["mcp"] = m.group(1)
        return self

    def stop(self, graceful: bool = False) -> None:
        """SIGKILL: the node gets no chance to say goodbye; or, `graceful`, SIGTERM: it
        tells its clients to go (GOAWAY) before it exits."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            self.proc.wait()


def start_node(
    *,
    quic_port: int = 0,
    ws_port: int = 0,
    tcp_port: int = 0,
    config: str | None = None,
    dir: str | None = None,
    mcp: bool = False,
) -> Node:
    d = dir or tempfile.mkdtemp(prefix="fovea-py-")
    args = [
        "node",
        "--listen",
        f"127.0.0.1:{quic_port}",
        "--admin",
        "off",
        "--data-dir",
        d,
        "--ws",
        f"127.0.0.1:{ws_port}",
        "--tcp",
        f"127.0.0.1:{tcp_port}",
    ]
    if mcp:
        args += ["--mcp", "127.0.0.1:0"]
    if config is not None:
        path = os.path.join(d, "fovea.toml")
        with open(path, "w") as f:
            f.write(config)
        args += ["--config", path]
    return Node(args, d).start()


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    n = start_node()
    yield n
    n.stop()


def run(body: Callable[[], Awaitable[T]], timeout: float = 60) -> T:
    """Runs an async test body on a fresh event loop, bounded by `timeout` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(body(), timeout)

    return asyncio.run(bounded())


TRANSPORTS = ["quic", "tls", "ws"]
"""The URL schemes every test node serves (`Node.urls` keys)."""
