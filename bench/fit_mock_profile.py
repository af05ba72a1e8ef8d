"""Fits the mock engine's performance model to the real vLLM CPU engine on this machine.

    python -m bench.fit_mock_profile [--out tandem/engines/mock/profiles/cpu-smollm2-135m.json]

Runs vLLM's AsyncLLM on the default model (``python -m tandem.model path``) with
VLLM_CPU_KVCACHE_SPACE=1, enforce_eager=True and prefix caching off, and measures

- prefill: one request at a time, prompts of several lengths, max_tokens=1 (time to first
  token; chunked prefill splits long prompts into several steps);
- decode: batches of B equal requests with prompt length L, 32 output tokens each; the mean
  time per step once every request of the batch has its first token.

Every measurement is a sum of steps whose times are linear in the model's coefficients
(``tandem/engines/mock/perf.py``), so the fit is a non-negative least squares on step
features. Writes the profile JSON with its fit error; takes a couple of minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from tandem.engines.mock.perf import PROFILE_DIR, PerfProfile
from tandem.model import default_model_dir, offline_environment

FEATURES = ("step_overhead_s", "prefill_token_s", "prefill_attention_s", "decode_seq_s",
            "decode_context_s")
PREFILL_LENGTHS = (32, 128, 512, 1024, 2048, 3072)
DECODE_SHAPES = ((1, 128), (4, 128), (16, 128), (1, 1536), (8, 1024), (32, 256))
DECODE_TOKENS = 32
REPEATS = 3


def prefill_features(prompt_len: int, chunk: int) -> list[float]:
    steps, attended, start = 0, 0.0, 0
    while start < prompt_len:
        size = min(chunk, prompt_len - start)
        attended += size * (start + size / 2)
        start += size
        steps += 1
    return [steps, prompt_len, attended, 0.0, 0.0]


def decode_step_features(batch: int, context: int) -> list[float]:
    return [1.0, 0.0, 0.0, batch, batch * context]


def nnls(matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative least squares by elimination, on relative errors (rows pre-scaled)."""
    active = list(range(matrix.shape[1]))
    solution = np.zeros(matrix.shape[1])
    while active:
        coef, *_ = np.linalg.lstsq(matrix[:, active], target, rcond=None)
        if (coef >= 0).all():
            solution[active] = coef
            break
        active.pop(int(np.argmin(coef)))
    return solution


class Measurer:
    def __init__(self, engine: Any, vocab: int) -> None:
        self.engine = engine
        self.vocab = vocab

    def prompt(self, length: int) -> list[int]:
        rng = np.random.default_rng(abs(hash(uuid.uuid4())) % 2**32)
        return [int(t) for t in rng.integers(100, self.vocab - 100, size=length)]

    async def _one(self, prompt: list[int], max_tokens: int) -> list[float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                                output_kind=RequestOutputKind.DELTA)
        stamps = []
        async for output in self.engine.generate(TokensPrompt(prompt_token_ids=prompt), params,
                                                 uuid.uuid4().hex):
            now = time.perf_counter()
            stamps.extend([now] * len(output.outputs[0].token_ids))
        return stamps

    async def prefill(self, length: int) -> float:
        started = time.perf_counter()
        stamps = await self._one(self.prompt(length), 1)
        return stamps[0] - started

    async def decode(self, batch: int, length: int) -> float:
        runs = await asyncio.gather(*(self._one(self.prompt(length), DECODE_TOKENS)
                                      for _ in range(batch)))
        all_first = max(stamps[0] for stamps in runs)
        last = max(stamps[-1] for stamps in runs)
        steps = min(sum(1 for t in stamps if t > all_first) for stamps in runs)
        return (last - all_first) / max(steps, 1)


async def measure(model_dir: Path, chunk: int) -> tuple[list[list[float]], list[float],
                                                        list[str], dict[str, Any]]:
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model=str(model_dir), enforce_eager=True, enable_prefix_caching=False,
        max_model_len=4096, max_num_seqs=64, max_num_batched_tokens=chunk, dtype="bfloat16",
    ))
    cache = engine.vllm_config.cache_config
    model, parallel = engine.vllm_config.model_config, engine.vllm_config.parallel_config
    dtype = model.dtype
    assert not isinstance(dtype, str), "vLLM resolves the model's dtype when it builds the engine"
    info = {"block_size": int(cache.block_size), "num_blocks": int(cache.num_gpu_blocks or 0),
            "max_num_seqs": 64, "max_num_batched_tokens": chunk,
            "kv_bytes_per_token": 2 * model.get_num_layers(parallel)  # K and V
            * model.get_num_kv_heads(parallel) * model.get_head_size()
            * dtype.itemsize}
    measurer = Measurer(engine, 49152)
    rows: list[list[float]] = []
    times: list[float] = []
    labels: list[str] = []
    try:
        await measurer.prefill(64)  # warm up
        await measurer.decode(2, 64)
        for length in PREFILL_LENGTHS:
            seconds = statistics.median([await measurer.prefill(length) for _ in range(REPEATS)])
            rows.append(prefill_features(length, chunk))
            times.append(seconds)
            labels.append(f"prefill L={length}")
            print(f"  prefill {length:5d} tokens: {seconds * 1000:8.1f} ms", flush=True)
        for batch, length in DECODE_SHAPES:
            seconds = statistics.median([await measurer.decode(batch, length)
                                         for _ in range(REPEATS)])
            rows.append(decode_step_features(batch, length + DECODE_TOKENS // 2))
            times.append(seconds)
            labels.append(f"decode B={batch} L={length}")
            print(f"  decode batch {batch:3d} x {length:5d} ctx: {seconds * 1000:8.2f} ms/step",
                  flush=True)
    finally:
        engine.shutdown()
    return rows, times, labels, info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=PROFILE_DIR / "cpu-smollm2-135m.json")
    parser.add_argument("--chunk", type=int, default=2048,
                        help="max_num_batched_tokens of the measured engine")
    args = parser.parse_args(argv)
    offline_environment()
    model_dir = default_model_dir()
    started = time.monotonic()
    rows, times, labels, info = asyncio.run(measure(model_dir, args.chunk))
    matrix = np.array(rows, dtype=float)
    target = np.array(times, dtype=float)
    scale = 1.0 / target  # fit relative errors: short steps matter as much as long prefills
    coef = nnls(matrix * scale[:, None], target * scale)
    predicted = matrix @ coef
    errors = np.abs(predicted - target) / target
    for label, real, model in zip(labels, target, predicted, strict=True):
        print(f"  {label:24s} measured {real * 1000:9.2f} ms  model {model * 1000:9.2f} ms")
    profile = PerfProfile(
        name=args.out.stem,
        description=(f"SmolLM2-135M-Instruct bf16 on vLLM {_vllm_version()} CPU build, "
                     f"{os.cpu_count()} cores, enforce_eager, VLLM_CPU_KVCACHE_SPACE=1"),
        source=("measured by `python -m bench.fit_mock_profile` on "
                f"{time.strftime('%Y-%m-%d')} ({time.monotonic() - started:.0f} s)"),
        step_overhead_s=float(coef[0]), prefill_token_s=float(coef[1]),
        prefill_attention_s=float(coef[2]), decode_seq_s=float(coef[3]),
        decode_context_s=float(coef[4]),
        block_size=int(info["block_size"]), num_blocks=int(info["num_blocks"]),
        max_num_seqs=int(info["max_num_seqs"]),
        max_num_batched_tokens=int(info["max_num_batched_tokens"]),
        kv_bytes_per_token=int(info["kv_bytes_per_token"]),
        fit={"mean_relative_error": float(errors.mean()),
             "max_relative_error": float(errors.max()), "samples": float(len(target))},
    )
    args.out.write_text(profile.to_json())
    print(f"wrote {args.out}: mean relative error {errors.mean():.1%}, max {errors.max():.1%}")


def _vllm_version() -> str:
    import vllm

    return str(vllm.__version__)


if __name__ == "__main__":
    main()
