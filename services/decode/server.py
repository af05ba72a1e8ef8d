"""gRPC transport of the decode worker: DecodeService.Generate."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace

from services.decode.coalesce import ReadyBatches, merged
from tandem.engines.base import Engine, EngineRequest
from tandem.errors import TandemError, abort_with, invalid
from tandem.protocol import FINISH_TO_PROTO, sampling_from_proto
from tandem.telemetry import extract_context, trace_headers, tracer
from tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tandem.worker import kv_transfer_params, validate_prompt

_tracer = tracer("tandem.decode")


def continuation(request: worker_pb2.GenerateRequest,
                 headers: dict[str, str] | None) -> EngineRequest:
    """The engine request for a generation; after a remote prefill it continues from the
    prefill's first token (already sent to the client) over the prompt's stored blocks."""
    prompt = list(request.prompt_token_ids)
    sampling = sampling_from_proto(request.sampling)
    if request.HasField("first_token_id"):
        if sampling.max_tokens is not None and sampling.max_tokens < 2:
            raise invalid("with a first token, max_tokens must leave a token to generate",
                          "max_tokens")
        prompt.append(request.first_token_id)
        if sampling.max_tokens is not None:
            sampling = dataclasses.replace(sampling, max_tokens=sampling.max_tokens - 1)
    handle = request.kv_handle if request.HasField("kv_handle") else None
    return EngineRequest(
        request_id=request.request_id, prompt_token_ids=prompt, sampling=sampling,
        trace_headers=headers, kv_transfer=kv_transfer_params(request.hash_salt, handle))


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
                validate_prompt(request, self.engine, self.model)
                engine_request = continuation(request, trace_headers(
                    trace.set_span_in_context(span, parent)))
            except TandemError as error:
                span.set_status(trace.Status(trace.StatusCode.ERROR, error.message))
                await abort_with(context, error)
            async for response in self._responses(engine_request, span,
                                                  request.HasField("first_token_id"),
                                                  request.min_tokens_per_message):
                yield response
        finally:
            span.end()

    async def _responses(self, engine_request: EngineRequest, span: trace.Span,
                         continued: bool, min_tokens: int
                         ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        """One message per batch of ready outputs (see ``coalesce``): a slow reader gets
        several tokens per message, a fast one every output alone."""
        started = time.perf_counter()
        completion_tokens = 1 if continued else 0  # the prefill worker's first token
        cached = 0
        first = True
        async with ReadyBatches(self.engine.generate(engine_request), min_tokens) as batches:
            async for batch in batches:
                token_ids, text = merged(batch)
                completion_tokens += len(token_ids)
                response = worker_pb2.GenerateResponse(
                    delta=common_pb2.TokenDelta(token_ids=token_ids, text=text))
                if first:
                    cached = batch[0].cached_tokens
                    span.add_event("first_token", {
                        "tandem.seconds": time.perf_counter() - started,
                        "gen_ai.usage.cached_tokens": cached})
                    response.engine = self.engine.fingerprint
                    first = False
                last = batch[-1]
                if last.finish_reason is not None:
                    response.finish_reason = FINISH_TO_PROTO[last.finish_reason]
                    usage = response.usage
                    usage.prompt_tokens = last.prompt_tokens - (1 if continued else 0)
                    usage.completion_tokens = completion_tokens
                    usage.cached_tokens = cached
                    span.set_attributes({"gen_ai.usage.output_tokens": completion_tokens,
                                         "gen_ai.response.finish_reasons": [last.finish_reason]})
                yield response
