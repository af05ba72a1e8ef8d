"""Settings of the prefill worker."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from annotated_types import Interval

from tandem.worker.settings import WorkerSettings


@dataclasses.dataclass(frozen=True)
class PrefillSettings(WorkerSettings):
    """Prefill worker: computes a prompt's KV cache on an engine, writes its blocks to the KV
    store, and returns the first token with a KV handle.

    Every flag can also be set as TANDEM_PREFILL_<FLAG> in the environment."""

    port: Annotated[int, Interval(ge=0, le=65535)] = 50070
    """gRPC port (0 picks a free one; the registered address carries the real port)."""
    kv_save: bool = True
    """Write every whole prompt block the engine computes to the KV store (what a prefill
    worker is for)."""

    def validate(self) -> None:
        if not self.kvstore_address:
            raise ValueError("a prefill worker needs --kvstore-address: its output is the KV "
                             "cache it writes there")
