"""The choices of one OpenAI response, assembled from their deltas: text (after an echoed
prompt), log probabilities in each endpoint's shape, tool calls read from a structured output,
finish reasons and the usage of all choices. Streamed: the chunks of each delta; whole: the
response body. Transport-free (bytes in, bytes out)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import orjson

from services.router.api.openai_auto_tools import ToolReader, ToolReaders
from services.router.api.openai_format import FINISH_NAMES, ChunkWriter, usage_dict
from services.router.api.openai_tools import (
    ToolCall,
    ToolPlan,
    call_id,
    partial_calls,
    read_calls,
)
from services.router.core.request import Delta
from tandem.v1 import common_pb2

LOWEST_LOGPROB = -9999.0
"""What a token the sampler could not pick (-inf) is reported as (OpenAI's and vLLM's value;
JSON has no infinity)."""


@dataclasses.dataclass(frozen=True)
class Shape:
    """What a response carries besides its text."""

    chat: bool
    logprobs: bool = False
    tools: ToolPlan | None = None
    echo: str = ""
    """The prompt, at the head of every choice's text (completions' ``echo``)."""
    auto: ToolReaders | None = None
    """``tool_choice: "auto"``: vLLM's parser reads each choice's calls."""
    echo_first: str | None = None
    """``echo`` with ``logprobs``: the prompt's first token (it has no log probability; the
    others' come with a delta: ``prompt_logprobs``)."""

    @property
    def plain(self) -> bool:
        """Text only: a stream's chunks take the writer's fast path."""
        return not (self.logprobs or self.tools or self.echo)


@dataclasses.dataclass
class _Choice:
    parts: list[str] = dataclasses.field(default_factory=list)
    logprobs: list[Any] = dataclasses.field(default_factory=list)
    offset: int = 0
    """Characters of the choice's text so far (completions' ``text_offset``)."""
    call_id: str = ""
    """The named tool call's id, once its first chunk went out."""
    last: Delta | None = None
    reader: ToolReader | None = None
    """``auto``: the parser reading this choice's stream."""
    sent: list[str] = dataclasses.field(default_factory=list)
    """``required``, streamed: each call's arguments sent so far."""
    prompt: Sequence[common_pb2.TokenLogprobs] | None = None
    """``echo_first``: the prompt's log probabilities, once a delta brought them."""
    held: list[Delta] = dataclasses.field(default_factory=list)
    """``echo_first``, streamed: deltas held until the prompt's log probabilities come (the
    echo's chunk carries them)."""


class Choices:
    """The ``n`` choices of one response."""

    def __init__(self, shape: Shape, n: int) -> None:
        self.shape = shape
        self.choices = [_Choice(offset=len(shape.echo)) for _ in range(n)]

    # -- whole responses --------------------------------------------------------------------

    def add(self, index: int, delta: Delta) -> None:
        choice = self.choices[index]
        choice.parts.append(delta.text)
        choice.logprobs.extend(delta.logprobs)
        if delta.prompt_logprobs:
            choice.prompt = delta.prompt_logprobs
        choice.last = delta

    def response(self, request_id: str, model: str, created: int) -> bytes:
        shape = self.shape
        bodies = []
        for index, choice in enumerate(self.choices):
            text = "".join(choice.parts)
            finish = self._finish(choice)
            logprobs = self._logprobs(choice, choice.logprobs) if shape.logprobs else None
            if shape.echo_first is not None and logprobs is not None:
                logprobs = _joined_logprobs(self._prompt_logprobs(choice.prompt or ()), logprobs)
            if not shape.chat:
                bodies.append({"index": index, "text": shape.echo + text,
                               "logprobs": logprobs, "finish_reason": finish})
                continue
            content: str | None = text
            calls = None
            if shape.auto is not None:  # the content before the calls, if any
                content, calls = shape.auto.reader().whole(text)
            elif shape.tools is not None:
                calls = read_calls(shape.tools, text)
                content = None if calls is not None else text
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls is not None:
                message["tool_calls"] = calls
                finish = "tool_calls" if finish == "stop" else finish
            bodies.append({"index": index, "message": message, "logprobs": logprobs,
                           "finish_reason": finish})
        return orjson.dumps({
            "id": request_id, "object": "chat.completion" if shape.chat else "text_completion",
            "created": created, "model": model, "system_fingerprint": self.engine or None,
            "choices": bodies, "usage": self.usage()})

    # -- streams ----------------------------------------------------------------------------

    def chunk(self, writer: ChunkWriter, index: int, delta: Delta) -> bytes:
        """The SSE chunk(s) of one delta of choice ``index`` (empty when it carries nothing
        to send yet)."""
        choice = self.choices[index]
        if self.shape.echo_first is not None and choice.prompt is None:
            if not delta.prompt_logprobs and not delta.finish_reason:
                choice.held.append(delta)  # the echo waits for the prompt's logprobs
                return b""
            delta = _joined_deltas([*choice.held, delta])
            choice.held = []
            choice.prompt = delta.prompt_logprobs
        first = choice.last is None
        choice.last = delta
        reason = delta.finish_reason
        finish = FINISH_NAMES[reason] if reason else None
        shape = self.shape
        if shape.plain and index == 0 and len(self.choices) == 1:
            if delta.text or finish or not shape.chat:
                return writer.chunk(delta.text, finish)
            return b""
        body = b""
        text = delta.text
        if first and shape.echo:
            text = shape.echo + text
        logprobs = self._logprobs(choice, delta.logprobs) if shape.logprobs else None
        if first and shape.echo_first is not None and logprobs is not None:
            logprobs = _joined_logprobs(self._prompt_logprobs(choice.prompt or ()), logprobs)
        if shape.chat and first and index > 0:  # every choice opens with its role
            body += writer.choice_chunk(index, {"role": "assistant", "content": ""}, None)
        if shape.tools is not None:
            return body + self._tool_chunk(writer, index, choice, text, finish, logprobs)
        if not shape.chat:
            return body + writer.choice_chunk(index, None, finish, logprobs, text)
        if text or finish or logprobs:
            body += writer.choice_chunk(index, {"content": text} if text else {}, finish,
                                        logprobs)
        return body

    def _tool_chunk(self, writer: ChunkWriter, index: int, choice: _Choice, text: str,
                    finish: str | None, logprobs: dict[str, Any] | None) -> bytes:
        delta, finish = self.tool_delta(index, text, finish)
        if not delta and not finish and not logprobs:
            return b""
        return writer.choice_chunk(index, delta, finish, logprobs)

    def tool_delta(self, index: int, text: str, finish: str | None
                   ) -> tuple[dict[str, Any], str | None]:
        """The chat delta (``content``, ``tool_calls``) of a piece of choice ``index``'s
        output and its finish reason (``tool_calls`` when it called one): ``auto``'s as vLLM's
        parser reads them, a named function's arguments as they are generated, ``required``'s
        calls (a JSON array to read whole) together when the choice finishes."""
        plan = self.shape.tools
        assert plan is not None
        choice = self.choices[index]
        if self.shape.auto is not None:
            if choice.reader is None:
                choice.reader = self.shape.auto.reader()
            delta = choice.reader.feed(text, finish is not None)
            return delta, "tool_calls" if finish == "stop" and choice.reader.called else finish
        if plan.named is not None:
            if finish == "stop":
                finish = "tool_calls"
            if not text:
                return {}, finish
            call: ToolCall = {"index": 0, "function": {"arguments": text}}
            if not choice.call_id:  # the call's first chunk names it
                choice.call_id = call_id()
                call = {"index": 0, "id": choice.call_id, "type": "function",
                        "function": {"name": plan.named, "arguments": text}}
            return {"tool_calls": [call]}, finish
        choice.parts.append(text)
        whole = "".join(choice.parts)
        pieces: list[ToolCall] = []
        for position, (name, arguments) in enumerate(partial_calls(whole)):
            if position == len(choice.sent):  # a call's first piece names it
                if name is None:
                    break
                choice.sent.append("")
                pieces.append({"index": position, "id": call_id(), "type": "function",
                               "function": {"name": name, "arguments": ""}})
            if len(arguments) > len(choice.sent[position]):
                pieces.append({"index": position, "function": {
                    "arguments": arguments[len(choice.sent[position]):]}})
                choice.sent[position] = arguments
        if finish is not None and not choice.sent:  # no call: the text as it is
            return {"content": whole}, finish
        if finish == "stop":
            finish = "tool_calls"
        return ({"tool_calls": pieces} if pieces else {}), finish

    # -- shared -----------------------------------------------------------------------------

    def _finish(self, choice: _Choice) -> str:
        assert choice.last is not None and choice.last.finish_reason is not None
        return FINISH_NAMES[choice.last.finish_reason]

    @property
    def engine(self) -> str:
        return next((c.last.engine for c in self.choices if c.last and c.last.engine), "")

    def usage(self) -> dict[str, Any]:
        """The prompt once, the completion tokens of every choice."""
        lasts = [choice.last for choice in self.choices if choice.last is not None]
        first = lasts[0] if lasts else None
        return usage_dict(first.prompt_tokens if first else 0,
                          sum(last.completion_tokens for last in lasts),
                          first.cached_tokens if first else 0)

    def _prompt_logprobs(self, entries: Sequence[common_pb2.TokenLogprobs]) -> dict[str, Any]:
        """The echoed prompt's (completions' shape): its first token has none (null)."""
        first = self.shape.echo_first or ""
        tokens = [first, *(entry.sampled.token for entry in entries)]
        offsets, offset = [], 0
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return {"tokens": tokens,
                "token_logprobs": [None, *(_value(e.sampled.logprob) for e in entries)],
                "top_logprobs": [None, *({top.token: _value(top.logprob) for top in e.top}
                                         for e in entries)],
                "text_offset": offsets}

    def _logprobs(self, choice: _Choice, entries: Sequence[common_pb2.TokenLogprobs]
                  ) -> dict[str, Any]:
        if self.shape.chat:
            return {"content": [{**_token(entry.sampled), "top_logprobs": [
                _token(top) for top in entry.top]} for entry in entries], "refusal": None}
        offsets = []
        for entry in entries:
            offsets.append(choice.offset)
            choice.offset += len(entry.sampled.token)
        return {"tokens": [entry.sampled.token for entry in entries],
                "token_logprobs": [_value(entry.sampled.logprob) for entry in entries],
                "top_logprobs": [{top.token: _value(top.logprob) for top in entry.top}
                                 for entry in entries],
                "text_offset": offsets}


def _joined_deltas(deltas: list[Delta]) -> Delta:
    """Held deltas and the one that releases them, as one."""
    if len(deltas) == 1:
        return deltas[0]
    return dataclasses.replace(
        deltas[-1], text="".join(d.text for d in deltas),
        token_ids=[t for d in deltas for t in d.token_ids],
        logprobs=[e for d in deltas for e in d.logprobs],
        prompt_logprobs=next((d.prompt_logprobs for d in deltas if d.prompt_logprobs), ()))


def _joined_logprobs(head: dict[str, Any], tail: dict[str, Any]) -> dict[str, Any]:
    return {key: [*head[key], *tail[key]] for key in head}


def _token(logprob: common_pb2.Logprob) -> dict[str, Any]:
    return {"token": logprob.token, "logprob": _value(logprob.logprob),
            "bytes": list(logprob.token.encode("utf-8", "surrogatepass"))}


def _value(logprob: float) -> float:
    return max(logprob, LOWEST_LOGPROB)
