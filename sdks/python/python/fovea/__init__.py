"""fovea: events, RPC and AI tools on a mesh, from asyncio.

    import asyncio, fovea

    async def main():
        async with await fovea.connect("quic://127.0.0.1:4433") as client:
            sub = await client.subscribe("sensors.>")
            await client.publish("sensors.kitchen.temp", b"21.5")
            async for msg in sub:
                print(msg.topic, msg.payload)
                break

    asyncio.run(main())

The work is done by the Rust SDK (fovea-client) on threads of its own that never take
the GIL: connections over QUIC (`quic://`), TLS on TCP (`tls://`) and WebSocket (`ws://`,
`wss://`), reconnection with every subscription restored, and flow control (a slow reader
slows the node's sending to it rather than losing messages in this process). A client
belongs to the event loop that connected it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from . import _fovea
from ._errors import (
    AuthError,
    BufferFull,
    Busy,
    Cancelled,
    ClientClosed,
    ConnectError,
    Disconnected,
    FoveaError,
    InputRequired,
    InvalidArgument,
    NoProvider,
    NotAnswered,
    PayloadTooLarge,
    ProviderDisconnected,
    Refused,
    RemoteError,
    StreamEnded,
    Timeout,
    Unsupported,
)
from ._fovea import Message, Request, Response

#: The content type of an answer that is a whole MCP result (`GetPromptResult`, ...).
MCP_RESULT_TYPE = "application/mcp-result+json"
#: A provider's code for "nothing is under this name" (an unknown resource URI).
NOT_FOUND = 0x1001
#: A provider's code for "these arguments are refused" (a prompt's).
INVALID_ARGUMENTS = 0x1002

DEFAULT_URL: str = _fovea.DEFAULT_URL
"""The URL `connect` uses by default: a node on this machine."""

Payload = bytes | bytearray | memoryview | str
"""What a payload may be given as; `str` is sent as UTF-8. Payloads arrive as `bytes`."""

_Item = TypeVar("_Item", Message, Request)


class _Feed(Generic[_Item]):
    """Items taken from the native feed in batches and handed out one by one."""

    __slots__ = ("_batch", "_feed")

    def __init__(self, feed: _fovea.Feed) -> None:
        self._feed = feed
        # Newest first: `pop()` hands items out in order and lets go of each (a request
        # dropped by its handler must not stay referenced here).
        self._batch: list[_Item] = []

    def __aiter__(self) -> AsyncIterator[_Item]:
        return self

    async def __anext__(self) -> _Item:
        batch = self._batch
        if batch:
            return batch.pop()
        while True:
            got = self._feed.take()
            if isinstance(got, list):
                self._batch = got
                return got.pop()  # type: ignore[no-any-return]
            if got is None:
                raise StopAsyncIteration
            try:
                await got
            except asyncio.CancelledError:
                self._feed.abandon()
                raise

    async def next(self, timeout: float | None = None) -> _Item | None:
        """The next item, or `None` when the feed has ended or `timeout` seconds passed."""
        try:
            async with asyncio.timeout(timeout):
                return await self.__anext__()
        except (StopAsyncIteration, TimeoutError):
            return None

    def close(self) -> None:
        """Ends the feed (unsubscribes or unregisters); iteration stops after the items
        already taken. Idempotent; also done when the object is garbage-collected."""
        self._feed.close()


class Subscription(_Feed[Message]):
    """The messages matching one pattern: `async for msg in sub`. Ends when the client
    closes. The SDK never drops a message; when this process reads too slowly the node
    drops for it and says so: `dropped` counts those."""

    __slots__ = ()

    @property
    def pattern(self) -> str:
        return self._feed.name

    @property
    def dropped(self) -> int:
        """Messages the node dropped for this subscription because it was read too slowly
        (its queue for this client was full)."""
        return self._feed.dropped


class Registration(_Feed[Request]):
    """The calls to one procedure this client provides: `async for req in reg`, each
    answered with `req.respond(...)` or `req.fail(...)`."""

    __slots__ = ()

    @property
    def procedure(self) -> str:
        return self._feed.name


class CallStream:
    """A call's streamed answer (`Client.call_stream`): iterate it for its chunks
    (`bytes`); the provider's final payload, when not empty, is the last one."""

    __slots__ = ("_native",)

    def __init__(self, native: _fovea.CallStream) -> None:
        self._native = native

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk: bytes | None = await self._native.next()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    @property
    def headers(self) -> dict[str, str]:
        """The answer's headers, once iteration has ended (empty before)."""
        return self._native.headers

    async def send(self, payload: Payload) -> None:
        """Sends the next part of the request (a call made with `open_call`), once the
        provider has room for it; may run while another task iterates the answer."""
        await self._native.send(payload)

    def finish(self) -> None:
        """Ends the request (a call made with `open_call`)."""
        self._native.finish()

    async def collect(self, max_bytes: int = 64 << 20) -> bytes:
        """The whole answer; raises `PayloadTooLarge` past `max_bytes`."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self:
            size += len(chunk)
            if size > max_bytes:
                self.cancel()
                raise PayloadTooLarge(f"the answer is over {max_bytes} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def cancel(self) -> None:
        """Abandons the call; the provider is told."""
        self._native.cancel()


class Client:
    """A connection to a node (see `connect`). Use it from the event loop that made it;
    `close()` it, or use it as `async with client:`."""

    __slots__ = ("_closed", "_core", "_loop", "_url")

    def __init__(self, core: _fovea.Core, loop: asyncio.AbstractEventLoop, url: str) -> None:
        self._core = core
        self._loop = loop
        self._url = url
        self._closed = False

    @property
    def url(self) -> str:
        return self._url

    @property
    def state(self) -> str:
        """`"connected"`, `"reconnecting"` (the node went away; subscriptions come back
        with the next session) or `"closed"`."""
        return self._core.state

    @property
    def in_flight(self) -> int:
        """Operations awaiting their result (calls, subscribes, publishes waiting for buffer
        space, feeds waiting for items). Bounded by what the application awaits at once;
        calls also by the node's `max_calls_in_flight` (then `Busy`)."""
        return self._core.pending()

    @property
    def server_info(self) -> dict[str, Any] | None:
        """What the node said when the session opened: `node`, `version`,
        `connection_id`, `max_payload`."""
        return self._core.server_info

    async def publish(self, topic: str, payload: Payload = b"", *, headers: Mapping[str, str] | None = None) -> None:
        """Publishes `payload` to `topic`. Returns once it is queued for the node; waits
        only when more than `max_buffered` bytes are queued (raises `BufferFull` instead
        while reconnecting). `flush()` waits until the node has routed it. A payload
        larger than the node's `max_payload` is streamed (protocol 6), at the pace of the
        slowest subscriber; subscribers get it whole (up to 64 MiB)."""
        waiting = self._core.publish(topic, payload, headers)
        if waiting is not None:
            await self._await(waiting)

    async def subscribe(self, pattern: str, *, group: str | None = None) -> Subscription:
        """Subscribes to `pattern` (`*` one segment, a final `>` one or more). With
        `group`, members of the group with the same pattern share its messages (one member
        gets each). Returns once the node confirmed it."""
        return Subscription(await self._await(self._core.subscribe(pattern, group)))

    async def register(self, procedure: str, *, tool: Mapping[str, Any] | None = None) -> Registration:
        """Provides `procedure`; calls arrive on the returned `Registration`. With `tool`
        (an MCP tool descriptor: `description`, `inputSchema`, ...), agents on any node of
        the realm see it as a tool."""
        descriptor = None if tool is None else json.dumps(tool)
        return Registration(await self._await(self._core.register(procedure, descriptor)))

    async def register_resource(self, procedure: str, descriptor: Mapping[str, Any]) -> Registration:
        """Provides `procedure` as an MCP resource (`descriptor` with `uri`) or resource
        template (with an RFC 6570 `uriTemplate`), for agents on any node. Each read is a
        request whose `mcp_method` is `resources/read` and whose payload is
        `{"uri": ..., "variables": {...}}` (variables for a template); answer with the
        content (text or bytes) or `fail(..., code=NOT_FOUND)`."""
        kind = "resourceTemplate" if "uriTemplate" in descriptor else "resource"
        return await self.register(procedure, tool={**descriptor, "kind": kind})

    async def register_prompt(self, procedure: str, descriptor: Mapping[str, Any]) -> Registration:
        """Provides `procedure` as an MCP prompt (`description`, `arguments`), named like a
        tool. Each `prompts/get` is a request with the payload `{"name", "arguments"}`;
        answer with the prompt's text, or a whole result under
        `{"content-type": MCP_RESULT_TYPE}`. Completions arrive as `completion/complete`:
        answer with a JSON list of strings."""
        return await self.register(procedure, tool={**descriptor, "kind": "prompt"})

    async def resource_updated(self, procedure: str, uri: str) -> None:
        """Tells the agents watching resource `uri` (served by `procedure`), on any node,
        that it changed."""
        await self.publish(f"$mcp.updated.{procedure}", uri)

    async def call(
        self,
        procedure: str,
        payload: Payload = b"",
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """Calls `procedure` and returns the answer's payload. The timeout travels with the
        call. Raises `NoProvider`, `Timeout`, `RemoteError` (with the provider's `code`),
        `ProviderDisconnected`, `Busy` or `Disconnected`. Cancelling the awaiting task
        cancels the call at the node and the provider."""
        result: bytes = await self._await(self._core.call(procedure, payload, timeout, headers, False))
        return result

    async def request(
        self,
        procedure: str,
        payload: Payload = b"",
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """As `call`, returning the whole `Response` (payload and headers)."""
        result: Response = await self._await(self._core.call(procedure, payload, timeout, headers, True))
        return result

    async def call_stream(
        self,
        procedure: str,
        payload: Payload = b"",
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> CallStream:
        """Calls `procedure` and receives its answer as a stream of chunks: iterate the
        result (`async for chunk in await client.call_stream(...)`). The provider sends
        no faster than this reads. `payload` may be larger than the node's `max_payload`:
        it is then streamed before this returns. The call's errors are raised by the
        iteration."""
        native: _fovea.CallStream = await self._await(self._core.call_stream(procedure, payload, timeout, headers))
        return CallStream(native)

    def open_call(
        self, procedure: str, *, timeout: float = 10.0, headers: Mapping[str, str] | None = None
    ) -> CallStream:
        """Opens a call whose request and answer both stream: `await stream.send(part)`
        and `stream.finish()` the request (from another task when the provider answers as
        it reads), iterate the answer."""
        return CallStream(self._core.open_call(procedure, timeout, headers))

    async def flush(self) -> None:
        """Waits until the node has handled everything sent before (every earlier publish
        routed). Raises `Disconnected` without a session."""
        await self._await(self._core.flush())

    async def close(self) -> None:
        """Flushes (for at most the connect timeout) and closes the connection. Feeds end;
        operations still waiting raise `ClientClosed`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._core.close()
        self._core.drain()
        self._core.abandon_all()
        if not self._loop.is_closed():
            self._loop.remove_reader(self._core.fileno())

    async def _await(self, fut: asyncio.Future[Any]) -> Any:
        try:
            return await fut
        except asyncio.CancelledError:
            # Dropping the operation is what cancels it (a call at its provider).
            self._core.forget(fut)
            raise

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Client({self._url!r}, {self.state})"


async def connect(
    url: str = DEFAULT_URL,
    *,
    ca: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    realm: str | None = None,
    token: str | bytes | None = None,
    name: str | None = None,
    insecure: bool = False,
    reconnect: bool = True,
    connect_timeout: float = 5.0,
    max_buffered: int | None = None,
    subscription_capacity: int | None = None,
    max_reconnect_delay: float | None = None,
) -> Client:
    """Connects to the node at `url` (`quic://`, `tls://`, `ws://` or `wss://` host:port)
    and opens a session in `realm` (default `default`) with `token`.

    `ca`: the node's certificate (its data dir's `node.crt`) or its CA, as PEM files; by
    default a loopback URL trusts the local node's certificate and others the system's
    roots. `insecure=True` trusts any certificate (tests only). `reconnect`: after the
    first session, come back when the node goes away (default on). `max_buffered`: bytes
    of outgoing frames queued before `publish` waits (default 8 MiB).
    `subscription_capacity`: messages a subscription holds before the SDK stops reading
    from the node (default 8192). `max_reconnect_delay`: the longest wait between
    reconnection attempts, in seconds (the backoff doubles up to it; default 2).

    Raises `ConnectError` (no node, untrusted certificate; `AuthError` for a refused
    realm or token) or `InvalidArgument` (a malformed URL) for the first attempt.
    """
    loop = asyncio.get_running_loop()
    if ca is None:
        files = None
    elif isinstance(ca, (str, os.PathLike)):
        files = [os.fspath(ca)]
    else:
        files = [os.fspath(f) for f in ca]
    core = _fovea.Core(loop)
    loop.add_reader(core.fileno(), core.drain)
    client = Client(core, loop, url)
    try:
        await client._await(
            core.connect(
                url,
                realm,
                token,
                name,
                files,
                insecure,
                reconnect,
                connect_timeout,
                max_buffered,
                subscription_capacity,
                max_reconnect_delay,
            )
        )
    except BaseException:
        loop.remove_reader(core.fileno())
        core.abandon_all()
        raise
    return client


__all__ = [
    "DEFAULT_URL",
    "INVALID_ARGUMENTS",
    "MCP_RESULT_TYPE",
    "NOT_FOUND",
    "AuthError",
    "BufferFull",
    "Busy",
    "CallStream",
    "Cancelled",
    "Client",
    "ClientClosed",
    "ConnectError",
    "Disconnected",
    "FoveaError",
    "InputRequired",
    "InvalidArgument",
    "Message",
    "NoProvider",
    "NotAnswered",
    "Payload",
    "PayloadTooLarge",
    "ProviderDisconnected",
    "Refused",
    "Registration",
    "RemoteError",
    "Request",
    "Response",
    "StreamEnded",
    "Subscription",
    "Timeout",
    "Unsupported",
    "connect",
]
