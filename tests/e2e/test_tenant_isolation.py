"""Tenant isolation of the cache, end to end, with the real engine: a second tenant gets no
cache hit on the first tenant's prompt - not on the device (vLLM's cached tokens), not from the
KV store, not in the router's index credit - while the first tenant gets all three on its own
repeat; and the second tenant's time to first token on the first tenant's long prompt is
indistinguishable from a cold prompt's (two-sample Kolmogorov-Smirnov), while the first tenant's
repeat is clearly faster (the control, which shows the test can tell).

The requests go through a second router of the running system with API keys on (in this
process, on the same Redis and workers): two keys of two tenants. Every request's body has the
same ``user``: with keys on that is a label, and the key alone sets the tenant."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import redis
from scipy.stats import ks_2samp

from services.router import keystore
from services.router.core.api_keys import ApiKeySettings, Limits
from services.router.prompts import PromptBuilder
from services.router.settings import RouterSettings
from tandem.hashing import block_hashes, hash_salt
from tandem.model import default_model_dir
from tandem.v1 import kvstore_pb2, kvstore_pb2_grpc, router_pb2, router_pb2_grpc
from tests.e2e.conftest import MODEL, RunningSystem
from tests.e2e.test_disaggregation import english_text
from tests.e2e.test_vllm_kv_routing import vllm_worker
from tests.integration.system import start_router

pytestmark = pytest.mark.e2e

MIN_UNCACHED = RouterSettings().min_uncached_tokens
"""Prompts with fewer uncached tokens are prefilled on their decode worker, where vLLM's cached
tokens reach the client's usage; longer ones go through a prefill worker and the KV store."""
SHORT_TOKENS = MIN_UNCACHED // 2
LONG_TOKENS = MIN_UNCACHED * 5 // 4
"""Past MIN_UNCACHED: a cold prompt is prefilled on a prefill worker, which writes its blocks to
the KV store (so the store's keys are tested too), and its prefill dominates the time to first
token."""
SAMPLES = 24
"""Most per series (see MEASURE_BUDGET_S). The control (CONTROL_P) must hold although a warm request
sometimes meets a slow step on a shared 2-core machine: traced on 2026-12-04, 6 of 25 warm repeats
took 0.29-0.93 s against a median of 0.17 s (an engine step of 0.91 s for 59 tokens where 0.14 s is
usual, or 0.3-0.6 s before the step began), and a clean-clone CI run had 3 of 14 past the fastest
cold prompt (KS p 1.6e-4, failing a 1e-4 bound). KS p (scipy's exact test) of 24 against 24 with k
warm samples past every cold one: k=0 6e-14, 4 1e-8, 6 8e-7, 8 2e-5, 9 1.04e-4; so 8 (a third) may
be slow, while a warm series no faster than a cold one gives p ~0.5. A round costs three cold
prefills: about 2 s on CI's Xeon, 26 s on an AMD EPYC of this kind (float32, no native bfloat16), so
the rounds stop at MEASURE_BUDGET_S once MIN_SAMPLES are in."""
MIN_SAMPLES = 12
"""Fewest per series: KS p of 12 against 12 with one warm sample past every cold one is 1.8e-5
(under CONTROL_P), with none 7.4e-7; a warm-like cross series gives about the same (far below
SAME_AS_COLD_P)."""
MEASURE_BUDGET_S = 150.0
"""No round starts past this many seconds of measured rounds once MIN_SAMPLES are in: 24 rounds
take ~70 s on a Xeon, 12 take ~310 s on the EPYC (the test's timeout is set for that)."""
WARMUP_ROUNDS = 1
"""Rounds run and not measured: the engines' first prefills of a shape are slower."""
SAME_AS_COLD_P = 1e-3
"""Two samples of one distribution fall below it 1 time in 1,000 (a flake budget); a second
tenant served from the first one's cache would be a warm series (p ~1e-13 at 24 samples)."""
CONTROL_P = 1e-4
CREDIT_WAIT_S = 30.0
"""How long the router's index may take to learn a worker's blocks (KV events via Redis)."""


@dataclasses.dataclass(frozen=True)
class Front:
    """A router with API keys on, and a key per tenant."""

    http_url: str
    grpc_address: str
    keys: dict[str, str]

    def tenants(self) -> tuple[str, str]:
        first, second = self.keys
        return first, second

    def headers(self, tenant: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[tenant]}"}

    def body(self, tenant: str) -> dict[str, object]:
        """One ``user`` for both tenants: a label, which must change nothing (were it the
        tenant, the two tenants would be one)."""
        return {"user": "one-label-for-all"}


@pytest.fixture(scope="module")
async def front(running_system: RunningSystem) -> AsyncIterator[Front]:
    run = uuid.uuid4().hex[:8]
    with redis.Redis.from_url(running_system.redis_url) as admin:
        keys = {tenant: keystore.create(admin, running_system.namespace, tenant, Limits())
                for tenant in (f"tenant-a-{run}", f"tenant-b-{run}")}
    router = await start_router(running_system.redis_url, running_system.namespace, [],
                                prefill_workers=1,
                                api_keys=ApiKeySettings(enabled=True))
    try:
        yield Front(router.http_url, router.grpc_address, keys)
    finally:
        await router.close()


@pytest.fixture(scope="module")
def prompts() -> PromptBuilder:
    return PromptBuilder(str(default_model_dir()), 4096)


def prompt_text(prompts: PromptBuilder, tokens: int) -> str:
    """A prompt no earlier request shares a block with (a unique start) of about ``tokens``."""
    corpus = english_text()
    text = f"[{uuid.uuid4().hex}] "
    step = 400
    while len(prompts.completion(text)) < tokens:
        text += corpus[:step]
        corpus = corpus[step:]
    return text


async def complete(front: Front, prompt: str, tenant: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=front.http_url, timeout=300) as client:
        reply = await client.post("/v1/completions", headers=front.headers(tenant), json={
            "model": MODEL, "prompt": prompt, "max_tokens": 2, "temperature": 0,
            **front.body(tenant)})
    assert reply.status_code == 200, reply.text
    body: dict[str, object] = reply.json()
    return body


def cached_tokens(body: dict[str, object]) -> int:
    usage = body["usage"]
    assert isinstance(usage, dict)
    return int(usage["prompt_tokens_details"]["cached_tokens"])


async def explain(front: Front, prompt: str, tenant: str) -> router_pb2.ExplainRouteResponse:
    """The router's decision for ``tenant`` (its key names it; the request's field is empty)."""
    async with grpc.aio.insecure_channel(front.grpc_address) as channel:
        return await router_pb2_grpc.RouterServiceStub(channel).ExplainRoute(
            router_pb2.ExplainRouteRequest(model=MODEL, prompt=prompt),
            metadata=tuple(front.headers(tenant).items()))


def best_credit(decision: router_pb2.ExplainRouteResponse) -> tuple[int, int]:
    """The most leading blocks any worker is credited with: on its device, in the store."""
    return (max((c.device_overlap_blocks for c in decision.candidates), default=0),
            max((c.store_overlap_blocks for c in decision.candidates), default=0))


async def credited(front: Front, prompt: str, tenant: str, device: bool,
                   store: bool) -> router_pb2.ExplainRouteResponse:
    """Waits until the router credits ``tenant`` with the whole prompt where asked."""
    async with asyncio.timeout(CREDIT_WAIT_S):
        while True:
            decision = await explain(front, prompt, tenant)
            on_device, in_store = best_credit(decision)
            if (not device or on_device >= decision.prompt_blocks) and \
                    (not store or in_store >= decision.prompt_blocks):
                return decision
            await asyncio.sleep(0.1)


async def store_prefix(system: RunningSystem, hashes: list[bytes]) -> int:
    async with grpc.aio.insecure_channel(system.kvstore_address) as channel:
        reply = await kvstore_pb2_grpc.KVStoreServiceStub(channel).Lookup(
            kvstore_pb2.LookupRequest(block_hashes=hashes))
    return int(reply.num_prefix_blocks)


async def test_a_second_tenant_gets_no_device_hit_nor_credit(
        running_system: RunningSystem, front: Front, prompts: PromptBuilder) -> None:
    """A short prompt (prefilled on the decode worker): vLLM's cached tokens and the router's
    device credit are the first tenant's alone."""
    first, second = front.tenants()
    block_size = (await vllm_worker(running_system)).block_size
    prompt = prompt_text(prompts, SHORT_TOKENS)
    whole_blocks = (len(prompts.completion(prompt)) - 1) // block_size * block_size
    assert cached_tokens(await complete(front, prompt, first)) == 0
    decision = await credited(front, prompt, first, device=True, store=False)
    assert decision.prompt_blocks >= 2
    assert best_credit(await explain(front, prompt, second))[0] == 0
    assert cached_tokens(await complete(front, prompt, second)) == 0
    assert cached_tokens(await complete(front, prompt, first)) == whole_blocks
    # The second tenant's own blocks earn it its own credit (the KV-event bridge roots them at
    # its salt).
    await credited(front, prompt, second, device=True, store=False)


async def test_a_second_tenant_finds_nothing_in_the_store(
        running_system: RunningSystem, front: Front, prompts: PromptBuilder) -> None:
    """A long prompt (through a prefill worker, which writes its blocks to the store): the store
    holds them under the first tenant's keys only (the second tenant's keys find nothing, so its
    prefill has nothing to load), and the router credits them to the first tenant only."""
    first, second = front.tenants()
    block_size = (await vllm_worker(running_system)).block_size
    prompt = prompt_text(prompts, LONG_TOKENS)
    tokens = prompts.completion(prompt)
    await complete(front, prompt, first)
    decision = await credited(front, prompt, first, device=False, store=True)
    keys = {t: block_hashes(tokens, block_size, hash_salt(MODEL, "", t)) for t in (first, second)}
    assert await store_prefix(running_system, keys[first]) == decision.prompt_blocks
    assert await store_prefix(running_system, keys[second]) == 0
    assert best_credit(await explain(front, prompt, second)) == (0, 0)
    await complete(front, prompt, second)  # its prefill computes and stores its own
    assert await store_prefix(running_system, keys[second]) == decision.prompt_blocks


async def first_token_s(client: httpx.AsyncClient, front: Front, prompt: str,
                        tenant: str) -> float:
    """Seconds from sending the request to its first streamed token (the stream is read to its
    end: the next request starts on an idle fleet)."""
    started = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", "/v1/completions", headers=front.headers(tenant), json={
            "model": MODEL, "prompt": prompt, "max_tokens": 2, "temperature": 0,
            "stream": True, **front.body(tenant)}) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if first is None and line.startswith("data: ") and '"text"' in line:
                first = time.perf_counter() - started
    assert first is not None, "the stream ended before its first token"
    return first


@pytest.mark.timeout(600)
async def test_a_second_tenants_first_token_time_is_a_cold_prompts(
        front: Front, prompts: PromptBuilder) -> None:
    """Per round: the first tenant sends a fresh long prompt; then, in random order, the second
    tenant sends that prompt (cross) and a fresh prompt of its own (cold); then the first tenant
    repeats its prompt (warm). Interleaved, so the machine's load falls on every series alike."""
    first, second = front.tenants()
    order = random.Random(SAMPLES)
    series: dict[str, list[float]] = {"cross": [], "cold": [], "warm": []}
    measuring_since = float("inf")
    async with httpx.AsyncClient(base_url=front.http_url, timeout=300) as client:
        for round_ in range(WARMUP_ROUNDS + SAMPLES):
            if len(series["warm"]) >= MIN_SAMPLES and \
                    time.monotonic() - measuring_since > MEASURE_BUDGET_S:
                break
            if round_ == WARMUP_ROUNDS:
                measuring_since = time.monotonic()
            shared, own = (prompt_text(prompts, LONG_TOKENS) for _ in range(2))
            await first_token_s(client, front, shared, first)
            sample: dict[str, float] = {}
            for name in order.sample(["cross", "cold"], 2):
                sample[name] = await first_token_s(
                    client, front, shared if name == "cross" else own, second)
            sample["warm"] = await first_token_s(client, front, shared, first)
            print(f"round {round_}: " + ", ".join(f"{n} {s:.3f} s" for n, s in sample.items()),
                  flush=True)
            if round_ >= WARMUP_ROUNDS:
                for name, seconds in sample.items():
                    series[name].append(seconds)
    same = ks_2samp(series["cross"], series["cold"], method="exact")
    control = ks_2samp(series["warm"], series["cold"], method="exact")
    medians = {name: sorted(values)[len(values) // 2] for name, values in series.items()}
    print(f"TTFT medians (s): {medians}; cross vs cold p={same.pvalue:.3g}, "
          f"warm vs cold p={control.pvalue:.3g}")
    assert control.pvalue < CONTROL_P, (control, series)
    assert same.pvalue > SAME_AS_COLD_P, (same, series)
