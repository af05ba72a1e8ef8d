"""The engine registry: ``--engine`` names the builder that makes a worker's engine adapter.

A new engine is one module here with a ``build(settings, role)`` and one entry in ``ENGINES``
(and its adapter under ``tandem/engines``). Builders import their adapter when called, so a
worker loads only the engine it runs (vLLM's import alone takes seconds)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tandem.worker.engines import mock, vllm

if TYPE_CHECKING:
    from tandem.engines.base import Engine
    from tandem.worker.settings import WorkerSettings

EngineBuilder = Callable[["WorkerSettings", str], "Engine"]
"""Makes the engine adapter of a worker of a role ("decode", "prefill") from its settings."""

ENGINES: dict[str, EngineBuilder] = {
    "vllm": vllm.build,
    "mock": mock.build,
}


def build_engine(settings: WorkerSettings, role: str) -> Engine:
    """The engine adapter the settings ask for, for a worker of ``role``."""
    return ENGINES[settings.engine](settings, role)
