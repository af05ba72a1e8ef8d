"""The fleet's guard at the router: admission control in front of routing and circuit breakers
behind it (the logic is ``core.admission`` and ``core.breaker``; this is their clock, their
waiting, their metrics and their log lines). The request driver (``generation``) calls it at
a few points: ``enter``/``leave`` around a request, ``candidates``/``routed`` when routing,
``succeeded``/``failed``/``abandoned`` with each call's outcome, ``retry_allowed`` before
routing a request again. Nothing here runs per token; a request that finds a slot costs a
few attribute reads."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import grpc

from services.router.core.admission import (
    Admission,
    AdmissionSettings,
    RetryBudget,
    Ticket,
    Verdict,
)
from services.router.core.breaker import Breakers, BreakerSettings, BreakerState, Transition
from services.router.core.in_flight import InFlightLedger
from services.router.metrics import RouterMetrics
from services.router.worker_clients import WorkerClients
from tandem.discovery import WorkerInfo, WorkerWatcher
from tandem.engines.base import Sampling
from tandem.errors import TandemError
from tandem.protocol import sampling_to_proto
from tandem.v1 import common_pb2, worker_pb2

log = logging.getLogger("services.router.guard")

WORKER_FAULTS = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.ABORTED})
"""Statuses of a worker call that count against the worker's breaker: it was unreachable or
failed through its own fault (not the request's: invalid, cancelled, out of time)."""


class FleetGuard:
    """Admission control and circuit breakers for one router."""

    def __init__(self, admission: AdmissionSettings, breaker: BreakerSettings,
                 watcher: WorkerWatcher, ledger: InFlightLedger, metrics: RouterMetrics,
                 model: str, clients: WorkerClients | None = None) -> None:
        self.settings = admission
        self.admission = Admission(admission)
        self.budget = RetryBudget(admission.retry_ratio, admission.retry_reserve)
        self.breakers = Breakers(breaker)
        self.watcher = watcher
        self.ledger = ledger
        self.metrics = metrics
        self.model = model
        self.clock = time.monotonic
        self._seen: object = None
        """The watcher's worker table the capacity was computed from (a refresh replaces
        it)."""
        self._slots: dict[str, int] = {}
        self.clients = clients
        """Where probes go (None: no probes, only client requests try an open worker)."""
        self._probes: set[asyncio.Task[None]] = set()

    # -- admission ----------------------------------------------------------------------

    async def enter(self, deadline: float) -> float:
        """Waits for a slot (until ``deadline``, ``time.perf_counter`` based, at the latest);
        returns when the request was admitted. Raises the refusal: 429 (RESOURCE_EXHAUSTED)
        with a Retry-After, 503 without any worker (at once, or after ``no_worker_wait_s``
        without one registering), 504 when the deadline passed first."""
        self._refresh_capacity()
        admission = self.admission
        verdict = admission.admit()
        if verdict is Verdict.ADMIT:
            self.budget.deposit()
            return 0.0
        if verdict is not Verdict.QUEUE:
            raise self._refusal(verdict.value)
        waiting_started = time.perf_counter()
        ticket = Ticket(asyncio.get_running_loop().create_future())
        admission.enqueue(ticket)
        self.metrics.queued.add(1)
        timeout = min(admission.wait_limit_s(), deadline - waiting_started)
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await self._wait(ticket)
        except TimeoutError:
            if admission.give_up(ticket):
                raise self._refusal(
                    "deadline" if timeout >= deadline - waiting_started
                    else "no_worker" if admission.capacity == 0 else "queue_timeout") from None
        except BaseException:
            if not admission.give_up(ticket):  # granted meanwhile: hand the slot on
                self.leave(0.0)
            raise
        finally:
            self.metrics.queued.add(-1)
        waited = time.perf_counter() - waiting_started
        self.metrics.queue_wait.record(waited)
        self.budget.deposit()
        return waited

    async def _wait(self, ticket: Ticket) -> None:
        """Until the ticket is granted: by a slot freed, or by a worker that came up (the
        capacity is recomputed at each discovery refresh while requests wait)."""
        future = ticket.payload
        assert isinstance(future, asyncio.Future)
        while not future.done():
            await asyncio.wait([future], timeout=self.watcher.interval_s)
            self._refresh_capacity()

    def leave(self, duration_s: float) -> None:
        """An admitted request ended: its slot goes to the next waiter."""
        granted = self.admission.release(duration_s)
        if granted is not None:
            _wake(granted)

    def _refusal(self, reason: str) -> TandemError:
        self.metrics.refused.add(1, {"tandem.reason": reason})
        admission = self.admission
        if reason == "no_worker":
            waited = self.settings.no_worker_wait_s
            return TandemError(common_pb2.ERROR_CODE_UNAVAILABLE,
                               f"no live decode worker serves {self.model!r}"
                               + (f" (none came up within {waited:g} s)" if waited else ""),
                               retry_after_ms=self.settings.retry_after_min_ms)
        if reason == "deadline":
            return TandemError(common_pb2.ERROR_CODE_DEADLINE_EXCEEDED,
                               "the request's deadline passed while it waited for a slot")
        why = ("the queue is full" if reason == "queue_full" else
               f"no slot freed within {self.settings.max_queue_wait_s:g} s")
        return TandemError(
            common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED,
            f"the fleet is at capacity ({admission.in_flight} requests running on "
            f"{admission.capacity} slots, {admission.queued} waiting; {why}): try again later",
            retry_after_ms=admission.retry_after_ms())

    def _refresh_capacity(self) -> None:
        """The slots of the routable decode workers whose breaker lets requests through,
        recomputed when the watcher's table changed (every refresh) or a breaker did."""
        workers = self.watcher.workers
        if workers is self._seen:
            return
        self._seen = workers
        now = self.clock()
        slots = {w.worker_id: self.settings.worker_slots(w.max_num_seqs, w.kv_blocks,
                                                          w.block_size)
                 for w in self.watcher.of_role("decode", self.model) if w.routable}
        self._slots = slots
        self.breakers_forget(set(workers))
        capacity = sum(n for worker_id, n in slots.items()
                       if self.breakers.state(worker_id) is BreakerState.CLOSED
                       or self.breakers.routable(worker_id, now))
        for ticket in self.admission.set_capacity(capacity):
            _wake(ticket)

    def breakers_forget(self, live: set[str]) -> None:
        for worker_id in self.breakers.open_workers():
            if worker_id not in live:
                self.metrics.breaker_open.add(-1, {"tandem.worker_id": worker_id})
        self.breakers.forget(live)

    def retry_allowed(self) -> bool:
        """Whether the retry budget pays for one more call to another worker."""
        if self.budget.spend():
            return True
        self.metrics.retries_denied.add(1)
        return False

    # -- routing and breakers -------------------------------------------------------------

    def candidates(self, workers: list[WorkerInfo]) -> list[WorkerInfo]:
        """The workers a request may go to: breakers that let it through, and of those the
        ones under their slots (all of them when every one is full: a retry or migration of a
        request already admitted)."""
        now = self.clock()
        breakers = self.breakers
        allowed = [w for w in workers if breakers.routable(w.worker_id, now)]
        running, slots = self.ledger.requests, self._slots
        under = [w for w in allowed
                 if running.get(w.worker_id, 0) < slots.get(w.worker_id, 1 << 30)]
        return under or allowed

    def allows(self, worker_id: str) -> bool:
        """Whether the worker's breaker lets a new request through (prefill workers)."""
        return self.breakers.routable(worker_id, self.clock())

    def routed(self, *workers: WorkerInfo | None) -> None:
        """A request goes to ``workers`` (an open breaker past its cool-down: its trial)."""
        for worker in workers:
            if worker is not None:
                self._note(self.breakers.routed(worker.worker_id, self.clock()))

    def judge(self, worker: WorkerInfo) -> CallJudge:
        """What one call to ``worker`` says about it, for its breaker."""
        return CallJudge(self, worker)

    def succeeded(self, worker: WorkerInfo) -> None:
        self._note(self.breakers.succeeded(worker.worker_id))

    def failed(self, worker: WorkerInfo, code: grpc.StatusCode) -> None:
        """A call to ``worker`` ended with ``code``; counts against it if it is a fault of the
        worker, else says nothing about it."""
        if code in WORKER_FAULTS:
            self._note(self.breakers.failed(worker.worker_id, self.clock()))
        else:
            self.abandoned(worker)

    def abandoned(self, worker: WorkerInfo) -> None:
        self._note(self.breakers.abandoned(worker.worker_id))

    def _note(self, change: Transition | None) -> None:
        if change is None:
            return
        worker_id, before, after = change
        self.metrics.breaker_transitions.add(1, {"tandem.breaker.from": before.value,
                                                 "tandem.breaker.to": after.value})
        if before is BreakerState.CLOSED:
            self.metrics.breaker_open.add(1, {"tandem.worker_id": worker_id})
        elif after is BreakerState.CLOSED:
            self.metrics.breaker_open.add(-1, {"tandem.worker_id": worker_id})
        level = logging.WARNING if after is BreakerState.OPEN else logging.INFO
        log.log(level, "circuit breaker %s -> %s", before.value, after.value,
                extra={"worker_id": worker_id, "breaker_from": before.value,
                       "breaker_to": after.value})
        self._seen = None  # the capacity changes with it
        if after is BreakerState.OPEN and self.clients is not None:
            asyncio.get_running_loop().call_later(
                self.breakers.settings.cooldown_s, self._start_probe, worker_id)

    # -- probes ---------------------------------------------------------------------------

    def _start_probe(self, worker_id: str) -> None:
        task = asyncio.create_task(self._probe(worker_id), name=f"breaker-probe-{worker_id}")
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _probe(self, worker_id: str) -> None:
        """The trial of an open breaker past its cool-down, unless a client request took it
        already: a one-token generation (a prefill on a prefill worker)."""
        breakers = self.breakers
        if breakers.state(worker_id) is not BreakerState.OPEN:
            return  # closed, forgotten, or on trial with a client request
        worker = self.watcher.workers.get(worker_id)
        if worker is None:  # quarantined until its lease is renewed: try again later
            asyncio.get_running_loop().call_later(
                breakers.settings.cooldown_s, self._start_probe, worker_id)
            return
        self.routed(worker)
        assert self.clients is not None
        client = self.clients.of(worker.address)
        timeout = breakers.settings.probe_timeout_s
        request_id = f"breaker-probe-{uuid.uuid4().hex[:8]}"
        sampling = sampling_to_proto(Sampling(max_tokens=1, temperature=0.0, ignore_eos=True))
        try:
            if worker.role == "prefill":
                await client.prefill.Prefill(worker_pb2.PrefillRequest(
                    request_id=request_id, prompt_token_ids=_PROBE_PROMPT, sampling=sampling,
                    model=worker.model), timeout=timeout)
            else:
                call = client.decode.Generate(worker_pb2.GenerateRequest(
                    request_id=request_id, prompt_token_ids=_PROBE_PROMPT, sampling=sampling,
                    model=worker.model), timeout=timeout)
                async for _ in call:
                    break
                call.cancel()
        except Exception as error:
            log.info("breaker probe failed", extra={"worker_id": worker_id,
                                                    "error": repr(error)[:200]})
            self._note(breakers.failed(worker_id, self.clock()))
            return
        self.succeeded(worker)

    async def close(self) -> None:
        for task in list(self._probes):
            task.cancel()
        await asyncio.gather(*self._probes, return_exceptions=True)


def past_deadline(timeout_s: float, tokens: int) -> TandemError:
    """The error of a request whose deadline passed after ``tokens`` tokens."""
    return TandemError(common_pb2.ERROR_CODE_DEADLINE_EXCEEDED,
                       f"the request's deadline ({timeout_s:g} s) passed after {tokens} tokens")


class CallJudge:
    """One call's verdict on its worker: ``answered`` at the worker's first answer, ``ended``
    when the call ends (with its gRPC error, if it failed; only the first verdict counts, but
    a failure after an answer still counts against the worker)."""

    __slots__ = ("guard", "judged", "worker")

    def __init__(self, guard: FleetGuard, worker: WorkerInfo) -> None:
        self.guard = guard
        self.worker = worker
        self.judged = False

    def answered(self) -> None:
        if not self.judged:
            self.judged = True
            self.guard.succeeded(self.worker)

    def ended(self, error: grpc.aio.AioRpcError | None = None) -> None:
        if error is not None:
            self.judged = True
            self.guard.failed(self.worker, error.code())
        elif not self.judged:  # ended before any verdict (the client left)
            self.judged = True
            self.guard.abandoned(self.worker)


_PROBE_PROMPT = [1, 2, 3, 4]


def _wake(ticket: Ticket) -> None:
    future = ticket.payload
    assert isinstance(future, asyncio.Future)
    if not future.done():
        future.set_result(None)
