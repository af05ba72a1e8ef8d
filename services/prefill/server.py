"""gRPC transport of the prefill worker: PrefillService.Prefill and WorkerService."""

from __future__ import annotations

import dataclasses
import socket
import time

import grpc
from opentelemetry import trace

from tandem.engines.base import Engine, EngineRequest
from tandem.errors import TandemError, abort_with
from tandem.hashing import hash_salt, prompt_hashes
from tandem.protocol import FINISH_TO_PROTO, sampling_from_proto
from tandem.telemetry import extract_context, trace_headers, tracer
from tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tandem.worker import kv_transfer_params, validate_prompt

_tracer = tracer("tandem.prefill")


class PrefillServicer(worker_pb2_grpc.PrefillServiceServicer):
    """Runs a prompt through the engine for one token; the engine's KV connector writes the
    prompt's blocks to the store during the forward passes and commits them before the token
    leaves the engine, so the returned handle never points at blocks that are not there."""

    def __init__(self, engine: Engine, model: str, store_address: str) -> None:
        self.engine = engine
        self.model = model
        self.store_address = store_address
        self.store_host = socket.gethostname()

    async def Prefill(self, request: worker_pb2.PrefillRequest,
                      context: grpc.aio.ServicerContext) -> worker_pb2.PrefillResponse:
        parent = extract_context(context.invocation_metadata())
        with _tracer.start_as_current_span(
                "tandem.v1.PrefillService/Prefill", context=parent, kind=trace.SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": "tandem.v1.PrefillService",
                            "rpc.method": "Prefill", "tandem.request_id": request.request_id,
                            "gen_ai.request.model": self.model,
                            "gen_ai.usage.input_tokens": len(request.prompt_token_ids)}) as span:
            try:
                validate_prompt(request, self.engine, self.model)
            except TandemError as error:
                span.set_status(trace.Status(trace.StatusCode.ERROR, error.message))
                await abort_with(context, error)
            started = time.perf_counter()
            response = await self._prefill(request, trace_headers())
            span.set_attributes({
                "tandem.prefill.seconds": time.perf_counter() - started,
                "tandem.kv.blocks": len(response.kv_handle.block_hashes),
                "gen_ai.usage.cached_tokens": response.usage.cached_tokens})
            return response

    async def _prefill(self, request: worker_pb2.PrefillRequest,
                       headers: dict[str, str]) -> worker_pb2.PrefillResponse:
        sampling = sampling_from_proto(request.sampling)
        wanted = sampling.max_tokens
        salt = request.hash_salt or hash_salt(self.model)
        engine_request = EngineRequest(
            request_id=request.request_id, prompt_token_ids=list(request.prompt_token_ids),
            sampling=dataclasses.replace(sampling, max_tokens=1), trace_headers=headers,
            kv_transfer=kv_transfer_params(salt, save=True))
        token_ids: list[int] = []
        text = ""
        finish: str | None = None
        cached = 0
        async for output in self.engine.generate(engine_request):
            token_ids += output.token_ids
            text += output.text
            finish = output.finish_reason or finish
            cached = cached or output.cached_tokens
        if not token_ids:
            raise TandemError(common_pb2.ERROR_CODE_UNAVAILABLE, "prefill produced no token")
        # One token is "length" for the engine; for the client the request goes on unless it
        # asked for one token or the first token stopped it.
        if finish == "length" and wanted != 1:
            finish = None
        hashes = prompt_hashes(request.prompt_token_ids, self.engine.block_size, salt)
        return worker_pb2.PrefillResponse(
            first_token_id=token_ids[0], first_token_text=text,
            kv_handle=common_pb2.KVHandle(
                block_size=self.engine.block_size, block_hashes=hashes,
                num_tokens=len(request.prompt_token_ids),
                store_address=self.store_address, store_host=self.store_host),
            finish_reason=FINISH_TO_PROTO[finish] if finish else
            common_pb2.FINISH_REASON_UNSPECIFIED,
            usage=common_pb2.Usage(prompt_tokens=len(request.prompt_token_ids),
                                   completion_tokens=1, cached_tokens=cached),
            engine=self.engine.fingerprint)
