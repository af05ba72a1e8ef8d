"""The load-test command runs locust headless against the running system for a fixed time and
writes its CSV, a plot of latency percentiles over time, and a summary with TTFT and stream
times recorded as their own events."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_locust_run_writes_csv_plot_and_summary(running_system: Any, tmp_path: Path) -> None:
    out = tmp_path / "load"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "load" / "run_locust.py"),
         "--url", running_system.router_http_url, "--grpc-address",
         running_system.router_grpc_address, "--user-class", "OpenAIStreamingUser",
         "--user-class", "GrpcChatUser", "--users", "2", "--spawn-rate", "2",
         "--run-time", "15s", "--max-tokens", "16", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    for name in ("locust_stats.csv", "locust_stats_history.csv", "latency.png",
                 "summary.json"):
        assert (out / name).is_file(), f"{name} missing"
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    for event in ("TTFT chat.completions", "STREAM chat.completions"):
        assert summary[event]["count"] > 0 and summary[event]["failures"] == 0, summary
    # A stream ends after its first token arrives.
    assert summary["STREAM chat.completions"]["p50"] >= summary["TTFT chat.completions"]["p50"]
    with (out / "locust_stats.csv").open(newline="") as handle:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(handle)}
    assert int(rows[("", "Aggregated")]["Failure Count"]) == 0
