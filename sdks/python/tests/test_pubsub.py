"""Publish and subscribe through a real node, over every transport."""

from __future__ import annotations

import asyncio

import pytest

import fovea

from conftest import TRANSPORTS, Node, run, start_node


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wildcards_headers_and_payload_kinds(node: Node, transport: str) -> None:
    async def body() -> None:
        async with await fovea.connect(node.urls[transport], ca=node.cert) as c:
            all_sensors = await c.subscribe("sensors.>")
            temps = await c.subscribe("sensors.*.temp")
            await c.publish("sensors.kitchen.temp", b"21.5", headers={"unit": "C"})
            await c.publish("sensors.kitchen.humidity", "40")  # str: sent as UTF-8
            await c.publish("sensors.hall.temp", bytearray(b"19.0"))
            await c.publish("other.topic", memoryview(b"nobody"))
            got = [await all_sensors.next(5) for _ in range(3)]
            assert [(m.topic, m.payload) for m in got if m] == [
                ("sensors.kitchen.temp", b"21.5"),
                ("sensors.kitchen.humidity", b"40"),
                ("sensors.hall.temp", b"19.0"),
            ]
            assert got[0] is not None and got[0].headers == {"unit": "C"}
            assert got[1] is not None and got[1].headers == {}
            first, second = await temps.next(5), await temps.next(5)
            assert first is not None and second is not None
            assert (first.topic, second.topic) == ("sensors.kitchen.temp", "sensors.hall.temp")
            assert await temps.next(0.2) is None, "humidity and other.topic do not match"
            assert all_sensors.pattern == "sensors.>"
            assert all_sensors.dropped == 0

    run(body)


def test_many_messages_arrive_in_order(node: Node) -> None:
    async def body() -> None:
        async with await fovea.connect(node.quic, ca=node.cert) as a, await fovea.connect(node.quic, ca=node.cert) as b:
            sub = await b.subscribe("seq.>")
            n = 20_000
            for i in range(n):
                await a.publish("seq.x", str(i))
            got = 0
            async for msg in sub:
                assert msg.payload == str(got).encode()
                got += 1
                if got == n:
                    break

    run(body)


def test_queue_group_members_share_and_plain_subscribers_get_all(node: Node) -> None:
    async def body() -> None:
        async with await fovea.connect(node.ws, ca=node.cert) as c:
            w1 = await c.subscribe("jobs.>", group="workers")
            w2 = await c.subscribe("jobs.>", group="workers")
            plain = await c.subscribe("jobs.>")
            n = 200
            for i in range(n):
                await c.publish("jobs.resize", str(i))
            await c.flush()
            seen_plain = [await plain.next(5) for _ in range(n)]
            assert all(m is not None for m in seen_plain)

            async def drain(sub: fovea.Subscription) -> list[bytes]:
                out = []
                while (m := await sub.next(0.3)) is not None:
                    out.append(m.payload)
                return out

            one, two = await drain(w1), await drain(w2)
            assert sorted(one + two, key=int) == [str(i).encode() for i in range(n)], "each job once"
            assert one and two, "both members got a share"

    run(body)


def test_a_slow_reader_is_told_what_the_node_dropped() -> None:
    """The SDK never drops: it stops reading, the node's queue for the client fills, and
    the node drops and says so. Received plus dropped is what was published."""
    node = start_node(
        config='[limits]\nmax_pending_bytes = 262144\nproducer_stall = "0s"\nslow_consumer_timeout = "60s"\n'
    )
    try:

        async def body() -> None:
            slow = await fovea.connect(node.quic, ca=node.cert, subscription_capacity=1)
            fast = await fovea.connect(node.quic, ca=node.cert)
            sub = await slow.subscribe("flood")
            n, payload = 4000, b"x" * 4096
            for _ in range(n):
                await fast.publish("flood", payload)
            await fast.flush()
            received = 0
            while await sub.next(1.0) is not None:
                received += 1
            assert sub.dropped > 0, "16 MB through a 256 KiB queue drops"
            assert received + sub.dropped == n
            await slow.close()
            await fast.close()

        run(body)
    finally:
        node.stop()


def test_many_subscriptions_and_one_reader_task_each(node: Node) -> None:
    async def body() -> None:
        async with await fovea.connect(node.tls, ca=node.cert) as c:
            subs = [await c.subscribe(f"fan.{i}") for i in range(50)]

            async def one(i: int, sub: fovea.Subscription) -> bytes:
                m = await sub.next(5)
                assert m is not None
                return m.payload

            readers = [asyncio.create_task(one(i, s)) for i, s in enumerate(subs)]
            for i in range(50):
                await c.publish(f"fan.{i}", str(i))
            assert await asyncio.gather(*readers) == [str(i).encode() for i in range(50)]

    run(body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_message_larger_than_a_frame_arrives_whole(node: Node, transport: str) -> None:
    """`publish` of more than `max_payload` streams the message (protocol 6); the
    subscriber gets it whole, between the small ones around it."""

    async def body() -> None:
        async with await fovea.connect(node.urls[transport], ca=node.cert) as c:
            sub = await c.subscribe("files.>")
            big = bytes(i * 7 % 251 for i in range(3 << 20))
            await c.publish("files.small", b"a")
            await c.publish("files.big", big)
            got = [await sub.next(20) for _ in range(2)]
            assert sorted((m.topic, len(m.payload)) for m in got if m) == [
                ("files.big", len(big)),
                ("files.small", 1),
            ]
            assert next(m.payload for m in got if m and m.topic == "files.big") == big

    run(body)
