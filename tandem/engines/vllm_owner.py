"""vLLM's engine core dies with the worker that started it.

``AsyncLLM`` runs its engine core in a child process (``multiprocessing``: spawn on the CPU
build, fork by default on a GPU) whose target is ``EngineCoreProc.run_engine_core``; the engine
core starts the executor's ``Worker`` processes. vLLM watches downwards only (a Worker watches
the engine core through a death pipe), never upwards: when the tandem worker dies without
shutting the engine down (SIGKILL, the OOM killer, a crash), the engine core and its Workers
run on as orphans, holding the model's memory (on a GPU, the device's) and the CPU.

``owned_engine_core()`` wraps the start of the engine: the engine core processes started inside
it run ``run_owned_engine_core``, which arms ``tandem.engines.owner.die_with_owner`` (the engine
core SIGKILLs its Workers and itself as soon as the tandem worker has ended) and then runs
vLLM's own target. It depends on nothing else being configured (the KV connector, say), and a
vLLM without ``EngineCoreProc.run_engine_core`` fails the start loudly rather than running
unguarded.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

from tandem.engines.owner import die_with_owner

_original: Callable[..., Any] | None = None
"""vLLM's target while ``owned_engine_core`` replaces it (a forked engine core inherits it; a
spawned one imports vLLM afresh and finds the original on the class)."""


def run_owned_engine_core(*args: Any, tandem_owner_pid: int, **kwargs: Any) -> None:
    """The engine core process's target: dies with ``tandem_owner_pid``, then runs vLLM's."""
    die_with_owner(tandem_owner_pid)
    from vllm.v1.engine.core import EngineCoreProc

    run = _original or EngineCoreProc.run_engine_core
    run(*args, **kwargs)


@contextlib.contextmanager
def owned_engine_core() -> Iterator[None]:
    """Engine core processes started inside this block die with this process."""
    global _original
    from vllm.v1.engine.core import EngineCoreProc

    declared = EngineCoreProc.__dict__["run_engine_core"]
    _original = EngineCoreProc.run_engine_core
    target = functools.partial(run_owned_engine_core, tandem_owner_pid=os.getpid())
    EngineCoreProc.run_engine_core = staticmethod(target)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        EngineCoreProc.run_engine_core = declared  # type: ignore[method-assign]
        _original = None
