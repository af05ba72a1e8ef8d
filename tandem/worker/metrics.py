"""Load gauges of engine workers, read from ``Engine.load()`` when Prometheus scrapes: running
requests, queue depth, KV cache usage and whether the KV store is reachable, per worker
(labelled ``tandem_worker_id`` and ``tandem_role``). One set of instruments per process, so
several in-process workers (tests, the mock fleet) share them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from tandem.engines.base import EngineLoad
from tandem.telemetry import meter


@dataclasses.dataclass(frozen=True)
class _Source:
    load: Callable[[], EngineLoad]
    attributes: dict[str, str]


_sources: dict[str, _Source] = {}
_registered = False


def _observe(read: Callable[[EngineLoad], float]) -> Callable[[CallbackOptions],
                                                             Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(read(source.load()), source.attributes)
                for source in list(_sources.values())]
    return callback


def _observe_kvstore(options: CallbackOptions) -> Iterable[Observation]:
    """1 while the worker reaches its KV store, 0 while it serves without it (no sample for a
    worker without a store)."""
    loads = [(source.load(), source.attributes) for source in list(_sources.values())]
    return [Observation(int(load.kvstore_connected), attributes)
            for load, attributes in loads if load.kvstore_connected is not None]


def _kv_usage(load: EngineLoad) -> float:
    return load.used_blocks / load.total_blocks if load.total_blocks else 0.0


def _register_instruments() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    running = _observe(lambda load: load.running)
    waiting = _observe(lambda load: load.waiting)
    kv_usage = _observe(_kv_usage)
    kv_blocks = _observe(lambda load: load.total_blocks)
    m = meter("tandem.worker")
    m.create_observable_gauge("tandem.worker.running_requests", [running], unit="{request}",
                              description="Requests running in the engine")
    m.create_observable_gauge("tandem.worker.waiting_requests", [waiting], unit="{request}",
                              description="Requests waiting in the engine's queue")
    m.create_observable_gauge("tandem.worker.kv_usage", [kv_usage], unit="1",
                              description="Fraction of the engine's KV cache blocks in use")
    m.create_observable_gauge("tandem.worker.kv_blocks", [kv_blocks], unit="{block}",
                              description="KV cache blocks of the engine")
    m.create_observable_gauge("tandem.worker.kvstore_connected", [_observe_kvstore], unit="1",
                              description="1 while the worker reaches its KV store, 0 while it "
                                          "serves without it (reconnecting in the background)")


def watch_engine(worker_id: str, role: str, load: Callable[[], EngineLoad]) -> None:
    """Exports the load of a worker's engine until ``unwatch_engine``."""
    _register_instruments()
    _sources[worker_id] = _Source(load, {"tandem.worker_id": worker_id, "tandem.role": role})


def unwatch_engine(worker_id: str) -> None:
    _sources.pop(worker_id, None)
