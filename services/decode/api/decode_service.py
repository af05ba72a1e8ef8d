"""gRPC transport of the decode worker: DecodeService.Generate."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace

from services.decode.api.coalesce import ReadyBatches
from services.decode.core.generation import continuation, merged, prompt_logprobs
from tandem.engines.base import Engine, EngineRequest
from tandem.errors import invalid
from tandem.protocol import FINISH_TO_PROTO, logprobs_to_proto
from tandem.service.grpc import DECODE_SERVICE
from tandem.service.handlers import rpc
from tandem.telemetry import trace_headers
from tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tandem.worker.spans import prompt_attributes
from tandem.worker.validation import validate_prompt


class DecodeServicer(worker_pb2_grpc.DecodeServiceServicer):
    """Streams an engine generation; cancellation of the call aborts the engine request."""

    def __init__(self, engine: Engine, model: str) -> None:
        self.engine = engine
        self.model = model

    @rpc(DECODE_SERVICE)
    async def Generate(
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext,
        span: trace.Span,
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        span.set_attributes(prompt_attributes(request, self.model))
        engine_request = self._engine_request(
            request, trace_headers(trace.set_span_in_context(span)))
        resumed_text = self._resumed_text(request)
        async for response in self._responses(engine_request, span,
                                              request.HasField("first_token_id"),
                                              len(request.prompt_token_ids),
                                              request.min_tokens_per_message):
            if resumed_text is not None:
                response.resumed_text, resumed_text = resumed_text, None
            yield response

    def _resumed_text(self, request: worker_pb2.GenerateRequest) -> str | None:
        """The text of a migrated stream's tokens already produced (``resumed_tokens``)."""
        resumed = request.resumed_tokens
        if not resumed:
            return None
        # Under a structured output constraint the tokens sent travel as generated_token_ids
        # (replayed as output), otherwise at the end of the prompt: either way they end this.
        tokens = [*request.prompt_token_ids, *request.generated_token_ids]
        if resumed >= len(tokens):
            raise invalid(f"resumed_tokens ({resumed}) must leave a prompt before them "
                          f"({len(tokens)} prompt tokens)", "resumed_tokens")
        return self.engine.detokenize(tokens[:-resumed], tokens[-resumed:])

    def _engine_request(self, request: worker_pb2.GenerateRequest,
                        headers: dict[str, str]) -> EngineRequest:
        """The request checked and turned into the engine's (a client error raises)."""
        validate_prompt(request, self.engine, self.model)
        return continuation(request, headers)

    async def _responses(self, engine_request: EngineRequest, span: trace.Span,
                         continued: bool, prompt_tokens: int, min_tokens: int
                         ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        """One message per batch of ready outputs (see ``coalesce``): a slow reader gets
        several tokens per message, a fast one every output alone. The usage counts the
        request's prompt (without the tokens generated before) and, after a remote prefill,
        its first token."""
        started = time.perf_counter()
        completion_tokens = 1 if continued else 0  # the prefill worker's first token
        cached = 0
        first = True
        async with ReadyBatches(self.engine.generate(engine_request), min_tokens) as batches:
            async for batch in batches:
                token_ids, text, logprobs = merged(batch)
                completion_tokens += len(token_ids)
                response = worker_pb2.GenerateResponse(
                    delta=common_pb2.TokenDelta(
                        token_ids=token_ids, text=text, logprobs=logprobs_to_proto(logprobs),
                        # the prompt's own (a continued request's also cover the tokens
                        # generated before, which extend the engine's prompt)
                        prompt_logprobs=logprobs_to_proto(
                            prompt_logprobs(batch)[:prompt_tokens - 1])))
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
                    usage.prompt_tokens = prompt_tokens
                    usage.completion_tokens = completion_tokens
                    usage.cached_tokens = cached
                    span.set_attributes({"gen_ai.usage.output_tokens": completion_tokens,
                                         "gen_ai.response.finish_reasons": [last.finish_reason]})
                yield response
