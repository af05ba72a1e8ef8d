"""Load test users for tandem.

    locust -f tests/load/locustfile.py --host http://127.0.0.1:8000            # web UI
    python tests/load/run_locust.py --url http://127.0.0.1:8000 --run-time 60s  # headless + plot

``OpenAIStreamingUser`` streams ``POST /v1/chat/completions`` (SSE). Locust's own response time
for a streamed request ends when the headers arrive, so each request also fires its own events:

- ``TTFT  chat.completions``: time to the first generated text,
- ``STREAM chat.completions``: time to the end of the stream (``data: [DONE]``),
- ``ITL   chat.completions``: mean time between tokens after the first (once per request).

``GrpcChatUser`` does the same through ``RouterService.Chat`` (``TTFT grpc.Chat``, ``STREAM
grpc.Chat``). Prompts share a system prompt and a few documents, so KV-aware routing and prefix
caching have something to find. Times are in milliseconds; the "response length" of a STREAM
event is the number of generated tokens.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import HttpUser, User, between, events, task
from locust.env import Environment

# gRPC's C core must cooperate with gevent's event loop before any channel exists.
grpc_gevent.init_gevent()

from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc  # noqa: E402

SYSTEM_PROMPT = (
    "You are a concise assistant for a shipping company. Answer in at most three sentences, "
    "use plain words, and never invent tracking numbers."
)
DOCUMENTS = (
    "Parcels under 2 kg ship the same day when ordered before noon; heavier parcels the next "
    "working day. Delivery takes one to three days inside the country.",
    "Returns are free within 30 days. The customer prints a label from the website and drops "
    "the parcel at any partner shop; refunds arrive within five working days.",
    "Fragile items are packed in double boxes with paper padding. Liquids must be sealed in a "
    "plastic bag. Batteries ship by road only.",
)
QUESTIONS = (
    "How long does delivery take?",
    "Can I return a parcel after two weeks?",
    "How are glass vases packed?",
    "Can I send a laptop battery by air?",
    "When will my refund arrive?",
    "Is same-day shipping possible for a 5 kg parcel?",
)


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("tandem")
    group.add_argument("--tandem-model", default="", env_var="TANDEM_LOAD_MODEL",
                       help="model name (default: the first one /v1/models lists)")
    group.add_argument("--tandem-max-tokens", type=int, default=64,
                       env_var="TANDEM_LOAD_MAX_TOKENS", help="tokens to generate per request")
    group.add_argument("--tandem-temperature", type=float, default=0.0,
                       env_var="TANDEM_LOAD_TEMPERATURE", help="sampling temperature")
    group.add_argument("--tandem-grpc-address", default="", env_var="TANDEM_LOAD_GRPC_ADDRESS",
                       help="RouterService address (default: --host's hostname, port 50050)")
    group.add_argument("--tandem-timeout", type=float, default=300.0,
                       env_var="TANDEM_LOAD_TIMEOUT", help="deadline of one request, seconds")


def conversation(rng: random.Random) -> list[dict[str, str]]:
    document = rng.choice(DOCUMENTS)
    question = rng.choice(QUESTIONS)
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{document}\n\nQuestion: {question}"},
    ]


def fire(environment: Environment, kind: str, name: str, started: float, length: int = 0,
         exception: BaseException | None = None, elapsed_ms: float | None = None) -> None:
    environment.events.request.fire(
        request_type=kind,
        name=name,
        response_time=elapsed_ms if elapsed_ms is not None else (time.perf_counter() - started)
        * 1000,
        response_length=length,
        exception=exception,
        context={},
    )


class StreamError(Exception):
    """A stream that ended without a finish reason, or with an error event."""


class OpenAIStreamingUser(HttpUser):
    """Streams chat completions through the OpenAI-compatible HTTP API."""

    wait_time = between(0.5, 2.0)
    weight = 3
    model = ""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.max_tokens = options.tandem_max_tokens if options else 64
        self.temperature = options.tandem_temperature if options else 0.0
        self.timeout = options.tandem_timeout if options else 300.0
        self.model = (options.tandem_model if options else "") or self.first_model()
        self.rng = random.Random()

    def first_model(self) -> str:
        with self.client.get("/v1/models", name="GET /v1/models", catch_response=True) as reply:
            models = reply.json().get("data", []) if reply.ok else []
            if not models:
                reply.failure("no model served")
                raise StreamError("the router serves no model")
            return str(models[0]["id"])

    @task
    def chat_stream(self) -> None:
        body = {
            "model": self.model,
            "messages": conversation(self.rng),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        name = "chat.completions"
        started = time.perf_counter()
        first_token: float | None = None
        tokens = 0
        chunks_with_text = 0
        finished = False
        with self.client.post("/v1/chat/completions", json=body, stream=True,
                              catch_response=True, timeout=self.timeout,
                              name="POST /v1/chat/completions (headers)") as reply:
            try:
                if reply.status_code != 200:
                    raise StreamError(f"HTTP {reply.status_code}: {reply.text[:200]}")
                for raw in reply.iter_lines():
                    line = raw.decode() if isinstance(raw, bytes) else raw
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: "):]
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        raise StreamError(str(event["error"]))
                    for choice in event.get("choices", []):
                        if choice.get("delta", {}).get("content"):
                            chunks_with_text += 1
                            if first_token is None:
                                first_token = time.perf_counter()
                                fire(self.environment, "TTFT", name, started)
                        if choice.get("finish_reason"):
                            finished = True
                    if event.get("usage"):
                        tokens = int(event["usage"].get("completion_tokens", 0))
                if not finished:
                    raise StreamError("stream ended without a finish reason")
            except Exception as error:  # every failure is reported to locust
                reply.failure(error)
                fire(self.environment, "STREAM", name, started, tokens, error)
                return
            reply.success()
        ended = time.perf_counter()
        tokens = tokens or chunks_with_text
        fire(self.environment, "STREAM", name, started, tokens)
        if first_token is not None and tokens > 1:
            fire(self.environment, "ITL", name, started, tokens,
                 elapsed_ms=(ended - first_token) * 1000 / (tokens - 1))


class GrpcChatUser(User):
    """Streams chat generations through RouterService.Chat (gRPC)."""

    wait_time = between(0.5, 2.0)
    weight = 1

    def on_start(self) -> None:
        options = self.environment.parsed_options
        address = options.tandem_grpc_address if options else ""
        if not address:
            host = (self.host or "http://127.0.0.1:8000").split("://", 1)[-1]
            address = host.split("/", 1)[0].rsplit(":", 1)[0] + ":50050"
        self.max_tokens = options.tandem_max_tokens if options else 64
        self.temperature = options.tandem_temperature if options else 0.0
        self.timeout = options.tandem_timeout if options else 300.0
        self.channel = grpc.insecure_channel(address)
        self.stub = router_pb2_grpc.RouterServiceStub(self.channel)
        self.model = options.tandem_model if options else ""
        if not self.model:
            models = self.stub.ListModels(router_pb2.ListModelsRequest(), timeout=30).models
            if not models:
                raise StreamError("the router serves no model")
            self.model = models[0].id
        self.rng = random.Random()

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def chat_stream(self) -> None:
        request = router_pb2.ChatRequest(
            model=self.model,
            messages=[router_pb2.ChatMessage(**m) for m in conversation(self.rng)],
            sampling=common_pb2.SamplingParams(max_tokens=self.max_tokens,
                                               temperature=self.temperature),
        )
        name = "grpc.Chat"
        started = time.perf_counter()
        first_token: float | None = None
        tokens = 0
        try:
            finish = common_pb2.FINISH_REASON_UNSPECIFIED
            for reply in self.stub.Chat(request, timeout=self.timeout):
                if reply.delta.token_ids:
                    tokens += len(reply.delta.token_ids)
                    if first_token is None:
                        first_token = time.perf_counter()
                        fire(self.environment, "TTFT", name, started)
                if reply.finish_reason:
                    finish = reply.finish_reason
            if finish in (common_pb2.FINISH_REASON_ABORT, common_pb2.FINISH_REASON_ERROR,
                          common_pb2.FINISH_REASON_UNSPECIFIED):
                raise StreamError(f"finish reason {common_pb2.FinishReason.Name(finish)}")
        except (grpc.RpcError, StreamError) as error:
            fire(self.environment, "STREAM", name, started, tokens, error)
            return
        ended = time.perf_counter()
        fire(self.environment, "STREAM", name, started, tokens)
        if first_token is not None and tokens > 1:
            fire(self.environment, "ITL", name, started, tokens,
                 elapsed_ms=(ended - first_token) * 1000 / (tokens - 1))
