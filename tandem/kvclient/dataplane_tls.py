"""The data plane's connection over TLS (``--tls-cert``): the interface of ``SocketStream``
(exact reads into the caller's buffers, gathered writes) on an asyncio TLS transport.

TLS decrypts into its own buffer, so a read here is one more copy than the plaintext path's
(``recv_into`` straight into an arena slot); payloads written are copied before ``write``
returns, so a pinned arena slot may be released right after it, as on the plaintext path.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable

from tandem.kvclient.dataplane_codec import FRAME_BYTES
from tandem.kvclient.dataplane_socket import DISCARD, PIECE, FrameReader, SocketStream

Buffer = bytes | bytearray | memoryview
READ_BUFFER = 4 << 20
"""Decrypted bytes the reader may buffer before the transport stops reading the socket."""
HANDSHAKE_TIMEOUT_S = 10.0
"""A peer that has not finished its TLS handshake by then is dropped."""


class TlsStream(FrameReader):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._header = bytearray(FRAME_BYTES)
        self.closed = False

    @classmethod
    async def connect(cls, host: str, port: int, context: ssl.SSLContext,
                      server_name: str = "") -> TlsStream:
        """``server_name``: the name the store's certificate must carry (default: ``host``)."""
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, limit=READ_BUFFER, server_hostname=server_name or host,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
        return cls(reader, writer)

    @classmethod
    async def accept(cls, sock: socket.socket, context: ssl.SSLContext) -> TlsStream:
        """Runs the server side of the handshake on an accepted socket (raises ``ssl.SSLError``
        or ``ConnectionError`` for a peer without a valid certificate)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_BUFFER)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock, ssl=context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
        return cls(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    async def read_into(self, view: memoryview,
                        on_piece: Callable[[memoryview], None] | None = None) -> None:
        size, got = len(view), 0
        step = PIECE if on_piece is not None else size
        while got < size:
            chunk = await self.reader.read(min(step, size - got))
            if not chunk:
                raise ConnectionError("the peer closed the connection")
            target = view[got:got + len(chunk)]
            target[:] = chunk
            if on_piece is not None:
                on_piece(target)
            got += len(chunk)

    async def discard(self, size: int) -> None:
        while size:
            chunk = await self.reader.read(min(size, DISCARD))
            if not chunk:
                raise ConnectionError("the peer closed the connection")
            size -= len(chunk)

    async def write(self, *parts: Buffer) -> None:
        for part in parts:
            if len(part):
                # a copy: the TLS transport may keep what it has not encrypted yet
                self.writer.write(bytes(part))
        await self.writer.drain()

    async def linger_close(self, seconds: float = 1.0, most: int = 4 * DISCARD) -> None:
        """Closes once the peer has read what was written (an error frame), as
        ``SocketStream.linger_close`` (TLS has no half-close: input is drained instead)."""
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await self.writer.drain()
            async with asyncio.timeout(seconds):
                while most > 0:
                    chunk = await self.reader.read(64 * 1024)
                    if not chunk:
                        break
                    most -= len(chunk)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


Stream = SocketStream | TlsStream
"""A data-plane connection, plaintext or TLS."""


async def connect(host: str, port: int, context: ssl.SSLContext | None,
                  server_name: str = "") -> Stream:
    """A connection to the store's data plane: TLS with ``context``, else plaintext."""
    if context is None:
        return await SocketStream.connect(host, port)
    return await TlsStream.connect(host, port, context, server_name)
