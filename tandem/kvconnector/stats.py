"""The connector's transfers, from vLLM's processes to the tandem worker process.

vLLM carries a connector's ``KVConnectorStats`` from its worker side (``get_kv_connector_stats``,
after every step) through the engine core, in the step's ``SchedulerStats``, to the engine's
frontend in the tandem worker process, where the worker's stat logger sees them
(``tandem.engines.vllm_engine``) and records the ``kv_put`` / ``kv_get`` stages
(``tandem.kv_transfers``). vLLM's own logging stat logger reduces them to one line per logging
interval.
"""

from __future__ import annotations

from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats

from tandem.kv_transfers import Transfer

_TRANSFERS = "transfers"


class TandemConnectorStats(KVConnectorStats):
    """``data = {"transfers": [Transfer.to_wire(), ...]}``: plain lists, serializable."""

    def add(self, transfer: Transfer) -> None:
        self.data.setdefault(_TRANSFERS, []).append(transfer.to_wire())

    def reset(self) -> None:
        self.data = {}

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        if not other.is_empty():
            self.data[_TRANSFERS] = [*self.data.get(_TRANSFERS, ()),
                                     *other.data.get(_TRANSFERS, ())]
        return self

    def reduce(self) -> dict[str, int | float]:
        reduced: dict[str, int | float] = {}
        for transfer in transfers_of(self.data):
            name = transfer.direction.value
            reduced[f"{name}_transfers"] = reduced.get(f"{name}_transfers", 0) + 1
            reduced[f"{name}_bytes"] = reduced.get(f"{name}_bytes", 0) + transfer.bytes
            reduced[f"{name}_seconds"] = reduced.get(f"{name}_seconds", 0.0) + transfer.seconds
        return reduced

    def is_empty(self) -> bool:
        return not self.data.get(_TRANSFERS)


def transfers_of(data: dict[str, Any] | None) -> list[Transfer]:
    """The transfers in a stats payload (``SchedulerStats.kv_connector_stats``)."""
    return [Transfer.from_wire(item) for item in (data or {}).get(_TRANSFERS, ())]

