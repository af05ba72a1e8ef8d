"""One request through the fleet, independent of the transport (HTTP or gRPC): the driver of
the request's state machine (``core.request_flow``). It makes the calls the machine asks for
(route, remote prefill, decode) with the worker clients, feeds back what happened, keeps the
in-flight ledger, cuts stop strings across a hand-off, migrates a stream whose decode worker
was lost to another worker (see ``resume_request``) and records the request's metrics and
spans."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from services.router.core.call_outcome import decode_failure, prefill_failure
from services.router.core.handoff_stop import HandoffStop
from services.router.core.in_flight import InFlightLedger
from services.router.core.request import Delta, GenerationRequest
from services.router.core.request_flow import Event, Limits, Phase, RequestFlow, Step
from services.router.guard import FleetGuard, past_deadline
from services.router.metrics import RouterMetrics
from services.router.routing import Route, RouteChooser
from services.router.splice import cut_at_stop, first_delta, held_text, whole_usage
from services.router.worker_clients import (
    WorkerClients,
    generate_request,
    prefill_request,
    resume_request,
)
from tandem.discovery import WorkerInfo
from tandem.errors import TandemError, from_rpc_error
from tandem.protocol import FINISH_FROM_PROTO
from tandem.service.grpc import DECODE_SERVICE, PREFILL_SERVICE
from tandem.stages import Stage, record_stage
from tandem.telemetry import inject_metadata, tracer, tracing
from tandem.v1 import common_pb2, worker_pb2

__all__ = ["Delta", "GenerationRequest", "Generator"]

_tracer = tracer("tandem.router")

_NO_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)
"""The routing span while nothing exports spans."""

# Phases in which a lost decode worker is replaced by a migration.
_MIGRATABLE = {Phase.STREAMING, Phase.RESUMING}


def _client_span(service: str, method: str, worker: WorkerInfo, parent: Context) -> trace.Span:
    """The router's client span of one call to a worker (OTel RPC conventions); while nothing
    exports spans, the parent's (non-recording) span, whose context the call carries on."""
    if not tracing():
        return trace.get_current_span(parent)
    return _tracer.start_span(
        f"{service}/{method}", context=parent, kind=trace.SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": service,
                    "rpc.method": method, "server.address": worker.address,
                    "tandem.worker_id": worker.worker_id})


@dataclasses.dataclass(slots=True)
class _Progress:
    """What of a request already reached the client, kept across a migration."""

    produced: list[int] = dataclasses.field(default_factory=list)
    """Token ids sent, in order (the prefill worker's first token included)."""
    first_at: float | None = None
    """When the first token arrived."""
    lost: str = ""
    """The worker id of the decode worker lost last (a migration's origin)."""
    sent_text: list[str] = dataclasses.field(default_factory=list)
    """The text sent, in pieces (kept for requests with stop strings only: a migration
    restores the text their lost worker held back, see ``splice.held_text``)."""


class Generator:
    """Runs requests on the workers."""

    def __init__(self, routing: RouteChooser, clients: WorkerClients, ledger: InFlightLedger,
                 metrics: RouterMetrics, retries: int, timeout_s: float,
                 migrations: int, guard: FleetGuard) -> None:
        self.guard = guard
        """Admission control and circuit breakers."""
        self.routing = routing
        self.clients = clients
        self.ledger = ledger
        self.metrics = metrics
        self.limits = Limits(retries, migrations)
        self.timeout_s = timeout_s
        """The default deadline of a request, and the longest one a client may set."""

    async def stream(self, request: GenerationRequest,
                     parent: Context | None = None) -> AsyncGenerator[Delta, None]:
        """Streams the request's tokens; spans are children of ``parent`` (default: the
        current context when the stream starts)."""
        parent = parent if parent is not None else otel_context.get_current()
        started = time.perf_counter()
        timeout_s = min(request.timeout_s or self.timeout_s, self.timeout_s)
        deadline = started + timeout_s
        await self.guard.enter(deadline)  # admission control: raises the refusal
        flow = RequestFlow(self.limits)
        progress = _Progress()
        stops = request.sampling.stop
        excluded: set[str] = set()
        self.metrics.running.add(1)
        try:
            route: Route | None = None
            handoff: worker_pb2.PrefillResponse | None = None
            cut: HandoffStop | None = None
            # Stop strings matched across the hand-off (see ``handoff_stop``).
            step = Step.ROUTE
            while True:
                if step is Step.ROUTE:
                    route = self._route(request, excluded, flow.state.attempt, parent)
                    if route is None:
                        flow.on(Event.NO_WORKER)
                        raise TandemError(common_pb2.ERROR_CODE_UNAVAILABLE,
                                          f"no live decode worker serves {request.model!r}")
                    step = flow.on(Event.ROUTED_REMOTE if route.prefill is not None
                                   else Event.ROUTED_LOCAL).step
                elif step is Step.MIGRATE:
                    route = self._route(request, excluded, flow.state.attempt, parent, progress,
                                        flow.state.migrations)
                    if route is None:
                        self._migrated("no_worker")
                        flow.on(Event.NO_WORKER)
                        raise TandemError(
                            common_pb2.ERROR_CODE_UNAVAILABLE,
                            f"the decode worker of the stream was lost after "
                            f"{len(progress.produced)} tokens and no other live decode worker "
                            f"serves {request.model!r}")
                    step = flow.on(Event.ROUTED_LOCAL).step
                elif step is Step.PREFILL:
                    assert route is not None and route.prefill is not None
                    try:
                        handoff = await self._prefill(route, request, deadline, started, parent)
                    except grpc.aio.AioRpcError as error:
                        action = flow.on(prefill_failure(error.code()))
                        if action.outcome == "deadline":
                            raise past_deadline(timeout_s, len(progress.produced)) from None
                        if action.step is Step.FAIL:
                            raise from_rpc_error(error) from None
                        if action.quarantine:
                            self.routing.quarantine(route.prefill)
                        self.metrics.prefill_decisions.add(1, {
                            "tandem.prefill.location": "local",
                            "tandem.prefill.reason": "fallback"})
                        step = action.step
                        continue
                    progress.first_at = time.perf_counter()
                    progress.produced.append(handoff.first_token_id)
                    first = first_delta(handoff)
                    if first.finish_reason is None and stops:
                        cut = HandoffStop(stops)
                        first = dataclasses.replace(first, text=cut.first(first.text).text)
                        progress.sent_text.append(first.text)
                    yield first
                    step = flow.on(Event.PREFILL_FINISHED if first.finish_reason is not None
                                   else Event.PREFILL_DONE).step
                    if step is Step.FINISH:
                        return
                else:
                    assert step is Step.DECODE and route is not None
                    try:
                        resuming = flow.state.phase is Phase.RESUMING
                        deltas = self._decode(route, request, deadline, started, parent, flow,
                                              progress, handoff)
                        if resuming and stops:  # the lost worker's held text comes first
                            cut = HandoffStop(stops)
                            deltas = cut_at_stop(deltas, cut, len(request.prompt_token_ids), 0,
                                                 len(progress.produced), held_first=True)
                        elif cut is not None and handoff is not None:
                            deltas = cut_at_stop(deltas, cut, len(request.prompt_token_ids),
                                                  handoff.usage.cached_tokens)
                        async for delta in deltas:
                            if stops:
                                progress.sent_text.append(delta.text)
                            yield delta
                            if delta.finish_reason is not None:
                                flow.on(Event.FINISHED)
                        flow.on(Event.STREAM_ENDED)
                        return
                    except grpc.aio.AioRpcError as error:
                        phase = flow.state.phase
                        event = decode_failure(error.code())
                        lost = event is Event.WORKER_UNREACHABLE
                        action = flow.on(event)
                        if phase is Phase.RESUMING:  # the new worker failed before answering
                            self._migrated("lost" if lost else "error")
                        if action.step is Step.FINISH:  # lost after its last token
                            return
                        if action.outcome == "deadline":
                            raise past_deadline(timeout_s, len(progress.produced)) from None
                        if action.step is Step.FAIL or (action.step is Step.ROUTE
                                                         and not self.guard.retry_allowed()):
                            raise (self._lost(error, flow, progress)
                                   if lost and phase in _MIGRATABLE
                                   else from_rpc_error(error)) from None
                        if action.quarantine:
                            self.routing.quarantine(route.worker)
                        if action.quarantine or action.exclude:
                            excluded.add(route.worker.worker_id)
                            progress.lost = route.worker.worker_id
                        step = action.step
        except (asyncio.CancelledError, GeneratorExit):
            flow.on(Event.CANCELLED)  # the client went away or the deadline passed
            raise
        finally:
            duration = time.perf_counter() - started
            self.guard.leave(duration)
            self.metrics.running.add(-1)
            self.metrics.requests.add(1, {"tandem.outcome": flow.outcome})
            self.metrics.duration.record(duration, {"gen_ai.request.model": request.model})

    def _lost(self, error: grpc.aio.AioRpcError, flow: RequestFlow,
              progress: _Progress) -> TandemError:
        """The error that ends a stream whose decode worker was lost and that is not migrated
        again."""
        self._migrated("limit")
        why = f"it was migrated {flow.state.migrations} times (--max-migrations " \
              f"{flow.limits.migrations})"
        return TandemError(common_pb2.ERROR_CODE_UNAVAILABLE,
                           f"the decode worker of the stream was lost after "
                           f"{len(progress.produced)} tokens and {why}: {error.details()}")

    def _migrated(self, outcome: str) -> None:
        self.metrics.migrations.add(1, {"tandem.outcome": outcome})

    def _route(self, request: GenerationRequest, excluded: set[str], attempt: int,
               parent: Context, progress: _Progress | None = None,
               migration: int = 0) -> Route | None:
        """The request's route; a migration's (``migration`` > 0) is always to a decode worker
        that prefills the prompt and the tokens sent itself (or loads them from the store)."""
        route_started = time.perf_counter()
        with (_tracer.start_as_current_span("tandem.route", context=parent) if tracing()
              else _NO_SPAN) as span:
            route = self.routing.choose(request.model, request.tenant,
                                        request.prompt_token_ids, excluded)
            span.set_attribute("tandem.route.attempt", attempt)
            if migration and progress is not None:
                span.set_attributes({"tandem.migration": migration,
                                     "tandem.migration.from_worker": progress.lost,
                                     "tandem.migration.sent_tokens": len(progress.produced)})
            if route is None:
                return None
            self.guard.routed(route.worker, None if migration else route.prefill)
            if migration:
                decision = route.decision
                route = dataclasses.replace(
                    route, prefill=None, prefill_reason="migration",
                    prefill_blocks=max(0, decision.prompt_blocks
                                       - decision.chosen.device_overlap_blocks))
            decision = route.decision
            if span.is_recording():  # the candidates' attributes are built for an exporter only
                span.set_attributes(decision.span_attributes(self.routing.settings.explain_top))
                span.set_attributes({
                    "tandem.route.decode_worker": route.worker.worker_id,
                    "tandem.prefill.location": "remote" if route.prefill else "local",
                    "tandem.prefill.reason": route.prefill_reason,
                    "tandem.route.prefill_worker":
                        route.prefill.worker_id if route.prefill else ""})
        self.metrics.prefill_decisions.add(1, {
            "tandem.prefill.location": "remote" if route.prefill else "local",
            "tandem.prefill.reason": route.prefill_reason})
        record_stage(Stage.ROUTE, time.perf_counter() - route_started)
        record_stage(Stage.ROUTE_HASH, route.hash_s)
        record_stage(Stage.ROUTE_INDEX_LOOKUP, decision.lookup_s)
        record_stage(Stage.ROUTE_SCORE, decision.scoring_s)
        attributes = {"tandem.policy": decision.policy}
        self.metrics.prompt_blocks.add(decision.prompt_blocks, attributes)
        self.metrics.cached_blocks.add(decision.chosen.device_overlap_blocks, attributes)
        return route

    async def _prefill(self, route: Route, request: GenerationRequest, deadline: float,
                       started: float, parent: Context) -> worker_pb2.PrefillResponse:
        """The prompt's first token and KV handle from the route's prefill worker."""
        worker = route.prefill
        assert worker is not None
        self.ledger.prefill_started(worker.worker_id)
        judge = self.guard.judge(worker)
        span = _client_span(PREFILL_SERVICE, "Prefill", worker, parent)
        call_started = time.perf_counter()
        try:
            response: worker_pb2.PrefillResponse = await self.clients.of(
                worker.address).prefill.Prefill(
                prefill_request(request, route.salt),
                timeout=max(0.001, deadline - time.perf_counter()),
                metadata=inject_metadata(context=trace.set_span_in_context(span, parent)))
            span.set_attribute("tandem.kv.blocks", len(response.kv_handle.block_hashes))
            judge.answered()
        except grpc.aio.AioRpcError as error:
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(error.code())))
            judge.ended(error)
            raise
        finally:
            judge.ended()
            span.end()
            self.ledger.prefill_ended(worker.worker_id)
        now = time.perf_counter()
        record_stage(Stage.REMOTE_PREFILL, now - call_started)
        self.metrics.ttft.record(now - started, {"gen_ai.request.model": request.model})
        return response

    async def _decode(self, route: Route, request: GenerationRequest, deadline: float,
                      started: float, parent: Context, flow: RequestFlow, progress: _Progress,
                      handoff: worker_pb2.PrefillResponse | None = None,
                      ) -> AsyncGenerator[Delta, None]:
        """The decode worker's deltas; the token ids sent are added to ``progress``. After a
        migration (tokens in ``progress``) the worker resumes from them, and the usage of its
        last message is the whole request's."""
        worker = route.worker
        produced = progress.produced
        resumed_from = len(produced) if flow.state.phase is Phase.RESUMING else 0
        message = (resume_request(request, route.salt, produced, handoff) if resumed_from
                   else generate_request(request, route.salt, handoff))
        if resumed_from and request.sampling.stop:  # the text its lost worker held back
            message.resumed_tokens = resumed_from
        self.ledger.decode_started(worker.worker_id, route.prefill_blocks)
        span = _client_span(DECODE_SERVICE, "Generate", worker, parent)
        if resumed_from:
            span.set_attribute("tandem.migration.resumed_tokens", resumed_from)
        call = self.clients.generate(
            worker, message, max(0.001, deadline - time.perf_counter()),
            inject_metadata(context=trace.set_span_in_context(span, parent)))
        engine = handoff.engine if handoff is not None else ""
        answered = False
        judge = self.guard.judge(worker)
        try:
            async for response in call:
                now = time.perf_counter()
                if not answered:
                    answered = True
                    judge.answered()
                    engine = engine or response.engine
                    self.ledger.decode_answered(worker.worker_id, route.prefill_blocks)
                    flow.on(Event.FIRST_TOKEN)
                    if resumed_from:
                        self._migrated("resumed")
                        if request.sampling.stop:
                            yield Delta(held_text(response.resumed_text,
                                                  "".join(progress.sent_text)), [],
                                        engine=engine)
                if progress.first_at is None:
                    progress.first_at = now
                    self.metrics.ttft.record(now - started,
                                             {"gen_ai.request.model": request.model})
                finish = FINISH_FROM_PROTO.get(response.finish_reason)
                usage = response.usage
                delta = response.delta
                produced.extend(delta.token_ids)
                if finish is not None and resumed_from:
                    usage = whole_usage(usage, len(request.prompt_token_ids), resumed_from)
                yield Delta(
                    text=delta.text,
                    token_ids=delta.token_ids,
                    finish_reason=finish,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    cached_tokens=usage.cached_tokens,
                    engine=engine,
                    logprobs=delta.logprobs,
                    prompt_logprobs=delta.prompt_logprobs,
                )
                if finish is not None:
                    self._record_finish(request, usage, progress.first_at, now, span)
        except grpc.aio.AioRpcError as error:
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(error.code())))
            judge.ended(error)
            raise
        finally:
            call.cancel()
            span.end()
            judge.ended()
            if not answered:
                self.ledger.decode_answered(worker.worker_id, route.prefill_blocks)
            self.ledger.decode_ended(worker.worker_id)

    def _record_finish(self, request: GenerationRequest, usage: common_pb2.Usage,
                       first_at: float, finished_at: float, span: trace.Span) -> None:
        attributes = {"gen_ai.request.model": request.model}
        if usage.completion_tokens > 1:
            self.metrics.tpot.record(
                (finished_at - first_at) / (usage.completion_tokens - 1), attributes)
        self.metrics.tokens.add(usage.prompt_tokens, {**attributes, "gen_ai.token.type": "input"})
        self.metrics.tokens.add(usage.completion_tokens,
                                {**attributes, "gen_ai.token.type": "output"})
        self.metrics.prompt_tokens.record(usage.prompt_tokens, attributes)
        self.metrics.output_tokens.record(usage.completion_tokens, attributes)
        span.set_attributes({"gen_ai.usage.input_tokens": usage.prompt_tokens,
                             "gen_ai.usage.output_tokens": usage.completion_tokens})
