"""The Python SDK against nats-py (PyPI) and nats-server (Debian), side by side, from one
Python process each, in alternating rounds:

- pub/sub: one publisher and one subscriber client, 64 B payloads; messages delivered per
  second (first publish to last delivery), and what was dropped;
- request/reply, one caller: latency of sequential calls to a provider (p50, p99);
- request/reply, 64 callers: 64 asyncio tasks calling at once; calls answered per second.

    python bench/compare.py [--msgs N] [--calls N] [--rounds N] [--url-scheme quic|tls|ws]

Starts a fovea node (FOVEA_BIN, else the workspace's target/release/fovea) and nats-server on
loopback. Prints key=value lines; the last one sums up (medians over the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats

import fovea

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import free_port, start_node

PAYLOAD = b"x" * 64
CONCURRENCY = 64


@dataclass
class Round:
    rate: float
    dropped: int
    p50_us: float
    p99_us: float
    concurrent_rate: float
    # fovea only: delivered rate when each message crosses from Rust alone (`take(1)`, no
    # iterator), what one crossing into Rust costs (a getter that takes a lock), in ns, and
    # how many completions one wake-up of the loop settled with 64 callers.
    take1_rate: float = 0.0
    crossing_ns: float = 0.0
    per_wake: float = 0.0


async def publish_all(publish: Callable[[], Awaitable[None]], msgs: int, done: asyncio.Event) -> float:
    """Publishes `msgs` times, waits (at most 60 s) for `done`; seconds from first publish."""
    t = time.perf_counter()
    for _ in range(msgs):
        await publish()
    try:
        await asyncio.wait_for(done.wait(), 60)
    except TimeoutError:
        pass
    return time.perf_counter() - t


async def latencies(call: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    for _ in range(min(200, n)):  # warm up
        await call()
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        lat.append(time.perf_counter() - t)
    lat.sort()
    return lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6


async def concurrent(call: Callable[[], Awaitable[Any]], n: int) -> float:
    per_task = max(1, n // CONCURRENCY)

    async def worker() -> None:
        for _ in range(per_task):
            await call()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return per_task * CONCURRENCY / (time.perf_counter() - t)


async def fovea_round(url: str, ca: str, msgs: int, calls: int) -> Round:
    a = await fovea.connect(url, ca=ca)
    b = await fovea.connect(url, ca=ca)
    sub = await b.subscribe("bench.x")
    got = 0
    done = asyncio.Event()

    async def read() -> None:
        nonlocal got
        async for _ in sub:
            got += 1
            if got == msgs:
                done.set()
                return

    reader = asyncio.create_task(read())
    elapsed = await publish_all(lambda: a.publish("bench.x", PAYLOAD), msgs, done)
    reader.cancel()
    rate = got / elapsed
    dropped = sub.dropped + (msgs - got)

    # The same with one message per crossing, as a binding without batches would do.
    sub2 = await b.subscribe("bench.y")
    feed = sub2._feed
    t = time.perf_counter()
    for _ in range(msgs):
        await a.publish("bench.y", PAYLOAD)
    seen = 0
    while seen < msgs:
        got2 = feed.take(1)
        if got2.__class__ is list:
            seen += 1
        elif got2 is None:
            break
        else:
            await asyncio.wait_for(got2, 10)  # type: ignore[arg-type]
    unbatched = seen / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(1_000_000):
        feed.dropped  # noqa: B018 (the crossing is what is timed)
    crossing_ns = (time.perf_counter() - t) * 1e3
    sub2.close()

    reg = await b.register("bench.echo")

    async def serve() -> None:
        async for req in reg:
            req.respond(req.payload)

    server = asyncio.create_task(serve())
    p50, p99 = await latencies(lambda: a.call("bench.echo", PAYLOAD), calls)
    wakes0, settled0 = a._core.counters()
    crate = await concurrent(lambda: a.call("bench.echo", PAYLOAD), calls * 4)
    wakes1, settled1 = a._core.counters()
    per_wake = (settled1 - settled0) / max(1, wakes1 - wakes0)
    server.cancel()
    await a.close()
    await b.close()
    return Round(rate, dropped, p50, p99, crate, unbatched, crossing_ns, per_wake)


async def nats_round(port: int, msgs: int, calls: int) -> Round:
    a = await nats.connect(f"nats://127.0.0.1:{port}")
    b = await nats.connect(f"nats://127.0.0.1:{port}")
    got = 0
    done = asyncio.Event()

    async def on_msg(_msg: Any) -> None:
        nonlocal got
        got += 1
        if got == msgs:
            done.set()

    sub = await b.subscribe("bench.x", cb=on_msg)
    await b.flush()
    elapsed = await publish_all(lambda: a.publish("bench.x", PAYLOAD), msgs, done)
    rate = got / elapsed
    dropped = msgs - got
    await sub.unsubscribe()

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await b.subscribe("bench.echo", cb=echo)
    await b.flush()
    p50, p99 = await latencies(lambda: a.request("bench.echo", PAYLOAD, timeout=5), calls)
    crate = await concurrent(lambda: a.request("bench.echo", PAYLOAD, timeout=5), calls * 4)
    await a.close()
    await b.close()
    return Round(rate, dropped, p50, p99, crate)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--msgs", type=int, default=200_000)
    ap.add_argument("--calls", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--url-scheme", choices=["quic", "tls", "ws"], default="quic")
    args = ap.parse_args()
    node = start_node()
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        "nats-server", "-a", "127.0.0.1", "-p", str(port), stderr=asyncio.subprocess.DEVNULL
    )
    await asyncio.sleep(0.5)
    f: list[Round] = []
    n: list[Round] = []
    try:
        for r in range(1, args.rounds + 1):
            f.append(await fovea_round(node.urls[args.url_scheme], node.cert, args.msgs, args.calls))
            n.append(await nats_round(port, args.msgs, args.calls))
            print(
                f"round={r} fovea_rate={f[-1].rate:.0f} nats_rate={n[-1].rate:.0f} "
                f"fovea_dropped={f[-1].dropped} nats_dropped={n[-1].dropped} "
                f"fovea_p50_us={f[-1].p50_us:.0f} nats_p50_us={n[-1].p50_us:.0f} "
                f"fovea_rpc64_rate={f[-1].concurrent_rate:.0f} nats_rpc64_rate={n[-1].concurrent_rate:.0f} "
                f"fovea_take1_rate={f[-1].take1_rate:.0f} crossing_ns={f[-1].crossing_ns:.0f} "
                f"fovea_rpc64_settled_per_wake={f[-1].per_wake:.1f}",
                flush=True,
            )
    finally:
        server.kill()
        await server.wait()
        node.stop()

    def med(rs: list[Round], key: str) -> float:
        return float(statistics.median(getattr(x, key) for x in rs))

    fr, nr = med(f, "rate"), med(n, "rate")
    fp, np_ = med(f, "p50_us"), med(n, "p50_us")
    fc, nc = med(f, "concurrent_rate"), med(n, "concurrent_rate")
    print(
        f"compare sdk=python transport={args.url_scheme} msgs={args.msgs} calls={args.calls} rounds={args.rounds} "
        f"fovea_delivered_rate={fr:.0f} nats_delivered_rate={nr:.0f} rate_ratio={fr / nr:.2f} "
        f"fovea_dropped={sum(x.dropped for x in f)} nats_dropped={sum(x.dropped for x in n)} "
        f"fovea_p50_us={fp:.0f} nats_p50_us={np_:.0f} p50_ratio={fp / np_:.2f} "
        f"fovea_p99_us={med(f, 'p99_us'):.0f} nats_p99_us={med(n, 'p99_us'):.0f} "
        f"fovea_rpc64_rate={fc:.0f} nats_rpc64_rate={nc:.0f} rpc64_ratio={fc / nc:.2f} "
        f"fovea_take1_rate={med(f, 'take1_rate'):.0f} crossing_ns={med(f, 'crossing_ns'):.0f} "
        f"fovea_rpc64_settled_per_wake={med(f, 'per_wake'):.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
