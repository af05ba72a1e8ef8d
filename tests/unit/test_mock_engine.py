"""The simulated engine: determinism, limits, stop tokens, prefix cache, eviction, cancel."""

from __future__ import annotations

import asyncio
import random

import pytest

from tandem.engines.base import EngineOutput, EngineRequest, Sampling, StructuredOutput
from tandem.engines.mock import MockEngine, MockSettings
from tandem.engines.mock.engine import block_bytes
from tandem.errors import TandemError
from tandem.hashing import block_hashes, hash_salt
from tandem.v1 import common_pb2

BLOCK = 4


def make_engine(**overrides: object) -> MockEngine:
    values: dict[str, object] = {"block_size": BLOCK, "num_blocks": 64, "max_model_len": 256}
    values.update(overrides)
    return MockEngine(MockSettings(**values))  # type: ignore[arg-type]


async def run(engine: MockEngine, prompt: list[int], **sampling: object) -> list[EngineOutput]:
    request = EngineRequest(f"r{id(prompt)}-{len(prompt)}", prompt,
                            Sampling(**sampling))  # type: ignore[arg-type]
    return [output async for output in engine.generate(request)]


def tokens(outputs: list[EngineOutput]) -> list[int]:
    return [t for output in outputs for t in output.token_ids]


async def test_greedy_is_deterministic_and_honours_max_tokens() -> None:
    engine = make_engine()
    await engine.start()
    try:
        first = await run(engine, list(range(10)), max_tokens=7, temperature=0.0,
                          ignore_eos=True)
        second = await run(engine, list(range(10)), max_tokens=7, temperature=0.0,
                           ignore_eos=True)
        assert tokens(first) == tokens(second) and len(tokens(first)) == 7
        assert first[-1].finish_reason == "length"
        assert first[0].text == "".join(f" tok{t}" for t in first[0].token_ids)
        assert "mock-simulated" in engine.fingerprint
        other = await run(engine, list(range(1, 11)), max_tokens=7, temperature=0.0)
        assert tokens(other) != tokens(first)
    finally:
        await engine.shutdown()


async def test_stop_token_ends_with_stop() -> None:
    engine = make_engine()
    await engine.start()
    try:
        free = tokens(await run(engine, [5, 6, 7], max_tokens=5, temperature=0.0))
        stopped = await run(engine, [5, 6, 7], max_tokens=5, temperature=0.0,
                            stop_token_ids=(free[2],))
        assert tokens(stopped) == free[:3] and stopped[-1].finish_reason == "stop"
    finally:
        await engine.shutdown()


async def test_min_tokens_holds_off_a_stop_token() -> None:
    engine = make_engine()
    await engine.start()
    try:
        free = tokens(await run(engine, [5, 6, 7], max_tokens=5, temperature=0.0))
        held = await run(engine, [5, 6, 7], max_tokens=5, temperature=0.0,
                         stop_token_ids=(free[1],), min_tokens=2)
        assert tokens(held)[:3] == free[:3]  # the stop token came 2nd: within min_tokens
        stopped = await run(engine, [5, 6, 7], max_tokens=5, temperature=0.0,
                            stop_token_ids=(free[1],), min_tokens=1)
        assert tokens(stopped) == free[:2] and stopped[-1].finish_reason == "stop"
    finally:
        await engine.shutdown()


@pytest.mark.parametrize(("sampling", "param"), [
    (Sampling(logprobs=0), "logprobs"),
    (Sampling(logit_bias=((1, 2.0),)), "logit_bias"),
    (Sampling(structured_output=StructuredOutput("json_object")), "response_format"),
    (Sampling(min_tokens=3, stop_token_ids=(1,), ignore_eos=True), None),
])
def test_the_mock_names_what_it_cannot_honour(sampling: Sampling, param: str | None) -> None:
    assert make_engine().unsupported(sampling) == param


async def test_prefix_cache_hits_and_kv_events() -> None:
    events: list[tuple[str, list[bytes], bytes]] = []
    engine = make_engine()
    engine.set_kv_event_sink(lambda kind, hashes, parent: events.append((kind, hashes, parent)))
    await engine.start()
    try:
        prompt = list(range(100, 117))  # 4 full blocks + 1 token
        first = await run(engine, prompt, max_tokens=2)
        second = await run(engine, prompt, max_tokens=2)
        assert first[0].cached_tokens == 0
        assert second[0].cached_tokens == 16 and second[0].prompt_tokens == 17
        expected = block_hashes(prompt, BLOCK, hash_salt("SmolLM2-135M-Instruct"))
        stored = [h for kind, hashes, _ in events if kind == "stored" for h in hashes]
        assert events[0][0] == "cleared"
        assert stored[:4] == expected
        assert set(expected) <= set(engine.dump_kv_state())
    finally:
        await engine.shutdown()


async def test_lru_eviction_announces_removed() -> None:
    events: list[tuple[str, list[bytes], bytes]] = []
    engine = make_engine(num_blocks=8)
    engine.set_kv_event_sink(lambda kind, hashes, parent: events.append((kind, hashes, parent)))
    await engine.start()
    try:
        old = list(range(16))
        await run(engine, old, max_tokens=1)
        await run(engine, list(range(500, 524)), max_tokens=1)  # needs 7 blocks: evicts
        removed = {h for kind, hashes, _ in events if kind == "removed" for h in hashes}
        assert removed & set(block_hashes(old, BLOCK, hash_salt("SmolLM2-135M-Instruct")))
        assert engine.load().used_blocks == 0 and engine.load().total_blocks == 8
    finally:
        await engine.shutdown()


async def test_cancel_frees_blocks() -> None:
    engine = make_engine(decode_time_per_step_s=0.01)
    await engine.start()
    try:
        request = EngineRequest("slow", list(range(20)), Sampling(max_tokens=200, ignore_eos=True))
        received: list[EngineOutput] = []
        two_received = asyncio.Event()

        async def consume() -> None:
            async for output in engine.generate(request):
                received.append(output)
                if len(received) >= 2:
                    two_received.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(two_received.wait(), 5)
        assert engine.load().running == 1 and engine.load().used_blocks > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.load().running == 0 and engine.load().used_blocks == 0
    finally:
        await engine.shutdown()


async def test_simulated_time_and_speedup() -> None:
    slow = make_engine(prefill_time_per_token_s=0.002)
    fast = make_engine(prefill_time_per_token_s=0.002, speedup=100.0)
    for engine in (slow, fast):
        await engine.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await run(slow, list(range(50)), max_tokens=1)
        slow_s = loop.time() - started
        started = loop.time()
        await run(fast, list(range(50)), max_tokens=1)
        fast_s = loop.time() - started
        assert slow_s >= 0.09 and fast_s < slow_s / 5
    finally:
        for engine in (slow, fast):
            await engine.shutdown()


async def test_fleet_hosts_many_workers() -> None:
    from tandem.engines.mock.fleet import MockFleet

    fleet = MockFleet(16, MockSettings(block_size=BLOCK, num_blocks=32))
    await fleet.start()
    try:
        results = await asyncio.gather(*(run(w.engine, [n, n + 1, n + 2, n + 3, n + 4],
                                             max_tokens=3, ignore_eos=True)
                                         for n, w in enumerate(fleet.workers)))
        assert all(len(tokens(r)) == 3 for r in results)
        hashes, seq = fleet.snapshot("mock-3")
        assert len(hashes) == 1 and seq == 0
    finally:
        await fleet.shutdown()


@pytest.mark.parametrize(("loaded", "computed", "cached"), [
    (0, 10, 0),   # nothing loaded: the whole prompt is computed
    (8, 2, 8),    # two loaded blocks: the rest is computed
    (10, 1, 9),   # the whole prompt loaded: its last token is computed all the same
])
def test_tokens_loaded_from_the_store_are_not_computed(loaded: int, computed: int,
                                                       cached: int) -> None:
    core = make_engine(enable_prefix_caching=False).core
    assert core.add("r", list(range(10)), 2, (), True, random.Random(0), loaded) is None
    step = core.step()
    assert step.scheduled == (("r", computed),)
    assert step.outputs[0].cached_tokens == cached


@pytest.mark.parametrize(("overrides", "expected"), [
    ({}, 4096),                                                # no profile: a small block
    ({"profile": "cpu-smollm2-135m"}, 23040 * 128),            # SmolLM2-135M bf16, 128 tokens
    ({"profile": "cpu-smollm2-135m", "kv_block_bytes": 512}, 512),  # set explicitly
])
def test_the_size_of_a_stored_block(overrides: dict[str, object], expected: int) -> None:
    engine = make_engine(**{"block_size": 0, "num_blocks": 0, **overrides})
    assert block_bytes(engine.settings, engine.profile, engine.block_size) == expected


@pytest.mark.parametrize(("fail_rate", "failed"), [(0.0, 0), (1.0, 4), (0.5, None)])
async def test_injected_failures_spare_the_first_request(fail_rate: float,
                                                         failed: int | None) -> None:
    engine = make_engine(fail_rate=fail_rate, seed=1)
    await engine.start()
    try:
        assert tokens(await run(engine, [1, 2, 3], max_tokens=1))  # the canary passes
        outcomes = []
        for number in range(4):
            try:
                await run(engine, [number, 9], max_tokens=1)
                outcomes.append(True)
            except TandemError as error:
                assert error.code == common_pb2.ERROR_CODE_INTERNAL
                outcomes.append(False)
        assert outcomes.count(False) == engine.injected_failures
        assert failed is None or engine.injected_failures == failed
        assert engine.load().running == 0
    finally:
        await engine.shutdown()


async def test_a_tenants_salt_keeps_its_blocks_its_own() -> None:
    """The request's salt (vLLM's ``cache_salt``) roots its chain: the same prompt of another
    tenant finds nothing cached, the same tenant's repeat finds it all, and the KV events name
    the tenant's chain (the router's index credits that tenant alone)."""
    events: list[tuple[str, list[bytes], bytes]] = []
    engine = make_engine()
    engine.set_kv_event_sink(lambda kind, hashes, parent: events.append((kind, hashes, parent)))
    await engine.start()
    prompt = list(range(100, 117))  # 4 full blocks + 1 token
    salts = {t: hash_salt("SmolLM2-135M-Instruct", "", t) for t in ("acme", "globex")}

    async def cached(tenant: str, request_id: str) -> int:
        request = EngineRequest(request_id, prompt, Sampling(max_tokens=2),
                                kv_transfer={"salt": salts[tenant].hex()})
        outputs = [output async for output in engine.generate(request)]
        return outputs[0].cached_tokens

    try:
        assert await cached("acme", "a1") == 0
        assert await cached("globex", "g1") == 0  # another tenant: a cold prompt
        assert await cached("acme", "a2") == 16  # the same tenant: every whole block
        stored = {h for kind, hashes, _ in events if kind == "stored" for h in hashes}
        for salt in salts.values():
            assert set(block_hashes(prompt, BLOCK, salt)) <= stored
        assert not set(block_hashes(prompt, BLOCK, hash_salt("SmolLM2-135M-Instruct"))) & stored
    finally:
        await engine.shutdown()
