"""A tool provided from Python, called by an AI agent: the official MCP Python SDK against
the node's MCP endpoint (HTTP), in both protocol eras."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

import fovea

from conftest import Node, run, start_node

ERAS = [("auto", "2026-07-28"), ("legacy", "2025-11-25")]

ADD = {
    "description": "Adds two numbers.",
    "inputSchema": {
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    },
}


@pytest.fixture(scope="module")
def mcp_node() -> Iterator[Node]:
    n = start_node(mcp=True)
    yield n
    n.stop()


@pytest.mark.parametrize("mode,era", ERAS)
def test_an_agent_lists_and_calls_a_python_tool_with_progress(mcp_node: Node, mode: str, era: str) -> None:
    async def body() -> None:
        async with await fovea.connect(mcp_node.quic, ca=mcp_node.cert) as c:
            reg = await c.register("math.add", tool=ADD)

            async def serve() -> None:
                async for req in reg:
                    args = json.loads(req.payload)
                    req.notify(1, total=2, message="adding")
                    req.respond(json.dumps({"sum": args["a"] + args["b"]}))

            task = asyncio.create_task(serve())
            seen: list[tuple[float, float | None, str | None]] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append((progress, total, message))

            async with Client(mcp_node.mcp, mode=mode) as agent:
                assert agent.session.protocol_version == era
                tools = {t.name: t for t in (await agent.list_tools()).tools}
                assert "math__add" in tools
                assert tools["math__add"].description == "Adds two numbers."
                result = await agent.call_tool("math__add", {"a": 2, "b": 40}, progress_callback=on_progress)
                assert not result.is_error
                assert result.structured_content == {"sum": 42}
                assert seen == [(1, 2, "adding")]
                with pytest.raises(MCPError, match="required"):
                    # Checked against the schema at the node: never reaches the provider.
                    await agent.call_tool("math__add", {"a": 2})
            task.cancel()
            reg.close()

    run(body)
