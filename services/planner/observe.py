"""What the planner sees each tick: the routers' Prometheus metrics, scraped and differenced
against the previous tick (requests, tokens, prefix hits, the TTFT and ITL histograms), and
the fleet as the connector reports it, as one ``core.types.Observation``.

Each URL's host is resolved on every scrape and each of its addresses scraped (every router
behind one name). The length samples of an interval are drawn from the routers' histograms of
prompt and output lengths, scaled to the exact mean of the token counters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import socket
import ssl
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.planner.core.types import Observation, Pool, PoolState

REQUESTS = "tandem_router_requests"
RUNNING = "tandem_router_running_requests"
QUEUED = "tandem_router_queued_requests"
TOKENS = "gen_ai_client_token_usage"
PROMPT_BLOCKS = "tandem_router_prompt_blocks"
CACHED_BLOCKS = "tandem_router_cached_blocks"
TTFT = "gen_ai_server_time_to_first_token_seconds"
ITL = "gen_ai_server_time_per_output_token_seconds"
PROMPT_LENGTHS = "tandem_router_prompt_tokens"
OUTPUT_LENGTHS = "tandem_router_output_tokens"
SAMPLES = 64
"""Most length samples one interval gives the core (drawn from the histogram's buckets)."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Cumulative values of the metrics the planner reads, summed over every router."""

    requests: float = 0.0
    """Requests finished (every outcome)."""
    running: float = 0.0
    """Requests in flight."""
    queued: float = 0.0
    """Requests waiting at the router for a slot, or for a first worker (scale-to-zero:
    the demand that brings a pool back from zero)."""
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    prompt_blocks: float = 0.0
    cached_blocks: float = 0.0
    ttft_buckets: Mapping[float, float] = dataclasses.field(default_factory=dict)
    """Cumulative count per upper bound (``le``)."""
    itl_buckets: Mapping[float, float] = dataclasses.field(default_factory=dict)
    prompt_buckets: Mapping[float, float] = dataclasses.field(default_factory=dict)
    """Prompt lengths (routers that export them; empty: only the token counters)."""
    output_buckets: Mapping[float, float] = dataclasses.field(default_factory=dict)


def parse(texts: Iterable[str]) -> Snapshot:
    """One snapshot from the Prometheus text of each router."""
    values: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {TTFT: {}, ITL: {}, PROMPT_LENGTHS: {},
                                              OUTPUT_LENGTHS: {}}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.name
                if name.endswith("_total"):
                    name = name[:-len("_total")]
                if name == TOKENS:
                    name = f"{TOKENS}:{sample.labels.get('gen_ai_token_type', '')}"
                if name.endswith("_bucket") and name[:-len("_bucket")] in buckets:
                    le = float(sample.labels["le"])
                    series = buckets[name[:-len("_bucket")]]
                    series[le] = series.get(le, 0.0) + sample.value
                else:
                    values[name] = values.get(name, 0.0) + sample.value
    return Snapshot(
        requests=values.get(REQUESTS, 0.0), running=values.get(RUNNING, 0.0),
        queued=values.get(QUEUED, 0.0),
        input_tokens=values.get(f"{TOKENS}:input", 0.0),
        output_tokens=values.get(f"{TOKENS}:output", 0.0),
        prompt_blocks=values.get(PROMPT_BLOCKS, 0.0),
        cached_blocks=values.get(CACHED_BLOCKS, 0.0),
        ttft_buckets=buckets[TTFT], itl_buckets=buckets[ITL],
        prompt_buckets=buckets[PROMPT_LENGTHS], output_buckets=buckets[OUTPUT_LENGTHS])


def quantile(q: float, before: Mapping[float, float], after: Mapping[float, float]
             ) -> float | None:
    """The ``q`` quantile of the samples added between two cumulative histograms, linearly
    interpolated within its bucket as Prometheus' ``histogram_quantile`` does (the +Inf
    bucket answers its lower bound); None without a sample."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def length_samples(before: Mapping[float, float], after: Mapping[float, float], mean: float,
                   limit: int = SAMPLES) -> tuple[int, ...]:
    """About ``limit`` lengths shaped like the interval's histogram: each bucket gives its
    share of samples (at least one) at its middle (the last, unbounded one at twice its lower
    bound), then all are scaled so their mean is the interval's true ``mean`` (from the token
    counters). Without new samples in the histogram: the mean alone, once."""
    bounds = sorted(after)
    cumulative = [after[b] - before.get(b, 0.0) for b in bounds]
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return (max(1, round(mean)),) if mean > 0 else ()
    points: list[float] = []
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        new = count - below
        share = max(1, round(new / total * limit)) if new > 0 else 0  # a tail keeps a sample
        middle = 2 * lower if math.isinf(bound) else (lower + bound) / 2
        points += [middle] * share
        lower, below = bound, count
    if not points or mean <= 0:
        return (max(1, round(mean)),) if mean > 0 else ()
    scale = mean / (sum(points) / len(points))
    return tuple(max(1, round(point * scale)) for point in points)


def observation(before: Snapshot, after: Snapshot, now_s: float, interval_s: float,
                percentile: float, pools: Mapping[Pool, PoolState]) -> Observation:
    """The interval between two snapshots as the core's input. Arrivals are the requests
    finished plus the growth of those in flight and of those waiting at the router (a router
    restarted: its counters start again from 0, and the interval counts what the new one
    saw). A request waiting for a first worker counts: scale-to-zero sees it as demand."""
    def delta(field: str) -> float:
        old, new = getattr(before, field), getattr(after, field)
        return new - old if new >= old else new

    finished = delta("requests")
    arrivals = max(0, round(finished + after.running - before.running
                            + after.queued - before.queued))
    prompt = delta("input_tokens") / finished if finished else 0.0
    output = delta("output_tokens") / finished if finished else 0.0
    blocks = delta("prompt_blocks")
    return Observation(
        now_s=now_s, arrivals=arrivals, interval_s=interval_s,
        prompt_tokens=length_samples(before.prompt_buckets, after.prompt_buckets, prompt)
        if finished else (),
        output_tokens=length_samples(before.output_buckets, after.output_buckets, output)
        if finished else (),
        prefix_hit_rate=min(1.0, delta("cached_blocks") / blocks) if blocks > 0 else 0.0,
        observed_ttft_p=quantile(percentile, before.ttft_buckets, after.ttft_buckets),
        observed_itl_p=quantile(percentile, before.itl_buckets, after.itl_buckets),
        pools=pools)


class MetricsScraper:
    """Scrapes the routers' /metrics endpoints (https ones verified with ``verify``: the
    service's TLS client context, or the system's CAs)."""

    def __init__(self, urls: Sequence[str], timeout_s: float,
                 verify: ssl.SSLContext | bool = True) -> None:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per scrape
        self.urls = list(urls)
        self.client = httpx.AsyncClient(timeout=timeout_s, verify=verify)

    async def endpoints(self) -> list[str]:
        """Every URL once per address its host resolves to: a name with one record per
        router (a headless Kubernetes Service, a scaled compose service) scrapes them all."""
        loop = asyncio.get_running_loop()
        found: list[str] = []
        for url in self.urls:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            infos = await loop.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
            for address in sorted({str(info[4][0]) for info in infos}):
                host = f"[{address}]" if ":" in address else address
                found.append(urlunsplit(parts._replace(netloc=f"{host}:{port}")))
        return found

    async def snapshot(self) -> Snapshot:
        texts = []
        for url in await self.endpoints():
            reply = await self.client.get(url)
            reply.raise_for_status()
            texts.append(reply.text)
        return parse(texts)

    async def close(self) -> None:
        await self.client.aclose()
