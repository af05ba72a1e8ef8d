"""gRPC transport of the decode worker: DecodeService.Generate and WorkerService."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import grpc
from opentelemetry import trace

from tandem.engines.base import Engine, EngineRequest
from tandem.errors import TandemError, abort_with, invalid
from tandem.protocol import FINISH_TO_PROTO, sampling_from_proto
from tandem.telemetry import extract_context, trace_headers, tracer
from tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc

_tracer = tracer("tandem.decode")


def validate_generate(request: worker_pb2.GenerateRequest, engine: Engine, model: str) -> None:
    """Rejects what the engine cannot serve, as a client error."""
    if request.model and request.model != model:
        raise TandemError(common_pb2.ERROR_CODE_MODEL_NOT_FOUND,
                          f"this worker serves {model!r}, not {request.model!r}", "model")
    prompt_tokens = len(request.prompt_token_ids)
    if prompt_tokens == 0:
        raise invalid("the prompt is empty", "prompt")
    wanted = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 1
    if prompt_tokens + wanted > engine.max_model_len:
        raise TandemError(
            common_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED,
            f"{prompt_tokens} prompt tokens + {wanted} completion tokens exceed the model's "
            f"context of {engine.max_model_len} tokens", "max_tokens")


class DecodeServicer(worker_pb2_grpc.DecodeServiceServicer):
    """Streams an engine generation; cancellation of the call aborts the engine request."""

    def __init__(self, engine: Engine, model: str) -> None:
        self.engine = engine
        self.model = model

    async def Generate(
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        parent = extract_context(context.invocation_metadata())
        span = _tracer.start_span(
            "tandem.v1.DecodeService/Generate", context=parent, kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": "tandem.v1.DecodeService",
                        "rpc.method": "Generate", "tandem.request_id": request.request_id,
                        "gen_ai.request.model": self.model,
                        "gen_ai.usage.input_tokens": len(request.prompt_token_ids)})
        try:
            try:
                validate_generate(request, self.engine, self.model)
            except TandemError as error:
                span.set_status(trace.Status(trace.StatusCode.ERROR, error.message))
                await abort_with(context, error)
            engine_request = EngineRequest(
                request_id=request.request_id,
                prompt_token_ids=list(request.prompt_token_ids),
                sampling=sampling_from_proto(request.sampling),
                trace_headers=trace_headers(trace.set_span_in_context(span, parent)),
            )
            async for response in self._responses(engine_request, span):
                yield response
        finally:
            span.end()

    async def _responses(self, engine_request: EngineRequest, span: trace.Span
                         ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        started = time.perf_counter()
        completion_tokens = 0
        cached = 0
        first = True
        async for output in self.engine.generate(engine_request):
            completion_tokens += len(output.token_ids)
            response = worker_pb2.GenerateResponse(
                delta=common_pb2.TokenDelta(token_ids=output.token_ids, text=output.text))
            if first:
                span.add_event("first_token", {
                    "tandem.seconds": time.perf_counter() - started,
                    "gen_ai.usage.cached_tokens": output.cached_tokens})
                response.engine = self.engine.fingerprint
                cached = output.cached_tokens
                first = False
            if output.finish_reason is not None:
                response.finish_reason = FINISH_TO_PROTO[output.finish_reason]
                response.usage.CopyFrom(common_pb2.Usage(
                    prompt_tokens=output.prompt_tokens,
                    completion_tokens=completion_tokens,
                    cached_tokens=cached))
                span.set_attributes({"gen_ai.usage.output_tokens": completion_tokens,
                                     "gen_ai.response.finish_reasons": [output.finish_reason]})
            yield response


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """Load and KV state of the worker."""

    def __init__(self, engine: Engine,
                 kv_snapshot: Callable[[], tuple[list[bytes], int] | None]) -> None:
        self.engine = engine
        self.kv_snapshot = kv_snapshot

    async def GetLoad(
        self, request: worker_pb2.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GetLoadResponse:
        load = self.engine.load()
        return worker_pb2.GetLoadResponse(
            running_requests=load.running, waiting_requests=load.waiting,
            used_kv_blocks=load.used_blocks, total_kv_blocks=load.total_blocks,
            block_size=load.block_size)

    async def DumpKVState(
        self, request: worker_pb2.DumpKVStateRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.DumpKVStateResponse:
        snapshot = self.kv_snapshot()
        if snapshot is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                f"{self.engine.fingerprint} does not report its KV blocks")
            raise AssertionError("unreachable")  # context.abort raises
        hashes, sequence = snapshot
        return worker_pb2.DumpKVStateResponse(block_hashes=hashes, last_event_sequence=sequence)
