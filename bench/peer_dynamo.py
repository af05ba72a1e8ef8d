"""NVIDIA Dynamo 1.6.1 (frontend + mocker) as a same-run peer of tandem's router, and the peer's
load generator (``../shared/peer-dynamo/``: ``install.sh``, ``env.sh``, ``loadgen.py``).

The peer's ``start.sh`` binds Dynamo's frontend to port 8000 and keeps its pid files in one
folder shared by every user of the install; here each run starts the same three processes
(the ZMQ broker, ``dynamo.frontend``, ``dynamo.mocker``) itself, on the ports it is given and
with a discovery folder of its own, so two runs on one machine cannot meet. The environment is
``env.sh``'s (everything on 127.0.0.1), with the ports replaced."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.common import RESULTS

PEER_SCRIPTS = Path(__file__).resolve().parents[2] / "shared" / "peer-dynamo"
"""The peer's scripts, beside the checkout (``../shared/peer-dynamo``)."""
MODEL = "SmolLM2-135M-Instruct"


def peer_home() -> Path:
    """Where install.sh puts the peer (``$PEER``, default ``$TMPDIR/tandem-peer``)."""
    return Path(os.environ.get("PEER") or Path(tempfile.gettempdir()) / "tandem-peer")


def scripts() -> Path:
    found = Path(os.environ.get("TANDEM_PEER_SCRIPTS") or PEER_SCRIPTS)
    if not (found / "loadgen.py").is_file():
        raise SystemExit(f"the Dynamo peer's scripts are not at {found} (set "
                         "TANDEM_PEER_SCRIPTS to the peer-dynamo folder)")
    return found


def ensure_installed() -> Path:
    """The peer's home, installed by its install.sh unless an install is already there
    (~3 min, ~1.9 GB the first time)."""
    home = peer_home()
    if not (_python(home).is_file() and (home / "models" / MODEL / "config.json").is_file()):
        print(f"==> installing the Dynamo peer under {home} (install.sh, ~3 min)", flush=True)
        subprocess.run(["bash", str(scripts() / "install.sh")], check=True,
                       env={**os.environ, "PEER": str(home)})
    return home


def _python(home: Path) -> Path:
    return home / "venv" / "bin" / "python"


def environment(home: Path, http_port: int, zmq_ports: tuple[int, int], store: Path
                ) -> dict[str, str]:
    """``env.sh``'s environment, with this run's ports and discovery folder."""
    xsub, xpub = zmq_ports
    venv = home / "venv"
    return {
        **os.environ, "PEER": str(home), "VIRTUAL_ENV": str(venv),
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "DYN_DISCOVERY_BACKEND": "file", "DYN_FILE_KV": str(store),
        "DYN_REQUEST_PLANE": "tcp", "DYN_EVENT_PLANE": "zmq",
        "DYN_HTTP_HOST": "127.0.0.1", "DYN_HTTP_PORT": str(http_port),
        "DYN_TCP_RPC_HOST": "127.0.0.1", "DYN_TCP_RESPONSE_STREAM_HOST": "127.0.0.1",
        "DYN_EVENT_PLANE_HOST": "127.0.0.1", "DYN_SYSTEM_HOST": "127.0.0.1",
        "DYN_LOG": os.environ.get("DYN_LOG", "warn"),
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "DYN_ZMQ_BROKER_URL": f"xsub=tcp://127.0.0.1:{xsub} , xpub=tcp://127.0.0.1:{xpub}",
    }


class Dynamo:
    """Dynamo's frontend (router mode ``mode``: round-robin or kv) with mocker workers."""

    def __init__(self, home: Path, mode: str, mocker_args: list[str], http_port: int,
                 zmq_ports: tuple[int, int]) -> None:
        self.home = home
        self.mode = mode
        self.mocker_args = mocker_args
        self.http_port = http_port
        self.zmq_ports = zmq_ports
        self.run_dir = Path(tempfile.mkdtemp(prefix="tandem-vs-dynamo-"))
        self.env = environment(home, http_port, zmq_ports, self.run_dir / "store_kv")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.run_dir / f"{name}.log", "wb")  # noqa: SIM115 (the child writes it)
        self.processes[name] = subprocess.Popen(
            [str(_python(self.home)), *args], env=self.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, cwd=self.run_dir)

    def start(self, timeout_s: float = 90) -> Dynamo:
        model_dir = self.home / "models" / MODEL
        self._spawn("broker", [str(scripts() / "zmq_broker.py"), *map(str, self.zmq_ports)])
        self._spawn("frontend", ["-m", "dynamo.frontend", "--http-host", "127.0.0.1",
                                 "--http-port", str(self.http_port),
                                 "--router-mode", self.mode])
        self._spawn("mocker", ["-m", "dynamo.mocker", "--model-path", str(model_dir),
                               "--model-name", MODEL, *self.mocker_args])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"Dynamo's {name} exited: "
                                       f"{(self.run_dir / f'{name}.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{self.http_port}/v1/models"
                if MODEL in urllib.request.urlopen(url, timeout=2).read().decode():
                    time.sleep(2)  # let every mocker worker register (as start.sh does)
                    return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("Dynamo's frontend did not serve the model in time")

    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
        deadline = time.monotonic() + 5
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 9)
                process.wait(5)
        self.processes.clear()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Dynamo:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def dynamo(home: Path, mode: str, mocker_args: list[str], http_port: int,
           zmq_ports: tuple[int, int]) -> Iterator[Dynamo]:
    with Dynamo(home, mode, mocker_args, http_port, zmq_ports) as peer:
        yield peer


def loadgen(home: Path, port: int, label: str, pids: dict[str, int], args: list[str]
            ) -> dict[str, object]:
    """One run of the peer's loadgen.py against ``port``: its JSON result line."""
    out = RESULTS / ".vs_dynamo_loadgen.jsonl"
    RESULTS.mkdir(exist_ok=True)
    out.unlink(missing_ok=True)
    command = [str(_python(home)), str(scripts() / "loadgen.py"), "--label", label,
               "--url", f"http://127.0.0.1:{port}/v1/chat/completions", "--model", MODEL,
               "--pids", ",".join(f"{name}={pid}" for name, pid in pids.items()),
               "--out", str(out), *args]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "NO_PROXY": "127.0.0.1,localhost",
                        "no_proxy": "127.0.0.1,localhost"})
    row: dict[str, object] = json.loads(out.read_text().splitlines()[-1])
    out.unlink(missing_ok=True)
    return row


def load_average() -> float:
    """The machine's 1-minute load average (others share the machine)."""
    return os.getloadavg()[0]
