"""Connecting, reconnecting, closing, and what bad input gives: a Python exception, never
a crash of the interpreter."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import pytest

import fovea

from conftest import Node, free_port, run, start_node

CONFIG_PRIVATE = """
[[realm]]
name = "private"
[[realm.user]]
name = "alice"
token_sha256 = "27042f4e6eca7d0b2a7ee4026df2ecfa51d3339e6d122aa099118ecd8563bad9"
"""


@pytest.mark.parametrize("transport,graceful", [("quic", True), ("ws", False)])
def test_a_client_comes_back_after_its_node_restarts(transport: str, graceful: bool) -> None:
    """Stopped (GOAWAY) or killed (a WebSocket's TCP connection resets at once; a killed
    node's QUIC connection is only noticed at its idle timeout, too slow for a test)."""
    port = free_port()
    node = start_node(quic_port=port, ws_port=port)
    try:

        async def body() -> None:
            nonlocal node
            c = await fovea.connect(node.urls[transport], ca=node.cert)
            sub = await c.subscribe("again.>")
            reg = await c.register("again.echo")
            assert c.state == "connected"
            node.stop(graceful)
            for _ in range(200):
                if c.state == "reconnecting":
                    break
                await asyncio.sleep(0.05)
            assert c.state == "reconnecting"
            node = start_node(quic_port=port, ws_port=port, dir=node.dir)
            other = await fovea.connect(node.quic, ca=node.cert)
            got = None
            for _ in range(100):  # until the subscription is restored at the new node
                await other.publish("again.x", b"back")
                got = await sub.next(0.1)
                if got is not None:
                    break
            assert got is not None and got.payload == b"back"
            assert c.state == "connected"

            async def serve() -> None:
                async for req in reg:
                    req.respond(req.payload)

            task = asyncio.create_task(serve())
            assert await other.call("again.echo", b"registration restored too") == b"registration restored too"
            task.cancel()
            await other.close()
            await c.close()

        run(body)
    finally:
        node.stop()


def test_connect_failures_say_what_is_wrong() -> None:
    node = start_node(config=CONFIG_PRIVATE)
    try:

        async def body() -> None:
            with pytest.raises(fovea.AuthError):
                await fovea.connect(node.quic, ca=node.cert, realm="private", token="wrong")
            ok = await fovea.connect(node.ws, ca=node.cert, realm="private", token=b"right")
            await ok.close()
            with pytest.raises(fovea.ConnectError, match="trust"):
                await fovea.connect(node.tls, ca=[])  # no CA: the system's roots do not know it
            with pytest.raises(fovea.InvalidArgument):
                await fovea.connect("http://127.0.0.1:1")
            with pytest.raises(fovea.ConnectError):
                await fovea.connect(f"quic://127.0.0.1:{free_port()}", ca=node.cert, connect_timeout=0.5)
            with pytest.raises(fovea.ConnectError):
                await fovea.connect(f"ws://127.0.0.1:{free_port()}", connect_timeout=0.5)
            with pytest.raises(fovea.ConnectError):
                await fovea.connect(node.quic, ca="/nonexistent/ca.pem")

        run(body)
    finally:
        node.stop()


def test_bad_arguments_raise_and_the_client_keeps_working(node: Node) -> None:
    async def body() -> None:
        async with await fovea.connect(node.quic, ca=node.cert) as c:
            with pytest.raises(TypeError):
                await c.publish(123, b"x")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="payload"):
                await c.publish("a.b", 42)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="headers"):
                await c.publish("a.b", b"x", headers=[("k", "v")])  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                await c.publish("a.b", b"x", headers={"k": 1})  # type: ignore[dict-item]
            with pytest.raises(fovea.InvalidArgument):
                await c.publish("a..b", b"x")
            with pytest.raises(fovea.InvalidArgument):
                await c.publish("a.*", b"x")
            with pytest.raises(fovea.InvalidArgument):
                await c.subscribe("a.>.b")
            with pytest.raises(fovea.InvalidArgument):
                await c.register("bad name")
            with pytest.raises(fovea.InvalidArgument):
                await c.register("tool.x", tool={"description": 5})
            with pytest.raises(fovea.InvalidArgument):
                await c.call("", b"")
            with pytest.raises(ValueError):
                await c.call("a.b", b"", timeout=-1)
            with pytest.raises(ValueError):
                await c.call("a.b", b"", timeout=float("nan"))
            # Over max_payload is not an error: the message is streamed (protocol 6).
            await c.publish("a.b", b"x" * (2 << 20))
            with pytest.raises(fovea.InvalidArgument):
                await c.publish("a.b", b"x", headers={"bad\nname": "v"})
            # Still fine after all that.
            sub = await c.subscribe("still.ok")
            await c.publish("still.ok", "yes")
            m = await sub.next(5)
            assert m is not None and m.payload == b"yes"

    run(body)


def test_after_close_operations_fail_and_feeds_end(node: Node) -> None:
    async def body() -> None:
        c = await fovea.connect(node.quic, ca=node.cert)
        sub = await c.subscribe("x.>")
        reg = await c.register("x.proc")
        waiting = asyncio.create_task(sub.next(30))
        await asyncio.sleep(0.05)
        await c.close()
        await c.close()  # idempotent
        assert await waiting is None
        assert await reg.next(1) is None
        assert c.state == "closed"
        with pytest.raises(fovea.ClientClosed):
            await c.publish("x.y", b"z")
        with pytest.raises(fovea.ClientClosed):
            await c.call("x.proc", b"")
        with pytest.raises(fovea.ClientClosed):
            await c.subscribe("x.>")
        assert c.in_flight == 0

    run(body)


def test_calls_in_flight_when_the_client_closes_fail_cleanly(node: Node) -> None:
    async def body() -> None:
        provider = await fovea.connect(node.quic, ca=node.cert)
        reg = await provider.register("held.forever")
        c = await fovea.connect(node.quic, ca=node.cert)
        calls = [asyncio.create_task(c.call("held.forever", b"", timeout=30)) for _ in range(20)]
        held = [await reg.next(5) for _ in range(20)]
        assert all(held)
        await c.close()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, fovea.FoveaError) for r in results), results
        await provider.close()

    run(body)


def test_dropping_everything_without_close_does_not_crash(node: Node) -> None:
    async def body() -> None:
        for _ in range(5):
            c = await fovea.connect(node.quic, ca=node.cert)
            await c.subscribe("gc.>")
            await c.register(f"gc.{_}")
            del c
            gc.collect()

    run(body)


def test_a_client_from_one_loop_used_in_another_run_is_an_error_not_a_hang(node: Node) -> None:
    async def make() -> fovea.Client:
        return await fovea.connect(node.quic, ca=node.cert)

    c = asyncio.run(make())

    async def use() -> None:
        # Its futures belong to the first loop: awaiting one here is asyncio's RuntimeError;
        # an operation that completes at once (an answer already in) returns. Never a hang.
        with contextlib.suppress(RuntimeError):
            await asyncio.wait_for(c.flush(), 5)

    asyncio.run(use())


def test_cancelled_waits_leave_nothing_behind(node: Node) -> None:
    async def body() -> None:
        async with await fovea.connect(node.quic, ca=node.cert) as c:
            sub = await c.subscribe("quiet.>")
            waiting = asyncio.create_task(sub.next(30))
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert c.in_flight == 0, "the cancelled wait is forgotten"
            reg = await c.register("quiet.proc")
            call = asyncio.create_task(c.call("quiet.proc", b""))
            req = await reg.next(5)
            assert req is not None
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(req.cancelled(), 0.05)
            await asyncio.sleep(0)  # the cancelled future's callbacks run
            assert c.in_flight == 1, "only the call waits now"
            req.respond(b"ok")
            assert await call == b"ok"
            assert c.in_flight == 0

    run(body)
