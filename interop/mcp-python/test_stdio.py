"""`fovea mcp` (the stdio bridge) driven by the official Python MCP SDK in both protocol
eras: the SDK negotiates 2026-07-28 by itself ("auto") and 2025-11-25 when told ("legacy"),
and validates every result against its era's schema."""

import asyncio

import pytest
from mcp import Client, StdioServerParameters

ERAS = [("auto", "2026-07-28"), ("legacy", "2025-11-25")]


def _server(node) -> StdioServerParameters:
    fovea, url, ca = node
    return StdioServerParameters(command=fovea, args=["mcp", "--url", url, "--ca", ca])


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.mark.parametrize("mode,era", ERAS)
def test_tools_are_listed_and_called_in_each_era(node, mode, era):
    async def go():
        async with Client(_server(node), mode=mode) as client:
            assert client.session.protocol_version == era
            tools = await client.list_tools()
            names = {t.name for t in tools.tools}
            assert {"test_simple_text", "test_image_content", "test_error_handling"} <= names

            text = await client.call_tool("test_simple_text", {})
            assert not text.is_error
            assert text.content[0].type == "text"
            assert text.content[0].text == "This is a simple text response for testing."

            image = await client.call_tool("test_image_content", {})
            assert image.content[0].type == "image"
            assert image.content[0].mime_type == "image/png"

            failed = await client.call_tool("test_error_handling", {})
            assert failed.is_error
            assert "intentionally" in failed.content[0].text

    run(go())


@pytest.mark.parametrize("mode,era", ERAS)
def test_an_unknown_tool_is_a_protocol_error(node, mode, era):
    async def go():
        async with Client(_server(node), mode=mode) as client:
            assert client.session.protocol_version == era
            with pytest.raises(Exception) as raised:
                await client.call_tool("no_such_tool", {})
            assert "no_such_tool" in str(raised.value)

    run(go())
