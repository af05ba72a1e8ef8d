"""A discrete-event simulation of a prefill pool and a decode pool on the mock engine's
performance model, driven by a controller (the planner or a baseline) that sets worker counts.

Prefill worker: one FIFO server; a prompt takes the profile's prefill time of its uncached
tokens (``PerformanceModel.prefill_s``); the router sends it to the ready worker that frees
first. Decode worker: continuous batching; every running sequence gets one token per step, a
step takes the profile's decode step time of the current batch and its context; at most
``max_num_seqs`` sequences and the KV capacity run, the rest wait on the worker. Between two
events every sequence of a worker advances at the same token rate, so a worker keeps one
"tokens per sequence so far" counter and a heap of the counter values at which its sequences
finish. A request's TTFT ends when its prefill does; its inter-token latency is (finish -
first token) / (output - 1). Workers start ``startup_s`` after they are asked for; a removed
worker either drains (takes no new request, stops when empty) or, for the baselines that do
so, is killed and its in-flight requests are dropped.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, cast

from services.planner.core.perf_model import PerformanceModel
from services.planner.core.types import POOLS, Pool, PoolState

DECODE_IN, DECODE_DONE, READY, TICK, STOP = range(5)


@dataclasses.dataclass(frozen=True)
class Request:
    arrival: float
    prompt: int
    output: int
    cached: int = 0
    """Leading prompt tokens found in the (shared) prefix cache."""


@dataclasses.dataclass
class Worker:
    pool: Pool
    asked: float
    ready_at: float
    stopped: float | None = None
    draining: bool = False
    # prefill: FIFO of (start, finish, request index); free_at: when its queue empties
    queue: deque[tuple[float, float, int]] = dataclasses.field(default_factory=deque)
    free_at: float = 0.0
    # decode
    heap: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    waiting: deque[int] = dataclasses.field(default_factory=deque)
    tokens: float = 0.0
    """Tokens each running sequence received since the worker started (the shared counter)."""
    last: float = 0.0
    prompt_sum: float = 0.0
    admitted_sum: float = 0.0
    version: int = 0

    def load(self) -> int:
        return len(self.queue) if self.pool == "prefill" else len(self.heap) + len(self.waiting)


def _free_at(worker: Worker) -> float:
    return worker.free_at


def _decode_load(worker: Worker) -> int:
    return len(worker.heap) + len(worker.waiting)


@dataclasses.dataclass
class View:
    """What a controller sees at a tick: the interval since its previous tick and the pools."""

    now: float
    interval_s: float
    arrivals: int
    prompts: list[int]
    outputs: list[int]
    hit_rate: float
    ttfts: list[float]
    itls: list[float]
    pools: dict[Pool, PoolState]
    prefill_queued_tokens: list[int]
    """Per ready prefill worker: prompt tokens waiting (not started)."""
    prefill_waiting: list[int]
    """Per ready prefill worker: requests waiting."""
    decode_kv: list[tuple[float, float]]
    """Per ready decode worker: (running context tokens, waiting context tokens)."""
    decode_waiting: list[int]
    """Per ready decode worker: requests waiting for a slot."""
    pending: dict[Pool, int]
    """Requests held for a pool without a ready worker."""


class Controller(Protocol):
    interval_s: float
    kills: bool
    """Scale-down terminates workers (drops their requests) instead of draining them."""

    def initial(self) -> dict[Pool, int]: ...

    def tick(self, view: View) -> dict[Pool, int]: ...


@dataclasses.dataclass
class Outcome:
    ttft: list[float]
    itl: list[float]
    dropped: list[bool]
    workers: list[Worker]
    decisions: list[tuple[float, dict[Pool, int]]]
    provisioned: list[tuple[float, int]]
    """(time, ready + starting workers of both pools) after each tick."""
    end: float


class Simulation:
    """One run: ``requests`` (sorted by arrival) through the pools under ``controller``."""

    def __init__(
        self,
        requests: Sequence[Request],
        model: PerformanceModel,
        controller: Controller,
        startup_s: float,
        end_s: float,
    ) -> None:
        self.requests = requests
        self.model = model
        self.controller = controller
        self.startup_s = startup_s
        self.end_s = end_s
        n = len(requests)
        self.ttft = [math.inf] * n
        self.itl = [0.0] * n
        self.first = [0.0] * n
        self.dropped = [False] * n
        self.service = [model.prefill_s(r.prompt - r.cached, r.cached) for r in requests]
        self.events: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.workers: list[Worker] = []
        self.serving: dict[Pool, list[Worker]] = {pool: [] for pool in POOLS}
        """Ready workers that take new requests."""
        self.live: dict[Pool, list[Worker]] = {pool: [] for pool in POOLS}
        """Workers not stopped: starting, serving or draining."""
        self.pending: dict[Pool, deque[int]] = {pool: deque() for pool in POOLS}
        self.decisions: list[tuple[float, dict[Pool, int]]] = []
        self.provisioned: list[tuple[float, int]] = []
        self.kv_tokens = model.kv_tokens
        self.max_seqs = model.max_num_seqs
        profile = model.profile
        self.step_fixed = profile.step_overhead_s + profile.decode_step_s
        self.step_seq = profile.decode_seq_s
        self.step_context = profile.decode_context_s
        self._reset_interval(0.0)

    # -- events ----------------------------------------------------------------------------

    def push(self, at: float, kind: int, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, payload))

    def run(self) -> Outcome:
        for pool, count in self.controller.initial().items():
            for _ in range(count):
                self._add(pool, 0.0, ready_now=True)
        self.push(self.controller.interval_s, TICK, None)
        handlers: dict[int, Callable[[float, object], None]] = {
            DECODE_IN: self._decode_in,
            DECODE_DONE: self._decode_done,
            READY: self._ready,
            TICK: self._tick,
            STOP: self._stop,
        }
        requests, events = self.requests, self.events
        following = 0
        while events or following < len(requests):
            if following < len(requests) and (
                not events or requests[following].arrival <= events[0][0]
            ):
                self._arrival(requests[following].arrival, following)
                following += 1
                continue
            at, _, kind, payload = heapq.heappop(events)
            handlers[kind](at, payload)
        for worker in self.workers:
            if worker.stopped is None:
                worker.stopped = max(self.end_s, worker.asked)
        return Outcome(
            self.ttft,
            self.itl,
            self.dropped,
            self.workers,
            self.decisions,
            self.provisioned,
            self.end_s,
        )

    # -- arrivals and prefill ----------------------------------------------------------------

    def _arrival(self, now: float, index: int) -> None:
        request = self.requests[index]
        self.i_arrivals += 1
        self.i_prompts.append(request.prompt)
        self.i_outputs.append(request.output)
        self.i_cached += request.cached
        self.i_tokens += request.prompt
        self._route_prefill(now, index)

    def _route_prefill(self, now: float, index: int) -> None:
        serving = self.serving["prefill"]
        if not serving:
            self.pending["prefill"].append(index)
            return
        worker = min(serving, key=_free_at)
        start = worker.free_at if worker.free_at > now else now
        finish = start + self.service[index]
        worker.free_at = finish
        queue = worker.queue
        while queue and queue[0][1] <= now:
            queue.popleft()
        queue.append((start, finish, index))
        self.push(finish, DECODE_IN, index)

    # -- decode ----------------------------------------------------------------------------

    def _decode_in(self, now: float, payload: object) -> None:
        index: int = payload  # type: ignore[assignment]
        if self.dropped[index]:
            return
        if self.ttft[index] == math.inf:  # first visit: the prefill just finished
            self.ttft[index] = now - self.requests[index].arrival
            self.first[index] = now
            self.i_ttfts.append(self.ttft[index])
            if self.requests[index].output <= 1:
                self.i_itls.append(0.0)
                return
        serving = self.serving["decode"]
        if not serving:
            self.pending["decode"].append(index)
            return
        worker = min(serving, key=_decode_load)
        self._advance(worker, now)
        worker.waiting.append(index)
        self._admit(worker)
        self._schedule(worker)

    def _step_s(self, worker: Worker) -> float:
        n = len(worker.heap)
        context = worker.prompt_sum + n * worker.tokens - worker.admitted_sum
        return self.step_fixed + self.step_seq * n + self.step_context * context

    def _advance(self, worker: Worker, now: float) -> None:
        if worker.heap and now > worker.last:
            worker.tokens += (now - worker.last) / self._step_s(worker)
        worker.last = now

    def _admit(self, worker: Worker) -> None:
        n = len(worker.heap)
        context = worker.prompt_sum + n * worker.tokens - worker.admitted_sum
        while worker.waiting and n < self.max_seqs:
            index = worker.waiting[0]
            request = self.requests[index]
            if n and context + request.prompt > self.kv_tokens:
                break
            worker.waiting.popleft()
            heapq.heappush(worker.heap, (worker.tokens + request.output - 1, index))
            worker.prompt_sum += request.prompt
            worker.admitted_sum += worker.tokens
            n += 1
            context += request.prompt

    def _schedule(self, worker: Worker) -> None:
        worker.version += 1
        if worker.heap:
            remaining = max(worker.heap[0][0] - worker.tokens, 0.0)
            self.push(
                worker.last + remaining * self._step_s(worker),
                DECODE_DONE,
                (worker, worker.version),
            )

    def _decode_done(self, now: float, payload: object) -> None:
        worker, version = cast(tuple[Worker, int], payload)
        if version != worker.version or worker.stopped is not None:
            return
        self._advance(worker, now)
        while worker.heap and worker.heap[0][0] <= worker.tokens + 1e-6:
            key, index = heapq.heappop(worker.heap)
            request = self.requests[index]
            worker.prompt_sum -= request.prompt
            worker.admitted_sum -= key - request.output + 1
            self.itl[index] = (now - self.first[index]) / (request.output - 1)
            self.i_itls.append(self.itl[index])
        self._admit(worker)
        self._schedule(worker)
        self._maybe_stop(worker, now)

    # -- workers ---------------------------------------------------------------------------

    def _add(self, pool: Pool, now: float, ready_now: bool = False) -> None:
        ready = now if ready_now else now + self.startup_s
        worker = Worker(pool, asked=now, ready_at=ready, free_at=ready, last=ready)
        self.workers.append(worker)
        self.live[pool].append(worker)
        if ready_now:
            self.serving[pool].append(worker)
        else:
            self.push(ready, READY, worker)

    def _ready(self, now: float, payload: object) -> None:
        worker: Worker = payload  # type: ignore[assignment]
        if worker.stopped is not None:
            return
        self.serving[worker.pool].append(worker)
        pending = self.pending[worker.pool]
        while pending:
            index = pending.popleft()
            if worker.pool == "prefill":
                self._route_prefill(now, index)
            else:
                self._decode_in(now, index)

    def _remove(self, pool: Pool, count: int, now: float) -> None:
        live = [w for w in self.live[pool] if not w.draining]
        starting = [w for w in live if w.ready_at > now]
        ready = sorted((w for w in live if w.ready_at <= now), key=Worker.load)
        for worker in (starting[::-1] + ready)[:count]:
            if worker in self.serving[pool]:
                self.serving[pool].remove(worker)
            if worker.ready_at > now:
                self._stopped(worker, now)
            elif self.controller.kills:
                self._kill(worker, now)
            else:
                worker.draining = True
                if pool == "prefill":
                    self.push(max(worker.free_at, now), STOP, worker)
                else:
                    self._maybe_stop(worker, now)

    def _stopped(self, worker: Worker, now: float) -> None:
        worker.stopped = now
        self.live[worker.pool].remove(worker)

    def _stop(self, now: float, payload: object) -> None:
        worker: Worker = payload  # type: ignore[assignment]
        if worker.stopped is None:
            self._stopped(worker, now)

    def _kill(self, worker: Worker, now: float) -> None:
        self._stopped(worker, now)
        lost = [index for _, finish, index in worker.queue if finish > now]
        lost += [index for _, index in worker.heap]
        for index in lost + list(worker.waiting):
            self.dropped[index] = True
        worker.queue.clear()
        worker.heap.clear()
        worker.waiting.clear()

    def _maybe_stop(self, worker: Worker, now: float) -> None:
        if worker.draining and worker.stopped is None and not worker.heap and not worker.waiting:
            self._stopped(worker, now)

    # -- the controller --------------------------------------------------------------------

    def _reset_interval(self, now: float) -> None:
        self.i_start = now
        self.i_arrivals = 0
        self.i_prompts: list[int] = []
        self.i_outputs: list[int] = []
        self.i_cached = 0
        self.i_tokens = 0
        self.i_ttfts: list[float] = []
        self.i_itls: list[float] = []

    def _states(self, now: float) -> dict[Pool, PoolState]:
        states = {}
        for pool in POOLS:
            ready = starting = draining = 0
            for w in self.live[pool]:
                if w.draining:
                    draining += 1
                elif w.ready_at > now:
                    starting += 1
                else:
                    ready += 1
            states[pool] = PoolState(ready, starting, draining)
        return states

    def view(self, now: float) -> View:
        for worker in self.serving["decode"]:
            self._advance(worker, now)
        queued_tokens, waiting = [], []
        for worker in self.serving["prefill"]:
            items = [index for start, _, index in worker.queue if start > now]
            waiting.append(len(items))
            queued_tokens.append(
                sum(self.requests[i].prompt - self.requests[i].cached for i in items)
            )
        kv = []
        for worker in self.serving["decode"]:
            running = worker.prompt_sum + len(worker.heap) * worker.tokens - worker.admitted_sum
            kv.append((running, float(sum(self.requests[i].prompt for i in worker.waiting))))
        return View(
            now=now,
            interval_s=now - self.i_start,
            arrivals=self.i_arrivals,
            prompts=self.i_prompts,
            outputs=self.i_outputs,
            hit_rate=self.i_cached / self.i_tokens if self.i_tokens else 0.0,
            ttfts=self.i_ttfts,
            itls=self.i_itls,
            pools=self._states(now),
            prefill_queued_tokens=queued_tokens,
            prefill_waiting=waiting,
            decode_kv=kv,
            decode_waiting=[len(w.waiting) for w in self.serving["decode"]],
            pending={pool: len(queue) for pool, queue in self.pending.items()},
        )

    def _tick(self, now: float, payload: object) -> None:
        desired = self.controller.tick(self.view(now))
        self._reset_interval(now)
        states = self._states(now)
        for pool in POOLS:
            have = states[pool].provisioned
            for _ in range(desired[pool] - have):
                self._add(pool, now)
            if desired[pool] < have:
                self._remove(pool, have - desired[pool], now)
        self.decisions.append((now, dict(desired)))
        self.provisioned.append((now, sum(desired.values())))
        if now + self.controller.interval_s <= self.end_s:
            self.push(now + self.controller.interval_s, TICK, None)
