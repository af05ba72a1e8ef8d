"""The Node.js example client (examples/node-client) streams a generation through RouterService.Chat
against the running system, and prints the same greedy text the OpenAI HTTP API returns."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "examples" / "node-client"
PROMPT = "Name three colours of the rainbow."
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def node_client() -> Path:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the Node.js example client cannot run")
    if not (CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot install the Node.js client's dependencies")
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=CLIENT, capture_output=True, text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    return CLIENT / "chat.js"


def run_client(script: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node
    return subprocess.run([node, str(script), *args], cwd=CLIENT, capture_output=True,
                          text=True, timeout=timeout)


def summary_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [line for line in result.stderr.splitlines() if line.startswith("{")]
    assert lines, f"no summary on stderr:\n{result.stderr}"
    summary: dict[str, Any] = json.loads(lines[-1])
    return summary


def test_node_client_streams_a_chat_generation(running_system: Any, node_client: Path) -> None:
    result = run_client(
        node_client, "--address", running_system.router_grpc_address,
        "--max-tokens", str(MAX_TOKENS), "--temperature", "0", PROMPT,
    )
    assert result.returncode == 0, f"client failed:\n{result.stdout}\n{result.stderr}"
    summary = summary_of(result)
    text = result.stdout.removesuffix("\n")
    assert text.strip(), "the client printed no generated text"
    assert summary["finish_reason"] in ("FINISH_REASON_STOP", "FINISH_REASON_LENGTH")
    usage = summary["usage"]
    assert 0 < usage["completion_tokens"] <= MAX_TOKENS
    assert usage["prompt_tokens"] > 0
    # Tokens arrived as a stream (several messages), and every generated token id was seen.
    assert summary["tokens"] == usage["completion_tokens"]
    assert summary["messages"] >= 2
    assert summary["request_id"]
    assert summary["ttft_ms"] is not None and summary["ttft_ms"] <= summary["total_ms"]

    # The same greedy request through the OpenAI HTTP API yields the same text.
    reply = httpx.post(
        f"{running_system.router_http_url.rstrip('/')}/v1/chat/completions",
        json={
            "model": summary["model"],
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        },
        timeout=300,
    )
    reply.raise_for_status()
    body = reply.json()
    assert body["choices"][0]["message"]["content"] == text
    assert body["usage"]["completion_tokens"] == usage["completion_tokens"]


def test_node_client_reports_an_unknown_model(running_system: Any, node_client: Path) -> None:
    result = run_client(
        node_client, "--address", running_system.router_grpc_address,
        "--model", "no-such-model", "--max-tokens", "4", "hello", timeout=120,
    )
    assert result.returncode == 1
    assert "tandem chat failed" in result.stderr
    assert "(NOT_FOUND)" in result.stderr, result.stderr
