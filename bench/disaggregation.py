"""Disaggregated serving with the real engine (vLLM CPU build): `make bench-disaggregation`.

Starts the local system twice on this machine's cores, each vLLM worker pinned to its own core:
1. disaggregated: 1 prefill + 1 decode worker (router `--disaggregation auto`);
2. aggregated: 2 decode workers, no prefill worker (the same hardware, every worker prefills
   its own prompts).
and measures, in the same run:
- greedy identity: disaggregated output (prefill → KV store → decode) against the decode worker
  prefilling the same prompt itself, cold and with its prefix cache warm, 10 to 3,000 tokens;
- for 1,500-token prompts: the decode worker's time to first token after a remote prefill,
  against the time the same blocks take to load from the KV store (target: ≤ load + 20 ms);
  and the KV transfer's share (put + get) of the request's end-to-end latency;
- under a mixed load (long prompts arriving while other requests decode): the inter-token
  latency p50/p99 of the running decodes, disaggregated vs aggregated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator

import grpc
import httpx
import redis

from bench.common import Figure, percentile, report
from services.router.core.disaggregation import DisaggregationMode
from services.router.prompts import PromptBuilder
from tandem.discovery import WorkerInfo, worker_key
from tandem.hashing import hash_salt
from tandem.kvclient.client import KVClient
from tandem.launch import LaunchSettings, LocalSystem
from tandem.model import DEFAULT_MODEL_NAME, default_model_dir
from tandem.redis_local import free_port
from tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.e2e.test_disaggregation import english_text

MODEL = DEFAULT_MODEL_NAME


@contextlib.contextmanager
def local_system(prefill_workers: int, decode_workers: int,
                 mode: DisaggregationMode) -> Iterator[LocalSystem]:
    run_dir = tempfile.mkdtemp(prefix="bench-disagg-")
    settings = LaunchSettings(
        http_port=free_port(), grpc_port=free_port(), run_dir=run_dir,
        prefill_workers=prefill_workers, decode_workers=decode_workers, disaggregation=mode,
        namespace=f"bench-{os.getpid()}-{prefill_workers}p{decode_workers}d")
    system = LocalSystem(settings)
    print(f"==> starting {prefill_workers} prefill + {decode_workers} decode ({mode})",
          flush=True)
    try:
        system.start()
        yield system
    finally:
        system.stop()


def worker_address(system: LocalSystem, worker_id: str) -> str:
    with redis.Redis.from_url(system.redis_url) as client:
        raw = client.get(worker_key(system.settings.namespace, worker_id))
    assert raw is not None, f"{worker_id} is not registered"
    return WorkerInfo.from_json(raw).address


def greedy(max_tokens: int) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


async def first_and_all(stub: worker_pb2_grpc.DecodeServiceStub,
                        request: worker_pb2.GenerateRequest) -> tuple[float, list[int]]:
    started = time.perf_counter()
    first = 0.0
    tokens: list[int] = []
    async for response in stub.Generate(request):
        if not tokens:
            first = time.perf_counter() - started
        tokens += response.delta.token_ids
    return first, tokens


async def handoff_figures(system: LocalSystem, prompts: PromptBuilder, lengths: list[int],
                          repeats: int) -> tuple[list[Figure], dict[str, object]]:
    corpus = prompts.completion(english_text())
    decode_channel = grpc.aio.insecure_channel(worker_address(system, "decode-0"))
    prefill_channel = grpc.aio.insecure_channel(worker_address(system, "prefill-0"))
    decode = worker_pb2_grpc.DecodeServiceStub(decode_channel)
    prefill = worker_pb2_grpc.PrefillServiceStub(prefill_channel)
    store = KVClient(system.kvstore_address)
    await store.connect()
    identical: dict[int, bool] = {}
    identical_warm: dict[int, bool] = {}
    vllm_consistent: dict[int, bool] = {}
    decode_ttft: list[float] = []
    load_s: list[float] = []
    prefill_s: list[float] = []
    put_share: list[float] = []
    try:
        for length in lengths:
            prompt = corpus[:length]
            aggregated = worker_pb2.GenerateRequest(
                request_id=f"agg-{length}", prompt_token_ids=prompt, sampling=greedy(16),
                model=MODEL, hash_salt=hash_salt(MODEL, "", f"agg-{length}"))
            _, cold = await first_and_all(decode, aggregated)
            aggregated.request_id = f"agg-warm-{length}"
            _, warm = await first_and_all(decode, aggregated)  # whole blocks from its cache
            salt = hash_salt(MODEL, "", f"dis-{length}")
            handoff = await prefill.Prefill(worker_pb2.PrefillRequest(
                request_id=f"pre-{length}", prompt_token_ids=prompt, sampling=greedy(16),
                model=MODEL, hash_salt=salt))
            _, continued = await first_and_all(decode, worker_pb2.GenerateRequest(
                request_id=f"dec-{length}", prompt_token_ids=prompt, sampling=greedy(16),
                model=MODEL, first_token_id=handoff.first_token_id,
                kv_handle=handoff.kv_handle, hash_salt=salt))
            disaggregated = [handoff.first_token_id, *continued]
            identical[length] = disaggregated == cold
            identical_warm[length] = disaggregated == warm
            vllm_consistent[length] = cold == warm
            print(f"   {length} tokens: disaggregated == aggregated cold {identical[length]}, "
                  f"== warm {identical_warm[length]} (vLLM cold == warm: "
                  f"{vllm_consistent[length]})", flush=True)
        prompt = corpus[:1500]
        for repeat in range(repeats):
            salt = hash_salt(MODEL, "", f"ttft-{repeat}")
            started = time.perf_counter()
            handoff = await prefill.Prefill(worker_pb2.PrefillRequest(
                request_id=f"ttft-pre-{repeat}", prompt_token_ids=prompt, sampling=greedy(32),
                model=MODEL, hash_salt=salt))
            prefill_s.append(time.perf_counter() - started)
            hashes = list(handoff.kv_handle.block_hashes)
            loaded_at = time.perf_counter()
            blocks = await store.get(hashes)
            load_s.append(time.perf_counter() - loaded_at)
            assert len(blocks) == len(hashes), "the store lost blocks of a fresh prefill"
            first, _ = await first_and_all(decode, worker_pb2.GenerateRequest(
                request_id=f"ttft-dec-{repeat}", prompt_token_ids=prompt, sampling=greedy(32),
                model=MODEL, first_token_id=handoff.first_token_id,
                kv_handle=handoff.kv_handle, hash_salt=salt))
            decode_ttft.append(first)
            total = time.perf_counter() - started
            # The put rides inside the prefill; time the same bytes into the store to know it.
            fresh = [hashlib.blake2b(h + b"put-timing", digest_size=16).digest() for h in hashes]
            put_at = time.perf_counter()
            await store.put(fresh, blocks)
            put_s = time.perf_counter() - put_at
            put_share.append((put_s + load_s[-1]) / total)
    finally:
        await store.close()
        await decode_channel.close()
        await prefill_channel.close()
    ttft = percentile(decode_ttft, 0.5)
    load = percentile(load_s, 0.5)
    figures = [
        Figure("disaggregated == aggregated (cold)",
               float(sum(identical.values())), "prompts", float(len(identical)),
               "prompts tried", "all identical", all(identical.values())),
        Figure("disaggregated == aggregated (warm prefix cache)",
               float(sum(identical_warm.values())), "prompts",
               float(sum(vllm_consistent.values())), "prompts where vLLM's cold == warm"),
        Figure("decode TTFT after remote prefill, 1500 tok, p50", ttft * 1000, "ms",
               load * 1000, "KV load of the same blocks", "≤ load + 20 ms",
               ttft <= load + 0.020),
        Figure("remote prefill (compute + KV put), 1500 tok, p50",
               percentile(prefill_s, 0.5) * 1000, "ms"),
        Figure("KV transfer share of request latency, 1500 tok", percentile(put_share, 0.5),
               "fraction"),
    ]
    return figures, {"identical_cold": identical, "identical_warm": identical_warm,
                     "vllm_cold_equals_warm": vllm_consistent, "decode_ttft_s": decode_ttft,
                     "load_s": load_s}


async def mixed_load(system: LocalSystem, seconds: float, streams: int
                     ) -> tuple[list[float], int]:
    """Short prompts decoding 200 tokens each, back to back, while 1,500-token prompts arrive
    every 2 s; returns the running decodes' inter-token gaps and how many long prompts ran."""
    url = f"http://{system.settings.host}:{system.settings.http_port}"
    text = english_text()
    gaps: list[float] = []
    long_done = 0
    stop_at = time.monotonic() + seconds

    async def decoder(client: httpx.AsyncClient, index: int) -> None:
        while time.monotonic() < stop_at:
            body = {"model": MODEL, "prompt": f"Story {index}: once upon a time",
                    "max_tokens": 200, "ignore_eos": True, "stream": True}
            last = None
            async with client.stream("POST", "/v1/completions", json=body) as reply:
                async for line in reply.aiter_lines():
                    if line.startswith("data: {"):
                        now = time.perf_counter()
                        if last is not None:
                            gaps.append(now - last)
                        last = now

    async def long_prompts(client: httpx.AsyncClient) -> None:
        nonlocal long_done
        number = 0
        while time.monotonic() < stop_at:
            number += 1
            body = {"model": MODEL, "prompt": f"{number}. " + text[:6500], "max_tokens": 4,
                    "ignore_eos": True}
            started = time.monotonic()
            reply = await client.post("/v1/completions", json=body)
            if reply.status_code == 200:
                long_done += 1
            await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - started)))

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await asyncio.gather(*(decoder(client, i) for i in range(streams)), long_prompts(client))
    return gaps, long_done


async def main_async(args: argparse.Namespace) -> None:
    prompts = PromptBuilder(str(default_model_dir()), 4096)
    with local_system(1, 1, "auto") as system:
        figures, extra = await handoff_figures(system, prompts, args.lengths, args.repeats)
        disagg_gaps, disagg_long = await mixed_load(system, args.seconds, args.streams)
    with local_system(0, 2, "never") as system:
        agg_gaps, agg_long = await mixed_load(system, args.seconds, args.streams)
    d99, a99 = percentile(disagg_gaps, 0.99), percentile(agg_gaps, 0.99)
    figures += [
        Figure("mixed load ITL p50, disaggregated", percentile(disagg_gaps, 0.5) * 1000, "ms",
               percentile(agg_gaps, 0.5) * 1000, "aggregated, 2 decode workers"),
        Figure("mixed load ITL p99, disaggregated", d99 * 1000, "ms", a99 * 1000,
               "aggregated, 2 decode workers", "report both"),
        Figure("mixed load long prompts served, disaggregated", float(disagg_long), "requests",
               float(agg_long), "aggregated"),
    ]
    report("disaggregation", figures, {**extra, "seconds": args.seconds,
                                       "streams": args.streams})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 300, 1500, 3000],
                        help="prompt lengths of the identity check (tokens)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="1,500-token hand-offs timed")
    parser.add_argument("--seconds", type=float, default=40.0,
                        help="duration of each mixed-load run")
    parser.add_argument("--streams", type=int, default=4,
                        help="concurrent decoding requests in the mixed load")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
