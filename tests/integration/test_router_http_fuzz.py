"""Fuzz of the router's HTTP API (real uvicorn, real workers on the mock engine): mutated
bodies, wrong types, odd unicode, huge numbers, deep nesting, invalid JSON, wrong content
types, any method on any path, bodies around the size limit. Every reply is below 500, every
4xx is an OpenAI error object, a 200 stream ends with ``[DONE]`` and no error event, and a valid
request succeeds after each example. Budget and seed: ``tests/integration/fuzzing.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.integration.fuzzing import (
    FUZZ,
    encode_json,
    json_values,
    mutate,
    numbers,
    odd_text,
    outcome,
    with_lone_surrogate,
    wrong_values,
)
from tests.integration.system import InProcessSystem, start_system

MODEL = "SmolLM2-135M-Instruct"
LEASE_TTL_S = 10.0
"""Long: hypothesis generates and shrinks between examples with the event loop stopped, and
the in-process router's start loads its tokenizer (~1 s) on the loop the worker shares; past
its lease a worker is gone for good (issue 12, item 4) and every later call would be a 503."""
MAX_MODEL_LEN = 256
"""Small, so a fuzzed request without max_tokens generates a few hundred tokens at most."""
MAX_BODY_BYTES = 64 * 1024
"""Small, so bodies around the limit are quick to send and to tokenize."""
POSTS = ["/v1/chat/completions", "/v1/completions"]
GETS = ["/v1/models", "/health", "/metrics"]

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3}
COMPLETION = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 3}

sampling_fields: dict[str, st.SearchStrategy[Any]] = {
    name: numbers for name in ("max_tokens", "max_completion_tokens", "temperature", "top_p",
                               "top_k", "seed", "presence_penalty", "frequency_penalty", "n",
                               "best_of")
} | {
    "model": odd_text | st.just(""),
    "stream": st.booleans() | st.sampled_from(["true", "false", 1, 0, "yes"]),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": wrong_values}),
    "stop": odd_text | st.lists(odd_text, max_size=20),
    "user": odd_text,
    "ignore_eos": st.booleans() | wrong_values,
    "logprobs": st.booleans() | wrong_values,
}
message = mutate({"role": "user", "content": "Say hi."}, {
    "role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function",
                             "USER", ""]) | odd_text,
    "content": odd_text | st.lists(mutate({"type": "text", "text": "hi"},
                                          {"text": odd_text}), max_size=3),
})
chat_bodies = mutate(CHAT, sampling_fields | {
    "messages": st.lists(message | st.just(CHAT["messages"][0]), max_size=4)})
completion_bodies = mutate(COMPLETION, sampling_fields | {
    "prompt": odd_text | st.lists(odd_text, max_size=2)
    | st.lists(numbers, max_size=8) | st.lists(st.integers(0, 60_000), min_size=1, max_size=8),
    "echo": wrong_values, "suffix": wrong_values})
content_types = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "text/plain", "", "*/*",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "appl\xefcation/j\xf6on"])


@pytest.fixture(scope="module")
async def system(redis_url: str) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_url, decode_workers=1, decode_ms=0.5, lease_ttl_s=LEASE_TTL_S,
                                max_model_len=MAX_MODEL_LEN, max_body_bytes=MAX_BODY_BYTES)
    yield system
    await system.close()


@pytest.fixture(scope="module")
async def client(system: InProcessSystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
        yield client


def check_error(reply: httpx.Response) -> None:
    """The OpenAI error object, with a message that says something."""
    assert reply.headers["content-type"] == "application/json", reply.headers
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error


def check_reply(reply: httpx.Response) -> None:
    outcome(f"status {reply.status_code}")  # pytest --hypothesis-show-statistics
    if reply.status_code >= 400:
        outcome(f"error {reply.text[:40]}")
    assert reply.status_code < 500, (reply.status_code, reply.text[:2000])
    if reply.status_code >= 400:
        check_error(reply)
    elif reply.headers["content-type"].startswith("text/event-stream"):
        events = [block.removeprefix("data: ") for block in reply.text.split("\n\n") if block]
        assert events[-1] == "[DONE]", events[-3:]
        for payload in events[:-1]:
            assert "error" not in orjson.loads(payload), payload


async def post(client: httpx.AsyncClient, path: str, body: bytes,
               content_type: str = "application/json") -> None:
    reply = await client.post(path, content=body,
                              headers={"content-type": content_type.encode("latin-1")})
    check_reply(reply)
    await check_serving(client)


async def check_serving(client: httpx.AsyncClient) -> None:
    # ignore_eos: the mock samples uniformly over 49,152 ids, one of them EOS; over the ~2,000
    # checks of a run the first token was EOS about once in 25 runs (completion_tokens 1 != 3)
    reply = await client.post(POSTS[0], json=CHAT | {"ignore_eos": True})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == CHAT["max_tokens"]


@FUZZ
@given(body=chat_bodies, ascii_only=st.booleans())
@example(body=CHAT | {"seed": 2**63}, ascii_only=True)  # was a 500: past SamplingParams' int64
async def test_chat_bodies(client: httpx.AsyncClient, body: dict[str, Any],
                           ascii_only: bool) -> None:
    await post(client, POSTS[0], encode_json(body, ascii_only))


@FUZZ
@given(body=completion_bodies, ascii_only=st.booleans())
@example(body=COMPLETION | {"top_k": 2**31}, ascii_only=False)  # was a 500: past int32
async def test_completion_bodies(client: httpx.AsyncClient, body: dict[str, Any],
                                 ascii_only: bool) -> None:
    await post(client, POSTS[1], encode_json(body, ascii_only))


def truncated(body: dict[str, Any]) -> st.SearchStrategy[bytes]:
    raw = encode_json(body)
    return st.integers(0, len(raw) - 1).map(lambda cut: raw[:cut])


surrogate_bodies = (with_lone_surrogate(CHAT, "messages") | with_lone_surrogate(CHAT, "model")
                    | with_lone_surrogate(COMPLETION, "prompt")
                    | with_lone_surrogate(CHAT | {"user": "u", "stop": "s"}, "user")
                    | with_lone_surrogate(CHAT | {"stop": "s"}, "stop"))
raw_bodies = (st.binary(max_size=64) | truncated(CHAT) | truncated(COMPLETION)
              | st.builds(encode_json, surrogate_bodies, st.booleans())
              | json_values.map(encode_json)
              | st.sampled_from([b"", b"\xef\xbb\xbf" + encode_json(CHAT), b"NaN", b"1e999",
                                 b'{"model": NaN}', b"[" * 1100 + b"]" * 1100,
                                 b'{"a":' * 1100 + b"0" + b"}" * 1100,
                                 encode_json(CHAT).decode().encode("utf-16"),
                                 b"model=x&messages=y", b'{"model": "\\ud800"}']))


@FUZZ
@given(path=st.sampled_from(POSTS), body=raw_bodies, content_type=content_types)
async def test_raw_bodies(client: httpx.AsyncClient, path: str, body: bytes,
                          content_type: str) -> None:
    await post(client, path, body, content_type)


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
       path=st.sampled_from(POSTS + GETS + ["/", "/v1", "/v1/models/x", "/v2/completions",
                                            "/%00", "/%ff%fe", "/\u202e", "//v1//models"])
       | odd_text.map(lambda text: "/" + quote(text.encode("utf-8", "surrogatepass"))),
       body=st.binary(max_size=32), query=st.sampled_from(["", "?stream=true", "?a=%ff"]))
async def test_any_method_any_path(client: httpx.AsyncClient, method: str, path: str,
                                   body: bytes, query: str) -> None:
    reply = await client.request(method, path + query, content=body)
    assert reply.status_code < 500 or (path == "/health" and method == "GET"), reply.text
    if reply.status_code >= 400 and method != "HEAD":
        check_error(reply)
    await check_serving(client)


@pytest.mark.parametrize("size", [MAX_BODY_BYTES - 1, MAX_BODY_BYTES, MAX_BODY_BYTES + 1,
                                  4 * MAX_BODY_BYTES])
@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("chunked", [False, True])
async def test_bodies_around_the_size_limit(client: httpx.AsyncClient, size: int, path: str,
                                            chunked: bool) -> None:
    """A huge string (in the prompt or the message) filling the body to ``size`` bytes: 413
    past the limit, 400 (context length) below it; chunked or with a content length."""
    body = dict(CHAT if path == POSTS[0] else COMPLETION)
    field = "prompt" if path == POSTS[1] else "messages"

    def fill(text: str) -> None:
        body[field] = text if field == "prompt" else [{"role": "user", "content": text}]

    fill("")
    room = size - len(encode_json(body, ascii_only=False))
    fill(("\U0001f600 word " * size).encode()[:room].decode(errors="ignore"))
    raw = encode_json(body, ascii_only=False)
    raw += b" " * (size - len(raw))
    content = _chunks(raw) if chunked else raw
    reply = await client.post(path, content=content)
    check_reply(reply)
    assert reply.status_code == (413 if size > MAX_BODY_BYTES else 400), reply.text[:300]
    await check_serving(client)


async def _chunks(raw: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(raw), 8192):
        yield raw[start:start + 8192]
