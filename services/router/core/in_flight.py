"""The router's own load figures per worker: requests it has in flight there, and prompt blocks
it sent there whose prefill has not finished. The routing cost reads them (a worker's own
figures arrive late, through its KV events); no I/O."""

from __future__ import annotations


class InFlightLedger:
    """Counts per worker id; prefill and decode workers have distinct ids, so one table holds
    both roles' requests in flight."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        """Requests in flight per worker (decode calls, or prefill calls on prefill workers)."""
        self.pending_prefill_blocks: dict[str, int] = {}
        """Prompt blocks sent to a decode worker that has not answered yet."""

    def running(self, worker_id: str) -> int:
        return self.requests.get(worker_id, 0)

    def pending_prefill(self, worker_id: str) -> int:
        return self.pending_prefill_blocks.get(worker_id, 0)

    def prefill_started(self, worker_id: str) -> None:
        self._count(worker_id, +1)

    def prefill_ended(self, worker_id: str) -> None:
        self._count(worker_id, -1)

    def decode_started(self, worker_id: str, prefill_blocks: int) -> None:
        """A decode call with ``prefill_blocks`` prompt blocks left to compute went out."""
        self._count(worker_id, +1)
        self.pending_prefill_blocks[worker_id] = (self.pending_prefill(worker_id)
                                                  + prefill_blocks)

    def decode_answered(self, worker_id: str, prefill_blocks: int) -> None:
        """The decode worker's first message (or the call's end): its prefill is over."""
        self.pending_prefill_blocks[worker_id] = max(
            0, self.pending_prefill(worker_id) - prefill_blocks)

    def decode_ended(self, worker_id: str) -> None:
        self._count(worker_id, -1)

    def _count(self, worker_id: str, change: int) -> None:
        self.requests[worker_id] = max(0, self.requests.get(worker_id, 0) + change)
