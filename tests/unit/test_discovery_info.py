"""What a worker announces in discovery: JSON compatible both ways, states, the drain switch."""

from __future__ import annotations

import orjson
import pytest

from tandem.discovery import WorkerInfo
from tandem.worker.runtime import DrainSwitch

BASE = {"worker_id": "w", "role": "decode", "address": "h:1", "model": "m", "engine": "e",
        "max_model_len": 8, "block_size": 16, "host": "h"}


@pytest.mark.parametrize(("extra", "state", "routable"), [
    ({}, "serving", True),  # an older worker's announcement: no state, it serves
    ({"state": "serving"}, "serving", True),
    ({"state": "starting"}, "starting", False),
    ({"state": "draining"}, "draining", False),
    ({"state": "draining", "from_the_future": 1}, "draining", False),  # unknown keys ignored
])
def test_state_from_json(extra: dict[str, object], state: str, routable: bool) -> None:
    info = WorkerInfo.from_json(orjson.dumps({**BASE, **extra}))
    assert (info.state, info.routable) == (state, routable)


def test_round_trip_keeps_every_field() -> None:
    info = WorkerInfo(**BASE, heartbeat_at=1.5, state="draining", lease_ttl_s=3.0,  # type: ignore[arg-type]
                      max_num_seqs=8, kv_blocks=4096)
    assert WorkerInfo.from_json(info.to_json()) == info


def test_drain_switch_sets_off_the_drain_once() -> None:
    calls: list[int] = []
    switch = DrainSwitch(lambda: calls.append(1))
    assert switch.request() is False
    assert switch.request() is True
    assert calls == [1]
