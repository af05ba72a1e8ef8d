"""gRPC transport of the prefill worker: PrefillService.Prefill."""

from __future__ import annotations

import socket
import time

import grpc
from opentelemetry import trace

from services.prefill.core.prefill import (
    FirstToken,
    prefill_request,
    prefill_response,
    prefill_salt,
)
from tandem.engines.base import Engine
from tandem.service.grpc import PREFILL_SERVICE
from tandem.service.handlers import rpc
from tandem.telemetry import trace_headers
from tandem.v1 import worker_pb2, worker_pb2_grpc
from tandem.worker.spans import prompt_attributes
from tandem.worker.validation import validate_prompt


class PrefillServicer(worker_pb2_grpc.PrefillServiceServicer):
    """Runs a prompt through the engine for one token; the engine's KV connector writes the
    prompt's blocks to the store during the forward passes and commits them before the token
    leaves the engine, so the returned handle never points at blocks that are not there."""

    def __init__(self, engine: Engine, model: str, store_address: str) -> None:
        self.engine = engine
        self.model = model
        self.store_address = store_address
        self.store_host = socket.gethostname()

    @rpc(PREFILL_SERVICE)
    async def Prefill(self, request: worker_pb2.PrefillRequest,
                      context: grpc.aio.ServicerContext,
                      span: trace.Span) -> worker_pb2.PrefillResponse:
        span.set_attributes(prompt_attributes(request, self.model))
        validate_prompt(request, self.engine, self.model)
        started = time.perf_counter()
        response = await self._prefill(request, trace_headers())
        span.set_attributes({
            "tandem.prefill.seconds": time.perf_counter() - started,
            "tandem.kv.blocks": len(response.kv_handle.block_hashes),
            "gen_ai.usage.cached_tokens": response.usage.cached_tokens})
        return response

    async def _prefill(self, request: worker_pb2.PrefillRequest,
                       headers: dict[str, str]) -> worker_pb2.PrefillResponse:
        salt = prefill_salt(request, self.model)
        first = FirstToken()
        async for output in self.engine.generate(prefill_request(request, salt, headers)):
            first.add(output)
        return prefill_response(
            request, first, salt=salt, block_size=self.engine.block_size,
            fingerprint=self.engine.fingerprint, store_address=self.store_address,
            store_host=self.store_host)
