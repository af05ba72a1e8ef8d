"""Routing quality on a prefix-heavy workload: kv vs round_robin vs least_loaded (and random).

    python -m bench.routing_quality [--profile cpu-smollm2-135m|h100-llama3-70b] [--requests N]

A discrete-event simulation in one process (virtual time, no sleeping): 8 simulated workers
(``MockCore``: the mock engine's scheduler, block pool and step-time model from the named
profile), the router's policies and its block index fed directly by the workers' KV events.
Workload: 32 system prompts of 2-4k tokens; each request is one prompt (uniformly chosen) plus
a unique 64-256-token suffix and generates 32-128 tokens. Each worker's KV cache is sized so
the prompts fit the fleet's cache but not one worker's. Arrivals are Poisson at 70% of the
fleet's capacity, measured in the same run as the throughput of the kv policy when every
request is queued at once. The oracle cached fraction assumes one infinite cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import random
from itertools import count

from bench.common import Figure, percentile, report
from services.router.core.decision import RouteQuery, WorkerState
from services.router.core.index import BlockIndex
from services.router.core.policies import make_policy
from services.router.core.routing_settings import RoutingSettings
from tandem.engines.mock.core import CoreLimits, MockCore, StepOutput
from tandem.engines.mock.perf import load_profile
from tandem.hashing import block_hashes, hash_salt

SALT = hash_salt("bench-model")


@dataclasses.dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    requests: list[tuple[list[int], int]]
    """(prompt tokens, output tokens) per request."""


def make_workload(num_requests: int, seed: int) -> Workload:
    rng = random.Random(seed)
    prefixes = [[rng.randrange(1, 49152) for _ in range(rng.randrange(2048, 4097))]
                for _ in range(32)]
    requests = []
    for _ in range(num_requests):
        prefix = rng.choice(prefixes)
        suffix = [rng.randrange(1, 49152) for _ in range(rng.randrange(64, 257))]
        requests.append((prefix + suffix, rng.randrange(32, 129)))
    return Workload(prefixes, requests)


def oracle_cached_fraction(workload: Workload, block_size: int) -> float:
    seen: set[bytes] = set()
    cached = total = 0
    for prompt, _ in workload.requests:
        hashes = block_hashes(prompt, block_size, SALT)
        hit = 0
        for block_hash in hashes:
            if block_hash not in seen:
                break
            hit += 1
        cached += hit * block_size
        total += len(prompt)
        seen.update(hashes)
    return cached / total


@dataclasses.dataclass
class Outcome:
    ttft: list[float]
    cached_tokens: int
    prompt_tokens: int
    output_tokens: int
    makespan: float


def simulate(policy_name: str, workload: Workload, arrivals: list[float], limits: CoreLimits,
             profile_name: str, settings: RoutingSettings, workers: int) -> Outcome:
    profile = load_profile(profile_name)
    index = BlockIndex()
    cores = []
    for worker in range(workers):
        source = f"worker:w{worker}"

        def sink(kind: str, hashes: list[bytes], parent: bytes, source: str = source) -> None:
            if kind == "stored":
                index.stored(source, hashes)
            elif kind == "removed":
                index.removed(source, hashes)
            else:
                index.cleared(source)

        cores.append(MockCore(limits, profile, SALT, 49152, 0, True, sink))
    policy = make_policy(policy_name, index, seed=1)
    pending = [0] * workers
    pending_of: dict[str, tuple[int, int]] = {}
    arrival_of: dict[str, float] = {}
    busy = [False] * workers
    ttft: list[float] = []
    cached = prompt_tokens = output_tokens = 0
    events: list[tuple[float, int, str, int]] = []
    order = count()
    for number, at in enumerate(arrivals):
        heapq.heappush(events, (at, next(order), "arrive", number))
    now = 0.0
    pending_steps: dict[int, list[StepOutput]] = {}
    while events:
        now, _, kind, subject = heapq.heappop(events)
        if kind == "arrive":
            prompt, max_tokens = workload.requests[subject]
            request_id = str(subject)
            hashes = block_hashes(prompt, limits.block_size, SALT)
            states = [WorkerState(f"w{w}", len(c.running), len(c.waiting), c.pool.used_blocks,
                                  c.pool.num_blocks, pending[w]) for w, c in enumerate(cores)]
            decision = policy.choose(RouteQuery(hashes, len(prompt), limits.block_size),
                                     states, settings)
            worker = int(decision.worker_id[1:])
            blocks = len(hashes) - decision.chosen.device_overlap_blocks
            pending[worker] += blocks
            pending_of[request_id] = (worker, blocks)
            arrival_of[request_id] = now
            cores[worker].add(request_id, prompt, max_tokens, (), True, random.Random(subject))
            prompt_tokens += len(prompt)
        else:  # a worker's step ended: deliver its outputs
            worker = subject
            for output in pending_steps.pop(worker):
                output_tokens += len(output.token_ids)
                if output.request_id in pending_of:
                    owner, blocks = pending_of.pop(output.request_id)
                    pending[owner] -= blocks
                    ttft.append(now - arrival_of[output.request_id])
                    cached += output.cached_tokens
            busy[worker] = False
        for worker, core in enumerate(cores):
            if not busy[worker] and core.has_work():
                result = core.step()
                pending_steps[worker] = result.outputs
                busy[worker] = True
                heapq.heappush(events, (now + result.duration_s, next(order), "step", worker))
    return Outcome(ttft, cached, prompt_tokens, output_tokens, now - arrivals[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu-smollm2-135m")
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--load", type=float, default=0.7, help="fraction of capacity")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    profile = load_profile(args.profile)
    block_size = 16
    workload = make_workload(args.requests, args.seed)
    prefix_blocks = sum(len(p) // block_size for p in workload.prompts)
    # Each worker caches about a third of the prompt set: the fleet holds them all (2.7x).
    limits = CoreLimits(block_size=block_size, num_blocks=prefix_blocks // 3,
                        max_num_seqs=min(profile.max_num_seqs, 64),
                        max_num_batched_tokens=profile.max_num_batched_tokens,
                        max_model_len=8192)
    settings = RoutingSettings()
    saturated = simulate("kv", workload, [0.0] * len(workload.requests), limits, args.profile,
                         settings, args.workers)
    capacity = len(workload.requests) / saturated.makespan
    rate = args.load * capacity
    rng = random.Random(args.seed)
    arrivals, at = [], 0.0
    for _ in workload.requests:
        at += rng.expovariate(rate)
        arrivals.append(at)
    oracle = oracle_cached_fraction(workload, block_size)
    figures: list[Figure] = [
        Figure("capacity (kv, saturated)", capacity, "req/s"),
        Figure("offered load", rate, "req/s", capacity, "capacity", f"{args.load:.0%} of it"),
        Figure("oracle cached fraction", oracle, "fraction"),
    ]
    results = {}
    for name in ("kv", "round_robin", "least_loaded", "random"):
        outcome = simulate(name, workload, arrivals, limits, args.profile, settings,
                           args.workers)
        results[name] = outcome
        print(f"  {name}: simulated {outcome.makespan:.0f} s", flush=True)
    rr_mean = sum(results["round_robin"].ttft) / len(results["round_robin"].ttft)
    for name, outcome in results.items():
        fraction = outcome.cached_tokens / outcome.prompt_tokens
        mean = sum(outcome.ttft) / len(outcome.ttft)
        is_kv = name == "kv"
        figures += [
            Figure(f"{name} cached fraction", fraction, "fraction", oracle, "oracle",
                   ">= 0.9 x oracle" if is_kv else "", fraction >= 0.9 * oracle if is_kv else None),
            Figure(f"{name} TTFT mean", mean, "s", rr_mean, "round_robin",
                   "<= round_robin / 3" if is_kv else "", mean * 3 <= rr_mean if is_kv else None),
            Figure(f"{name} TTFT p50", percentile(outcome.ttft, 0.5), "s"),
            Figure(f"{name} TTFT p99", percentile(outcome.ttft, 0.99), "s"),
            Figure(f"{name} throughput", outcome.output_tokens / outcome.makespan, "tok/s"),
        ]
    report("routing_quality", figures, {
        "profile": args.profile, "workers": args.workers, "requests": args.requests,
        "kv_blocks_per_worker": limits.num_blocks, "prefix_set_blocks": prefix_blocks,
        "routing_settings": dataclasses.asdict(settings),
        "simulation": "discrete-event, virtual time, one process",
        "command": f"python -m bench.routing_quality --profile {args.profile}",
    })


if __name__ == "__main__":
    main()
