"""Publish, subscribe, provide and call, against a node (default: the local one).

    python examples/hello.py [URL]        # e.g. quic://127.0.0.1:4433, ws://127.0.0.1:4480

Start a node first: `cargo run --release -p fovea -- node`. The URL may also come from
FOVEA_URL, the node's certificate from FOVEA_CA (else a local node's is found by itself).
"""

import asyncio
import os
import sys

import fovea


async def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FOVEA_URL", fovea.DEFAULT_URL)
    async with await fovea.connect(url, ca=os.environ.get("FOVEA_CA")) as client:
        sub = await client.subscribe("sensors.>")
        await client.publish("sensors.kitchen.temp", b"21.5", headers={"unit": "C"})
        async for msg in sub:
            print(msg.topic, msg.payload, msg.headers)
            break

        reg = await client.register("math.double")

        async def serve() -> None:
            async for req in reg:
                req.respond(str(2 * int(req.payload)).encode())

        task = asyncio.create_task(serve())
        print(await client.call("math.double", b"21", timeout=1.0))
        task.cancel()


asyncio.run(main())
