"""The interface every engine adapter implements (``vllm``, ``mock``)."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal

KVEventSink = Callable[[str, list[bytes], bytes], object]
"""Receives (event type, block hashes, parent hash) for every KV cache change."""


StructuredKind = Literal["json_schema", "json_object", "regex", "choice", "grammar"]


@dataclasses.dataclass(frozen=True)
class StructuredOutput:
    """A constraint on the generated text (mirrors tandem.v1.StructuredOutput)."""

    kind: StructuredKind
    value: str | tuple[str, ...] = ""
    """The schema (serialized JSON), regex or grammar; the choices of ``choice``; empty for
    ``json_object``."""


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Sampling parameters, engine-neutral (mirrors tandem.v1.SamplingParams)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_tokens: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs, ordered by token id."""
    logprobs: int | None = None
    """Alternatives per token whose log probabilities are returned (0: the sampled token's
    only); None: no log probabilities."""
    structured_output: StructuredOutput | None = None
    prompt_logprobs: int | None = None
    """Alternatives per prompt token whose log probabilities are returned once, for every
    prompt token after the first (completions' ``echo`` with ``logprobs``); None: none."""


@dataclasses.dataclass(frozen=True, slots=True)
class Logprob:
    """One token and its log probability."""

    token_id: int
    token: str
    logprob: float


@dataclasses.dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """The log probabilities of one generated token: the sampled one and the most likely."""

    sampled: Logprob
    top: tuple[Logprob, ...] = ()


@dataclasses.dataclass(frozen=True)
class EngineRequest:
    """One generation request, already tokenized."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: Sampling
    trace_headers: Mapping[str, str] | None = None
    kv_transfer: Mapping[str, Any] | None = None
    """What the engine's KV connector needs for this request (block hashes of a KV handle,
    whether to save the prompt's blocks); None: the engine's defaults."""
    forced_output: tuple[int, ...] = ()
    """Output tokens generated before (by a prefill worker, by a lost decode worker) that the
    engine produces first, through the structured output constraint, without returning them:
    the constraint then continues where it stood. Only with ``sampling.structured_output``."""


@dataclasses.dataclass(frozen=True)
class EngineOutput:
    """Tokens produced since the previous output of the same request."""

    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    """None while running, then "stop", "length", "abort" or "error"."""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens served from the prefix cache (set on the first output)."""
    logprobs: tuple[TokenLogprobs, ...] = ()
    """One entry per token of ``token_ids`` when the sampling asked for log probabilities."""
    prompt_logprobs: tuple[TokenLogprobs, ...] = ()
    """On one output (the first yielded) when the sampling asked for ``prompt_logprobs``: one
    entry per prompt token after the first."""


@dataclasses.dataclass(frozen=True)
class EngineLoad:
    """What the engine carries now."""

    running: int
    waiting: int
    used_blocks: int
    total_blocks: int
    block_size: int
    kvstore_connected: bool | None = None
    """Whether the engine reaches its KV store now (None: it has none, or cannot tell)."""


class Engine(abc.ABC):
    """An inference engine behind one asyncio interface.

    Cancelling the task that iterates ``generate`` (or closing the iterator) must abort the
    request in the engine and free its slot and blocks.
    """

    fingerprint: str
    """Identifies the engine in every response (``system_fingerprint``)."""
    block_size: int
    """Tokens per KV block."""
    max_model_len: int
    """Maximum prompt + completion tokens."""
    max_num_seqs: int = 0
    """Most requests the engine runs at once (0: not reported)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Loads the model; returns when the engine can serve."""

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Streams the request's outputs; the last one has a finish_reason."""

    def detokenize(self, context: Sequence[int], token_ids: Sequence[int]) -> str:
        """The text of ``token_ids`` as the engine streams it after ``context`` (the prompt
        before them): what a migrated stream's lost worker had produced."""
        raise NotImplementedError(f"{type(self).__name__} cannot detokenize")

    @abc.abstractmethod
    def load(self) -> EngineLoad:
        """Current load (cheap: called on every routing-state poll)."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Stops the engine and frees its resources."""

    def set_kv_event_sink(self, sink: KVEventSink | None) -> bool:
        """Sends the engine's KV events (stored/removed/cleared) to ``sink``; returns False
        when the engine does not report them."""
        return False

    def dump_kv_state(self) -> list[bytes] | None:
        """Every block on device, parents before children; None when not reported."""
        return None

    def unsupported(self, sampling: Sampling) -> str | None:
        """The OpenAI parameter of ``sampling`` this engine cannot honour (the worker refuses
        the request naming it), or None when it serves all of it."""
        return None
