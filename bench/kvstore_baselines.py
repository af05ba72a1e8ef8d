"""Same-run baselines of the KV-store benchmark for the remote path, served by one subprocess
(``python -m bench.kvstore --naive-server PORT``):

- the naive transfer the issue names: one grpc.aio stream of 4 MiB protobuf messages
  (``PutRequest``/``GetResponse``), generated stubs, generic parsing, a copy into a sink;
- a reference that is no product path: the same bytes over one plain TCP socket
  (``recv_into`` a preallocated buffer, ``sendall`` from one), the ceiling of any transport
  on this machine.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np

from tandem.v1 import kvstore_pb2

MiB = 1 << 20
NAIVE_MESSAGE = 4 * MiB
RAW_CHUNK = 1 * MiB
OPTIONS = [("grpc.max_send_message_length", 64 * MiB),
           ("grpc.max_receive_message_length", 64 * MiB)]
UPLOAD, DOWNLOAD = b"u", b"d"


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of this process, or of ``pid``."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- server side (the subprocess) ---------------------------------------------------------------
async def serve(port: int, raw_port: int, total: int) -> None:
    sink = bytearray(total)
    source = np.random.default_rng(1).integers(0, 255, total, np.uint8).tobytes()

    async def upload(requests: AsyncIterator[kvstore_pb2.PutRequest],
                     context: object) -> kvstore_pb2.PutResponse:
        offset = 0
        async for request in requests:
            sink[offset:offset + len(request.data)] = request.data
            offset += len(request.data)
        return kvstore_pb2.PutResponse(stored=offset)

    async def download(request: kvstore_pb2.GetRequest,
                       context: object) -> AsyncIterator[kvstore_pb2.GetResponse]:
        view = memoryview(source)
        for offset in range(0, len(source), NAIVE_MESSAGE):
            yield kvstore_pb2.GetResponse(data=bytes(view[offset:offset + NAIVE_MESSAGE]))

    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Naive", {
        "Upload": grpc.stream_unary_rpc_method_handler(
            upload, request_deserializer=kvstore_pb2.PutRequest.FromString,
            response_serializer=kvstore_pb2.PutResponse.SerializeToString),
        "Download": grpc.unary_stream_rpc_method_handler(
            download, request_deserializer=kvstore_pb2.GetRequest.FromString,
            response_serializer=kvstore_pb2.GetResponse.SerializeToString),
    }),))
    listener = socket.create_server(("127.0.0.1", raw_port))
    listener.setblocking(False)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    loop = asyncio.get_running_loop()
    peers: set[asyncio.Task[None]] = set()
    while True:
        connection, _ = await loop.sock_accept(listener)
        peer = asyncio.create_task(_raw_peer(connection, sink, source))
        peers.add(peer)
        peer.add_done_callback(peers.discard)


async def _raw_peer(connection: socket.socket, sink: bytearray, source: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(sink)
    with connection:
        while command := await loop.sock_recv(connection, 1):
            if command == UPLOAD:
                got = 0
                while got < len(view):
                    got += await loop.sock_recv_into(connection, view[got:got + RAW_CHUNK])
                await loop.sock_sendall(connection, b"k")
            else:
                await loop.sock_sendall(connection, source)


# --- client side ------------------------------------------------------------------------------
class Naive:
    """The naive single-stream grpc.aio transfer (one channel, reused across rounds)."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
        self.upload = self.channel.stream_unary(
            "/bench.Naive/Upload", request_serializer=kvstore_pb2.PutRequest.SerializeToString,
            response_deserializer=kvstore_pb2.PutResponse.FromString)
        self.download = self.channel.unary_stream(
            "/bench.Naive/Download", request_serializer=kvstore_pb2.GetRequest.SerializeToString,
            response_deserializer=kvstore_pb2.GetResponse.FromString)

    async def put(self, payload: bytes) -> None:
        view = memoryview(payload)

        async def messages() -> AsyncIterator[kvstore_pb2.PutRequest]:
            for offset in range(0, len(payload), NAIVE_MESSAGE):
                yield kvstore_pb2.PutRequest(data=bytes(view[offset:offset + NAIVE_MESSAGE]))

        await self.upload(messages())

    async def get(self, sink: bytearray) -> None:
        offset = 0
        async for reply in self.download(kvstore_pb2.GetRequest()):
            sink[offset:offset + len(reply.data)] = reply.data
            offset += len(reply.data)

    async def close(self) -> None:
        await self.channel.close()


class RawSocket:
    """The plain TCP reference (one connection)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    async def connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        self.sock.setblocking(False)

    async def put(self, payload: bytes) -> None:
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, UPLOAD)
        await loop.sock_sendall(self.sock, payload)
        await loop.sock_recv(self.sock, 1)

    async def get(self, sink: bytearray) -> None:
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, DOWNLOAD)
        view, got = memoryview(sink), 0
        while got < len(view):
            got += await loop.sock_recv_into(self.sock, view[got:got + RAW_CHUNK])

    async def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


async def wait_ready(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(channel.channel_ready(), 0.5)
                return
            except TimeoutError:
                pass
    raise RuntimeError("the baseline server did not start")
