"""A TCP connection of the KV store's data plane, for the store and its clients alike: exact reads
straight into the caller's buffers (a payload lands in its arena slot or block buffer, never in a
staging copy) and gathered writes of header + payload views (no joins).

Reads are tried on the socket first and wait on the event loop only when nothing is there yet:
uvloop's ``sock_recv_into`` registers a reader on every call, which a frame's body, already in the
kernel behind its header, does not need.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping

from tandem.kvclient.dataplane_codec import FRAME_BYTES, Frame, Limits, Op, Rule, decode_frame

Buffer = bytes | bytearray | memoryview
PIECE = 256 * 1024
"""Most bytes per receive when each piece is checksummed as it lands (``on_piece``): the piece is
still in the L2 cache when the checksum reads it."""
DISCARD = 1 << 20


class FrameReader:
    """What every data-plane stream reads through its own ``read_into``: whole buffers, frames."""

    _header: bytearray

    async def read_into(self, view: memoryview,
                        on_piece: Callable[[memoryview], None] | None = None) -> None:
        raise NotImplementedError

    async def read_bytes(self, size: int) -> memoryview:
        view = memoryview(bytearray(size))
        await self.read_into(view)
        return view

    async def read_frame(self, limits: Limits, rules: Mapping[Op, Rule]) -> Frame:
        header = memoryview(self._header)
        await self.read_into(header)
        return decode_frame(header, limits, rules)


class SocketStream(FrameReader):
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self._header = bytearray(FRAME_BYTES)
        self.closed = False

    @classmethod
    async def connect(cls, host: str, port: int) -> SocketStream:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        error: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
                return cls(sock)
            except OSError as failure:
                sock.close()
                error = failure
        raise error or OSError(f"cannot resolve {host}")

    async def read_into(self, view: memoryview,
                        on_piece: Callable[[memoryview], None] | None = None) -> None:
        """Fills ``view`` exactly; ``on_piece`` sees every received piece while it is hot."""
        size, got = len(view), 0
        step = PIECE if on_piece is not None else size
        while got < size:
            target = view[got:got + step]
            try:
                count = self.sock.recv_into(target)
            except BlockingIOError:
                count = await self.loop.sock_recv_into(self.sock, target)
            if not count:
                raise ConnectionError("the peer closed the connection")
            if on_piece is not None:
                on_piece(target[:count])
            got += count

    async def discard(self, size: int) -> None:
        """Reads and drops ``size`` bytes (a payload the store already has)."""
        scratch = memoryview(bytearray(min(size, DISCARD)))
        while size:
            piece = scratch[:min(size, len(scratch))]
            await self.read_into(piece)
            size -= len(piece)

    async def write(self, *parts: Buffer) -> None:
        """Sends every part in order; returns once the kernel holds all of them (so a pinned
        arena slot may be released afterwards)."""
        views = [memoryview(part).cast("B") for part in parts if len(part)]
        try:
            sent = self.sock.sendmsg(views)
        except BlockingIOError:
            sent = 0
        for view in views:
            if sent >= len(view):
                sent -= len(view)
                continue
            await self.loop.sock_sendall(self.sock, view[sent:])
            sent = 0

    async def linger_close(self, seconds: float = 1.0, most: int = 4 * DISCARD) -> None:
        """Closes after the last write reaches the peer: closing with unread input would reset
        the connection and drop what was just sent (an error frame). Input is read and dropped
        until the peer closes, for at most ``seconds`` and ``most`` bytes."""
        scratch = memoryview(bytearray(64 * 1024))
        try:
            self.sock.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(seconds):
                while most > 0:
                    count = await self.loop.sock_recv_into(self.sock, scratch)
                    if not count:
                        break
                    most -= count
        except (OSError, TimeoutError):
            pass
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()
