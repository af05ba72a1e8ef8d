"""The stack of compose.yaml in containers, started once for tests/compose (``make test-compose``):
a Docker engine, the images built (cached), the core services up and healthy; afterwards
``down --volumes`` and a check that the project left nothing behind but its images."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator

import pytest

from tests.compose.stack import CORE, TANDEM_IMAGE, Engine, Stack, base_image, say, torch_wheels

HEALTHY_TIMEOUT_S = float(os.environ.get("TANDEM_COMPOSE_HEALTHY_TIMEOUT_S", "1800"))
"""How long the stack may take to become healthy (two vLLM workers load on 2 shared cores)."""

ROUTER = "http://127.0.0.1:25000"
REDIS_URL = "redis://127.0.0.1:25379/0"
METRICS = {"router": f"{ROUTER}/metrics", "decode": "http://127.0.0.1:25101/metrics",
           "prefill": "http://127.0.0.1:25102/metrics", "kvstore": "http://127.0.0.1:25103/metrics"}
"""The ports of tests/compose/compose.host.yaml."""

timings: dict[str, float] = {}
"""Phases of this run, in seconds (printed at the end of the session)."""


@dataclasses.dataclass
class RunningStack:
    stack: Stack
    engine: Engine
    started_at: float
    """time.monotonic() when the fixture began (before the engine and the builds)."""


@pytest.fixture(scope="session")
def running_stack() -> Iterator[RunningStack]:
    begin = time.monotonic()
    engine = Engine().start()
    stack: Stack | None = None
    try:
        with torch_wheels() as links:
            stack = Stack(engine, base_image(engine), links)
            timings["base image"] = time.monotonic() - begin
            stack.down()  # what an interrupted earlier run left
            mark = time.monotonic()
            stack.build()
            timings["image builds"] = time.monotonic() - mark
        timings["tandem image MB"] = engine.image_bytes(TANDEM_IMAGE) / 1e6
        mark = time.monotonic()
        stack.up()
        healthy = stack.wait_healthy(HEALTHY_TIMEOUT_S)
        timings["up to all healthy"] = time.monotonic() - mark
        timings.update({f"  {name} healthy": seconds for name, seconds in healthy.items()})
        timings["start to healthy stack"] = time.monotonic() - begin
        yield RunningStack(stack, engine, begin)
    finally:
        try:
            if stack is not None:
                say("taking the stack down (the images stay: the build cache)")
                try:
                    stack.down()
                    stack.rendered.unlink()
                    left = stack.leftovers()
                    assert not any(left.values()), f"the test left {left} behind"
                except Exception:
                    for service in CORE:
                        say(stack.logs(service))
                    raise
        finally:
            engine.stop()
            timings["whole run"] = time.monotonic() - begin


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not timings:
        return
    terminalreporter.section("compose stack timings")
    for name, value in timings.items():
        unit = "" if name.endswith("MB") else " s"
        terminalreporter.write_line(f"{name:<28}{value:>10.1f}{unit}")
