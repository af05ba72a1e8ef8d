"""Closed-loop streaming load on a router's HTTP API for fault tests: N clients each send one
streamed chat completion after another and record how each ended, so a test can say "0
failed" and "served again N s after the fault"."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import httpx
import orjson

MODEL = "SmolLM2-135M-Instruct"


@dataclasses.dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    ok: bool
    """200, every chunk well formed, a finish_reason, usage, then [DONE]; no error event."""
    detail: str
    """Why not ok (status and body, or the error event), or the finish reason."""
    first_at: float | None = None
    """When the first chunk arrived (monotonic)."""
    longest_gap: float = 0.0
    """The longest pause between two chunks after the first, seconds."""


@dataclasses.dataclass
class StreamLoad:
    """``clients`` streams at a time against ``url`` until ``stop``."""

    url: str
    clients: int = 8
    max_tokens: int = 24
    prompt_repeat: int = 1
    """Times each client's prompt is repeated (longer prompts: KV blocks worth storing)."""
    failure_pause_s: float = 0.05
    """A client waits this long after a failed stream: a router that is gone (a failed test
    closed it) must not turn the clients into a busy loop that starves the event loop."""
    give_up_after_s: float = 60.0
    """A client ends once every stream failed for this long (a load a test forgot to stop)."""
    outcomes: list[Outcome] = dataclasses.field(default_factory=list)
    sent: int = 0
    completed: int = 0
    """Outcomes that were ok."""
    _tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    _stopping: bool = False

    async def one(self, client: httpx.AsyncClient) -> Outcome:
        started = time.monotonic()
        self.sent += 1
        # prompts differ: streams spread over workers
        prompt = f"Tell story {self.sent}. " * self.prompt_repeat
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.max_tokens, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        first_at: float | None = None
        last = longest = 0.0
        pieces: list[bytes] = []
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
                async for piece in reply.aiter_raw():
                    now = time.monotonic()
                    if first_at is None:
                        first_at = now
                    else:
                        longest = max(longest, now - last)
                    last = now
                    pieces.append(piece)
                status = reply.status_code
        except httpx.HTTPError as error:
            return Outcome(started, time.monotonic(), False, f"transport: {error!r}", first_at,
                           longest)
        ended = time.monotonic()
        text = b"".join(pieces).decode()
        if status != 200:
            return Outcome(started, ended, False, f"{status}: {text[:200]}", first_at, longest)
        return Outcome(started, ended, *_judge(text), first_at, longest)

    async def _client(self) -> None:
        last_ok = time.monotonic()
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            while not self._stopping:
                outcome = await self.one(client)
                self.outcomes.append(outcome)
                if outcome.ok:
                    self.completed += 1
                    last_ok = outcome.ended
                elif outcome.ended - last_ok > self.give_up_after_s:
                    return
                else:
                    await asyncio.sleep(self.failure_pause_s)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]

    async def stop(self) -> None:
        """Lets every stream in flight finish."""
        self._stopping = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks)

    async def served(self, count: int, timeout_s: float = 30.0) -> None:
        """Returns once ``count`` more streams have completed."""
        target = self.completed + count
        async with asyncio.timeout(timeout_s):
            while self.completed < target:
                await asyncio.sleep(0.02)

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def completed_after(self, at: float) -> list[Outcome]:
        """Streams that both started and completed at or after ``at`` (monotonic)."""
        return [o for o in self.outcomes if o.ok and o.started >= at]


def _judge(text: str) -> tuple[bool, str]:
    finish = None
    usage = False
    blocks = [b for b in text.split("\n\n") if b.strip()]
    if not blocks or blocks[-1] != "data: [DONE]":
        return False, f"no [DONE] at the end: {text[-200:]!r}"
    for block in blocks[:-1]:
        if not block.startswith("data: "):
            return False, f"not an SSE data line: {block[:200]!r}"
        chunk = orjson.loads(block[len("data: "):])
        if "error" in chunk:
            return False, f"error event: {chunk['error']}"
        for choice in chunk.get("choices") or []:
            finish = choice.get("finish_reason") or finish
        usage = usage or bool(chunk.get("usage"))
    if finish is None or not usage:
        return False, f"finish_reason {finish}, usage {usage}"
    return True, str(finish)
