"""tests/load/: the committed protoset matches proto/, ghz.json names a real call with a request
that parses, the locustfile loads with its user classes, and the run script turns locust's CSV
history into its plot and summary."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

ROOT = Path(__file__).resolve().parents[2]
LOAD = ROOT / "tests" / "load"
PROTOSET = LOAD / "tandem.protoset"
# The keys ghz reads from a JSON config (cmd/ghz config struct).
GHZ_KEYS = {
    "proto", "protoset", "call", "cacert", "cert", "key", "skipTLS", "cname", "authority",
    "insecure", "total", "concurrency", "connections", "qps", "duration", "max-duration",
    "timeout", "data", "data-file", "binary-file", "metadata", "metadata-file",
    "stream-interval", "output", "format", "connect-timeout", "keepalive", "cpus",
    "import-paths", "name", "tags", "reflect-metadata", "host", "skipFirst",
    "load-schedule", "load-start", "load-end", "load-step", "load-step-duration",
    "load-max-duration", "concurrency-schedule", "enable-compression", "count-errors",
}


def load_protoset(path: Path) -> descriptor_pb2.FileDescriptorSet:
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(path.read_bytes())
    return files


def test_protoset_is_built_from_the_current_contracts(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.protoset"
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_protoset.sh"), str(fresh)], cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert load_protoset(fresh) == load_protoset(PROTOSET), (
        "tests/load/tandem.protoset drifted from proto/: run scripts/build_protoset.sh"
    )
    names = {f.name for f in load_protoset(PROTOSET).file}
    assert {f"tandem/v1/{p.name}" for p in (ROOT / "proto" / "tandem" / "v1").glob("*.proto")} \
        <= names


def test_ghz_config_names_a_real_call_with_a_valid_request() -> None:
    config = json.loads((LOAD / "ghz.json").read_text())
    unknown = set(config) - GHZ_KEYS
    assert not unknown, f"ghz does not know {sorted(unknown)}"
    assert (ROOT / config["protoset"]).resolve() == PROTOSET
    assert config["insecure"] is True
    assert config["host"].endswith(":50050")  # RouterService's default port
    pool = descriptor_pool.DescriptorPool()
    for file in load_protoset(PROTOSET).file:
        pool.Add(file)
    package_service, method_name = config["call"].rsplit(".", 1)
    service = pool.FindServiceByName(package_service)
    method = service.methods_by_name[method_name]
    request_class = message_factory.GetMessageClass(method.input_type)
    request = json_format.ParseDict(config["data"], request_class())
    # Every field named in the data is a real field (ParseDict raises otherwise) and the prompt
    # is non-empty.
    assert request.messages and request.model  # type: ignore[attr-defined]
    for duration in ("timeout", "connect-timeout"):
        if duration in config:
            assert config[duration][-1] in "sm" and config[duration][:-1].isdigit()


def test_locustfile_loads_and_declares_its_users() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOAD / "locustfile.py"), "--list"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"OpenAIStreamingUser", "GrpcChatUser"} <= set(result.stdout.split())


def write_history(path: Path) -> None:
    fields = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "50%",
              "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%",
              "Total Request Count", "Total Failure Count"]
    rows = []
    for second in range(5):
        for kind, name, base in (("TTFT", "chat.completions", 100), ("STREAM",
                                 "chat.completions", 900), ("POST", "x", 3)):
            count = second * 2
            value = "N/A" if count == 0 else str(base + second)
            rows.append({"Timestamp": str(1_700_000_000 + second), "User Count": "2",
                         "Type": kind, "Name": name, "Requests/s": "1", "Failures/s": "0",
                         **{p: value for p in fields[6:17]},
                         "Total Request Count": str(count), "Total Failure Count": "0"})
        rows.append({"Timestamp": str(1_700_000_000 + second), "User Count": "2", "Type": "",
                     "Name": "Aggregated", "Requests/s": "1", "Failures/s": "0",
                     **{p: "5" for p in fields[6:17]}, "Total Request Count": "1",
                     "Total Failure Count": "0"})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def test_run_script_plots_percentiles_over_time(tmp_path: Path) -> None:
    sys.path.insert(0, str(LOAD))
    try:
        import run_locust  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(LOAD))
    history_csv = tmp_path / "locust_stats_history.csv"
    write_history(history_csv)
    history = run_locust.read_history(history_csv)
    assert set(history) == {"TTFT chat.completions", "STREAM chat.completions"}
    # Rows before the first request are left out; time starts at 0.
    assert history["TTFT chat.completions"]["50%"][0] == (1.0, 101.0)
    assert run_locust.read_users(history_csv)[0] == (0.0, 2)
    png = tmp_path / "latency.png"
    run_locust.plot(history, run_locust.read_users(history_csv), png, "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("script", ["run_locust.py"])
def test_run_script_help(script: str) -> None:
    result = subprocess.run([sys.executable, str(LOAD / script), "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "--run-time" in result.stdout
