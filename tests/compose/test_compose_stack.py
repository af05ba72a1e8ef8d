"""compose.yaml for real: the images built, redis + kvstore + router + one decode and one prefill
worker in containers (tests/compose/conftest.py), answering OpenAI requests through the router
container, each service exporting /metrics, the workers registered in Redis, a long prompt
prefilled by the prefill container with its KV handed to the decode container through the
store's shared-memory arena, and a worker that drains on `docker stop` (tini forwards SIGTERM)."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tandem.discovery import WorkerInfo, index_key, worker_key
from tandem.stages import Stage, prometheus_name
from tests.compose.conftest import METRICS, REDIS_URL, ROUTER, RunningStack, timings

# The first test also waits for the session fixture: image builds (cold: minutes) and start.
pytestmark = [pytest.mark.compose, pytest.mark.timeout(5400)]

MODEL = "SmolLM2-135M-Instruct"
NAMESPACE = "tandem"
TIMEOUT_S = 300.0
"""One request on 2 cores shared with a second engine (and, on a developer's machine, others)."""


def samples(url: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels`` (0 when absent)."""
    text = httpx.get(url, timeout=30).raise_for_status().text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def registered() -> dict[str, WorkerInfo]:
    with redis.Redis.from_url(REDIS_URL) as client:
        ids = sorted(member.decode() for member in client.smembers(index_key(NAMESPACE)))
        found = {}
        for worker_id in ids:
            raw = client.get(worker_key(NAMESPACE, worker_id))
            if raw is not None:
                found[worker_id] = WorkerInfo.from_json(raw)
    return found


def test_the_core_services_are_healthy_and_never_restarted(running_stack: RunningStack) -> None:
    for service in ("redis", "kvstore", "router", "decode", "prefill"):
        status, restarts, _ = running_stack.stack.health(service)
        assert (status, restarts) == ("healthy", 0), service


def test_a_chat_completion_through_the_router_container(running_stack: RunningStack) -> None:
    reply = httpx.post(f"{ROUTER}/v1/chat/completions", timeout=TIMEOUT_S, json={
        "model": MODEL, "max_tokens": 12, "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert reply.status_code == 200, reply.text
    timings.setdefault("start to first answer", time.monotonic() - running_stack.started_at)
    body = reply.json()
    assert body["model"] == MODEL
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] == 12 or body["choices"][0]["finish_reason"] == "stop"


def test_a_streamed_completion(running_stack: RunningStack) -> None:
    chunks: list[dict[str, object]] = []
    done = False
    with httpx.stream("POST", f"{ROUTER}/v1/completions", timeout=TIMEOUT_S, json={
            "model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0,
            "ignore_eos": True, "stream": True}) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunks.append(json.loads(line.removeprefix("data: ")))
    assert done
    text = "".join(str(c["choices"][0]["text"]) for c in chunks if c["choices"])  # type: ignore[index]
    assert len([c for c in chunks if c["choices"]]) >= 2 and text


def test_the_workers_registered_in_redis(running_stack: RunningStack) -> None:
    workers = registered()
    roles = sorted(info.role for info in workers.values())
    assert roles == ["decode", "prefill"], workers
    addresses = {info.role: info.address for info in workers.values()}
    assert addresses == {"decode": "127.0.0.1:25160", "prefill": "127.0.0.1:25170"}
    assert all(info.state == "serving" and info.model == MODEL for info in workers.values())


@pytest.mark.parametrize(("service", "metric"), [
    ("router", "tandem_router_requests_total"),
    ("decode", "tandem_worker_running_requests"),
    ("prefill", "tandem_worker_running_requests"),
    ("kvstore", "tandem_kvstore_pinned_blocks"),
])
def test_every_service_exports_metrics(running_stack: RunningStack, service: str,
                                       metric: str) -> None:
    text = httpx.get(METRICS[service], timeout=30).raise_for_status().text
    names = {sample.name for family in text_string_to_metric_families(text)
             for sample in family.samples}
    assert metric in names, sorted(n for n in names if n.startswith("tandem"))


def test_a_long_prompt_moves_its_kv_from_the_prefill_to_the_decode_container(
        running_stack: RunningStack) -> None:
    """Disaggregation as compose.yaml configures it (auto: remote prefill from 512 uncached
    tokens): the prefill container writes the prompt's blocks to the store (the same-host
    path: the kvstore container's /dev/shm arena, mapped by the workers in its IPC namespace),
    the decode container reads them back."""
    put = f"{prometheus_name(Stage.KV_PUT)}_count"
    get = f"{prometheus_name(Stage.KV_GET)}_count"
    local_puts = "tandem_kvstore_put_duration_seconds_count"
    before = (samples(METRICS["prefill"], put), samples(METRICS["decode"], get),
              samples(METRICS["kvstore"], local_puts, path="local"))
    # A fresh first sentence: no block of it can be in the store or a worker's cache already.
    prompt = f"Price list {time.time_ns()}. " + " ".join(
        f"Item {i} costs {i * 7 % 97} euros." for i in range(120))
    reply = httpx.post(f"{ROUTER}/v1/completions", timeout=TIMEOUT_S, json={
        "model": MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0,
        "ignore_eos": True})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["prompt_tokens"] > 512
    after = (samples(METRICS["prefill"], put), samples(METRICS["decode"], get),
             samples(METRICS["kvstore"], local_puts, path="local"))
    assert after[0] == before[0] + 1, "the prefill container wrote no KV to the store"
    assert after[1] == before[1] + 1, "the decode container read no KV from the store"
    assert after[2] > before[2], "the KV did not go through the shared arena"


def test_a_worker_drains_and_leaves_discovery_on_docker_stop(running_stack: RunningStack) -> None:
    """SIGTERM reaches the worker through tini: it drains, deregisters and exits 0 well within
    compose's stop_grace_period (else Docker's SIGKILL gives 137). Runs last: it stops decode."""
    stack = running_stack.stack
    container = stack.container("decode")
    started = time.monotonic()
    stack.compose("stop", "decode", timeout_s=120)
    elapsed = time.monotonic() - started
    state = stack.state("decode")["State"]
    assert state["ExitCode"] == 0, stack.logs("decode")
    assert elapsed < 20, f"docker stop took {elapsed:.0f} s (the grace period is 20 s)"
    assert [info.role for info in registered().values()] == ["prefill"]
    assert container == stack.container("decode")  # stopped, not replaced
