"""The loads of the planner benchmark: the public traces (``../shared/traces``), rate-scaled to
the simulated fleet, and synthetic step, spike and slow-ramp loads.

Rate scaling keeps a trace's hour and its minute-scale shape: the trace is laid ``k`` times
over itself (the integer part of the factor, plus each request of one more copy with the
fractional part's probability), each copy shifted by a uniform random offset in
[0, ``jitter_s``) (the seed draws them). The factor is chosen so that the trace's mean offered
prefill load is ``prefill_workers`` workers of the profile. Mooncake prompts (~12k tokens on
average, up to 126k) are divided by ``MOONCAKE_SHRINK`` to fit an 8k-16k-context model, and its
512-token prefix blocks with them; a request's cached tokens are its leading blocks already in
a shared LRU prefix cache of ``cache_blocks`` blocks (the KV store every prefill reads). Each
copy has its own block ids (copies share nothing). Azure traces carry no prefix information
(no hits). Synthetic loads are Poisson with a rate function, lengths drawn from the Azure
conversation trace.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import random
from collections import OrderedDict
from collections.abc import Callable
from functools import cache
from pathlib import Path

from bench.planner_sim import Request
from services.planner.core.perf_model import PerformanceModel

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
MOONCAKE_SHRINK = 8
MOONCAKE_BLOCK = 512
HOUR = 3600.0


@dataclasses.dataclass(frozen=True)
class Load:
    name: str
    requests: list[Request]
    duration_s: float
    scale: float
    """Rate factor applied to the trace (1 for synthetic loads)."""
    step_at: float | None = None
    """When the load steps up (for the time-to-recover figure)."""


Row = tuple[float, int, int, tuple[int, ...]]
"""(arrival s, prompt tokens, output tokens, prefix block ids)."""


def traces_dir() -> Path:
    for candidate in (TRACES, Path("/work/shared/traces")):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the shared traces directory (../shared/traces) is missing")


@cache
def azure(name: str) -> tuple[Row, ...]:
    rows = []
    with (traces_dir() / f"azure-llm-2023-{name}.csv").open() as handle:
        for row in csv.DictReader(handle):
            stamp = datetime.datetime.fromisoformat(row["TIMESTAMP"][:26])
            rows.append(
                (
                    stamp.timestamp(),
                    int(row["ContextTokens"]),
                    max(1, int(row["GeneratedTokens"])),
                    (),
                )
            )
    start = rows[0][0]
    return tuple((t - start, p, o, h) for t, p, o, h in rows)


@cache
def mooncake() -> tuple[Row, ...]:
    rows = []
    with (traces_dir() / "mooncake-fast25-conversation.jsonl").open() as handle:
        for line in handle:
            item = json.loads(line)
            rows.append(
                (
                    item["timestamp"] / 1000,
                    max(1, item["input_length"] // MOONCAKE_SHRINK),
                    max(1, item["output_length"]),
                    tuple(item["hash_ids"]),
                )
            )
    return tuple(rows)


def with_cache(rows: list[Row], block_tokens: int, cache_blocks: int) -> list[Request]:
    """Requests whose cached tokens are their leading blocks found in an LRU prefix cache."""
    lru: OrderedDict[int, None] = OrderedDict()
    requests = []
    for arrival, prompt, output, blocks in rows:
        hit = 0
        for block in blocks:
            if block not in lru:
                break
            hit += 1
        for block in blocks:
            lru[block] = None
            lru.move_to_end(block)
        while len(lru) > cache_blocks:
            lru.popitem(last=False)
        cached = min(hit * block_tokens, prompt - 1)
        requests.append(Request(arrival, prompt, output, max(cached, 0)))
    return requests


def scaled(rows: tuple[Row, ...], factor: float, seed: int, jitter_s: float) -> list[Row]:
    rng = random.Random(seed)
    copies = math.floor(factor)
    out: list[Row] = []
    for copy in range(copies + 1):
        share = 1.0 if copy < copies else factor - copies
        if share <= 0:
            break
        offset = 0.0 if copy == 0 else rng.uniform(0, jitter_s)
        salt = copy << 40
        out.extend(
            (t + offset, p, o, tuple(b + salt for b in h))
            for t, p, o, h in rows
            if share >= 1 or rng.random() < share
        )
    out.sort(key=lambda row: row[0])
    return out


def rate_factor(rows: tuple[Row, ...], model: PerformanceModel, prefill_workers: float) -> float:
    """The factor that makes the mean offered prefill load ``prefill_workers`` workers."""
    duration = rows[-1][0] - rows[0][0]
    work = sum(model.prefill_s(p) for _, p, _, _ in rows)
    return prefill_workers * duration / work


def trace_load(
    name: str,
    model: PerformanceModel,
    seed: int,
    prefill_workers: float,
    jitter_s: float,
    cache_blocks: int,
    hours: float = 1.0,
) -> Load:
    rows = mooncake() if name == "mooncake" else azure(name)
    rows = tuple(row for row in rows if row[0] < hours * HOUR)
    factor = rate_factor(rows, model, prefill_workers)
    block = MOONCAKE_BLOCK // MOONCAKE_SHRINK
    requests = with_cache(scaled(rows, factor, seed, jitter_s), block, cache_blocks)
    duration = min(hours * HOUR, max(r.arrival for r in requests))
    return Load(name, requests, duration, factor)


RateFn = Callable[[float], float]


def poisson(rate: RateFn, peak: float, duration: float, seed: int) -> list[Request]:
    """Poisson arrivals of ``rate(t)`` (≤ ``peak``) by thinning, Azure-conversation lengths."""
    rng = random.Random(seed)
    lengths = azure("conv")
    t = 0.0
    out: list[Request] = []
    while True:
        t += rng.expovariate(peak)
        if t >= duration:
            return out
        if rng.random() * peak <= rate(t):
            _, prompt, output, _ = lengths[rng.randrange(len(lengths))]
            out.append(Request(t, prompt, output))


def synthetic_load(kind: str, base_rate: float, seed: int, hours: float = 1.0) -> Load:
    """``step`` (x3 for the middle third), ``spike`` (x4 for 2 minutes at 42% of the run),
    ``ramp`` (linearly to x3 at half time and back)."""
    duration = hours * HOUR
    third = duration / 3
    spike_at = 0.42 * duration
    rates: dict[str, tuple[RateFn, float, float | None]] = {
        "step": (lambda t: base_rate * (3 if third <= t < 2 * third else 1), 3 * base_rate, third),
        "spike": (
            lambda t: base_rate * (4 if spike_at <= t < spike_at + 120 else 1),
            4 * base_rate,
            spike_at,
        ),
        "ramp": (
            lambda t: base_rate * (1 + 2 * (1 - abs(2 * t / duration - 1))),
            3 * base_rate,
            None,
        ),
    }
    rate, peak, step_at = rates[kind]
    return Load(kind, poisson(rate, peak, duration, seed), duration, 1.0, step_at)
