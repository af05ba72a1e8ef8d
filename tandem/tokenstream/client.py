"""The router's side of the token stream: a pool of connections to one worker's stream port,
and a call object that reads like a grpc.aio streaming call (``async for`` over response
messages, ``cancel()``) and fails with the ``AioRpcError`` a gRPC call would raise:
UNAVAILABLE when the worker cannot be reached or its connection is lost mid-call,
DEADLINE_EXCEEDED when the call's timeout passes, the worker's own status otherwise. So the
router's migration, breaker and error mapping read both transports alike."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc

from tandem.service.groups import GrpcSettings
from tandem.service.tls import client_context
from tandem.tokenstream.frames import (
    FrameBuffer,
    Kind,
    Metadata,
    ProtocolError,
    open_frame,
    parse_error,
)
from tandem.tokenstream.keepalive import keep_alive

Response = TypeVar("Response")
Coalesce = Callable[[Sequence[Any]], Any]
"""Joins consecutive messages of a call into one (what the message type's contract allows)."""


def rpc_error(code: grpc.StatusCode, details: str,
              trailers: Metadata = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers),
                                details)


class _Connection(asyncio.Protocol):
    """One connection; it carries one call at a time."""

    def __init__(self, address: str, max_body_bytes: int) -> None:
        self.address = address
        self.frames = FrameBuffer(max_body_bytes)
        self.transport: asyncio.Transport | None = None
        self.messages: collections.deque[bytes] = collections.deque()
        self.ended = False
        self.error: grpc.aio.AioRpcError | None = None
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def begin(self, opening: bytes) -> None:
        self.messages.clear()
        self.ended, self.error = False, None
        assert self.transport is not None
        self.transport.write(opening)

    def data_received(self, data: bytes) -> None:
        try:
            for kind, body in self.frames.feed(data):
                if kind is Kind.MESSAGE:
                    self.messages.append(body)
                elif kind is Kind.END:
                    self.ended = True
                elif kind is Kind.ERROR:
                    self.error = rpc_error(*parse_error(body))
                else:
                    raise ProtocolError(f"{kind.name} frame from a worker")
        except ProtocolError as error:
            self.fail(grpc.StatusCode.INTERNAL, f"token stream of {self.address}: {error}")
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ended and self.error is None:
            self.error = rpc_error(grpc.StatusCode.UNAVAILABLE,
                                   f"token stream of {self.address} lost: {exc or 'closed'}")
        self._wake()

    def fail(self, code: grpc.StatusCode, details: str) -> None:
        """Ends the call with this status and drops the connection."""
        if self.error is None:
            self.error = rpc_error(code, details)
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class TokenStreamCall(Generic[Response]):
    """One streaming call; the connection is opened (or taken from the pool) on the first
    read, and goes back to the pool when the call ends cleanly."""

    def __init__(self, client: TokenStreamClient, opening: bytes, timeout: float | None,
                 response_type: Any, coalesce: Coalesce | None) -> None:
        self._client, self._opening, self._response_type = client, opening, response_type
        self._coalesce = coalesce
        loop = asyncio.get_running_loop()
        self._deadline = None if timeout is None else loop.time() + timeout
        self._connection: _Connection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def __aiter__(self) -> TokenStreamCall[Response]:
        return self

    async def __anext__(self) -> Response:
        connection = self._connection
        if connection is None:
            if self._done:
                raise StopAsyncIteration
            connection = self._connection = await self._open()
        while True:
            messages = connection.messages
            if messages:
                parse = self._response_type.FromString
                if len(messages) == 1 or self._coalesce is None:
                    return parse(messages.popleft())  # type: ignore[no-any-return]
                # Several arrived while the caller was busy: one message for all of them, so
                # a caller that falls behind catches up with one write instead of many.
                batch = [parse(body) for body in messages]
                messages.clear()
                return self._coalesce(batch)  # type: ignore[no-any-return]
            if connection.error is not None:
                self._finish()
                raise connection.error
            if connection.ended:
                self._finish()
                raise StopAsyncIteration
            await connection.wait()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        remaining = None if self._deadline is None else self._deadline - loop.time()
        try:
            async with asyncio.timeout(remaining):
                connection = await self._client.connection()
        except TimeoutError:
            self._done = True
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except OSError as error:
            self._done = True
            raise rpc_error(grpc.StatusCode.UNAVAILABLE,
                            f"token stream of {self._client.address}: {error}") from None
        connection.begin(self._opening)
        if self._deadline is not None:
            self._timer = loop.call_at(self._deadline, connection.fail,
                                       grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        return connection

    def _finish(self) -> None:
        """The call ended (its last frame read, or cancelled): a connection whose call ended
        cleanly goes back to the pool, any other is closed."""
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if connection.ended and connection.error is None and not connection.messages:
            self._client.release(connection)
        elif connection.transport is not None:
            connection.transport.abort()

    def cancel(self) -> bool:
        """Ends the call (a no-op once it ended): the worker sees its connection close and
        aborts the engine request."""
        if self._done:
            return False
        self._finish()
        return True


class TokenStreamClient:
    """Calls to one worker's token stream (``host:port``)."""

    def __init__(self, host: str, port: int, settings: GrpcSettings,
                 max_idle_connections: int) -> None:
        self.host, self.port = host, port
        self.address = f"{host}:{port}"
        self.settings = settings
        self.max_idle_connections = max_idle_connections
        self._ssl = client_context(settings.tls) if settings.tls.enabled else None
        self._idle: list[_Connection] = []

    def call(self, request: Any, response_type: type[Response], timeout: float | None,
             metadata: Metadata = (), coalesce: Coalesce | None = None
             ) -> TokenStreamCall[Response]:
        """A call of ``request``; with ``coalesce``, messages that are already waiting when the
        caller reads come out as one."""
        return TokenStreamCall(self, open_frame(metadata, request.SerializeToString()),
                               timeout, response_type, coalesce)

    async def connection(self) -> _Connection:
        """An idle pooled connection, or a new one."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        _, connection = await asyncio.get_running_loop().create_connection(
            lambda: _Connection(self.address, self.settings.max_message_bytes),
            self.host, self.port, ssl=self._ssl,
            server_hostname=(self.settings.tls.server_name or self.host)
            if self._ssl is not None else None)
        assert connection.transport is not None
        keep_alive(connection.transport.get_extra_info("socket"), self.settings)
        return connection

    def release(self, connection: _Connection) -> None:
        if connection.closed or len(self._idle) >= self.max_idle_connections:
            if connection.transport is not None:
                connection.transport.close()
            return
        self._idle.append(connection)

    def close(self) -> None:
        for connection in self._idle:
            if connection.transport is not None:
                connection.transport.close()
        self._idle.clear()
