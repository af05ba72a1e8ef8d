"""The KV client's fallback transport (tandem.kvclient.fallback) with fake transports, no sockets:
which transport serves a call when the primary serves, refuses, drops or times out, what the
caller's span is told, and how long a refused primary rests."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tandem.kvclient.fallback import FallbackTransport
from tandem.kvclient.transport import (
    DATAPLANE,
    GRPC,
    Buffer,
    PutResult,
    Served,
    Target,
    Unavailable,
)

REST_S = 5.0
SERVE, REFUSE, DROP, TIME_OUT = "serve", "refuse", "drop", "time out"


class FakeTransport:
    """Serves every call, or fails it the way ``behaviour`` says. Like the data plane it names
    itself once it has served (``tells_first``: like gRPC, before it starts)."""

    def __init__(self, name: str, behaviour: str = SERVE, tells_first: bool = False) -> None:
        self.name, self.behaviour, self.tells_first = name, behaviour, tells_first
        self.calls: list[str] = []
        self.opened = self.flushed = self.closed = 0

    async def _serve(self, call: str, served: Served | None = None) -> None:
        self.calls.append(call)
        if served is not None and self.tells_first:
            served(self.name)
        if self.behaviour == REFUSE:
            raise Unavailable("connection refused", unreachable=True)
        if self.behaviour == DROP:
            raise Unavailable("connection lost mid-call")
        if self.behaviour == TIME_OUT:
            raise TimeoutError
        if served is not None and not self.tells_first:
            served(self.name)

    async def open(self) -> None:
        self.opened += 1
        await self._serve("open")

    async def lookup(self, hashes: Sequence[bytes]) -> tuple[int, list[int]]:
        await self._serve("lookup")
        return len(hashes), [len(self.name)] * len(hashes)

    async def put(self, hashes: Sequence[bytes], payloads: Sequence[Buffer], parent: bytes,
                  tier: int, served: Served) -> PutResult:
        await self._serve("put", served)
        return PutResult(stored=len(hashes), tiers={self.name})

    async def get(self, hashes: Sequence[bytes], target: Target,
                  served: Served) -> tuple[list[memoryview], list[int]]:
        await self._serve("get", served)
        return [target(i, 1) for i in range(len(hashes))], [len(self.name)] * len(hashes)

    async def flush(self) -> None:
        self.flushed += 1

    async def close(self) -> None:
        self.closed += 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def chain(clock: Clock, primary: str,
          secondary: str = SERVE) -> tuple[FallbackTransport, FakeTransport, FakeTransport]:
    first = FakeTransport(DATAPLANE, primary)
    second = FakeTransport(GRPC, secondary, tells_first=True)
    return FallbackTransport(first, second, REST_S, clock), first, second


async def call(transport: FallbackTransport, name: str, told: list[str]) -> str:
    """Runs one call; the transport that served it (by its answer)."""
    hashes = [b"h" * 16, b"i" * 16]
    if name == "lookup":
        _, tiers = await transport.lookup(hashes)
        return DATAPLANE if tiers[0] == len(DATAPLANE) else GRPC
    if name == "put":
        result = await transport.put(hashes, [b"a", b"b"], b"", 0, told.append)
        return result.tiers.pop()
    blocks, tiers = await transport.get(hashes, lambda i, size: memoryview(bytearray(size)),
                                        told.append)
    assert len(blocks) == 2
    return DATAPLANE if tiers[0] == len(DATAPLANE) else GRPC


CALLS = ["lookup", "put", "get"]
CASES = [
    # primary does, served by, primary tried by the next call, span told
    (SERVE, DATAPLANE, True, [DATAPLANE]),
    (REFUSE, GRPC, False, [GRPC]),  # refused or unanswered connect: it rests
    (DROP, GRPC, True, [GRPC]),  # lost connection, bad frame, ERROR frame: only this call
]


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize(("primary", "served_by", "tried_next", "told_words"), CASES)
async def test_which_transport_serves(name: str, primary: str, served_by: str,
                                      tried_next: bool, told_words: list[str]) -> None:
    clock = Clock()
    transport, first, second = chain(clock, primary)
    told: list[str] = []
    assert await call(transport, name, told) == served_by
    assert first.calls == [name]
    assert second.calls == ([] if served_by == DATAPLANE else [name])
    assert told == ([] if name == "lookup" else told_words)
    assert transport.primary_up is tried_next
    await call(transport, name, [])
    assert first.calls == ([name, name] if tried_next else [name])


@pytest.mark.parametrize("name", CALLS)
async def test_a_call_past_its_deadline_is_not_repeated(name: str) -> None:
    transport, first, second = chain(Clock(), TIME_OUT)
    with pytest.raises(TimeoutError):
        await call(transport, name, [])
    assert (first.calls, second.calls, transport.primary_up) == ([name], [], True)


async def test_a_failing_secondary_fails_the_call() -> None:
    transport, first, second = chain(Clock(), DROP, secondary=DROP)
    with pytest.raises(Unavailable):
        await call(transport, "get", [])
    assert (first.calls, second.calls) == (["get"], ["get"])


REST_TIMELINE = [
    # seconds after the refusal, primary tried, served by
    (0.0, False, GRPC),
    (1.0, False, GRPC),
    (REST_S - 0.001, False, GRPC),
    (REST_S, True, DATAPLANE),
    (REST_S + 60.0, True, DATAPLANE),
]


@pytest.mark.parametrize(("after", "tried", "served_by"), REST_TIMELINE)
async def test_a_refused_primary_rests_then_is_tried_again(after: float, tried: bool,
                                                           served_by: str) -> None:
    clock = Clock()
    transport, first, second = chain(clock, REFUSE)
    assert await call(transport, "put", []) == GRPC
    first.behaviour = SERVE  # it is back, but nobody knows until it is tried
    clock.now += after
    assert transport.primary_up is tried
    assert await call(transport, "put", []) == served_by
    assert len(first.calls) == 1 + tried
    assert len(second.calls) == 1 + (not tried)


@pytest.mark.parametrize(("primary", "up"), [(SERVE, True), (REFUSE, False), (DROP, True)])
async def test_open_shows_an_unreachable_primary(primary: str, up: bool) -> None:
    clock = Clock()
    transport, first, second = chain(clock, primary)
    await transport.open()  # never raises for the primary: the secondary serves meanwhile
    assert (first.opened, second.opened, transport.primary_up) == (1, 1, up)
    clock.now += REST_S
    assert transport.primary_up


async def test_flush_and_close_reach_both() -> None:
    transport, first, second = chain(Clock(), SERVE)
    await transport.flush()
    await transport.close()
    assert (first.flushed, second.flushed, first.closed, second.closed) == (1, 1, 1, 1)
