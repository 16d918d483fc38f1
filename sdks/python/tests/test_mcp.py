"""A tool provided from Python, called by an AI agent: the official MCP Python SDK against
the node's MCP endpoint (HTTP), in both protocol eras."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import ElicitRequestParams, ElicitResult, TextContent, TextResourceContents

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


@pytest.mark.parametrize("mode,era", ERAS)
def test_an_agent_reads_a_python_resource_and_gets_a_python_prompt(mcp_node: Node, mode: str, era: str) -> None:
    async def body() -> None:
        async with await fovea.connect(mcp_node.quic, ca=mcp_node.cert) as c:
            page = await c.register_resource(f"py.page.{mode}", {"uriTemplate": f"py-{mode}://pages/{{n}}"})
            hello = await c.register_prompt(
                f"py.hello.{mode}", {"description": "Greets.", "arguments": [{"name": "who", "required": True}]}
            )

            async def serve_pages() -> None:
                async for req in page:
                    params = json.loads(req.payload)
                    assert req.mcp_method == "resources/read"
                    n = params["variables"]["n"]
                    if n == "0":
                        req.fail("no page 0", code=fovea.NOT_FOUND)
                    else:
                        req.respond(f"page {n}")

            async def serve_hello() -> None:
                async for req in hello:
                    params = json.loads(req.payload)
                    if req.mcp_method == "completion/complete":
                        req.respond(json.dumps(["Ada", "Alan"]))
                    else:
                        req.respond(f"Say hello to {params['arguments']['who']}.")

            tasks = [asyncio.create_task(serve_pages()), asyncio.create_task(serve_hello())]
            async with Client(mcp_node.mcp, mode=mode) as agent:
                assert agent.session.protocol_version == era
                read = await agent.read_resource(f"py-{mode}://pages/7")
                assert isinstance(read.contents[0], TextResourceContents)
                assert read.contents[0].text == "page 7"
                with pytest.raises(MCPError):
                    await agent.read_resource(f"py-{mode}://pages/0")
                prompt = await agent.get_prompt(f"py__hello__{mode}", {"who": "Ada"})
                assert isinstance(prompt.messages[0].content, TextContent)
                assert prompt.messages[0].content.text == "Say hello to Ada."
                assert prompt.description == "Greets."
                names = [p.name for p in (await agent.list_prompts()).prompts]
                assert f"py__hello__{mode}" in names
            for t in tasks:
                t.cancel()
            page.close()
            hello.close()

    run(body)


@pytest.mark.parametrize("mode,era", ERAS)
def test_a_python_provider_asks_the_agent(mode: str, era: str) -> None:
    """Elicitation from a Python provider, answered by the official MCP client: in a
    2025-11-25 session while the call runs; a 2026-07-28 agent through an input-required
    result, whose retry runs the handler again and answers the question of the same key."""

    async def body() -> None:
        node = start_node(mcp=True)
        try:
            async with await fovea.connect(node.quic, ca=node.cert) as c:
                reg = await c.register("py.ask", tool={"description": "Asks a name."})
                runs = 0

                async def serve() -> None:
                    nonlocal runs
                    async for req in reg:
                        runs += 1
                        params = {"message": "Your name?", "requestedSchema": {"type": "object", "properties": {}}}
                        try:
                            answer = await req.ask("elicitation/create", json.dumps(params), key="name")
                        except fovea.InputRequired as e:
                            req.fail(str(e))  # this run ends; the agent's retry brings the answer
                            continue
                        req.respond(json.dumps({"name": answer["content"]["name"]}))

                task = asyncio.create_task(serve())

                async def on_elicit(context: object, params: ElicitRequestParams) -> ElicitResult:
                    return ElicitResult(action="accept", content={"name": "Ada"})

                async with Client(node.mcp, mode=mode, elicitation_callback=on_elicit) as agent:
                    assert agent.session.protocol_version == era
                    result = await agent.call_tool("py__ask", {})
                    assert result.structured_content == {"name": "Ada"}
                assert runs == (2 if era == "2026-07-28" else 1)
                task.cancel()
                reg.close()
        finally:
            node.stop()

    run(body)
