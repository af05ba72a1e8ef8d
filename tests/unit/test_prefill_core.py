"""The prefill worker's pure core, table-driven: the engine request (one token, blocks saved),
the first token gathered from the engine's outputs, the finish reason the client sees, and the
response with the prompt's KV handle."""

from __future__ import annotations

import pytest

from services.prefill.core.prefill import (
    FirstToken,
    client_finish,
    prefill_request,
    prefill_response,
    prefill_salt,
)
from tandem.engines.base import EngineOutput
from tandem.errors import TandemError
from tandem.hashing import hash_salt, prompt_hashes
from tandem.v1 import common_pb2, worker_pb2

PROMPT = [3, 1, 4, 1, 5, 9, 2]


def prefill(max_tokens: int | None = None, salt: bytes = b"") -> worker_pb2.PrefillRequest:
    request = worker_pb2.PrefillRequest(request_id="r1", prompt_token_ids=PROMPT,
                                        hash_salt=salt)
    if max_tokens is not None:
        request.sampling.max_tokens = max_tokens
    request.sampling.temperature = 0.5
    return request


@pytest.mark.parametrize(("request_", "salt"), [
    (prefill(), hash_salt("m")),
    (prefill(salt=b"\x09"), b"\x09"),
])
def test_the_salt_is_the_requests_else_the_models(
        request_: worker_pb2.PrefillRequest, salt: bytes) -> None:
    assert prefill_salt(request_, "m") == salt


@pytest.mark.parametrize("max_tokens", [None, 1, 50])
def test_the_engine_request_asks_one_token_and_saves_the_blocks(max_tokens: int | None) -> None:
    headers = {"traceparent": "00-1-2-01"}
    engine_request = prefill_request(prefill(max_tokens), b"\x09", headers)
    assert engine_request.request_id == "r1"
    assert engine_request.prompt_token_ids == PROMPT
    assert engine_request.sampling.max_tokens == 1
    assert engine_request.sampling.temperature == 0.5
    assert engine_request.trace_headers == headers
    assert engine_request.kv_transfer == {"salt": "09", "save": True}


@pytest.mark.parametrize(("outputs", "expected"), [
    ([], FirstToken()),
    ([EngineOutput([7], " a", "length", 7, 4)], FirstToken([7], " a", "length", 4)),
    ([EngineOutput([], "", None, 7, 4), EngineOutput([7], " a", "stop", 7, 0)],
     FirstToken([7], " a", "stop", 4)),
    ([EngineOutput([7], " a", "stop"), EngineOutput([], "", None)],
     FirstToken([7], " a", "stop", 0)),
])
def test_the_first_token_gathers_the_outputs(
        outputs: list[EngineOutput], expected: FirstToken) -> None:
    first = FirstToken()
    for output in outputs:
        first.add(output)
    assert first == expected


@pytest.mark.parametrize(("engine_finish", "wanted", "finish"), [
    ("length", None, None),   # one token is the engine's length, not the client's
    ("length", 50, None),
    ("length", 1, "length"),  # the client asked for one token
    ("stop", None, "stop"),   # the first token stopped the request
    ("stop", 1, "stop"),
    (None, None, None),
])
def test_the_finish_the_client_sees(engine_finish: str | None, wanted: int | None,
                                    finish: str | None) -> None:
    assert client_finish(engine_finish, wanted) == finish


@pytest.mark.parametrize(("max_tokens", "engine_finish", "finish_reason"), [
    (None, "length", common_pb2.FINISH_REASON_UNSPECIFIED),
    (1, "length", common_pb2.FINISH_REASON_LENGTH),
    (50, "stop", common_pb2.FINISH_REASON_STOP),
])
def test_the_response_hands_the_prompts_blocks_on(
        max_tokens: int | None, engine_finish: str,
        finish_reason: common_pb2.FinishReason.ValueType) -> None:
    response = prefill_response(
        prefill(max_tokens), FirstToken([7], " a", engine_finish, 2), salt=b"\x09",
        block_size=2, fingerprint="mock-simulated:fixed", store_address="kvstore:50080",
        store_host="host-a")
    assert (response.first_token_id, response.first_token_text) == (7, " a")
    assert response.finish_reason == finish_reason
    assert response.kv_handle == common_pb2.KVHandle(
        block_size=2, block_hashes=prompt_hashes(PROMPT, 2, b"\x09"), num_tokens=len(PROMPT),
        store_address="kvstore:50080", store_host="host-a")
    assert response.usage == common_pb2.Usage(prompt_tokens=len(PROMPT), completion_tokens=1,
                                              cached_tokens=2)
    assert response.engine == "mock-simulated:fixed"


def test_a_prefill_without_a_token_is_unavailable() -> None:
    with pytest.raises(TandemError) as raised:
        prefill_response(prefill(), FirstToken(), salt=b"\x09", block_size=2,
                         fingerprint="f", store_address="", store_host="")
    assert raised.value.code == common_pb2.ERROR_CODE_UNAVAILABLE
    assert raised.value.message == "prefill produced no token"
