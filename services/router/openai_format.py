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
    """SSE chunks of one streamed response; the constant envelope is built once."""

    def __init__(self, chat: bool, request_id: str, model: str, created: int,
                 fingerprint: str = "") -> None:
        self.chat = chat
        self.envelope = {
            "id": request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint or None,
        }

    def _choice(self, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    def chunk(self, text: str | None, finish: str | None = None, first: bool = False,
              usage: dict[str, Any] | None = None, with_usage_field: bool = False) -> bytes:
        body: dict[str, Any] = {**self.envelope, "choices": [self._choice(text, finish, first)]}
        if with_usage_field:
            body["usage"] = usage
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def usage_chunk(self, usage: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({**self.envelope, "choices": [], "usage": usage}) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def full_response(chat: bool, request_id: str, model: str, created: int, fingerprint: str,
                  text: str, finish: str, usage: dict[str, Any]) -> bytes:
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return orjson.dumps({
        "id": request_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint or None,
        "choices": [choice],
        "usage": usage,
    })
