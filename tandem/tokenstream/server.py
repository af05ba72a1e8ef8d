"""The worker's side of the token stream: serves one streaming gRPC handler (the decode
worker's ``Generate``, with its ``rpc`` wrapper: server span, ``TandemError`` → status) to
framed connections, with the lifecycle of the worker's gRPC server: it refuses new calls once
draining, lets running ones finish within the drain grace, and ends what is left UNAVAILABLE,
so the router migrates those streams exactly as it does gRPC ones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from tandem.service.groups import GrpcSettings, ServerSettings
from tandem.service.tls import server_context
from tandem.tokenstream.frames import (
    FrameBuffer,
    Kind,
    Metadata,
    ProtocolError,
    error_frame,
    frame,
    parse_open,
)
from tandem.tokenstream.keepalive import keep_alive

log = logging.getLogger(__name__)

StreamHandler = Callable[[Any, Any], AsyncGenerator[Any, None]]
"""A bound streaming servicer method: (request, context) → response messages."""


class Aborted(Exception):
    """``context.abort`` of a handler: ends the call with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class StreamContext:
    """The part of ``grpc.aio.ServicerContext`` the workers' handlers use."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = tuple(metadata)
        self.trailers: Metadata = ()

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def set_trailing_metadata(self, metadata: Metadata) -> None:
        self.trailers = tuple(metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise Aborted(code, details)


class _Connection(asyncio.Protocol):
    """One client connection; its calls run one after another."""

    def __init__(self, server: TokenStreamServer) -> None:
        self.server = server
        self.frames = FrameBuffer(server.settings.max_message_bytes)
        self.transport: asyncio.Transport | None = None
        self.call: asyncio.Task[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        keep_alive(transport.get_extra_info("socket"), self.server.settings)
        self.transport = transport  # type: ignore[assignment]  # a stream transport
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.call is not None:
            self.call.cancel()  # the client went away: the handler (engine request) ends now
        self._wake_writer()

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_writer(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            for kind, body in self.frames.feed(data):
                if kind is not Kind.OPEN or self.call is not None:
                    raise ProtocolError(f"{kind.name} frame from a client"
                                        + (" during a call" if self.call is not None else ""))
                self.server.calls += 1
                self.call = asyncio.get_running_loop().create_task(self._serve(body))
        except ProtocolError as error:
            log.warning("token stream: closing a connection", extra={"error": str(error)})
            assert self.transport is not None
            self.transport.abort()

    async def _serve(self, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        context: StreamContext | None = None
        try:
            if self.server.draining:
                transport.write(error_frame(grpc.StatusCode.UNAVAILABLE,
                                            "the worker is draining"))
                return
            try:
                metadata, request_bytes = parse_open(body)
                request = self.server.request_type.FromString(request_bytes)
            except (ProtocolError, DecodeError) as error:  # as grpc.aio answers an unreadable one
                log.warning("token stream: a call with an unreadable request",
                            extra={"error": str(error)})
                transport.write(error_frame(grpc.StatusCode.INTERNAL,
                                            f"could not read the call's request: {error}"))
                return
            context = StreamContext(metadata)
            messages = self.server.handler(request, context)
            async with contextlib.aclosing(messages) as stream:
                async for message in stream:
                    transport.write(frame(Kind.MESSAGE, message.SerializeToString()))
                    if self._writable is not None:  # the client reads slower than we write
                        await self._writable
            transport.write(frame(Kind.END))
        except Aborted as aborted:
            transport.write(error_frame(aborted.code, aborted.details,
                                        context.trailers if context is not None else ()))
        except asyncio.CancelledError:
            if not transport.is_closing():  # ended by the server (drained), not the client
                transport.write(error_frame(grpc.StatusCode.UNAVAILABLE,
                                            "the worker stopped serving this call"))
                transport.close()
            raise
        except Exception as error:  # what grpc.aio answers for a handler's own failure
            log.exception("token stream: the handler failed")
            transport.write(error_frame(grpc.StatusCode.UNKNOWN,
                                        f"Unexpected {type(error)}: {error}"))
        finally:
            self.call = None


class TokenStreamServer:
    """Serves ``handler`` on ``host:port`` (0: a free port); ``request_type`` parses OPEN's
    request. TLS (mutual with --tls-client-auth) when the gRPC settings have a certificate."""

    def __init__(self, handler: StreamHandler, request_type: Any, host: str, port: int,
                 settings: GrpcSettings,
                 drain_grace_s: float = ServerSettings.drain_grace_s) -> None:
        self.handler, self.request_type = handler, request_type
        self.host, self.port, self.settings = host, port, settings
        self.drain_grace_s = drain_grace_s
        self.connections: set[_Connection] = set()
        self.draining = False
        self.calls = 0
        """Calls opened so far."""
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listens; returns the port."""
        tls = self.settings.tls
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), self.host, self.port, reuse_address=True, backlog=2048,
            ssl=server_context(tls) if tls.enabled else None)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def _calls(self) -> list[asyncio.Task[None]]:
        return [c.call for c in self.connections if c.call is not None]

    async def drain(self) -> None:
        """Refuses new calls (UNAVAILABLE) and lets running ones finish within the drain
        grace; then ends what is left."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        calls = self._calls()
        if calls:
            await asyncio.wait(calls, timeout=self.drain_grace_s)
        await self.close()

    async def close(self) -> None:
        """Ends every call at once (UNAVAILABLE) and closes every connection."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        calls = self._calls()
        for call in calls:
            call.cancel()
        if calls:
            await asyncio.wait(calls)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
