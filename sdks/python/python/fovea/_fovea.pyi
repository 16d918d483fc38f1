# Types of the native module (src/*.rs). Not a public API: use the `fovea` package.
import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any, final

DEFAULT_URL: str

@final
class Core:
    def __init__(self, event_loop: asyncio.AbstractEventLoop) -> None: ...
    def fileno(self) -> int: ...
    def connect(
        self,
        url: str,
        realm: str | None,
        token: str | bytes | None,
        name: str | None,
        ca: Sequence[str | os.PathLike[str]] | None,
        insecure: bool,
        reconnect: bool,
        connect_timeout: float,
        max_buffered: int | None,
        subscription_capacity: int | None,
        max_reconnect_delay: float | None = None,
    ) -> asyncio.Future[None]: ...
    def publish(
        self, topic: str, payload: bytes | bytearray | memoryview | str, headers: Mapping[str, str] | None = None
    ) -> asyncio.Future[None] | None: ...
    def subscribe(self, pattern: str, group: str | None = None) -> asyncio.Future[Feed]: ...
    def register(self, procedure: str, tool: str | None = None) -> asyncio.Future[Feed]: ...
    def call(
        self,
        procedure: str,
        payload: bytes | bytearray | memoryview | str,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        full: bool = False,
    ) -> asyncio.Future[Any]: ...
    def open_call(self, procedure: str, timeout: float, headers: Mapping[str, str] | None = None) -> CallStream: ...
    def call_stream(
        self,
        procedure: str,
        payload: bytes | bytearray | memoryview | str,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> asyncio.Future[CallStream]: ...
    def flush(self) -> asyncio.Future[None]: ...
    def close(self) -> asyncio.Future[None]: ...
    def abandon_all(self) -> None: ...
    def forget(self, fut: asyncio.Future[Any]) -> None: ...
    def drain(self) -> None: ...
    def pending(self) -> int: ...
    def counters(self) -> tuple[int, int]: ...
    @property
    def state(self) -> str: ...
    @property
    def server_info(self) -> dict[str, Any] | None: ...

@final
class Feed:
    def take(self, max: int = 256) -> list[Any] | asyncio.Future[None] | None: ...
    def abandon(self) -> None: ...
    def close(self) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def dropped(self) -> int: ...

@final
class Message:
    """A message received on a subscription."""

    @property
    def topic(self) -> str:
        """The topic it was published to."""
    @property
    def payload(self) -> bytes:
        """Its payload."""
    @property
    def headers(self) -> dict[str, str]:
        """Its headers (a new dict each time; empty when it has none)."""

@final
class Response:
    """A call's answer with its headers (`Client.request`)."""

    @property
    def payload(self) -> bytes: ...
    @property
    def headers(self) -> dict[str, str]: ...

@final
class Request:
    """One call to a procedure this client provides. Answer it once with `respond` or
    `fail`; one dropped unanswered fails at its caller."""

    @property
    def procedure(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def headers(self) -> dict[str, str]: ...
    @property
    def mcp_method(self) -> str | None:
        """`resources/read`, `prompts/get` or `completion/complete` for a resource, template
        or prompt; None for a tool call or a plain call."""
    @property
    def remaining(self) -> float:
        """Seconds left until the caller's deadline (0 once it passed)."""
    @property
    def is_cancelled(self) -> bool:
        """Whether the call was abandoned (cancelled, past its deadline, connection lost)."""
    def cancelled(self) -> asyncio.Future[bool]:
        """Resolves with True when the call is abandoned, False once it is answered."""
    def respond(
        self, payload: bytes | bytearray | memoryview | str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answers the call. Raises RuntimeError if it was already answered."""
    def fail(self, message: str, code: int | None = None) -> None:
        """Fails the call with `message` and an application code from 0x1000 up."""
    def notify(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        """Reports progress to the caller (MCP `notifications/progress`)."""
    def log(self, level: str, data: Any, logger: str | None = None) -> None:
        """Sends a log line to the caller (MCP `notifications/message`)."""
    @property
    def answer_streams(self) -> bool:
        """Whether the caller takes its answer as a stream (`send` parts first)."""
    @property
    def request_streams(self) -> bool:
        """Whether the caller streams its request (read it with `next_chunk`)."""
    def send(self, payload: bytes | bytearray | memoryview | str) -> asyncio.Future[None]:
        """Sends the next part of a streamed answer, once the caller has room."""
    def next_chunk(self) -> asyncio.Future[bytes | None]:
        """The next part of a streamed request, or None at its end."""
    def ask(self, method: str, params: str, key: str | None = None) -> asyncio.Future[Any]:
        """Asks the caller's agent (`elicitation/create`, `sampling/createMessage`,
        `roots/list`; `params` as JSON text): resolves with its MCP result, or raises
        NotAnswered (InputRequired when asked through an input-required result: let it
        end the run). `key` names the question the same way on every run."""

@final
class CallStream:
    """A call whose answer streams."""

    def next(self) -> asyncio.Future[bytes | None]: ...
    def send(self, payload: bytes | bytearray | memoryview | str) -> asyncio.Future[None]: ...
    def finish(self) -> None: ...
    @property
    def headers(self) -> dict[str, str]: ...
    def cancel(self) -> None: ...
