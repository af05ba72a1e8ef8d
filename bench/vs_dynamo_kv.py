"""KV routing on Dynamo's own workload (issue 15 item 2), beside Dynamo in the same run.

The peer's ``kv_vs_rr_hard.sh``: 8 workers of 512 KV blocks of 64 tokens (the mocker's vLLM
geometry), 32 system prompts of ~2,000 words each followed by a unique ~50-word suffix, 512
requests at concurrency 32, a new connection per request, 32 output tokens. Dynamo: its
frontend in ``kv`` and ``round-robin`` router modes with 8 mocker workers at real-time speed
(``--speedup-ratio 1``). tandem: its router (``kv`` and ``round_robin`` policies) over 8 mock
decode workers in one process (``services.decode.fleet``) with the same KV geometry, at real
time (5 ms decode steps, 0.05 ms of prefill per uncached prompt token: the mock's defaults;
the two mocks' timing models differ, so TTFT compares routing within a system, not across).
Cached-token fraction: the usage's ``prompt_tokens_details.cached_tokens`` over its prompt
tokens, summed over requests (the loadgen's ``usage_cached_tokens_frac``). Beside them, the
simulation's figure (``bench/routing_quality.py``'s last result: its offered load, 70 % of
the ``kv`` policy's capacity, favours ``kv``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import RESULTS, Figure
from bench.peer_dynamo import Dynamo, load_average, loadgen
from bench.vs_dynamo import start_tandem
from tandem.redis_local import PrivateRedis
from tandem.service.spawn import stop_all

BLOCKS, BLOCK_SIZE, WORKERS = 512, 64, 8
FLOOR = 0.85
"""tandem's kv cached fraction on this workload must stay at or above this (issue 15)."""


def workload(requests: int) -> list[str]:
    return ["--new-conn", "--workload", "prefix", "--num-prefixes", "32", "--prefix-words",
            "2000", "--suffix-words", "50", "--num-requests", str(requests), "--concurrency",
            "32", "--max-tokens", "32", "--seed", "2", "--warmup", "0"]


def _row(row: dict[str, object], system: str, policy: str) -> dict[str, object]:
    ttft = row["ttft_ms"]
    assert isinstance(ttft, dict)
    return {"system": system, "policy": policy, "cached_fraction":
            row["usage_cached_tokens_frac"], "ttft_mean_ms": ttft["mean"],
            "ttft_p50_ms": ttft["p50"], "ttft_p99_ms": ttft["p99"],
            "req_per_s": row["req_per_s"], "errors": row["errors"],
            "first_error": row["first_error"], "mean_in_tokens": row["mean_in_tokens"],
            "load_average": load_average()}


def kv_runs(home: Path, ports: dict[str, int], requests: int) -> list[dict[str, object]]:
    rows = []
    for mode in ("kv", "round-robin"):
        print(f"==> kv workload: Dynamo, router mode {mode}", file=sys.stderr, flush=True)
        with Dynamo(home, mode, ["--num-workers", str(WORKERS), "--speedup-ratio", "1",
                                 "--num-gpu-blocks-override", str(BLOCKS),
                                 "--block-size", str(BLOCK_SIZE)],
                    ports["dynamo"], (ports["zmq_xsub"], ports["zmq_xpub"])) as peer:
            row = loadgen(home, ports["dynamo"], f"dynamo_hard_{mode}", peer.pids(),
                          workload(requests))
        rows.append(_row(row, "dynamo", mode))
    for policy in ("kv", "round_robin"):
        print(f"==> kv workload: tandem, policy {policy}", file=sys.stderr, flush=True)
        redis = PrivateRedis(port=ports["redis"])
        processes = start_tandem(redis.url, ports["tandem"], policy, [
            "--mock-block-size", str(BLOCK_SIZE), "--mock-num-blocks", str(BLOCKS)],
            fleet=WORKERS)
        try:
            row = loadgen(home, ports["tandem"], f"tandem_hard_{policy}",
                          {"router": processes[-1].pid, "fleet": processes[0].pid},
                          workload(requests))
        finally:
            stop_all(processes, timeout_s=30)
            redis.stop()
        rows.append(_row(row, "tandem", policy))
    print_table(rows)
    return rows


def simulated() -> tuple[float | None, str]:
    """The simulation's kv cached fraction and the date of its last result."""
    path = RESULTS / "routing_quality.json"
    if not path.is_file():
        return None, ""
    result = json.loads(path.read_text())
    value = next((f["value"] for f in result["figures"] if f["name"] == "kv cached fraction"),
                 None)
    return value, result.get("at", "")


def print_table(rows: list[dict[str, object]]) -> None:
    print("\n| system | policy | cached fraction | TTFT mean / p50 / p99 ms | req/s | errors | "
          "load |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['policy']} | {_f(r['cached_fraction'], 3)} | "
              f"{_f(r['ttft_mean_ms'], 1)} / {_f(r['ttft_p50_ms'], 1)} / "
              f"{_f(r['ttft_p99_ms'], 1)} | {_f(r['req_per_s'], 1)} | {r['errors']} | "
              f"{_f(r['load_average'], 1)} |")
    value, at = simulated()
    if value is not None:
        print(f"simulation (bench/routing_quality.py, {at}): kv cached fraction {value:.3f}")


def _f(value: object, digits: int) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"  # type: ignore[arg-type]


def kv_figures(rows: list[dict[str, object]]) -> list[Figure]:
    def of(system: str, policy: str) -> dict[str, object]:
        return next(r for r in rows if r["system"] == system and r["policy"] == policy)

    t_kv, t_rr = of("tandem", "kv"), of("tandem", "round_robin")
    d_kv, d_rr = of("dynamo", "kv"), of("dynamo", "round-robin")
    tandem_kv = float(t_kv["cached_fraction"] or 0)  # type: ignore[arg-type]
    figures = [
        Figure("kv workload: tandem kv cached fraction", tandem_kv, "fraction",
               d_kv["cached_fraction"], "Dynamo kv",  # type: ignore[arg-type]
               f">= {FLOOR}", tandem_kv >= FLOOR),
        Figure("kv workload: tandem round_robin cached fraction",
               float(t_rr["cached_fraction"] or 0), "fraction",  # type: ignore[arg-type]
               d_rr["cached_fraction"], "Dynamo round-robin"),  # type: ignore[arg-type]
        Figure("kv workload: tandem kv TTFT mean", float(t_kv["ttft_mean_ms"]), "ms",  # type: ignore[arg-type]
               t_rr["ttft_mean_ms"], "tandem round_robin"),  # type: ignore[arg-type]
        Figure("kv workload: Dynamo kv TTFT mean", float(d_kv["ttft_mean_ms"]), "ms",  # type: ignore[arg-type]
               d_rr["ttft_mean_ms"], "Dynamo round-robin"),  # type: ignore[arg-type]
    ]
    value, _ = simulated()
    if value is not None:
        figures.append(Figure("kv workload: simulation's kv cached fraction", value,
                              "fraction"))
    return figures
