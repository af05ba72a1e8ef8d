"""The local launcher (``python -m tandem.launch``) supervises real processes: a decode worker
SIGKILLed comes back (same worker id, registered again) while the system keeps answering; killed
past ``--max-restarts`` within the window it is given up and the rest stays up."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from tandem.discovery import WorkerInfo, worker_key
from tandem.redis_local import free_port
from tandem.service.spawn import ServiceProcess, wait_ready
from tandem.v1 import worker_pb2, worker_pb2_grpc

MODEL = "SmolLM2-135M-Instruct"
COMEBACK_S = 15.0
"""A killed mock worker is serving again within this: backoff 0.2 s + a Python process start
(~1 s on an idle machine, 5 s seen with the test machine's 2 cores loaded 3x over); without a
restart it never comes back."""


class Launched:
    def __init__(self, process: ServiceProcess, run_dir: Path, namespace: str,
                 redis_url: str) -> None:
        self.process = process
        self.run_dir = run_dir
        self.namespace = namespace
        self.redis = redis.Redis.from_url(redis_url)
        self.url = ""

    def describe(self) -> dict[str, object]:
        return dict(json.loads((self.run_dir / "system.json").read_text()))

    def pid(self, name: str) -> int:
        pids = self.describe()["pids"]
        assert isinstance(pids, dict)
        return int(pids[name])

    def registration(self, worker_id: str) -> WorkerInfo | None:
        raw = self.redis.get(worker_key(self.namespace, worker_id))
        return None if raw is None else WorkerInfo.from_json(raw)  # type: ignore[arg-type]

    def new_process_serves(self, worker_id: str) -> bool:
        """Whether the process the launcher started last as ``worker_id`` has registered and
        serves. Not the registered address: a restarted worker's port 0 can be given the dead
        one's port again (seen: 127.0.0.1:43485 twice in a row). The launcher keeps the dead
        process's log as <name>.log.1 before it starts the new one and writes its pid after."""
        log = self.run_dir / f"{worker_id}.log"
        return (self.registration(worker_id) is not None and log.exists()
                and '"worker serving"' in log.read_text())

    def ask(self, client: httpx.Client) -> None:
        """One request; it must be answered."""
        reply = client.post(f"{self.url}/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert reply.status_code == 200, reply.text

    def log(self) -> str:
        return (self.run_dir / "launch.log").read_text()


@pytest.fixture
def launched(redis_url: str, tmp_path: Path) -> Iterator[Launched]:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    process = ServiceProcess("launch", "tandem.launch", [
        "--engine", "mock", "--prefill-workers", "0", "--decode-workers", "2",
        "--kvstore", "false", "--redis-url", redis_url, "--namespace", namespace,
        "--http-port", str(free_port()), "--grpc-port", str(free_port()),
        "--run-dir", str(tmp_path), "--restart-backoff-s", "0.2", "--max-restarts", "2",
        "--restart-window-s", "60"], log_path=tmp_path / "launch.log").start()
    system = Launched(process, tmp_path, namespace, redis_url)
    try:
        process.wait_ready(lambda: (tmp_path / "system.json").exists(), timeout_s=60)
        system.url = str(system.describe()["router_http_url"])
        yield system
    finally:
        process.stop()
        assert process.returncode is not None


def kill_and_wait_back(system: Launched, client: httpx.Client) -> float:
    """SIGKILLs decode-0, asks the system all along, returns when decode-0 serves again."""
    assert system.registration("decode-0") is not None
    killed_pid = system.pid("decode-0")
    os.kill(killed_pid, signal.SIGKILL)
    killed = time.monotonic()
    while True:
        system.ask(client)  # the system keeps answering throughout
        pids = system.describe()["pids"]  # the dead one is not listed until its restart
        assert isinstance(pids, dict)
        if pids.get("decode-0", killed_pid) != killed_pid \
                and system.new_process_serves("decode-0"):
            return time.monotonic() - killed
        assert time.monotonic() - killed < COMEBACK_S, "decode-0 did not come back"
        time.sleep(0.05)


def test_a_killed_worker_comes_back_and_a_crash_loop_is_given_up(launched: Launched) -> None:
    with httpx.Client(timeout=10) as client:
        launched.ask(client)
        other = launched.pid("decode-1")
        back_s = kill_and_wait_back(launched, client)
        log = launched.log()
        assert "decode-0 exited with signal SIGKILL; restarting it" in log
        assert "last log lines" in log
        print(f"decode-0 registered again {back_s:.2f} s after SIGKILL")

        kill_and_wait_back(launched, client)  # the second death: still restarted
        os.kill(launched.pid("decode-0"), signal.SIGKILL)  # the third: past --max-restarts 2
        deadline = time.monotonic() + COMEBACK_S
        while "GIVING UP on decode-0" not in launched.log():
            launched.ask(client)
            assert time.monotonic() < deadline, launched.log()
            time.sleep(0.05)
        time.sleep(1.0)  # more than the backoff: it would have been restarted by now
        assert "decode-0" not in launched.describe()["pids"]  # type: ignore[operator]
        assert launched.process.running, "the launcher stopped"
        assert launched.pid("decode-1") == other
        for _ in range(5):
            launched.ask(client)  # the rest of the system serves on


def test_the_mock_system_with_the_kv_store_starts(redis_url: str, tmp_path: Path) -> None:
    """``make run ARGS="--engine mock"``: the workers start once the KV store serves (they
    connect to it when they start)."""
    args = ["--engine", "mock", "--redis-url", redis_url,
            "--namespace", f"test-{uuid.uuid4().hex[:8]}", "--http-port", str(free_port()),
            "--grpc-port", str(free_port()), "--run-dir", str(tmp_path), "--max-restarts", "0",
            "--kvstore-cxl-mib", "16", "--kvstore-nvme-mib", "16"]
    with ServiceProcess("launch", "tandem.launch", args,
                        log_path=tmp_path / "launch.log") as process:
        wait_ready([process], lambda: (tmp_path / "system.json").exists(), 60)
        log = (tmp_path / "launch.log").read_text()
        assert log.index("kvstore serving") < log.index("decode-0 starting"), log
        url = json.loads((tmp_path / "system.json").read_text())["router_http_url"]
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=10, json={
            "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert reply.status_code == 200, reply.text


def test_a_worker_drained_over_grpc_leaves_and_is_not_restarted(launched: Launched) -> None:
    """WorkerService.Drain in a real worker process: the same drain as SIGTERM (the process
    exits cleanly), and the launcher does not bring a drained worker back."""
    info = launched.registration("decode-0")
    assert info is not None
    with grpc.insecure_channel(info.address) as channel:
        reply = worker_pb2_grpc.WorkerServiceStub(channel).Drain(worker_pb2.DrainRequest(),
                                                                 timeout=5)
    assert not reply.already_draining
    with httpx.Client(timeout=10) as client:
        deadline = time.monotonic() + COMEBACK_S
        while "decode-0 exited cleanly (drained); not restarted" not in launched.log():
            launched.ask(client)  # served all along (by decode-1 once decode-0 drains)
            assert time.monotonic() < deadline, launched.log()
            time.sleep(0.05)
        time.sleep(1.0)
        assert launched.registration("decode-0") is None  # deregistered
        assert "decode-0" not in launched.describe()["pids"]  # type: ignore[operator]
        launched.ask(client)


def test_the_private_redis_is_restarted_and_the_system_serves_on(tmp_path: Path) -> None:
    """The launcher's own Redis SIGKILLed: started again (empty) on its port, the workers
    register in it again, and every request is answered meanwhile."""
    args = ["--engine", "mock", "--prefill-workers", "0", "--decode-workers", "2",
            "--kvstore", "false", "--http-port", str(free_port()), "--grpc-port",
            str(free_port()), "--run-dir", str(tmp_path), "--restart-backoff-s", "0.2"]
    with ServiceProcess("launch", "tandem.launch", args,
                        log_path=tmp_path / "launch.log") as process, \
            httpx.Client(timeout=10) as client:
        wait_ready([process], lambda: (tmp_path / "system.json").exists(), 60)
        info = json.loads((tmp_path / "system.json").read_text())
        system = Launched(process, tmp_path, "tandem", info["redis_url"])
        system.url = info["router_http_url"]
        os.kill(info["redis_pid"], signal.SIGKILL)
        killed = time.monotonic()
        while not registered(system, "decode-0", "decode-1"):
            system.ask(client)  # answered all along
            assert time.monotonic() - killed < COMEBACK_S, system.log()
            time.sleep(0.05)
        print(f"workers registered in the new Redis {time.monotonic() - killed:.2f} s "
              "after the SIGKILL")
        for _ in range(5):
            system.ask(client)
        assert "redis restarted" in system.log()
        system.redis.close()


def registered(system: Launched, *worker_ids: str) -> bool:
    try:
        return all(system.registration(worker_id) for worker_id in worker_ids)
    except redis.ConnectionError:
        return False  # Redis not back yet
