"""Greedy output through tandem is token-identical to vLLM's own OpenAI server for the same
prompt served alone under the same engine settings (compared request by request)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tandem.model import default_model_dir
from tandem.redis_local import free_port
from tandem.service.spawn import ServiceExited, ServiceProcess, http_ok
from tests.e2e.conftest import MODEL, RunningSystem, system_dtype

CHATS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers and explain why they are prime.",
    "Translate 'good morning' into Spanish and German.",
]
PROMPTS = ["The quick brown fox", "def fibonacci(n):", "In 1492, Columbus"]


@pytest.fixture(scope="module")
def vllm_server() -> Iterator[str]:
    """vLLM's OpenAI server, same engine settings (dtype included) as tandem's decode worker, on
    the other core."""
    port = free_port()
    server = ServiceProcess(
        "vLLM's server", "vllm.entrypoints.openai.api_server",
        ["--model", str(default_model_dir()), "--served-model-name", MODEL,
         "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096",
         "--dtype", system_dtype(), "--enforce-eager", "--max-num-seqs", "64"],
        env={"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "1",
             "VLLM_NO_USAGE_STATS": "1"}, quiet=True)
    url = f"http://127.0.0.1:{port}"
    try:
        server.start().wait_ready(lambda: http_ok(f"{url}/health", 1), timeout_s=300)
        yield f"{url}/v1"
    except (ServiceExited, TimeoutError) as error:
        pytest.fail(f"vLLM's server did not start: {error}")
    finally:
        server.stop(timeout_s=30)


def test_greedy_chat_is_identical(running_system: RunningSystem, vllm_server: str) -> None:
    ours = openai.OpenAI(base_url=running_system.openai_base_url, api_key="x", max_retries=0)
    theirs = openai.OpenAI(base_url=vllm_server, api_key="x", max_retries=0)
    for question in CHATS:
        messages = [{"role": "user", "content": question}]
        a = ours.chat.completions.create(model=MODEL, messages=messages,  # type: ignore[arg-type]
                                         max_tokens=64, temperature=0)
        b = theirs.chat.completions.create(model=MODEL, messages=messages,  # type: ignore[arg-type]
                                           max_tokens=64, temperature=0)
        assert a.choices[0].message.content == b.choices[0].message.content, question
        assert a.usage is not None and b.usage is not None
        assert (a.usage.prompt_tokens, a.usage.completion_tokens) == (
            b.usage.prompt_tokens, b.usage.completion_tokens), question
        assert a.choices[0].finish_reason == b.choices[0].finish_reason


def test_greedy_completion_is_identical(running_system: RunningSystem, vllm_server: str) -> None:
    ours = openai.OpenAI(base_url=running_system.openai_base_url, api_key="x", max_retries=0)
    theirs = openai.OpenAI(base_url=vllm_server, api_key="x", max_retries=0)
    for prompt in PROMPTS:
        a = ours.completions.create(model=MODEL, prompt=prompt, max_tokens=48, temperature=0)
        b = theirs.completions.create(model=MODEL, prompt=prompt, max_tokens=48, temperature=0)
        assert a.choices[0].text == b.choices[0].text, prompt
        assert a.usage is not None and b.usage is not None
        assert a.usage.prompt_tokens == b.usage.prompt_tokens, prompt
