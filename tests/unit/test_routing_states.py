"""The route chooser takes only workers that take new requests: a draining (or starting)
decode or prefill worker gets no new request."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from services.router.core.disaggregation import DisaggregationSettings
from services.router.core.in_flight import InFlightLedger
from services.router.core.index import BlockIndex
from services.router.core.routing_settings import RoutingSettings
from services.router.routing import RouteChooser
from tandem.discovery import WorkerInfo, WorkerState, WorkerWatcher

MODEL = "m"


def worker(worker_id: str, role: str, state: WorkerState) -> WorkerInfo:
    return WorkerInfo(worker_id=worker_id, role=role, address="h:1", model=MODEL, engine="e",
                      max_model_len=4096, block_size=16, host="h", state=state)


def chooser(*workers: WorkerInfo) -> RouteChooser:
    watcher = WorkerWatcher(aioredis.Redis(), "t")  # no I/O: the workers are set by hand
    watcher.workers = {w.worker_id: w for w in workers}
    return RouteChooser(watcher, BlockIndex(), InFlightLedger(), RoutingSettings(),
                        DisaggregationSettings(mode="always"))


@pytest.mark.parametrize(("states", "decode", "prefill"), [
    (("serving", "serving", "serving"), {"d0", "d1"}, "p0"),
    (("draining", "serving", "serving"), {"d1"}, "p0"),
    (("starting", "serving", "serving"), {"d1"}, "p0"),
    (("serving", "serving", "draining"), {"d0", "d1"}, None),
    (("draining", "draining", "serving"), set(), None),
])
def test_only_routable_workers_are_chosen(states: tuple[WorkerState, WorkerState, WorkerState],
                                          decode: set[str], prefill: str | None) -> None:
    routes = chooser(worker("d0", "decode", states[0]), worker("d1", "decode", states[1]),
                     worker("p0", "prefill", states[2]))
    assert {w.worker_id for w in routes.decode_workers(MODEL)} == decode
    route = routes.choose(MODEL, "", list(range(64)), exclude=set())
    if not decode:
        assert route is None
        return
    assert route is not None and route.worker.worker_id in decode
    assert (route.prefill.worker_id if route.prefill else None) == prefill
