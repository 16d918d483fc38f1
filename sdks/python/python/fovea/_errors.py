"""The SDK's exceptions. Every one derives from `FoveaError`; those that fit a built-in
kind derive from it too (`Timeout` is a `TimeoutError`, `InvalidArgument` a `ValueError`).

Errors the node or a provider answered with carry `code`, the protocol's error code
(docs/PROTOCOL.md), or the provider's own application code from 0x1000 up.
"""

from __future__ import annotations


class FoveaError(Exception):
    """Base class of the SDK's errors."""

    code: int | None = None


class ConnectError(FoveaError, ConnectionError):
    """The first connection failed: no node at the URL, an untrusted certificate, a TLS
    problem, or the node closed it (then `code` says why)."""


class AuthError(ConnectError):
    """The node refused the realm or token."""


class Disconnected(FoveaError, ConnectionError):
    """No session right now (the client is reconnecting); the call may or may not have run."""


class ClientClosed(FoveaError):
    """The client was closed."""


class BufferFull(FoveaError):
    """While reconnecting, more than `max_buffered` bytes of publishes are waiting."""


class InvalidArgument(FoveaError, ValueError):
    """A topic, pattern, procedure, header, URL or tool descriptor the node would refuse."""


class PayloadTooLarge(InvalidArgument):
    """The payload exceeds the node's `max_payload`."""


class Refused(FoveaError):
    """The node refused a subscription or registration (`code`: too many, permission
    denied, ...)."""


class NoProvider(FoveaError):
    """Nobody provides the procedure (answered at once by the node)."""


class Timeout(FoveaError, TimeoutError):
    """The call's deadline passed."""


class RemoteError(FoveaError):
    """The provider failed the call: `code` is its application code (0x1000 and up) and
    the message is its message."""


class ProviderDisconnected(FoveaError):
    """The provider went away while handling the call."""


class Busy(FoveaError):
    """The caller or every provider is at its in-flight limit; retry later."""


class Unsupported(FoveaError):
    """The node speaks an older protocol without this feature."""


class StreamEnded(FoveaError, RuntimeError):
    """A stream was written after its end, or the call does not stream its request."""


class NotAnswered(FoveaError):
    """The caller's agent did not answer a question (`Request.ask`): it declined, or it
    cannot be asked."""


class InputRequired(NotAnswered):
    """The question goes to an MCP 2026-07-28 agent in an input-required result: end this
    run of the handler (let it propagate); the agent's retry runs the handler again, and
    the question asked with the same key is then answered at once."""


class Cancelled(FoveaError):
    """The call was abandoned while its stream was read or written: its caller cancelled
    it, its deadline passed, or the connection was lost."""


__all__ = [
    "AuthError",
    "BufferFull",
    "Busy",
    "Cancelled",
    "ClientClosed",
    "ConnectError",
    "Disconnected",
    "FoveaError",
    "InputRequired",
    "InvalidArgument",
    "NoProvider",
    "NotAnswered",
    "PayloadTooLarge",
    "ProviderDisconnected",
    "Refused",
    "RemoteError",
    "StreamEnded",
    "Timeout",
    "Unsupported",
]
