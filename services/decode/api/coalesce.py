"""Token coalescing for one streamed generation.

The engine's outputs are read as fast as the engine produces them; the writer takes, at once,
everything that piled up while it was writing the previous message. A consumer slower than the
engine (a busy router, a slow network) thus gets fewer, larger messages instead of falling
further behind one token per message, and one that keeps up still gets every output alone.
Nothing waits for a token that does not exist yet: the first output is read directly and
leaves alone the moment it is produced, and a later batch is only what is already there (or
at least ``min_tokens`` of it, when the client asked for that explicitly).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType

from tandem.engines.base import EngineOutput


class ReadyBatches:
    """Async iterator over batches of ready engine outputs, in the engine's order.

    Use as ``async with ReadyBatches(engine.generate(request)) as batches: async for batch in
    batches: ...``. Leaving the block (the call ended, was cancelled, or failed) stops reading
    the engine, which aborts its request. An engine error is raised after the outputs that
    preceded it were handed out.
    """

    def __init__(self, outputs: AsyncIterator[EngineOutput], min_tokens: int = 1) -> None:
        self._outputs = outputs
        self._min_tokens = max(1, min_tokens)
        self._ready: list[EngineOutput] = []
        self._ready_tokens = 0
        self._finished = False
        """The engine's last output is in ``_ready`` (or was handed out)."""
        self._first = True
        self._wake = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ReadyBatches:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            if not self._finished:
                reader.cancel()
            await asyncio.wait([reader])
        # The engine's iterator ends here, in this task: run to its end when it finished,
        # closed (which aborts the engine request) when not. Both are no-ops once it ended.
        if self._finished:
            await anext(self._outputs, None)
        else:
            close = getattr(self._outputs, "aclose", None)
            if close is not None:
                await close()

    async def _read(self) -> None:
        async for output in self._outputs:
            self._ready.append(output)
            self._ready_tokens += len(output.token_ids)
            if output.finish_reason is not None:
                self._finished = True
            self._wake.set()

    def __aiter__(self) -> ReadyBatches:
        return self

    async def __anext__(self) -> list[EngineOutput]:
        if self._first:
            return await self._first_batch()
        if self._finished and not self._ready:
            raise StopAsyncIteration
        reader = self._reader
        assert reader is not None
        while not self._enough():
            if reader.done():
                if self._ready:
                    break  # the engine stopped: hand out what is left, then its outcome
                if reader.cancelled():
                    raise asyncio.CancelledError
                error = reader.exception()
                if error is not None:
                    raise error
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        batch = self._ready
        self._ready = []
        self._ready_tokens = 0
        return batch

    async def _first_batch(self) -> list[EngineOutput]:
        """The first output, read directly: no hop through the reader task. The reader starts
        only behind it."""
        output = await anext(self._outputs)  # StopAsyncIteration when there is none
        self._first = False
        if output.finish_reason is not None:
            self._finished = True
        else:
            self._reader = asyncio.create_task(self._read())
            self._reader.add_done_callback(lambda _: self._wake.set())
        return [output]

    def _enough(self) -> bool:
        if not self._ready:
            return False
        return self._finished or self._ready_tokens >= self._min_tokens

