"""The router's HTTP server: uvicorn (httptools) on a SO_REUSEPORT socket, driven by the
router's own lifecycle (the gRPC server is ``tandem.service.grpc.GrpcServer``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tandem.service.tls import TlsSettings

log = logging.getLogger(__name__)


class NoDelayHttpProtocol(HttpToolsProtocol):
    """HTTP/1.1 with TCP_NODELAY on every connection: a streamed token must leave at once, not
    wait for the previous segment's delayed ACK (~40 ms stalls on keep-alive connections)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening socket with SO_REUSEPORT, so several router processes can share a port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn without signal handlers of its own: the service's runtime owns SIGTERM."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


class HttpServer:
    """uvicorn driven by the service's own lifecycle; HTTPS with the service's certificate when
    ``tls`` has one (no client certificate asked: API keys authenticate HTTP clients)."""

    def __init__(self, app: Any, host: str, port: int, tls: TlsSettings | None = None) -> None:
        self.socket = listening_socket(host, port)
        self.port = int(self.socket.getsockname()[1])
        # No proxy-headers middleware: the router reads no client address, and it would cost
        # a call per request.
        https = tls is not None and tls.enabled
        config = uvicorn.Config(app, http=NoDelayHttpProtocol, lifespan="off",
                                access_log=False, log_config=None, timeout_keep_alive=30,
                                proxy_headers=False,
                                ssl_certfile=tls.cert if tls is not None and https else None,
                                ssl_keyfile=tls.key if tls is not None and https else None)
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises the startup failure
            await asyncio.sleep(0.01)
        log.info("http server listening", extra={"port": self.port})

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task
