"""A process armed with ``die_with_owner`` (what vLLM's engine core runs in a tandem worker)
dies, with everything it started, when its owner is SIGKILLed: real processes, started the way
vLLM starts its engine core (multiprocessing, spawn and fork). And the KV-store pins of a reader
SIGKILLed mid-read lapse with their lease."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tandem.engines import vllm_owner
from tandem.engines.owner import alive, descendants
from tandem.kvclient import KVClient, KVClientSettings
from tandem.service.spawn import ROOT
from tests.integration.test_kvstore_service import SLOT, Store, chain, payload

OWNER = """
import multiprocessing, subprocess, sys, time
from tandem.engines import owner

def engine_core(owner_pid, armed):
    if armed:
        owner.die_with_owner(owner_pid)
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # its "Worker"
    time.sleep(600)

if __name__ == "__main__":
    import os
    method, armed = sys.argv[1], sys.argv[2] == "armed"
    multiprocessing.get_context(method).Process(target=engine_core,
                                                args=(os.getpid(), armed)).start()
    print("started", flush=True)
    time.sleep(600)
"""


def wait_for_tree(pid: int, size: int) -> list[int]:
    deadline = time.monotonic() + 30
    while len(found := [p for p in descendants(pid) if alive(p)]) < size:
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    return found


@pytest.mark.parametrize("method", ["spawn", "fork"])
@pytest.mark.parametrize("armed", [True, False], ids=["armed", "unarmed"])
def test_owned_processes_die_with_a_sigkilled_owner(tmp_path: Path, method: str,
                                                    armed: bool) -> None:
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    owner = subprocess.Popen([sys.executable, str(script), method,
                              "armed" if armed else "unarmed"], env=env,
                             stdout=subprocess.PIPE, start_new_session=True)
    tree: list[int] = []
    try:
        assert owner.stdout is not None and owner.stdout.readline() == b"started\n"
        # the engine core (armed before it starts its worker) and its worker (spawn adds
        # multiprocessing's resource tracker, which ends once its last user has)
        tree = wait_for_tree(owner.pid, 2)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 3
        while (left := [p for p in tree if alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if armed:
            assert left == [], [_cmdline(p)[:80] for p in left]
        else:  # the orphans the issue saw: without the watch, they run on
            assert len(left) >= 2
    finally:
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if owner.poll() is None:
            owner.kill()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


PINNER = """
import asyncio, sys
from tandem.kvclient import KVClient, KVClientSettings
from tandem.v1 import kvstore_pb2

async def main(address, hashes):
    async with KVClient(address, KVClientSettings(same_host=True)) as client:
        replies = [r async for r in client.stub.Get(kvstore_pb2.GetRequest(
            block_hashes=hashes, lease_ms=int(sys.argv[3]), batch_locations=True))]
        print("pinned", len(replies[0].locations), flush=True)
        await asyncio.sleep(600)  # reading the arena; never releases

asyncio.run(main(sys.argv[1], [bytes.fromhex(h) for h in sys.argv[2].split(",")]))
"""
LEASE_MS = 1000


async def test_a_sigkilled_readers_pins_lapse_with_its_lease(redis_url: str,
                                                           tmp_path: Path) -> None:
    """A worker killed between a same-host get's pin and its release holds nothing for longer
    than the lease: the store unpins its blocks when the lease expires."""
    store = Store(redis_url, "--cxl-capacity-bytes", str(16 * SLOT))
    store.proc.start()
    try:
        hashes = chain("pinned-by-the-dead", 3)
        async with KVClient(store.proc.address, KVClientSettings(same_host=False)) as client:
            assert (await client.put(hashes, [payload(h) for h in hashes])).stored == 3
        script = tmp_path / "pinner.py"
        script.write_text(PINNER)
        reader = await asyncio.create_subprocess_exec(
            sys.executable, str(script), store.proc.address, ",".join(h.hex() for h in hashes),
            str(LEASE_MS), env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE)
        assert reader.stdout is not None
        assert await reader.stdout.readline() == b"pinned 3\n"
        reader.kill()
        await reader.wait()
        killed = time.monotonic()
        assert store.metric("tandem_kvstore_pinned_blocks") == 3
        while store.metric("tandem_kvstore_pinned_blocks") != 0:
            assert time.monotonic() - killed < LEASE_MS / 1000 + 1.0
            await asyncio.sleep(0.05)
    finally:
        store.cleanup()


def test_vllm_engine_cores_started_inside_die_with_this_process() -> None:
    """While a vLLM engine starts, its engine core's target is tandem's, bound to this process
    as the owner; vLLM's own again afterwards (tests/e2e/test_engine_owner.py kills a real
    worker)."""
    from vllm.v1.engine.core import EngineCoreProc

    original = EngineCoreProc.run_engine_core
    with vllm_owner.owned_engine_core():
        target = EngineCoreProc.run_engine_core
        assert isinstance(target, functools.partial)
        assert target.func is vllm_owner.run_owned_engine_core
        assert target.keywords == {"tandem_owner_pid": os.getpid()}
        assert vllm_owner._original is original  # what a forked engine core runs
    assert EngineCoreProc.run_engine_core is original
    assert vllm_owner._original is None
