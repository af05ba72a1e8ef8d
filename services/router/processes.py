"""Several router processes on one port.

``--processes N`` makes the router a supervisor of N router processes that all bind the same
HTTP (and gRPC) port with SO_REUSEPORT; the kernel spreads new connections among them. Each is
a full router: its own worker watcher and block index fed from the KV event streams (the
streams are built for several readers), its own canary and health. The supervisor restarts a
process that dies, stops them all on SIGTERM (each drains), and gives up when a process exits
with an error before it ever listened (a configuration error would restart forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import sys

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
STARTED_FD_ENV = "TANDEM_SUPERVISOR_STARTED_FD"
"""Environment variable naming the pipe on which a router process reports that it serves."""


@dataclasses.dataclass(frozen=True)
class SupervisorPolicy:
    """How the supervisor treats its processes."""

    restart_delay_s: float = 0.5
    """Pause before restarting a process that died after it had started serving."""
    stop_margin_s: float = 5.0
    """On SIGTERM, how long past their drain grace the processes get before they are killed."""


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``port`` (0: a free one) with SO_REUSEPORT but not listening: it keeps
    the port while the router processes bind it too, and takes no connections itself."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def report_started() -> None:
    """Called by a router process once its servers listen: tells its supervisor (if any)."""
    fd = os.environ.pop(STARTED_FD_ENV, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(int(fd), b"1")
            os.close(int(fd))


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the supervisor dies, so no router process
    outlives it on the port."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclasses.dataclass
class _Child:
    slot: int
    process: asyncio.subprocess.Process
    started_pipe: int
    """Read end of the pipe on which the process reports that it started serving."""

    def started(self) -> bool:
        """Whether the process reported that it listened (before it exited, or by now)."""
        try:
            return os.read(self.started_pipe, 1) == b"1"
        except BlockingIOError:
            return False


class Supervisor:
    """Runs ``count`` copies of ``command`` until stopped."""

    def __init__(self, count: int, command: list[str], drain_grace_s: float,
                 policy: SupervisorPolicy | None = None) -> None:
        self.count = count
        self.command = command
        self.drain_grace_s = drain_grace_s
        self.policy = policy or SupervisorPolicy()
        self.children: dict[int, _Child] = {}
        """The current process of each slot."""

    async def _start(self, slot: int) -> _Child:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command, preexec_fn=_die_with_parent, pass_fds=(write_end,),
                env={**os.environ, STARTED_FD_ENV: str(write_end)})
        finally:
            os.close(write_end)
        child = self.children[slot] = _Child(slot, process, read_end)
        log.info("router process started", extra={"slot": slot, "pid": process.pid})
        return child

    async def run(self, stop: asyncio.Event) -> int:
        """Supervises until ``stop`` is set (returns 0) or a process fails before it ever
        served, which a restart would not fix (returns 1)."""
        waits: dict[asyncio.Future[int], _Child] = {}

        async def launch(slot: int) -> None:
            child = await self._start(slot)
            waits[asyncio.ensure_future(child.process.wait())] = child

        for slot in range(self.count):
            await launch(slot)
        stopping: asyncio.Future[int] = asyncio.ensure_future(_wait_flag(stop))
        status = 0
        try:
            while True:
                done, _ = await asyncio.wait([stopping, *waits],
                                             return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    break
                broken = False
                for future in done:
                    child = waits.pop(future)
                    code = future.result()
                    started = child.started()
                    os.close(child.started_pipe)
                    log.warning("router process exited", extra={
                        "slot": child.slot, "returncode": code, "had_started": started})
                    # An error exit before serving is a broken configuration; a process killed
                    # by a signal (the OOM killer, an operator) or one that served is replaced.
                    broken = broken or (code > 0 and not started)
                if broken:
                    log.error("a router process failed before serving; stopping")
                    status = 1
                    break
                await asyncio.sleep(self.policy.restart_delay_s)
                running = {child.slot for child in waits.values()}
                for slot in range(self.count):
                    if slot not in running:
                        await launch(slot)
        finally:
            stopping.cancel()
            await self._stop_all()
        return status

    async def _stop_all(self) -> None:
        running = [c.process for c in self.children.values() if c.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.drain_grace_s + self.policy.stop_margin_s):
                for process in running:
                    await process.wait()
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        for child in self.children.values():
            with contextlib.suppress(OSError):
                os.close(child.started_pipe)


async def _wait_flag(flag: asyncio.Event) -> int:
    await flag.wait()
    return 0


def child_command(argv: list[str], http_port: int, grpc_port: int) -> list[str]:
    """The command line of one router process: the supervisor's own flags, then one process
    and the resolved ports (later flags win)."""
    return [sys.executable, "-m", "services.router", *argv, "--processes", "1",
            "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
