"""The service lifecycle: start → canary → serving → drain → close, in that order, whatever
happens on the way."""

from __future__ import annotations

import asyncio

import pytest

from tandem.service.lifecycle import Periodic, Service, Services, run_service


class Recorder:
    """A service that records its steps; its canary fails ``failures`` times first."""

    def __init__(self, name: str = "svc", failures: int = 0, fail_start: bool = False) -> None:
        self.name = name
        self.steps: list[str] = []
        self.failures = failures
        self.fail_start = fail_start

    async def start(self) -> None:
        self.steps.append("start")
        if self.fail_start:
            raise OSError("port taken")

    async def canary(self) -> None:
        self.steps.append("canary")
        if self.failures:
            self.failures -= 1
            raise RuntimeError("no worker yet")

    async def serve(self) -> None:
        self.steps.append("serve")

    async def drain(self) -> None:
        self.steps.append("drain")

    async def close(self) -> None:
        self.steps.append("close")


async def _run_until_serving(service: Service, watched: Recorder,
                             retry_s: float | None = None) -> None:
    """Runs ``service`` until ``watched`` serves, then stops it."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(service, stop, retry_s))
    for _ in range(200):
        if "serve" in watched.steps or task.done():
            break
        await asyncio.sleep(0.005)
    stop.set()
    await task


@pytest.mark.parametrize(("failures", "retry_s", "expected"), [
    (0, None, ["start", "canary", "serve", "drain", "close"]),
    (2, 0.001, ["start", "canary", "canary", "canary", "serve", "drain", "close"]),
])
async def test_steps_run_in_order(failures: int, retry_s: float | None,
                                  expected: list[str]) -> None:
    service = Recorder(failures=failures)
    await _run_until_serving(service, service, retry_s)
    assert service.steps == expected


async def test_a_failing_canary_ends_the_service_and_still_closes_it() -> None:
    service = Recorder(failures=1)
    with pytest.raises(RuntimeError, match="no worker yet"):
        await run_service(service, asyncio.Event())
    assert service.steps == ["start", "canary", "close"]


async def test_a_failed_start_closes_what_was_opened() -> None:
    service = Recorder(fail_start=True)
    with pytest.raises(OSError, match="port taken"):
        await run_service(service, asyncio.Event())
    assert service.steps == ["start", "close"]


async def test_stop_during_canary_retries_closes_without_serving() -> None:
    service = Recorder(failures=10**6)
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(service, stop, canary_retry_s=0.01))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert "serve" not in service.steps and "drain" not in service.steps
    assert service.steps[-1] == "close"


async def test_services_run_each_step_on_all() -> None:
    members = [Recorder("a"), Recorder("b")]
    await _run_until_serving(Services("fleet", members), members[-1])
    for member in members:
        assert member.steps == ["start", "canary", "serve", "drain", "close"]


@pytest.mark.parametrize(("failures", "jitter", "pause"), [
    (0, 0.5, 1.0),   # healthy: the interval
    (1, 0.5, 0.05),  # first failure: a tenth of the interval, jittered
    (3, 1.0, 0.4),   # doubling
    (9, 1.0, 1.0),   # capped at the interval
    (2, 0.0, 0.0),   # full jitter can retry at once
])
def test_periodic_backs_off_after_failures(failures: int, jitter: float, pause: float) -> None:
    loop = Periodic("t", 1.0, asyncio.sleep, jitter=lambda: jitter)
    loop.failures = failures
    assert loop.pause() == pytest.approx(pause)


async def test_periodic_counts_failures_and_recovers() -> None:
    outcomes = iter([False, False, True, True])
    seen: list[int] = []

    async def step() -> None:
        seen.append(loop.failures)
        if not next(outcomes, True):
            raise ConnectionError("redis away")

    loop = Periodic("t", 0.01, step, jitter=lambda: 1.0)
    loop.start()
    for _ in range(200):
        if len(seen) >= 4:
            break
        await asyncio.sleep(0.005)
    await loop.close()
    assert seen[:4] == [0, 1, 2, 0]  # two failures in a row, then healthy again
