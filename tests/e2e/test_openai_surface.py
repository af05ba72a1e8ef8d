"""The OpenAI surface beyond text through the official SDK and the real engine: JSON-schema
output that validates (streamed and not), forced function calls whose arguments validate,
``n`` choices, log probabilities with the greedy token on top, ``echo``, the completions
default of 16 tokens; each also through a disaggregated request (a prompt long enough for the
router to prefill it remotely, under a tenant of its own so nothing of it is cached), and
structured output continued by a decode worker from a prefill worker's first token."""

from __future__ import annotations

import json
import urllib.request
import uuid
from typing import Any

import grpc
import jsonschema
import openai
import pytest

from services.router.api.openai_auto_tools import DEFAULT_MODEL_TOOLS_TEMPLATE
from services.router.prompts import PromptBuilder
from tandem.hashing import hash_salt
from tandem.model import default_model_dir
from tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.e2e.conftest import MODEL, RunningSystem
from tests.e2e.test_disaggregation import english_text, worker

pytestmark = pytest.mark.e2e

PERSON = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
    "additionalProperties": False}}}
SHORT = "Describe a person as JSON with a name and an age."
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def client(running_system: RunningSystem) -> openai.OpenAI:
    return openai.OpenAI(base_url=running_system.openai_base_url, api_key="unused",
                         max_retries=0)


class Path:
    """A request's path through the fleet: aggregated (a short prompt, prefilled on the decode
    worker) or disaggregated (a long one under a fresh tenant: the router prefills it on the
    prefill worker; checked on the router's prefill-decision counter)."""

    def __init__(self, system: RunningSystem, remote: bool) -> None:
        self.system = system
        self.remote = remote
        self.before = 0.0

    def prompt(self, question: str) -> str:
        return f"{english_text()[:6000]}\n\n{question}" if self.remote else question

    def extra(self) -> dict[str, Any]:
        return {"user": f"e2e-surface-{uuid.uuid4().hex}"} if self.remote else {}

    def __enter__(self) -> Path:
        self.before = remote_prefills(self.system)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            assert (remote_prefills(self.system) > self.before) == self.remote


def remote_prefills(system: RunningSystem) -> float:
    with urllib.request.urlopen(f"{system.router_http_url}/metrics", timeout=5) as reply:
        return sum(float(line.rsplit(" ", 1)[1]) for line in reply.read().decode().splitlines()
                   if line.startswith("tandem_router_prefill_decisions")
                   and 'tandem_prefill_location="remote"' in line)


@pytest.fixture(params=["aggregated", "disaggregated"])
def path(request: pytest.FixtureRequest, running_system: RunningSystem) -> Path:
    return Path(running_system, request.param == "disaggregated")


def chat(client: openai.OpenAI, path: Path, question: str, **params: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": path.prompt(question)}],
        extra_body=path.extra(), **{"temperature": 0, **params})


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_validates(client: openai.OpenAI, path: Path, stream: bool) -> None:
    with path:
        reply = chat(client, path, SHORT, max_tokens=MAX_TOKENS, stream=stream,
                     response_format={"type": "json_schema", "json_schema": {
                         "name": "person", "schema": PERSON, "strict": True}})
        if stream:
            text = "".join(chunk.choices[0].delta.content or "" for chunk in reply
                           if chunk.choices)
        else:
            text = reply.choices[0].message.content
    jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_function_call_returns_arguments_that_validate(
        client: openai.OpenAI, path: Path, stream: bool) -> None:
    with path:
        reply = chat(client, path, "What is the weather in Paris?", max_tokens=MAX_TOKENS,
                     tools=[WEATHER], stream=stream,
                     tool_choice={"type": "function", "function": {"name": "get_weather"}})
        if stream:
            chunks = [chunk.choices[0] for chunk in reply if chunk.choices]
            deltas = [call for choice in chunks for call in choice.delta.tool_calls or []]
            assert deltas[0].id and deltas[0].function.name == "get_weather"
            arguments = "".join(call.function.arguments or "" for call in deltas)
            finish = chunks[-1].finish_reason
        else:
            choice = reply.choices[0]
            assert choice.message.content is None
            (call,) = choice.message.tool_calls
            assert call.type == "function" and call.function.name == "get_weather"
            arguments, finish = call.function.arguments, choice.finish_reason
    assert finish == "tool_calls"
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])


AUTO_QUESTION = "What is the weather in Paris?"
AUTO_OUTCOME = "content"
"""What the greedy default model does with ``tool_choice: "auto"`` and AUTO_QUESTION (observed:
it answers in prose; a call would read ``tool_calls``)."""


def raw_auto_text(client: openai.OpenAI, path: Path) -> str:
    """The model's own text for the auto prompt: the same tokens (the shipped tools template)
    through /v1/completions, unparsed."""
    prompts = PromptBuilder(str(default_model_dir()), 4096)
    tokens = prompts.chat([{"role": "user", "content": path.prompt(AUTO_QUESTION)}], [WEATHER],
                          DEFAULT_MODEL_TOOLS_TEMPLATE.read_text())
    reply = client.completions.create(model=MODEL, prompt=tokens, temperature=0,
                                      max_tokens=MAX_TOKENS, extra_body=path.extra())
    return reply.choices[0].text


@pytest.mark.parametrize("stream", [False, True])
def test_auto_answers_with_what_the_model_wrote(client: openai.OpenAI, path: Path,
                                               stream: bool) -> None:
    """The outcome is the greedy model's (deterministic): the exact kind observed, and
    consistent with the raw text vLLM's hermes parser read."""
    with path:
        reply = chat(client, path, AUTO_QUESTION, max_tokens=MAX_TOKENS, tools=[WEATHER],
                     stream=stream)
        if stream:
            chunks = [chunk.choices[0] for chunk in reply if chunk.choices]
            content = "".join(choice.delta.content or "" for choice in chunks)
            calls = [call for choice in chunks for call in choice.delta.tool_calls or []]
            finish = chunks[-1].finish_reason
            names = [call.function.name for call in calls if call.function.name]
            arguments = ["".join(call.function.arguments or "" for call in calls)] if calls \
                else []
        else:
            choice = reply.choices[0]
            content = choice.message.content or ""
            calls = list(choice.message.tool_calls or [])
            finish = choice.finish_reason
            names = [call.function.name for call in calls]
            arguments = [call.function.arguments for call in calls]
    raw = raw_auto_text(client, path)
    outcome = "tool_calls" if calls else "content"
    assert outcome == AUTO_OUTCOME, (raw, content, calls)
    if outcome == "content":
        assert "<tool_call>" not in raw
        assert content == raw and finish in ("stop", "length")
    else:
        assert "<tool_call>" in raw and finish == "tool_calls"
        assert names == ["get_weather"] * len(arguments)
        for text in arguments:
            jsonschema.validate(json.loads(text), WEATHER["function"]["parameters"])


def test_a_required_tool_call_names_one_of_the_tools(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Rome?"}],
        temperature=0, max_tokens=MAX_TOKENS, tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False)
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    assert reply.choices[0].finish_reason == "tool_calls"


def test_n_returns_that_many_choices(client: openai.OpenAI, path: Path) -> None:
    with path:
        reply = chat(client, path, "Name a colour.", max_tokens=6, n=3, temperature=1.0,
                     seed=11, logprobs=True)
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    assert reply.usage.completion_tokens == sum(  # usage counts every choice
        len(choice.logprobs.content) for choice in reply.choices)


def test_logprobs_one_entry_per_token_with_the_greedy_token_on_top(
        client: openai.OpenAI, path: Path) -> None:
    with path:
        reply = chat(client, path, "Name three fruits.", max_tokens=8, logprobs=True,
                     top_logprobs=3)
    choice = reply.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    assert "".join(entry.token for entry in entries).startswith(choice.message.content)
    for entry in entries:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy: the sampled is the top
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)


def test_completions_logprobs_echo_and_the_default_of_16(
        client: openai.OpenAI, path: Path) -> None:
    prompt = path.prompt("Once upon a time")
    with path:
        reply = client.completions.create(model=MODEL, prompt=prompt, temperature=0,
                                          echo=True, extra_body={"ignore_eos": True,
                                                                 **path.extra()})
    assert reply.usage.completion_tokens == 16
    assert reply.choices[0].text.startswith(prompt)
    assert len(reply.choices[0].text) > len(prompt)
    logprobs = client.completions.create(model=MODEL, prompt="Once upon a time", logprobs=2,
                                         max_tokens=5, temperature=0).choices[0].logprobs
    assert len(logprobs.tokens) == 5 and len(logprobs.top_logprobs) == 5
    assert all(max(top, key=top.get) == token
               for token, top in zip(logprobs.tokens, logprobs.top_logprobs, strict=True))


@pytest.mark.parametrize("stream", [False, True])
def test_echo_with_logprobs_returns_the_prompts_too(client: openai.OpenAI, path: Path,
                                                    stream: bool) -> None:
    """The prompt's tokens lead, the first with a null log probability (as vLLM and OpenAI
    answer), then the completion's: one entry per token, the greedy token on top."""
    prompt = path.prompt("Once upon a time")
    prompt_tokens = len(PromptBuilder(str(default_model_dir()), 4096).completion(prompt))
    with path:
        reply = client.completions.create(model=MODEL, prompt=prompt, temperature=0, echo=True,
                                          logprobs=1, max_tokens=4, stream=stream,
                                          extra_body={"ignore_eos": True, **path.extra()})
        if stream:
            pieces = [chunk.choices[0] for chunk in reply if chunk.choices]
            text = "".join(piece.text for piece in pieces)
            tokens = [t for piece in pieces if piece.logprobs for t in piece.logprobs.tokens]
            values = [v for piece in pieces if piece.logprobs
                      for v in piece.logprobs.token_logprobs]
            tops = [t for piece in pieces if piece.logprobs for t in piece.logprobs.top_logprobs]
        else:
            choice = reply.choices[0]
            text, tokens = choice.text, choice.logprobs.tokens
            values, tops = choice.logprobs.token_logprobs, choice.logprobs.top_logprobs
    assert text.startswith(prompt)
    assert len(tokens) == len(values) == len(tops) == prompt_tokens + 4
    assert values[0] is None and tops[0] is None
    assert all(isinstance(value, float) and value <= 0 for value in values[1:])
    assert "".join(tokens[prompt_tokens:]) == text[len(prompt):]
    assert all(max(top, key=top.get) == token for token, top in
               zip(tokens[prompt_tokens:], tops[prompt_tokens:], strict=True))


async def test_the_decode_worker_continues_the_prefills_structured_output(
        running_system: RunningSystem) -> None:
    """Worker to worker: the prefill worker's first token (with its logprobs) under a JSON
    schema, then the decode worker continues the same constraint from it over the stored
    blocks: the whole text validates. So does a stream resumed from its first 4 tokens (what
    the router sends a migration's new worker). Both load every prompt token but the last from
    the stored blocks, the partial tail included: the replayed first token is output, not
    prompt, so the decode request's last prompt token is the prefill's last one, which the
    engine computes to replay the first token over it."""
    salt = hash_salt(MODEL, "", "e2e-structured-handoff")
    prompts = PromptBuilder(str(default_model_dir()), 4096)
    # a whole 128-token block and a partial tail
    prompt = prompts.chat([{"role": "user", "content": f"{english_text()[:700]}\n\n{SHORT}"}])
    assert len(prompt) > 128 and len(prompt) % 128
    sampling = common_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=1)
    sampling.structured_output.json_schema = json.dumps(PERSON)
    async with grpc.aio.insecure_channel(worker(running_system, "prefill-0").address) as pre, \
            grpc.aio.insecure_channel(worker(running_system, "decode-0").address) as dec:
        handoff = await worker_pb2_grpc.PrefillServiceStub(pre).Prefill(
            worker_pb2.PrefillRequest(request_id="so-pre", prompt_token_ids=prompt,
                                      sampling=sampling, model=MODEL, hash_salt=salt))
        assert handoff.first_token_logprobs.sampled.token_id == handoff.first_token_id
        text = handoff.first_token_text
        tokens = [handoff.first_token_id]
        usage: list[int] = []  # the decode worker's cached tokens, per stream
        decode = worker_pb2_grpc.DecodeServiceStub(dec)
        async for response in decode.Generate(worker_pb2.GenerateRequest(
                request_id="so-dec", prompt_token_ids=prompt, sampling=sampling, model=MODEL,
                first_token_id=handoff.first_token_id, kv_handle=handoff.kv_handle,
                hash_salt=salt)):
            text += response.delta.text
            tokens += response.delta.token_ids
            assert len(response.delta.logprobs) == len(response.delta.token_ids)
            if response.HasField("usage"):
                usage.append(response.usage.cached_tokens)
        assert usage == [len(prompt) - 1]  # the stored blocks loaded, not recomputed
        jsonschema.validate(json.loads(text), PERSON)
        # A migration of the same stream after 4 tokens: the router sends them as generated
        # tokens; the worker replays them through the constraint and goes on after them.
        sent = tokens[:4]
        resumed = ""
        async for response in decode.Generate(worker_pb2.GenerateRequest(
                request_id="so-resume", prompt_token_ids=prompt, sampling=sampling,
                model=MODEL, generated_token_ids=sent, kv_handle=handoff.kv_handle,
                hash_salt=salt)):
            resumed += response.delta.text
            if response.HasField("usage"):
                usage.append(response.usage.cached_tokens)
        assert usage[1:] == [len(prompt) - 1]
    jsonschema.validate(json.loads(prompts.decode(sent) + resumed), PERSON)
