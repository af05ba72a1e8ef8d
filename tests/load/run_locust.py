"""Runs locust headless against a running tandem for a fixed time, then writes CSV files and a PNG
of latency percentiles over time (TTFT, full stream, inter-token latency).

    python tests/load/run_locust.py --url http://127.0.0.1:8000 --users 4 --run-time 60s
    python tests/load/run_locust.py --user-class GrpcChatUser --grpc-address 127.0.0.1:50050

Writes into --out (default run/load/<UTC timestamp>/): locust_stats.csv,
locust_stats_history.csv, locust_failures.csv, locust_exceptions.csv, latency.png, and
summary.json (percentiles of each event over the whole run). Exit status: locust's (non-zero when
any request failed), or 2 when locust produced no result.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
PERCENTILES = ("50%", "90%", "99%")
EVENT_TYPES = ("TTFT", "STREAM", "ITL")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="router HTTP base URL")
    parser.add_argument("--grpc-address", default="",
                        help="RouterService address (default: the URL's host, port 50050)")
    parser.add_argument("--users", type=int, default=4, help="concurrent users (default 4)")
    parser.add_argument("--spawn-rate", type=float, default=2.0, help="users started per second")
    parser.add_argument("--run-time", default="60s", help="e.g. 30s, 5m (default 60s)")
    parser.add_argument("--user-class", action="append", dest="user_classes",
                        choices=("OpenAIStreamingUser", "GrpcChatUser"),
                        help="user classes to run (repeatable; default: OpenAIStreamingUser)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--model", default="", help="model (default: the first one served)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default run/load/<timestamp>)")
    parser.add_argument("--title", default="", help="title of the plot")
    return parser.parse_args(argv)


def run_locust(args: argparse.Namespace, out: Path) -> int:
    prefix = out / "locust"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", args.url, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
        "--run-time", args.run_time, "--stop-timeout", "30",
        "--csv", str(prefix), "--csv-full-history", "--only-summary",
        "--html", str(out / "report.html"),
        "--tandem-max-tokens", str(args.max_tokens),
        *(["--tandem-model", args.model] if args.model else []),
        *(["--tandem-grpc-address", args.grpc_address] if args.grpc_address else []),
        *(args.user_classes or ["OpenAIStreamingUser"]),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    print("==> " + " ".join(command), flush=True)
    return subprocess.call(command, cwd=ROOT, env=env)


def read_history(path: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{"TTFT chat.completions": {"50%": [(t, ms), ...], ...}, ...} from the history CSV."""
    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list))
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    start = min(float(row["Timestamp"]) for row in rows)
    for row in rows:
        if row["Type"] not in EVENT_TYPES or int(row.get("Total Request Count") or 0) == 0:
            continue
        label = f"{row['Type']} {row['Name']}"
        for percentile in PERCENTILES:
            value = row.get(percentile, "N/A")
            if value not in ("N/A", ""):
                series[label][percentile].append((float(row["Timestamp"]) - start, float(value)))
    return series


def read_users(path: Path) -> list[tuple[float, int]]:
    with path.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["Name"] == "Aggregated"]
    if not rows:
        return []
    start = float(rows[0]["Timestamp"])
    return [(float(r["Timestamp"]) - start, int(r["User Count"])) for r in rows]


def summarize(stats_csv: Path) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    with stats_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["Type"] not in EVENT_TYPES:
                continue
            summary[f"{row['Type']} {row['Name']}"] = {
                "unit": "ms",
                "count": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "mean": float(row["Average Response Time"]),
                **{f"p{p.rstrip('%')}": float(row[p]) for p in PERCENTILES
                   if row.get(p) not in (None, "N/A", "")},
            }
    return summary


def plot(history: dict[str, dict[str, list[tuple[float, float]]]],
         users: list[tuple[float, int]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted(history, key=lambda label: (EVENT_TYPES.index(label.split()[0]), label))
    rows = max(1, len(labels))
    figure, axes = plt.subplots(rows, 1, figsize=(10, 3.2 * rows), sharex=True, squeeze=False)
    for axis, label in zip(axes[:, 0], labels, strict=False):
        for percentile, points in sorted(history[label].items()):
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, label=f"p{percentile.rstrip('%')}")
        axis.set_title(label)
        axis.set_ylabel("ms")
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper left")
        if users:
            twin = axis.twinx()
            ux, uy = zip(*users, strict=True)
            twin.step(ux, uy, where="post", color="grey", alpha=0.4, label="users")
            twin.set_ylabel("users")
    if not labels:
        axes[0, 0].text(0.5, 0.5, "no TTFT/STREAM events recorded", ha="center")
    axes[-1, 0].set_xlabel("seconds since start")
    figure.suptitle(title or "tandem load test: latency percentiles over time")
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or ROOT / "run" / "load" / stamp
    out.mkdir(parents=True, exist_ok=True)
    code = run_locust(args, out)
    stats, history_csv = out / "locust_stats.csv", out / "locust_stats_history.csv"
    if not stats.exists() or not history_csv.exists():
        print(f"locust wrote no CSV into {out} (exit {code})", file=sys.stderr)
        return 2
    summary = summarize(stats)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(read_history(history_csv), read_users(history_csv), out / "latency.png", args.title)
    print(f"{'event':32} {'count':>6} {'fail':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9}")
    for label, row in sorted(summary.items()):
        print(f"{label:32} {row['count']:6d} {row['failures']:5d} {row.get('p50', 0):9.0f} "
              f"{row.get('p90', 0):9.0f} {row.get('p99', 0):9.0f}")
    print(f"==> CSV, latency.png and summary.json in {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
