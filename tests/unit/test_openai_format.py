"""Streamed chunks built from pre-serialized bytes are the same JSON as built from dicts."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.router.api.openai_format import ChunkWriter

MODEL = 'model "quoted" \x00\n'


def expected(chat: bool, text: str, finish: str | None, with_usage_field: bool,
             fingerprint: str) -> dict[str, Any]:
    choice: dict[str, Any] = (
        {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish}
        if chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
    body: dict[str, Any] = {
        "id": "req-1", "object": "chat.completion.chunk" if chat else "text_completion",
        "created": 1700000000, "model": MODEL, "system_fingerprint": fingerprint or None,
        "choices": [choice]}
    if with_usage_field:
        body["usage"] = None
    return body


TEXTS = ["", " tok1 tok2", 'quotes " and \\ backslash', "new\nline\ttab", "\x00 control \x1f",
         "unicode é 東京 😀", " text\x00finish marks stay text"]


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("with_usage_field", [True, False])
@pytest.mark.parametrize("finish", [None, "stop", "length"])
@pytest.mark.parametrize("fingerprint", ["", "mock-simulated:fixed"])
def test_chunk_is_the_dict_chunk(chat: bool, with_usage_field: bool, finish: str | None,
                                 fingerprint: str) -> None:
    writer = ChunkWriter(chat, "req-1", MODEL, 1700000000, fingerprint,
                         with_usage_field=with_usage_field)
    for text in TEXTS:
        chunk = writer.chunk(text, finish)
        assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
        assert chunk.count(b"\n\n") == 1  # one SSE event
        assert orjson.loads(chunk[len(b"data: "):]) == expected(
            chat, text, finish, with_usage_field, fingerprint)


def test_first_chunk_carries_the_role() -> None:
    writer = ChunkWriter(True, "req-1", "m", 1, with_usage_field=True)
    body = orjson.loads(writer.first_chunk()[len(b"data: "):])
    assert body["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert body["usage"] is None
