"""A request's KV transfers (its prompt's blocks to or from the KV store) in the latency
breakdown: the ``kv_put`` and ``kv_get`` stages, one sample per request.

An engine moves a request's blocks in one or several transfers (a chunked prefill saves each
chunk's blocks in its own engine step); the stage is their sum. vLLM moves KV in processes of
its own: its connector reports each transfer (``Transfer``, as plain lists that cross the
process boundaries) and the tandem worker process sums them per request in flight
(``RequestTransfers``) and records the stages when the request ends. The mock engine transfers
in the worker process and records directly.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from tandem.stages import Stage, record_stage


class Direction(enum.StrEnum):
    PUT = "put"
    """Prompt blocks written to the store (a prefill)."""
    GET = "get"
    """Prompt blocks read from the store (a hand-off or a prefix hit)."""


STAGE_OF = {Direction.PUT: Stage.KV_PUT, Direction.GET: Stage.KV_GET}


class Transfer(NamedTuple):
    """One transfer of one request's blocks."""

    request_id: str
    direction: Direction
    seconds: float
    bytes: int
    blocks: int

    def to_wire(self) -> list[Any]:
        """Plain values (what vLLM serializes between its processes)."""
        return [self.request_id, self.direction.value, self.seconds, self.bytes, self.blocks]

    @classmethod
    def from_wire(cls, item: list[Any]) -> Transfer:
        request_id, direction, seconds, size, blocks = item
        return cls(str(request_id), Direction(direction), float(seconds), int(size), int(blocks))


def record_transfer_stages(seconds: Mapping[Direction, float]) -> None:
    """Records one request's total transfer time per direction as its stage."""
    for direction, total in seconds.items():
        record_stage(STAGE_OF[direction], total)


class RequestTransfers:
    """Per request in flight (``begin`` → ``finish``), the seconds its transfers took, by
    direction. Transfers of requests not in flight are not counted."""

    def __init__(self) -> None:
        self._open: dict[str, dict[Direction, float]] = {}

    def begin(self, request_id: str) -> None:
        self._open[request_id] = {}

    def add(self, transfers: Iterable[Transfer]) -> None:
        for transfer in transfers:
            totals = self._open.get(transfer.request_id)
            if totals is not None:
                totals[transfer.direction] = totals.get(transfer.direction, 0.0) + \
                    transfer.seconds

    def finish(self, request_id: str) -> dict[Direction, float]:
        """The request's totals (empty when it moved nothing); it is no longer in flight."""
        return self._open.pop(request_id, {})

    def __len__(self) -> int:
        return len(self._open)
