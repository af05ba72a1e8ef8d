"""One request through the fleet, independent of the transport (HTTP or gRPC): choose a decode
worker, stream its tokens, fail over once if it is unreachable before the first token, and
record the request's latency breakdown."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from services.router.metrics import RouterMetrics
from services.router.workers import Route, WorkerPool
from tandem.engines.base import Sampling
from tandem.errors import TandemError, from_rpc_error
from tandem.protocol import FINISH_FROM_PROTO, sampling_to_proto
from tandem.stages import Stage, record_stage
from tandem.telemetry import inject_metadata, tracer
from tandem.v1 import common_pb2, worker_pb2

_tracer = tracer("tandem.router")

# Status codes that mean "this worker could not take the request" (safe to retry elsewhere
# as long as no token has reached the client).
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE}


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    model: str
    prompt_token_ids: list[int]
    sampling: Sampling
    tenant: str = ""


@dataclasses.dataclass(frozen=True)
class Delta:
    """Tokens of one step as they reach the client."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    engine: str = ""


class Generator:
    """Runs requests against the worker pool."""

    def __init__(self, pool: WorkerPool, metrics: RouterMetrics, retries: int,
                 timeout_s: float) -> None:
        self.pool = pool
        self.metrics = metrics
        self.retries = retries
        self.timeout_s = timeout_s

    async def stream(self, request: GenerationRequest,
                     parent: Context | None = None) -> AsyncIterator[Delta]:
        """Streams the request's tokens; spans are children of ``parent`` (default: the
        current context when the stream starts)."""
        parent = parent if parent is not None else otel_context.get_current()
        started = time.perf_counter()
        deadline = started + self.timeout_s
        excluded: set[str] = set()
        outcome = "error"
        self.metrics.running.add(1)
        try:
            for attempt in range(self.retries + 1):
                route = self._route(request, excluded, attempt, parent)
                if route is None:
                    outcome = "unavailable"
                    raise TandemError(common_pb2.ERROR_CODE_UNAVAILABLE,
                                      f"no live decode worker serves {request.model!r}")
                worker = route.worker
                received = False
                try:
                    async for delta in self._call(route, request, deadline, started, parent):
                        received = True
                        yield delta
                        if delta.finish_reason is not None:
                            outcome = "ok"
                    return
                except grpc.aio.AioRpcError as error:
                    if received or error.code() not in _RETRYABLE or attempt == self.retries:
                        outcome = "unavailable" if error.code() in _RETRYABLE else "error"
                        raise from_rpc_error(error) from None
                    self.pool.mark_failed(worker)
                    excluded.add(worker.worker_id)
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"  # the client went away or the deadline passed
            raise
        finally:
            self.metrics.running.add(-1)
            self.metrics.requests.add(1, {"tandem.outcome": outcome})
            self.metrics.duration.record(time.perf_counter() - started,
                                         {"gen_ai.request.model": request.model})

    def _route(self, request: GenerationRequest, excluded: set[str], attempt: int,
               parent: Context) -> Route | None:
        route_started = time.perf_counter()
        with _tracer.start_as_current_span("tandem.route", context=parent) as span:
            route = self.pool.route(request.model, request.tenant, request.prompt_token_ids,
                                    excluded)
            span.set_attribute("tandem.route.attempt", attempt)
            if route is None:
                return None
            decision = route.decision
            span.set_attributes(decision.span_attributes(self.pool.routing.explain_top))
            span.set_attribute("tandem.route.decode_worker", route.worker.worker_id)
        record_stage(Stage.ROUTE, time.perf_counter() - route_started)
        record_stage(Stage.ROUTE_HASH, route.hash_s)
        record_stage(Stage.ROUTE_INDEX_LOOKUP, decision.lookup_s)
        record_stage(Stage.ROUTE_SCORE, decision.scoring_s)
        attributes = {"tandem.policy": decision.policy}
        self.metrics.prompt_blocks.add(decision.prompt_blocks, attributes)
        self.metrics.cached_blocks.add(decision.chosen.device_overlap_blocks, attributes)
        return route

    async def _call(self, route: Route, request: GenerationRequest, deadline: float,
                    started: float, parent: Context) -> AsyncIterator[Delta]:
        worker = route.worker
        message = worker_pb2.GenerateRequest(
            request_id=request.request_id, prompt_token_ids=request.prompt_token_ids,
            sampling=sampling_to_proto(request.sampling), model=request.model)
        self.pool.acquire(route)
        span = _tracer.start_span(
            "tandem.v1.DecodeService/Generate", context=parent, kind=trace.SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": "tandem.v1.DecodeService",
                        "rpc.method": "Generate", "server.address": worker.address,
                        "tandem.worker_id": worker.worker_id})
        call = self.pool.decode_stub(worker).Generate(
            message, timeout=max(0.001, deadline - time.perf_counter()),
            metadata=inject_metadata(context=trace.set_span_in_context(span, parent)))
        first_at: float | None = None
        engine = ""
        try:
            async for response in call:
                now = time.perf_counter()
                if first_at is None:
                    first_at = now
                    engine = response.engine
                    self.pool.prefill_done(route)
                    self.metrics.ttft.record(now - started,
                                             {"gen_ai.request.model": request.model})
                finish = FINISH_FROM_PROTO.get(response.finish_reason)
                usage = response.usage
                yield Delta(
                    text=response.delta.text,
                    token_ids=list(response.delta.token_ids),
                    finish_reason=finish,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    cached_tokens=usage.cached_tokens,
                    engine=engine,
                )
                if finish is not None:
                    self._record_finish(request, usage, first_at, now, span)
        except grpc.aio.AioRpcError as error:
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(error.code())))
            raise
        finally:
            call.cancel()
            span.end()
            if first_at is None:
                self.pool.prefill_done(route)
            self.pool.release(route)

    def _record_finish(self, request: GenerationRequest, usage: common_pb2.Usage,
                       first_at: float, finished_at: float, span: trace.Span) -> None:
        attributes = {"gen_ai.request.model": request.model}
        if usage.completion_tokens > 1:
            self.metrics.tpot.record(
                (finished_at - first_at) / (usage.completion_tokens - 1), attributes)
        self.metrics.tokens.add(usage.prompt_tokens, {**attributes, "gen_ai.token.type": "input"})
        self.metrics.tokens.add(usage.completion_tokens,
                                {**attributes, "gen_ai.token.type": "output"})
        span.set_attributes({"gen_ai.usage.input_tokens": usage.prompt_tokens,
                             "gen_ai.usage.output_tokens": usage.completion_tokens})
