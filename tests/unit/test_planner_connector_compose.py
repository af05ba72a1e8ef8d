"""The compose connector against a faked compose/docker CLI (a script that records its argv
and answers ``docker ps`` with canned container statuses): the command lines it runs, the pool
states it reads, and a failing CLI reported with its stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from services.planner.connectors.compose import ComposeConnector, ComposeError, container_state
from services.planner.core.types import PoolState
from services.planner.settings import ComposeSettings

FAKE = """\
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_FAIL"):
    sys.stderr.write("no such service: decode\\n")
    sys.exit(3)
if "ps" in sys.argv:
    service = [a for a in sys.argv if a.startswith("label=com.docker.compose.service=")][0]
    statuses = json.loads(os.environ["FAKE_PS"]).get(service.rsplit("=", 1)[1], [])
    print("\\n".join(statuses))
"""


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_PS", json.dumps({
        "decode": ["Up 3 minutes (healthy)", "Up 2 seconds (health: starting)",
                   "Up 9 minutes (unhealthy)"],
        "prefill": ["Up 1 hour"]}))
    return script


def connector(script: Path) -> ComposeConnector:
    command = f"{sys.executable} {script}"
    return ComposeConnector(ComposeSettings(
        project="demo", files=("compose.yaml", "gpu.yaml"), command=command, docker=command,
        stop_timeout_s=25))


def calls(script: Path) -> list[list[str]]:
    return [json.loads(line) for line in (script.parent / "calls.jsonl").read_text().splitlines()]


async def test_apply_scales_each_service_with_the_compose_cli(cli: Path) -> None:
    await connector(cli).apply({"prefill": 2, "decode": 5}, sequence=7)
    assert calls(cli) == [["-p", "demo", "-f", "compose.yaml", "-f", "gpu.yaml", "up", "-d",
                           "--no-deps", "--no-recreate", "--timeout", "25",
                           "--scale", "decode=5", "--scale", "prefill=2", "decode", "prefill"]]


async def test_observe_reads_each_pool_from_the_containers_health(cli: Path) -> None:
    fleet = await connector(cli).observe()
    assert fleet == {"prefill": PoolState(ready=1),
                     "decode": PoolState(ready=1, starting=1, draining=1)}
    assert calls(cli)[0] == ["ps", "--filter", "label=com.docker.compose.project=demo",
                             "--filter", "label=com.docker.compose.service=prefill",
                             "--format", "{{.Status}}"]


async def test_a_failing_cli_raises_with_its_stderr(cli: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(ComposeError, match="exited with 3: no such service: decode"):
        await connector(cli).apply({"decode": 1}, sequence=1)


@pytest.mark.parametrize(("status", "state"), [
    ("Up 3 minutes (healthy)", "serving"),
    ("Up 4 seconds (health: starting)", "starting"),
    ("Up 2 hours (unhealthy)", "draining"),
    ("Up 10 seconds", "serving"),
])
def test_container_state(status: str, state: str) -> None:
    assert container_state(status) == state
