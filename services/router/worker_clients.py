"""The router's clients of the workers: one gRPC channel per worker address (kept while the
worker is live) with its stubs, a token-stream client per decode worker that announces one,
and the request messages the router sends."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import grpc

from services.router.core.request import GenerationRequest
from tandem.discovery import WorkerInfo
from tandem.protocol import coalesced, sampling_to_proto
from tandem.service.channels import aio_channel
from tandem.service.groups import GrpcSettings
from tandem.tokenstream.client import TokenStreamClient
from tandem.v1 import worker_pb2, worker_pb2_grpc


class GenerateCall(Protocol):
    """A decode call on either transport: grpc.aio's or the token stream's."""

    def __aiter__(self) -> AsyncIterator[worker_pb2.GenerateResponse]: ...

    def cancel(self) -> bool: ...


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerClient:
    """The stubs of one worker address, on one channel."""

    channel: grpc.aio.Channel
    decode: worker_pb2_grpc.DecodeServiceStub
    prefill: worker_pb2_grpc.PrefillServiceStub


class WorkerClients:
    """Channels (and stubs) by worker address, opened on first use."""

    def __init__(self, grpc_settings: GrpcSettings | None = None, token_stream: bool = True,
                 idle_stream_connections: int = 256) -> None:
        self.grpc_settings = grpc_settings or GrpcSettings()
        self.token_stream = token_stream
        self.idle_stream_connections = idle_stream_connections
        self._clients: dict[str, WorkerClient] = {}
        self._streams: dict[str, TokenStreamClient] = {}

    def of(self, address: str) -> WorkerClient:
        client = self._clients.get(address)
        if client is None:
            channel = aio_channel(address, self.grpc_settings)
            client = WorkerClient(channel, worker_pb2_grpc.DecodeServiceStub(channel),
                                  worker_pb2_grpc.PrefillServiceStub(channel))
            self._clients[address] = client
        return client

    def generate(self, worker: WorkerInfo, message: worker_pb2.GenerateRequest,
                 timeout: float, metadata: Sequence[tuple[str, str]]) -> GenerateCall:
        """``DecodeService.Generate`` on ``worker``: over its token stream when it announces
        one (and the router uses them; messages already received when the router reads are
        coalesced into one), else over gRPC."""
        if self.token_stream and worker.stream_port:
            stream = self._streams.get(worker.address)
            if stream is None:
                host = worker.address.rsplit(":", 1)[0]
                stream = self._streams[worker.address] = TokenStreamClient(
                    host, worker.stream_port, self.grpc_settings, self.idle_stream_connections)
            return stream.call(message, worker_pb2.GenerateResponse, timeout, metadata,
                               coalesced)
        return self.of(worker.address).decode.Generate(message, timeout=timeout,
                                                         metadata=metadata)

    async def keep_only(self, live_addresses: set[str]) -> None:
        """Closes the channels (and token-stream connections) to addresses no live worker
        has."""
        for address in [a for a in self._clients if a not in live_addresses]:
            await self._clients.pop(address).channel.close()
        for address in [a for a in self._streams if a not in live_addresses]:
            self._streams.pop(address).close()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.channel.close()
        self._clients.clear()
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()


def prefill_request(request: GenerationRequest, salt: bytes) -> worker_pb2.PrefillRequest:
    return worker_pb2.PrefillRequest(
        request_id=request.request_id, prompt_token_ids=request.prompt_token_ids,
        sampling=sampling_to_proto(request.sampling), model=request.model, hash_salt=salt)


def generate_request(request: GenerationRequest, salt: bytes,
                     handoff: worker_pb2.PrefillResponse | None) -> worker_pb2.GenerateRequest:
    """The decode call's message; after a remote prefill it continues from ``handoff``."""
    message = worker_pb2.GenerateRequest(
        request_id=request.request_id, prompt_token_ids=request.prompt_token_ids,
        sampling=sampling_to_proto(request.sampling), model=request.model, hash_salt=salt)
    if handoff is not None:
        message.first_token_id = handoff.first_token_id
        message.kv_handle.CopyFrom(handoff.kv_handle)
    return message


def resume_request(request: GenerationRequest, salt: bytes, produced: Sequence[int],
                   handoff: worker_pb2.PrefillResponse | None) -> worker_pb2.GenerateRequest:
    """The decode call that resumes a migrated stream on another worker: the prompt followed by
    the tokens already sent, for the tokens left of ``max_tokens`` with the same sampling. The
    worker detokenizes the new tokens with the tokens sent as their context (as after a remote
    prefill's first token), so their text continues the text already sent. After a remote
    prefill the worker loads the prompt's blocks from the store (``handoff``'s KV handle: they
    lead the longer prompt unchanged) and computes only the tokens sent.

    Under a structured output constraint the tokens sent go as ``generated_token_ids``
    instead: the worker replays them through the constraint as output (and takes them off
    max_tokens and min_tokens itself). Every other parameter (logprobs, logit_bias, ...)
    travels unchanged in the sampling."""
    message = worker_pb2.GenerateRequest(
        request_id=request.request_id, prompt_token_ids=request.prompt_token_ids,
        sampling=sampling_to_proto(request.sampling), model=request.model, hash_salt=salt)
    if request.sampling.structured_output is not None:
        message.generated_token_ids.extend(produced)
    else:
        message.prompt_token_ids.extend(produced)
        sampling = message.sampling
        if sampling.HasField("max_tokens"):
            sampling.max_tokens -= len(produced)
        if sampling.HasField("min_tokens"):
            sampling.min_tokens = max(0, sampling.min_tokens - len(produced))
    if handoff is not None:
        message.kv_handle.CopyFrom(handoff.kv_handle)
    return message
