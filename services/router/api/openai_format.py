"""OpenAI response bodies and stream chunks (pre-serialized with orjson)."""

from __future__ import annotations

from typing import Any

import orjson

FINISH_NAMES = {"stop": "stop", "length": "length", "abort": "stop", "error": "stop"}


def usage_dict(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


class ChunkWriter:
    """SSE chunks of one streamed response. The bytes around a chunk's text and finish reason
    are serialized once per stream, so a token costs one ``orjson.dumps`` of its text."""

    def __init__(self, chat: bool, request_id: str, model: str, created: int,
                 fingerprint: str = "", with_usage_field: bool = False) -> None:
        self.chat = chat
        self.with_usage_field = with_usage_field
        """Every chunk carries ``"usage": null`` (the client asked for a usage chunk)."""
        self.envelope = {
            "id": request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint or None,
        }
        template = self._serialize(_TEXT_MARK, _FINISH_MARK)
        head, _, rest = template.rpartition(orjson.dumps(_TEXT_MARK))
        middle, _, tail = rest.rpartition(orjson.dumps(_FINISH_MARK))
        self._head = b"data: " + head
        self._middle = middle
        self._tail = tail + b"\n\n"

    def _choice(self, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    def _serialize(self, text: str | None, finish: str | None, first: bool = False) -> bytes:
        body: dict[str, Any] = {**self.envelope, "choices": [self._choice(text, finish, first)]}
        if self.with_usage_field:
            body["usage"] = None
        return orjson.dumps(body)

    def chunk(self, text: str, finish: str | None = None) -> bytes:
        """The chunk of one worker message's text (and the finish reason on the last)."""
        return b"".join((self._head, orjson.dumps(text), self._middle,
                         _FINISH_JSON[finish], self._tail))

    def choice_chunk(self, index: int, delta: dict[str, Any] | None, finish: str | None,
                     logprobs: dict[str, Any] | None = None, text: str = "") -> bytes:
        """A chunk of choice ``index`` in full (no template): a chat ``delta``, or a
        completion's ``text``, with its log probabilities."""
        if self.chat:
            choice: dict[str, Any] = {"index": index, "delta": delta or {},
                                      "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs,
                      "finish_reason": finish}
        body: dict[str, Any] = {**self.envelope, "choices": [choice]}
        if self.with_usage_field:
            body["usage"] = None
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def first_chunk(self) -> bytes:
        """A chat stream's opening chunk: the assistant role, no text yet."""
        return b"data: " + self._serialize("", None, first=True) + b"\n\n"

    def usage_chunk(self, usage: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({**self.envelope, "choices": [], "usage": usage}) + b"\n\n"


# Marks that serialize to strings no real text produces (orjson escapes the control byte).
_TEXT_MARK = "\x00text"
_FINISH_MARK = "\x00finish"
_FINISH_JSON: dict[str | None, bytes] = {
    None: b"null", **{name: orjson.dumps(name) for name in set(FINISH_NAMES.values())}}


DONE = b"data: [DONE]\n\n"
