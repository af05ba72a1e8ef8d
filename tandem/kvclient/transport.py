"""What a transport of the KV client is: the ``Transport`` protocol that the same-host
(``local_transport``), data-plane (``dataplane_transport``) and gRPC (``grpc_transport``)
transports implement and ``fallback`` wraps, its result and error types, and the transport words.

``KVClient`` picks one transport when it connects and sends every call through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

from tandem.v1 import common_pb2

LOCAL, DATAPLANE, GRPC = "local", "dataplane", "grpc"
"""How a transfer travels (same host through the arena and block files; across hosts on the
data plane or over gRPC): the store metrics' ``path`` label and the ``tandem.kv.transport``
attribute of client and store spans."""

Buffer = bytes | bytearray | memoryview
Target = Callable[[int, int], memoryview]
"""``target(index, size)``: where block ``index`` of a get, ``size`` bytes long, lands."""
Served = Callable[[str], None]
"""Told the word of the transport that carries a call (``LOCAL``, ``DATAPLANE``, ``GRPC``), so the
caller's span names it. A transport that cannot fall back tells before it starts (a failed call
still names it); one that can (the data plane) tells once it has served the call."""


@dataclasses.dataclass
class PutResult:
    stored: int = 0
    already_present: int = 0
    failed: list[bytes] = dataclasses.field(default_factory=list)
    tiers: set[str] = dataclasses.field(default_factory=set)
    """Tiers the new blocks were written to (same-host puts; a remote store picks its own)."""


class Unavailable(Exception):
    """This transport could not serve this call; another one can (``fallback`` repeats it).
    ``unreachable``: it could not even be reached, so it rests before the next try."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class Transport(Protocol):
    name: str
    """The transport word (``LOCAL``, ``DATAPLANE``, ``GRPC``; a wrapper names its parts)."""

    async def open(self) -> None:
        """Prepares for the first call (a transport that cannot be reached shows here)."""

    async def lookup(self, hashes: Sequence[bytes]) -> tuple[int, list[int]]:
        """(blocks of the leading prefix the store holds, their tiers)."""

    async def put(self, hashes: Sequence[bytes], payloads: Sequence[Buffer], parent: bytes,
                  tier: int, served: Served) -> PutResult:
        """Stores a chain of blocks (``parent`` is the block before ``hashes[0]``)."""

    async def get(self, hashes: Sequence[bytes], target: Target,
                  served: Served) -> tuple[list[memoryview], list[int]]:
        """(payloads, their tiers) of the leading blocks the store holds intact."""

    async def flush(self) -> None:
        """Waits for work this transport left running in the background."""

    async def close(self) -> None:
        """Closes what this transport holds, the transports it wraps included."""


def tier_name(tier: common_pb2.StorageTier.ValueType | int) -> str:
    """"cxl", "nvme", ... (the names the store uses in its metrics and spans)."""
    name = common_pb2.StorageTier.Name(tier)  # type: ignore[arg-type]
    return name.removeprefix("STORAGE_TIER_").lower()
