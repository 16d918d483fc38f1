"""Thirty real nodes under churn: `fovea node` processes on loopback forming a mesh, clients
of the Python SDK spread over them, and a fifth of the nodes killed (SIGKILL) and
restarted at random while messages and calls flow. Run through scripts/mesh-chaos.sh.

    python scripts/mesh_chaos.py [--nodes 30] [--minutes 3] [--seed 1] [--fovea BIN]

What is checked and reported:
- messages: publishers and subscribers (wildcard, and a queue group) on nodes that stay
  up; every message published must reach every such subscriber (and one member of the
  group), or be counted by the node as dropped (`DROPPED`, in `sub.dropped`): what is
  neither is `lost_silently`. Churn elsewhere must not disturb them, though DHT storers,
  links and providers die around them.
- calls: callers on nodes that stay up call a procedure provided on two of them and on
  every churning node; each call is answered or fails with an error class (a provider
  killed mid-call: `ProviderDisconnected`); nothing hangs.
- recovery: after each kill, the time until no node that stays up links to the killed one
  (the failure detector's work); memory and links per node.

Prints progress on stderr (each failed call too with CHAOS_DEBUG=1) and, last, a
`key=value` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fovea

ROOT = Path(__file__).resolve().parents[1]
SECRET = "chaos-mesh-secret-0123456789"


class Ports:
    """Free loopback ports, each distinct: the sockets that found them stay bound until
    `release`, so one port is never handed out twice."""

    def __init__(self) -> None:
        self.held: list[socket.socket] = []

    def take(self, kind: int) -> int:
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        self.held.append(s)
        port: int = s.getsockname()[1]
        return port

    def release(self) -> None:
        for s in self.held:
            s.close()


@dataclass
class Node:
    index: int
    dir: str
    quic: int
    mesh: int
    admin: int
    join: list[int]
    proc: subprocess.Popen[bytes] | None = None
    node_id: str = ""

    @property
    def url(self) -> str:
        return f"quic://127.0.0.1:{self.quic}"

    @property
    def cert(self) -> str:
        return os.path.join(self.dir, "node.crt")

    def start(self, bin: str) -> None:
        args = [
            bin,
            "node",
            "--listen",
            f"127.0.0.1:{self.quic}",
            "--mesh-listen",
            f"127.0.0.1:{self.mesh}",
            "--admin",
            f"127.0.0.1:{self.admin}",
            "--data-dir",
            self.dir,
            "--mesh-secret",
            SECRET,
            "--workers",
            "1",
        ]
        for port in self.join:
            args += ["--join", f"quic://127.0.0.1:{port}"]
        log = open(os.path.join(self.dir, "log"), "ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"node {self.index} did not start: {open(os.path.join(self.dir, 'log')).read()[-2000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def info(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/info", timeout=2) as r:
            data: dict[str, Any] = json.load(r)
            return data

    def rss_kb(self) -> int:
        if not self.proc:
            return 0
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


@dataclass
class Tally:
    published: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    # subscriber → publisher → sequence numbers seen
    seen: dict[int, dict[int, set[int]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))
    group_seen: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    group_duplicates: int = 0
    calls_ok: int = 0
    calls_failed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    recover_ms: list[float] = field(default_factory=list)
    kills: int = 0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    base = tempfile.mkdtemp(prefix="fovea-chaos-")
    n = args.nodes
    nodes: list[Node] = []
    ports = Ports()
    for i in range(n):
        mesh = ports.take(socket.SOCK_DGRAM)
        join = [nodes[0].mesh] if i > 0 else []
        if i > 1:
            join.append(nodes[rng.randrange(1, i)].mesh)
        d = os.path.join(base, f"n{i}")
        os.makedirs(d)
        nodes.append(Node(i, d, ports.take(socket.SOCK_DGRAM), mesh, ports.take(socket.SOCK_STREAM), join))
    ports.release()
    churn = set(rng.sample(range(1, n), max(1, n // 5)))
    stable = [i for i in range(n) if i not in churn]
    log(f"starting {n} nodes in {base} ({len(churn)} will churn: {sorted(churn)})")
    for node in nodes:
        node.start(args.fovea)
    for node in nodes:
        for _ in range(100):
            try:
                node.node_id = node.info()["mesh"]["node_id"]
                break
            except OSError:
                await asyncio.sleep(0.05)
    clients: list[fovea.Client] = []
    tally = Tally()
    stop = asyncio.Event()
    try:

        async def client(i: int) -> fovea.Client:
            c = await fovea.connect(nodes[i].url, ca=nodes[i].cert, max_reconnect_delay=0.2)
            clients.append(c)
            return c

        # Measured: publishers and subscribers on stable nodes.
        pub_nodes = rng.sample(stable, min(4, len(stable)))
        sub_nodes = rng.sample(stable, min(4, len(stable)))
        group_nodes = rng.sample(stable, min(3, len(stable)))
        subs = [(i, await (await client(i)).subscribe("chaos.>")) for i in sub_nodes]
        members = [await (await client(i)).subscribe("chaos.*.m", group="workers") for i in group_nodes]
        # Unmeasured load on churning nodes: subscribers and providers that come and go.
        for i in churn:
            c = await client(i)
            await c.subscribe("chaos.>")
        providers = [await (await client(i)).register("chaos.echo") for i in [*rng.sample(stable, 2), *churn]]

        async def serve(reg: fovea.Registration) -> None:
            async for req in reg:
                req.respond(req.payload)

        tasks = [asyncio.create_task(serve(r)) for r in providers]
        publishers = [(k, await client(i)) for k, i in enumerate(pub_nodes)]

        # Wait until every measured subscriber hears every publisher (routes are known).
        log("waiting for the mesh to route every publisher to every subscriber")
        ready_deadline = time.monotonic() + 60
        pending = {(s, k) for s, _ in enumerate(subs) for k, _ in publishers}
        while pending and time.monotonic() < ready_deadline:
            for k, p in publishers:
                await p.publish(f"chaos.p{k}.ready", b"")
            await asyncio.sleep(0.2)
            for s, (_, sub) in enumerate(subs):
                while (m := await sub.next(0)) is not None:
                    if m.topic.endswith(".ready"):
                        pending.discard((s, int(m.topic.split(".")[1][1:])))
        if pending:
            raise RuntimeError(f"routes never formed: {sorted(pending)}")

        async def publish(k: int, c: fovea.Client) -> None:
            seq = 0
            while not stop.is_set():
                await c.publish(f"chaos.p{k}.m", f"{k}:{seq}")
                tally.published[k] = seq + 1
                seq += 1
                await asyncio.sleep(1 / args.rate)

        async def consume(s: int, sub: fovea.Subscription) -> None:
            async for m in sub:
                if m.topic.endswith(".m"):
                    k, seq = (int(x) for x in m.payload.decode().split(":"))
                    tally.seen[s][k].add(seq)

        async def member(sub: fovea.Subscription) -> None:
            async for m in sub:
                k, seq = (int(x) for x in m.payload.decode().split(":"))
                key = k * 1_000_000_000 + seq
                if key in tally.group_seen[0]:
                    tally.group_duplicates += 1
                tally.group_seen[0].add(key)

        async def call(c: fovea.Client) -> None:
            while not stop.is_set():
                try:
                    await c.call("chaos.echo", b"x", timeout=2)
                    tally.calls_ok += 1
                except fovea.FoveaError as e:
                    tally.calls_failed[type(e).__name__] += 1
                    if os.environ.get("CHAOS_DEBUG"):
                        log(f"call failed: {e!r}")
                await asyncio.sleep(0.02)

        callers = [await client(i) for i in rng.sample(stable, min(4, len(stable)))]
        tasks += [asyncio.create_task(consume(s, sub)) for s, (_, sub) in enumerate(subs)]
        tasks += [asyncio.create_task(member(m)) for m in members]
        tasks += [asyncio.create_task(publish(k, c)) for k, c in publishers]
        tasks += [asyncio.create_task(call(c)) for c in callers]

        async def gone_everywhere(dead: Node) -> None:
            while True:
                still = 0
                for i in stable:
                    try:
                        links = nodes[i].info()["mesh"]["links"]
                    except OSError:
                        continue
                    if any(link[0] == dead.node_id for link in links):
                        still += 1
                if still == 0:
                    return
                await asyncio.sleep(0.05)

        log("traffic flowing; churning")
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() < end:
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            victim = nodes[rng.choice(sorted(churn))]
            victim.kill()
            tally.kills += 1
            t0 = time.monotonic()
            await asyncio.wait_for(gone_everywhere(victim), 30)
            tally.recover_ms.append((time.monotonic() - t0) * 1e3)
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            victim.start(args.fovea)
        log("stopping traffic")
        stop.set()
        await asyncio.sleep(3)  # what is in flight arrives
        links = [len(nodes[i].info()["mesh"]["links"]) for i in range(n)]
        rss = [node.rss_kb() for node in nodes]
        dropped = sum(sub.dropped for _, sub in subs) + sum(m.dropped for m in members)
        for t in tasks:
            t.cancel()
    finally:
        for c in clients:
            try:
                await asyncio.wait_for(c.close(), 5)
            except Exception:
                pass
        for node in nodes:
            node.kill()

    published = sum(tally.published.values())
    expected = published * len(subs)
    delivered = sum(len(seqs) for per in tally.seen.values() for seqs in per.values())
    group_expected = published
    group_delivered = len(tally.group_seen[0])
    lost = (expected - delivered) + (group_expected - group_delivered)
    recover = sorted(tally.recover_ms)
    return {
        "nodes": n,
        "kills": tally.kills,
        "delivered": delivered + group_delivered,
        "expected": expected + group_expected,
        "dropped": dropped,
        "lost_silently": max(0, lost - dropped),
        "group_duplicates": tally.group_duplicates,
        "calls_ok": tally.calls_ok,
        "calls_failed": sum(tally.calls_failed.values()),
        "calls_failed_by": ",".join(f"{k}:{v}" for k, v in sorted(tally.calls_failed.items())) or "-",
        "recover_p50_ms": round(statistics.median(recover)) if recover else "-",
        "recover_p99_ms": round(recover[min(len(recover) - 1, int(len(recover) * 0.99))]) if recover else "-",
        "rss_kb_per_node": round(statistics.mean(rss)),
        "links_per_node": round(statistics.mean(links), 1),
        "minutes": args.minutes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=30)
    ap.add_argument("--minutes", type=float, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=50, help="messages per second per publisher")
    ap.add_argument("--fovea", default=os.environ.get("FOVEA_BIN", str(ROOT / "target/release/fovea")))
    args = ap.parse_args()
    if args.nodes < 5:
        ap.error("--nodes must be at least 5 (a fifth of them churn)")
    result = asyncio.run(run(args))
    print(" ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
