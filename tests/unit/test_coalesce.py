"""Token coalescing of the decode stream: whatever the grouping, a stream's tokens are exactly
the engine's, in order; nothing waits for tokens that are not ready."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.decode.api.coalesce import ReadyBatches
from services.decode.core.generation import merged
from tandem.engines.base import EngineOutput


class FakeEngine:
    """Produces ``bursts[i]`` outputs back to back (ready together), then yields control
    ``pause`` times before the next burst; token ``n`` has the text ``<n>``. Records whether
    the stream ran to its end or was closed early (an engine aborts the request then)."""

    def __init__(self, bursts: list[int], tokens_per_output: int = 1, pause: int = 1,
                 fail_after: int | None = None) -> None:
        self.bursts = bursts
        self.tokens_per_output = tokens_per_output
        self.pause = pause
        self.fail_after = fail_after
        self.produced: list[int] = []
        self.closed_early = False

    @property
    def total_outputs(self) -> int:
        return sum(self.bursts)

    async def generate(self) -> AsyncIterator[EngineOutput]:
        index = 0
        finished = False
        try:
            for burst in self.bursts:
                for _ in range(burst):
                    if self.fail_after is not None and index == self.fail_after:
                        raise RuntimeError("engine failed")
                    ids = list(range(len(self.produced), len(self.produced)
                                     + self.tokens_per_output))
                    self.produced.extend(ids)
                    index += 1
                    finished = index == self.total_outputs
                    yield EngineOutput(ids, "".join(f"<{i}>" for i in ids),
                                       "length" if finished else None, prompt_tokens=7)
                for _ in range(self.pause):
                    await asyncio.sleep(0)
        finally:
            self.closed_early = not finished


async def consume(engine: FakeEngine, slowness: int, min_tokens: int = 1
                  ) -> list[list[EngineOutput]]:
    """Reads every batch, spending ``slowness`` loop turns on each (a slow writer)."""
    batches: list[list[EngineOutput]] = []
    async with ReadyBatches(engine.generate(), min_tokens) as ready:
        async for batch in ready:
            batches.append(batch)
            for _ in range(slowness):
                await asyncio.sleep(0)
    return batches


GROUPINGS = [
    ([1] * 32, 0),  # the writer keeps up
    ([1] * 32, 5),  # the writer is slower than the engine
    ([4] * 8, 0),  # the engine emits several outputs per step
    ([4] * 8, 3),
    ([1, 31], 2),
    ([32], 0),  # everything at once
    ([3, 1, 7, 2, 19], 1),
    ([1], 0),  # a single output that also finishes
]


@pytest.mark.parametrize(("bursts", "slowness"), GROUPINGS)
@pytest.mark.parametrize("tokens_per_output", [1, 3])
async def test_tokens_are_the_engines_in_order(bursts: list[int], slowness: int,
                                               tokens_per_output: int) -> None:
    engine = FakeEngine(bursts, tokens_per_output)
    batches = await consume(engine, slowness)
    merged_batches = [merged(batch) for batch in batches]
    assert [t for ids, _, _ in merged_batches for t in ids] == engine.produced
    assert "".join(text for _, text, _ in merged_batches) == "".join(
        f"<{i}>" for i in engine.produced)
    outputs = [o for batch in batches for o in batch]
    assert len(outputs) == engine.total_outputs
    assert [o.finish_reason for o in outputs] == [None] * (len(outputs) - 1) + ["length"]
    assert not engine.closed_early
    # The first output leaves alone, at once; nothing after it is held back either.
    assert len(batches[0]) == 1


async def test_a_writer_that_keeps_up_gets_every_output_alone() -> None:
    batches = await consume(FakeEngine([1] * 16, pause=3), slowness=0)
    assert [len(b) for b in batches] == [1] * 16


async def test_a_slow_writer_gets_what_piled_up_in_one_message() -> None:
    batches = await consume(FakeEngine([1] * 32, pause=1), slowness=8)
    assert len(batches[0]) == 1
    assert len(batches) < 32 / 3
    assert sum(len(b) for b in batches) == 32


@pytest.mark.parametrize("min_tokens", [2, 5, 40])
async def test_min_tokens_per_message_after_the_first(min_tokens: int) -> None:
    engine = FakeEngine([1] * 32)
    batches = await consume(engine, slowness=0, min_tokens=min_tokens)
    sizes = [len(merged(b)[0]) for b in batches]
    assert sizes[0] == 1
    assert all(size >= min_tokens for size in sizes[1:-1])
    assert sum(sizes) == 32


async def test_an_engine_error_comes_after_the_outputs_before_it() -> None:
    engine = FakeEngine([1] * 10, fail_after=6)
    seen: list[int] = []
    with pytest.raises(RuntimeError, match="engine failed"):
        async with ReadyBatches(engine.generate()) as ready:
            async for batch in ready:
                seen.extend(merged(batch)[0])
    assert seen == list(range(6))


@pytest.mark.parametrize("batches_read", [1, 3])
async def test_leaving_early_closes_the_engine_stream(batches_read: int) -> None:
    engine = FakeEngine([1] * 100)
    async with ReadyBatches(engine.generate()) as ready:
        async for _ in ready:
            batches_read -= 1
            if not batches_read:
                break
    assert engine.closed_early


async def test_cancelling_the_writer_closes_the_engine_stream() -> None:
    engine = FakeEngine([1] * 1000, pause=1)
    task = asyncio.create_task(consume(engine, slowness=1))
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(5):
        await asyncio.sleep(0)
    assert engine.closed_early
    assert len(engine.produced) < 1000
