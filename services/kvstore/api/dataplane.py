"""The store's data plane: remote puts, gets and lookups over a small length-prefixed binary
protocol (``tandem.kvclient.dataplane_codec``; spec in docs/kvstore.md) on a TCP port of its own,
beside gRPC, which stays the typed control plane and the fallback.

Python gRPC copies every payload byte several times in user space (see docs/kvstore.md); here a
payload is received straight into its arena slot or block-file buffer and sent straight from the
pinned slot. The store logic is the gRPC path's (``transfer``): the same reservations, commits,
pins and checksums. Bad input from a peer ends that connection with an error logged; every
length is checked against the store's limits before anything is allocated or read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from services.kvstore.core.validate import Checks
from services.kvstore.settings import KVStoreSettings
from services.kvstore.store import KVStore
from services.kvstore.transfer import BlockWriter, PinnedRead, end_get_span
from tandem.errors import TandemError
from tandem.kvclient import dataplane_codec as codec
from tandem.kvclient.dataplane_codec import Frame, Op, ProtocolError, Status
from tandem.kvclient.dataplane_socket import PIECE, SocketStream
from tandem.kvclient.dataplane_tls import Stream, TlsStream
from tandem.kvclient.transport import DATAPLANE
from tandem.service.tls import server_context
from tandem.telemetry import extract_context, tracer

log = logging.getLogger(__name__)
_tracer = tracer("tandem.kvstore")


class DataPlaneServer:
    def __init__(self, store: KVStore, settings: KVStoreSettings, checks: Checks) -> None:
        self.store, self.settings, self.checks = store, settings, checks
        self.limits = codec.Limits(settings.max_chain_blocks, settings.max_block_bytes)
        self.listener: socket.socket | None = None
        self.port = 0
        self._accepting: asyncio.Task[None] | None = None
        self._peers: set[asyncio.Task[None]] = set()
        tls = settings.grpc.tls
        self.tls = server_context(tls) if tls.enabled else None
        """TLS (mutual with --tls-client-auth) on every connection, when --tls-cert is set."""

    async def start(self) -> int:
        """Listens on --host:--data-port; returns the port."""
        listener = socket.create_server((self.settings.server.host, self.settings.data_port),
                                        backlog=128)
        listener.setblocking(False)
        self.listener, self.port = listener, listener.getsockname()[1]
        self._accepting = asyncio.create_task(self._accept(listener))
        return self.port

    async def stop(self) -> None:
        tasks = [t for t in (self._accepting, *self._peers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.listener is not None:
            self.listener.close()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as error:  # out of descriptors, a connection reset while queued
                log.warning("data-plane accept failed", extra={"error": repr(error)})
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._open(sock, str(peer)))
            self._peers.add(task)
            task.add_done_callback(self._peers.discard)

    async def _open(self, sock: socket.socket, peer: str) -> None:
        """Serves one connection, after its TLS handshake when TLS is on (a peer without a
        valid certificate is dropped here, before it can send a frame)."""
        if self.tls is None:
            await self._serve(SocketStream(sock), peer)
            return
        try:
            stream = await TlsStream.accept(sock, self.tls)
        except (OSError, TimeoutError) as error:  # ssl.SSLError is an OSError
            sock.close()
            log.warning("data-plane TLS handshake refused",
                        extra={"peer": peer, "error": type(error).__name__})
            self.store.metrics.dataplane_errors.add(1)
            return
        await self._serve(stream, peer)

    async def _serve(self, stream: Stream, peer: str) -> None:
        request_id = 0
        try:
            while True:
                try:
                    frame = await stream.read_frame(self.limits, codec.REQUEST_RULES)
                except ConnectionError:
                    return  # the peer closed its end between requests
                request_id = frame.request_id
                if frame.op is Op.LOOKUP:
                    await self._lookup(stream, frame)
                elif frame.op is Op.GET:
                    await self._get(stream, frame)
                elif frame.op is Op.PUT:
                    await self._put(stream, frame)
                else:
                    raise ProtocolError(f"a {frame.op.name} frame outside a PUT")
        except ProtocolError as error:
            await self._refuse(stream, peer, request_id, Status.PROTOCOL, str(error))
        except TandemError as error:
            await self._refuse(stream, peer, request_id, Status.BAD_REQUEST, error.message)
        except TimeoutError:
            await self._refuse(stream, peer, request_id, Status.INTERNAL,
                               "the transfer outlasted its reservation or lease")
        except (ConnectionError, OSError) as error:
            log.info("data-plane peer gone mid-request", extra={"peer": peer,
                                                                "error": repr(error)})
        except Exception:
            log.exception("data-plane request failed", extra={"peer": peer})
            await self._refuse(stream, peer, request_id, Status.INTERNAL, "internal error")
        finally:
            stream.close()

    async def _refuse(self, stream: Stream, peer: str, request_id: int, status: Status,
                      message: str) -> None:
        """Answers an ERROR frame; the connection closes after it (it may be out of step)."""
        log.warning("data-plane connection closed on an error",
                    extra={"peer": peer, "status": status.name, "error": message})
        self.store.metrics.dataplane_errors.add(1)
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(stream.write(codec.encode_error(request_id, status, message)),
                                   1.0)
            await stream.linger_close()

    async def _hashes(self, stream: Stream, frame: Frame) -> tuple[dict[str, str],
                                                                          list[bytes]]:
        body = await stream.read_bytes(frame.length)
        carrier, rest = codec.split_trace(frame, body)
        return carrier, codec.parse_hashes(rest, frame.count)

    async def _lookup(self, stream: Stream, frame: Frame) -> None:
        _, hashes = await self._hashes(stream, frame)
        start = time.perf_counter()
        tiers = [self.checks.storage_of[t] for t in self.store.lookup(hashes)]
        reply = codec.encode_lookup_reply(frame.request_id, tiers)
        self.store.metrics.lookup(time.perf_counter() - start, DATAPLANE)
        await stream.write(reply)

    async def _get(self, stream: Stream, frame: Frame) -> None:
        carrier, hashes = await self._hashes(stream, frame)
        start = time.perf_counter()
        span = _tracer.start_span("kvstore.get", context=extract_context(carrier.items()),
                                  attributes={"tandem.kv.transport": DATAPLANE})
        read = PinnedRead(self.store, hashes)
        try:
            async with read:
                # bytes leave an arena slot only while its pin holds
                async with asyncio.timeout(self.store.settings.lease_ms / 1000 * 0.9):
                    index = 0
                    async for block, data in read.payloads():
                        await stream.write(codec.encode_block(
                            frame.request_id, index, block.block_hash,
                            self.checks.storage_of[block.tier], block.size), data,
                            codec.encode_trailer(block.checksum))
                        index += 1
                    await stream.write(codec.encode_end(frame.request_id, index))
        finally:
            end_get_span(span, read)
            self.store.metrics.remote_get(time.perf_counter() - start, read.sent, DATAPLANE)

    async def _put(self, stream: Stream, frame: Frame) -> None:
        body = await stream.read_bytes(frame.length)
        carrier, rest = codec.split_trace(frame, body)
        parent, storage = codec.parse_put(rest)
        self.checks.tier(storage)
        start = time.perf_counter()
        writer = BlockWriter(self.store, self.checks)
        meta = memoryview(bytearray(codec.META_BYTES))
        trailer = memoryview(bytearray(codec.TRAILER.size))
        received = 0
        with _tracer.start_as_current_span(
                "kvstore.put", context=extract_context(carrier.items()),
                attributes={"tandem.kv.transport": DATAPLANE}) as span:
            try:
                previous = parent
                for index in range(frame.count):
                    block = await stream.read_frame(self.limits, codec.REQUEST_RULES)
                    if block.op is not Op.BLOCK or block.count != index or \
                            block.request_id != frame.request_id:
                        raise ProtocolError(f"expected block {index} of request "
                                            f"{frame.request_id}, got a {block.op.name} frame")
                    await stream.read_into(meta)
                    block_hash, _ = codec.parse_block(meta)
                    size = block.length - codec.BLOCK_OVERHEAD
                    await writer.begin(block_hash, size, 0, previous, storage)
                    await self._receive(stream, writer)
                    await stream.read_into(trailer)
                    await writer.complete(codec.parse_trailer(trailer))
                    received += size
                    previous = block_hash
                await writer.finish()
            finally:
                await writer.close()
            span.set_attributes({"tandem.kv.bytes": writer.bytes,
                                 "tandem.kv.blocks": writer.stored,
                                 "tandem.kv.tier": ",".join(sorted(writer.tiers))})
        self.store.metrics.remote_put(time.perf_counter() - start, received, DATAPLANE)
        await stream.write(codec.encode_put_reply(frame.request_id, writer.stored,
                                                  writer.already, writer.failed))

    async def _receive(self, stream: Stream, writer: BlockWriter) -> None:
        """Receives one block's payload straight into its reserved space, within its
        reservation (the slot is reclaimed after it, and must not be written any more)."""
        deadline = writer.deadline
        timeout = None
        if deadline is not None:
            margin = min(0.5, self.store.settings.reserve_timeout_s / 4)
            timeout = max(0.0, deadline - time.time() - margin)
        async with asyncio.timeout(timeout):
            while writer.inside:
                target = writer.target
                if target is None:
                    rest = writer.size - writer.received
                    await stream.discard(rest)
                    writer.skipped(rest)
                    continue
                piece = target[writer.received:writer.received + PIECE]
                await stream.read_into(piece)
                writer.landed(piece)

