"""``n`` choices of one request: each choice runs as its own request through the fleet (its own
route, remote prefill, decode worker and, when its worker is lost, its own migration), and
their deltas interleave into one stream tagged with the choice's index.

Why not vLLM's own ``n``: a disaggregated request hands one first token and one KV handle from
the prefill worker to the decode worker, and a migration resumes one token sequence; n
sequences in one engine request would need n of each and n resumptions. As n requests the
choices share the prompt's KV through the prefix cache and the KV store instead (the second
and later prefills find its blocks), and every existing path serves them unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator

from opentelemetry.context import Context

from services.router.core.request import Delta, GenerationRequest
from services.router.generation import Generator

INT64_MAX = 2**63 - 1


def choice_requests(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    """The requests of ``n`` choices: ids ``<id>-<index>``; with a seed, choice i samples with
    seed + i (seed - i past int64), so the choices differ and the whole is reproducible."""
    if n == 1:
        return [request]
    requests = []
    for index in range(n):
        sampling = request.sampling
        if sampling.seed is not None:
            seed = sampling.seed + index
            sampling = dataclasses.replace(
                sampling, seed=seed if seed <= INT64_MAX else sampling.seed - index)
        requests.append(dataclasses.replace(
            request, request_id=f"{request.request_id}-{index}", sampling=sampling))
    return requests


async def choice_deltas(generator: Generator, requests: list[GenerationRequest],
                        parent: Context | None = None
                        ) -> AsyncGenerator[tuple[int, Delta], None]:
    """The deltas of every choice as they come, with the choice's index. A choice that fails
    ends the whole (the others are cancelled, which aborts them on their workers)."""
    if len(requests) == 1:
        async with contextlib.aclosing(generator.stream(requests[0], parent)) as deltas:
            async for delta in deltas:
                yield 0, delta
        return
    queue: asyncio.Queue[tuple[int, Delta | None, BaseException | None]] = asyncio.Queue()

    async def pump(index: int, request: GenerationRequest) -> None:
        try:
            async with contextlib.aclosing(generator.stream(request, parent)) as deltas:
                async for delta in deltas:
                    queue.put_nowait((index, delta, None))
        except Exception as error:  # handed to the reader, raised there
            queue.put_nowait((index, None, error))
        else:
            queue.put_nowait((index, None, None))

    tasks = [asyncio.create_task(pump(index, request))
             for index, request in enumerate(requests)]
    try:
        running = len(tasks)
        while running:
            index, item, error = await queue.get()
            if error is not None:
                raise error
            if item is None:
                running -= 1
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
