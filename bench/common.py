"""Helpers shared by the benchmarks: figures with unit, baseline and target; table; JSON."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


@dataclasses.dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""
    met: bool | None = None


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(name: str, figures: list[Figure], extra: dict[str, object] | None = None) -> None:
    """Prints a table and writes bench/results/<name>.json."""
    width = max(len(f.name) for f in figures)
    print(f"\n{'figure':{width}s}  {'value':>12s} {'unit':10s} {'baseline (same run)':>30s}  "
          "target")
    for f in figures:
        baseline = f"{f.baseline:.4g} ({f.baseline_label})" if f.baseline is not None else ""
        verdict = "" if f.met is None else ("  MET" if f.met else "  MISSED")
        print(f"{f.name:{width}s}  {f.value:12.4g} {f.unit:10s} {baseline:>30s}  "
              f"{f.target}{verdict}")
    RESULTS.mkdir(exist_ok=True)
    payload = {"benchmark": name, "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "machine": platform.machine(), "python": platform.python_version(),
               "figures": [dataclasses.asdict(f) for f in figures], **(extra or {})}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {RESULTS / f'{name}.json'}")
