"""KV-store client for workers: one facade over the transport chosen when it connects.

On the store's host (same host identity, arena file readable) payloads never ride gRPC: they go
through the shared arena and block files (``local_transport``). Elsewhere they travel on the
store's data plane (``dataplane_transport``: a raw TCP transport beside gRPC, received straight
into the destination buffers) when the store offers one, and Lookup does too; gRPC
(``grpc_transport``) is the fallback (``fallback``) and the transport of a store without a data
plane. The facade owns the spans; the transports carry the bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import mmap
import os
import socket
from collections.abc import Callable, Sequence

from opentelemetry.context import Context

from tandem.kvclient.arena_map import open_arena
from tandem.kvclient.dataplane_transport import DataPlaneTransport
from tandem.kvclient.fallback import FallbackTransport
from tandem.kvclient.grpc_transport import GrpcTransport
from tandem.kvclient.local_transport import LocalTransport
from tandem.kvclient.memtune import keep_freed_memory
from tandem.kvclient.settings import KVClientSettings
from tandem.kvclient.transport import Buffer, PutResult, Transport, tier_name
from tandem.service.tls import client_context
from tandem.telemetry import tracer
from tandem.v1 import common_pb2, kvstore_pb2

_tracer = tracer("tandem.kvclient")
TRANSPORT_ATTRIBUTE = "tandem.kv.transport"


@dataclasses.dataclass(frozen=True)
class StoreInfo:
    host: str
    slot_bytes: int
    tiers: list[kvstore_pb2.TierInfo]
    data_port: int = 0
    data_host: str = ""

    def path_of(self, tier: int) -> str | None:
        return next((t.path for t in self.tiers if t.tier == tier), None)


@dataclasses.dataclass(frozen=True)
class Route:
    """The transport a client uses, decided once when it connects."""

    same_host: bool
    """Payloads go through the store's arena and block files (``LocalTransport``)."""
    arena_path: str | None
    """The arena to map into this process (same host, with a cxl tier)."""
    data_plane: bool
    """Remote payloads and Lookup go on the data plane, with gRPC as its fallback."""


def route(settings: KVClientSettings, host_id: str, store: StoreInfo,
          usable: Callable[[str], bool]) -> Route:
    """Same host when the settings say so (by default: when the store's host identity is
    ``host_id``), unless the store's arena cannot be used here; the data plane when the store
    offers one and the settings do not force gRPC."""
    same = settings.same_host if settings.same_host is not None else store.host == host_id
    arena_path = store.path_of(common_pb2.STORAGE_TIER_CXL) if same else None
    if arena_path and not usable(arena_path):
        same, arena_path = False, None
    return Route(same, arena_path or None, bool(store.data_port) and not settings.force_grpc)


class KVClient:
    def __init__(self, address: str, settings: KVClientSettings | None = None) -> None:
        self.address = address
        self.settings = settings or KVClientSettings()
        self.grpc = GrpcTransport(address, self.settings)
        self.channels = self.grpc.channels
        self.stub = self.grpc.stub
        self.info: StoreInfo | None = None
        self.same_host = False
        self.data_plane: DataPlaneTransport | None = None
        """The store's data plane, when it offers one (``force_grpc`` off)."""
        self.transport: Transport = self.grpc
        """Carries every call; chosen by ``connect`` (gRPC until then)."""
        self._fallback: FallbackTransport | None = None
        self._local: LocalTransport | None = None

    async def __aenter__(self) -> KVClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> StoreInfo:
        """Asks the store what it offers (Describe) and picks the transport from that: the
        arena and block files on the same host, else the data plane with gRPC as its fallback,
        else gRPC."""
        keep_freed_memory(self.settings.malloc_keep_bytes)
        reply = await self.stub.Describe(kvstore_pb2.DescribeRequest(),
                                         timeout=self.settings.timeout_s)
        self.info = StoreInfo(reply.host, reply.slot_bytes, list(reply.tiers), reply.data_port,
                              reply.data_host)
        chosen = route(self.settings, self.settings.host_id or socket.gethostname(), self.info,
                       lambda path: os.access(path, os.R_OK | os.W_OK))
        arena = None
        if chosen.arena_path:
            arena, _ = await asyncio.to_thread(open_arena, chosen.arena_path,
                                               self.settings.populate)
        self.same_host = chosen.same_host
        remote: Transport = self.grpc
        if chosen.data_plane:
            self.data_plane = DataPlaneTransport(
                reply.data_host or _host_of(self.address), reply.data_port,
                self.settings.data_connections, self.settings.timeout_s,
                client_context(self.settings.tls) if self.settings.tls.enabled else None,
                self.settings.tls.server_name)
            self._fallback = FallbackTransport(self.data_plane, self.grpc)
            remote = self._fallback
        if self.same_host:
            self._local = LocalTransport(self.stub, arena, self.settings, remote)
        self.transport = self._local or remote
        await self.transport.open()
        return self.info

    @property
    def data_plane_up(self) -> bool:
        """Remote payloads and Lookup go over the data plane now."""
        return self._fallback is not None and self._fallback.primary_up

    @property
    def arena(self) -> mmap.mmap | None:
        """The store's arena mapped into this process (same host, with a cxl tier)."""
        return self._local.arena if self._local is not None else None

    @property
    def arena_view(self) -> memoryview | None:
        return self._local.arena_view if self._local is not None else None

    async def close(self) -> None:
        await self.transport.close()

    async def flush(self) -> None:
        """Waits for background releases (pins are dropped once this returns)."""
        await self.transport.flush()

    async def lookup(self, hashes: Sequence[bytes]) -> tuple[int, list[int]]:
        return await self.transport.lookup(hashes)

    async def put(self, hashes: Sequence[bytes], payloads: Sequence[Buffer], parent: bytes = b"",
                  tier: int = 0, context: Context | None = None) -> PutResult:
        """Stores a chain of blocks (``parent`` is the block before ``hashes[0]``). The span
        joins ``context`` (default: the current one), e.g. a request's carried trace context."""
        if len(hashes) != len(payloads):
            raise ValueError("one payload per hash")
        size = sum(len(memoryview(p).cast("B")) for p in payloads)
        with _tracer.start_as_current_span("kvclient.put", context=context) as span:
            span.set_attribute("tandem.kv.bytes", size)
            span.set_attribute("tandem.kv.blocks", len(hashes))
            result = await self.transport.put(
                hashes, payloads, parent, tier,
                lambda word: span.set_attribute(TRANSPORT_ATTRIBUTE, word))
            # A remote store reports the tiers it chose on its own span (kvstore.put).
            tiers = result.tiers or {tier_name(tier) if tier else "auto"}
            span.set_attributes({"tandem.kv.tier": ",".join(sorted(tiers)),
                                 "tandem.kv.stored_blocks": result.stored,
                                 "tandem.kv.present_blocks": result.already_present,
                                 "tandem.kv.failed_blocks": len(result.failed)})
            return result

    async def get(self, hashes: Sequence[bytes],
                  into: Sequence[bytearray | memoryview] | None = None,
                  context: Context | None = None) -> list[memoryview]:
        """Payloads of the leading blocks of the chain that the store holds intact, in order
        (shorter than ``hashes`` at the first miss; never a corrupt or partial block). The
        span joins ``context`` (default: the current one)."""
        with _tracer.start_as_current_span("kvclient.get", context=context) as span:
            span.set_attribute("tandem.kv.requested_blocks", len(hashes))
            out, found = await self.transport.get(
                hashes, lambda index, size: _target(into, index, size),
                lambda word: span.set_attribute(TRANSPORT_ATTRIBUTE, word))
            span.set_attributes({"tandem.kv.blocks": len(out),
                                 "tandem.kv.bytes": sum(len(b) for b in out),
                                 "tandem.kv.tier": ",".join(sorted(
                                     {tier_name(t) for t in found}))})
            return out


def _host_of(address: str) -> str:
    """The host of a gRPC target (``host:port``, ``[v6]:port``, ``dns:///host:port``)."""
    host = address.rsplit("/", 1)[-1].rsplit(":", 1)[0]
    return host.strip("[]") or "127.0.0.1"


def _target(into: Sequence[bytearray | memoryview] | None, index: int, size: int) -> memoryview:
    if into is not None and index < len(into):
        view = memoryview(into[index]).cast("B")
        if len(view) < size:
            raise ValueError(f"buffer {index} holds {len(view)} bytes, the block has {size}")
        return view[:size]
    return memoryview(bytearray(size))
