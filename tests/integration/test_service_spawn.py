"""The one spawner: a child process, its readiness, its log, and a stop that leaves nothing
behind (SIGTERM, then SIGKILL to its whole session)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tandem.redis_local import free_port
from tandem.service.spawn import (
    ServiceExited,
    ServiceProcess,
    http_ok,
    http_status,
    stop_all,
    wait_ready,
)


def test_a_child_becomes_ready_and_stops(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    assert not http_ok(url)
    with ServiceProcess("web", "http.server", [str(port), "--bind", "127.0.0.1"],
                        log_path=tmp_path / "web.log") as web:
        web.wait_ready(lambda: http_ok(url), timeout_s=30)
        assert http_status(url) == 200
        pid = web.pid
    assert web.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_child_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    broken = ServiceProcess("broken", "json.tool", ["/no/such/file"],
                            log_path=tmp_path / "broken.log").start()
    expected = r"(?s)broken exited with 2; last log lines:\n.*No such file"
    with pytest.raises(ServiceExited, match=expected):
        broken.wait_ready(lambda: False, timeout_s=30)


def test_waiting_past_the_timeout_raises(tmp_path: Path) -> None:
    port = free_port()
    with ServiceProcess("web", "http.server", [str(port), "--bind", "127.0.0.1"],
                        quiet=True) as web:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="never after 0 s"):
            wait_ready([web], lambda: False, timeout_s=0.3, what="never")
        assert time.monotonic() - started < 5


def test_a_child_ignoring_sigterm_is_killed_with_its_session(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time;"
        " signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n")
    stubborn = ServiceProcess("stubborn", "runpy", [], log_path=tmp_path / "stubborn.log")
    stubborn.command = [stubborn.command[0], str(script)]
    stubborn.start()
    log = tmp_path / "stubborn.log"
    wait_ready([stubborn], lambda: log.read_text().strip() != "", timeout_s=30)
    grandchild = int(log.read_text().split()[0])
    started = time.monotonic()
    stop_all([stubborn], timeout_s=0.5)
    assert time.monotonic() - started < 10
    assert stubborn.returncode == -signal.SIGKILL
    assert _gone(grandchild)


def _gone(pid: int, within_s: float = 5.0) -> bool:
    """Whether ``pid`` is gone (or a zombie waiting for init to reap it) within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False
