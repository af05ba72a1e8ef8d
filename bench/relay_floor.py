"""The floor under any Python router: the least an HTTP → gRPC streaming relay can do.

    python -m bench.relay_floor --port 8100 --worker 127.0.0.1:50051 [--worker ...]
        [--transport grpc|token-stream]

For every ``POST`` it receives, it makes one ``DecodeService.Generate`` call (over grpc.aio, or
over the worker's framed token stream, coalescing what waits as the router does:
``--worker host:stream_port``) with a prompt
tokenized once at start (no chat template, no tokenizer, no routing, no index, no telemetry, no
validation) to the next worker in turn, and writes one SSE chunk per worker message over a
chunked HTTP/1.1 response, then a usage chunk and ``[DONE]``: the same bytes on the wire that the
router's stream carries, so the benchmark's load generator reads both alike. It is not a
product path: ``bench.router_overhead`` measures its CPU per request under the same load as the
router's, so the router's figure can be read as "the floor of grpc.aio + socket writes, plus
what the router's own work adds".
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import socket
from collections.abc import AsyncIterator, Callable

import grpc
import httptools
import orjson
import uvloop

from tandem.protocol import coalesced
from tandem.service.groups import GrpcSettings
from tandem.tokenstream.client import TokenStreamClient
from tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc

Caller = Callable[[worker_pb2.GenerateRequest], AsyncIterator[worker_pb2.GenerateResponse]]

_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
         b"transfer-encoding: chunked\r\n\r\n")
_DONE = b"data: [DONE]\n\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def generate_request(request_id: str, prompt: list[int], max_tokens: int
                     ) -> worker_pb2.GenerateRequest:
    """The relay's decode call: the prompt tokenized once, greedy, exactly ``max_tokens``."""
    return worker_pb2.GenerateRequest(
        request_id=request_id, prompt_token_ids=prompt, model="SmolLM2-135M-Instruct",
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0,
                                           ignore_eos=True))


class Relay(asyncio.Protocol):
    """One HTTP/1.1 connection; requests on it are served one after another."""

    def __init__(self, callers: list[Caller], turn: itertools.count[int], prompt: list[int],
                 max_tokens: int) -> None:
        self.callers = callers
        self.turn = turn
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport  # type: ignore[assignment]  # uvloop's own transport class

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        asyncio.get_running_loop().create_task(self.serve())

    async def serve(self) -> None:
        transport = self.transport
        assert transport is not None
        number = next(self.turn)
        call = self.callers[number % len(self.callers)]
        request = generate_request(f"floor-{number}", self.prompt, self.max_tokens)
        transport.write(_HEAD)
        usage = common_pb2.Usage()
        async for response in call(request):
            transport.write(_chunk(b'data: {"choices":[{"index":0,"delta":{"content":'
                                   + orjson.dumps(response.delta.text) + b"}}]}\n\n"))
            if response.HasField("usage"):
                usage = response.usage
        transport.write(_chunk(b'data: {"choices":[],"usage":' + orjson.dumps({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens}) + b"}\n\n" + _DONE) + b"0\r\n\r\n")
        if not self.keep_alive:
            transport.close()


def callers(transport: str, workers: list[str]) -> list[Caller]:
    if transport == "grpc":
        return [worker_pb2_grpc.DecodeServiceStub(grpc.aio.insecure_channel(address)).Generate
                for address in workers]
    clients = [TokenStreamClient(host, int(port), GrpcSettings(), 256)
               for host, port in (address.rsplit(":", 1) for address in workers)]
    return [functools.partial(client.call, response_type=worker_pb2.GenerateResponse,
                              timeout=None, coalesce=coalesced) for client in clients]


async def serve(port: int, transport: str, workers: list[str], prompt: list[int],
                max_tokens: int) -> None:
    calls = callers(transport, workers)
    turn = itertools.count()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Relay(calls, turn, prompt, max_tokens),
                                      "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--worker", action="append", required=True,
                        help="decode worker address (its token-stream port with --transport "
                             "token-stream)")
    parser.add_argument("--transport", choices=("grpc", "token-stream"), default="grpc")
    parser.add_argument("--prompt-tokens", type=lambda t: [int(x) for x in t.split(",")],
                        required=True, help="comma-separated prompt token ids")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--log-level", default="warning", help=argparse.SUPPRESS)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.transport, args.worker, args.prompt_tokens,
                     args.max_tokens))


if __name__ == "__main__":
    main()
