"""Calls and providers through a real node: answers, every error, cancellation."""

from __future__ import annotations

import asyncio

import pytest

import fovea

from conftest import TRANSPORTS, Node, run, start_node


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_and_respond_with_headers(node: Node, transport: str) -> None:
    async def body() -> None:
        async with await fovea.connect(node.urls[transport], ca=node.cert) as c:
            reg = await c.register(f"math.double.{transport}")
            assert reg.procedure == f"math.double.{transport}"

            async def serve() -> None:
                async for req in reg:
                    assert req.headers == {"trace": "t1"}
                    assert 0 < req.remaining <= 2
                    req.respond(str(2 * int(req.payload)).encode(), headers={"by": "python"})

            task = asyncio.create_task(serve())
            r = await c.request(f"math.double.{transport}", b"21", timeout=2, headers={"trace": "t1"})
            assert (r.payload, r.headers) == (b"42", {"by": "python"})
            task.cancel()

    run(body)


def test_each_error_is_its_own_exception(node: Node) -> None:
    async def body() -> None:
        async with (
            await fovea.connect(node.quic, ca=node.cert) as provider,
            await fovea.connect(node.quic, ca=node.cert) as caller,
        ):
            with pytest.raises(fovea.NoProvider) as no:
                await caller.call("nobody.home", b"x")
            assert no.value.code == 0x107

            failing = await provider.register("err.fail")
            silent = await provider.register("err.silent")
            dropping = await provider.register("err.drop")

            async def serve() -> None:
                req = await failing.next(5)
                assert req is not None
                req.fail("bad input", code=0x1234)
                with pytest.raises(RuntimeError, match="already answered"):
                    req.respond(b"twice")
                req2 = await dropping.next(5)
                assert req2 is not None
                del req2  # unanswered: the caller still gets an answer

            server = asyncio.create_task(serve())
            with pytest.raises(fovea.RemoteError) as remote:
                await caller.call("err.fail", b"")
            assert remote.value.code == 0x1234 and "bad input" in str(remote.value)
            with pytest.raises(fovea.RemoteError, match="without an answer"):
                await caller.call("err.drop", b"")
            await server

            with pytest.raises(fovea.Timeout) as timeout:
                await caller.call("err.silent", b"", timeout=0.2)
            assert isinstance(timeout.value, TimeoutError)
            assert await silent.next(1) is not None, "the call did reach the provider"

    run(body)


def test_a_provider_that_goes_away_mid_call_is_provider_disconnected(node: Node) -> None:
    async def body() -> None:
        provider = await fovea.connect(node.quic, ca=node.cert)
        caller = await fovea.connect(node.quic, ca=node.cert)
        reg = await provider.register("err.vanish")
        call = asyncio.create_task(caller.call("err.vanish", b"", timeout=10))
        held = await reg.next(5)  # held unanswered while its provider goes
        assert held is not None
        await provider.close()
        with pytest.raises(fovea.ProviderDisconnected):
            await call
        await caller.close()

    run(body)


def test_cancelling_a_call_cancels_it_at_the_provider(node: Node) -> None:
    async def body() -> None:
        async with await fovea.connect(node.ws, ca=node.cert) as c:
            reg = await c.register("slow.job")
            call = asyncio.create_task(c.call("slow.job", b"", timeout=30))
            req = await reg.next(5)
            assert req is not None and not req.is_cancelled
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert await asyncio.wait_for(req.cancelled(), 5) is True
            assert req.is_cancelled
            # Answered ones resolve False.
            call2 = asyncio.create_task(c.call("slow.job", b"", timeout=30))
            req2 = await reg.next(5)
            assert req2 is not None
            waiting = req2.cancelled()
            req2.respond(b"done")
            assert await waiting is False
            assert await call2 == b"done"
            assert c.in_flight == 0, "nothing left in flight"

    run(body)


def test_busy_when_the_provider_is_at_its_limit() -> None:
    node = start_node(config="[limits]\nmax_requests_in_flight = 1\n")
    try:

        async def body() -> None:
            async with await fovea.connect(node.quic, ca=node.cert) as c:
                reg = await c.register("one.at.a.time")
                first = asyncio.create_task(c.call("one.at.a.time", b"1"))
                req = await reg.next(5)
                assert req is not None
                with pytest.raises(fovea.Busy) as busy:
                    await c.call("one.at.a.time", b"2")
                assert busy.value.code == 0x10A
                req.respond(b"ok")
                assert await first == b"ok"

        run(body)
    finally:
        node.stop()


def test_progress_reaches_a_rust_sdk_caller_through_the_cli(node: Node) -> None:
    """A provider in Python, a caller from the CLI: the languages meet on the wire."""

    async def body() -> None:
        async with await fovea.connect(node.quic, ca=node.cert) as c:
            reg = await c.register("py.upper")

            async def serve() -> None:
                async for req in reg:
                    req.notify(1, total=2, message="half way")
                    req.log("info", {"seen": len(req.payload)})
                    req.respond(req.payload.upper())

            task = asyncio.create_task(serve())
            from conftest import fovea_bin

            proc = await asyncio.create_subprocess_exec(
                fovea_bin(),
                "call",
                "py.upper",
                "shout",
                "--url",
                node.quic,
                "--ca",
                node.cert,
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await proc.communicate()
            assert out.decode().strip() == "SHOUT"
            task.cancel()

    run(body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_streamed_calls_both_ways(node: Node, transport: str) -> None:
    """An answer in parts, read as they come; a request and an answer larger than a frame;
    the provider sends no faster than the caller reads."""

    async def body() -> None:
        async with (
            await fovea.connect(node.urls[transport], ca=node.cert) as provider,
            await fovea.connect(node.urls[transport], ca=node.cert) as caller,
        ):
            say = await provider.register(f"llm.say.{transport}")
            echo = await provider.register(f"blob.echo.{transport}")

            async def serve_say() -> None:
                async for req in say:
                    assert req.answer_streams and not req.request_streams
                    for token in (b"Hello", b", ", b"world"):
                        await req.send(token)
                    req.respond(b"!")

            async def serve_echo() -> None:
                async for req in echo:
                    assert req.request_streams
                    parts = [req.payload]
                    while (chunk := await req.next_chunk()) is not None:
                        parts.append(chunk)
                    req.respond(b"".join(parts), headers={"parts": str(len(parts))})

            tasks = [asyncio.create_task(serve_say()), asyncio.create_task(serve_echo())]
            chunks = [c async for c in await caller.call_stream(f"llm.say.{transport}")]
            assert chunks == [b"Hello", b", ", b"world", b"!"]

            big = bytes(i % 251 for i in range(3_000_000))
            stream = await caller.call_stream(f"blob.echo.{transport}", big, timeout=30)
            assert await stream.collect() == big
            assert int(stream.headers["parts"]) > 1
            # A plain call takes one answer: the provider's SDK says how to get a larger one.
            with pytest.raises(fovea.RemoteError, match="call_stream"):
                await caller.call(f"blob.echo.{transport}", big, timeout=30)
            for t in tasks:
                t.cancel()

    run(body)


def test_open_call_streams_both_ways_at_once(node: Node) -> None:
    """A provider that answers each part as it reads it, and a caller that sends from one
    task while it reads in another: more than either window moves both ways."""

    async def body() -> None:
        async with (
            await fovea.connect(node.quic, ca=node.cert) as provider,
            await fovea.connect(node.quic, ca=node.cert) as caller,
        ):
            reg = await provider.register("pipe.upper")

            async def serve() -> None:
                async for req in reg:
                    assert req.request_streams and req.answer_streams
                    while (chunk := await req.next_chunk()) is not None:
                        await req.send(chunk.upper())
                    req.respond(b"")

            server = asyncio.create_task(serve())
            stream = caller.open_call("pipe.upper", timeout=30)
            part = b"abcdefghij" * 30_000

            async def send() -> None:
                for _ in range(30):
                    await stream.send(part)
                stream.finish()
                with pytest.raises(RuntimeError):
                    stream.finish()

            sender = asyncio.create_task(send())
            received = b"".join([c async for c in stream])
            await sender
            assert received == part.upper() * 30
            server.cancel()

    run(body)
