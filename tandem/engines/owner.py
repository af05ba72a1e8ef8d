"""A process that dies with its owner: once the owner (the worker that started it) ends, for
any reason, SIGKILL included, the process kills its own descendants and itself.

Nothing in a dying owner can be relied on (SIGKILL runs no cleanup), so the watching happens in
the owned process: a daemon thread waits on a pidfd of the owner (a process handle that becomes
readable when the owner exits, whichever thread started the child; unlike
``PR_SET_PDEATHSIG``, which fires when the *thread* that forked the child ends). Where pidfds
are missing (Linux before 5.3), the thread polls its parent id instead.

Linux only (``/proc``); elsewhere ``die_with_owner`` logs and does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.5
"""How often the fallback (no pidfd) checks whether the parent changed."""


def parent_of(pid: int) -> int | None:
    """The parent id of ``pid`` (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead and waiting to be reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children (from ``/proc``)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = parent_of(int(entry))
            if parent is not None:
                parents.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(0), [])
        found.extend(children)
        todo.extend(children)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL to every descendant of ``pid`` (not to ``pid`` itself)."""
    for child in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def _wait_for_exit(owner_pid: int) -> None:
    """Returns once ``owner_pid`` has ended (at once if it already has)."""
    try:
        handle = os.pidfd_open(owner_pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfds here: watch the parent id instead
        while os.getppid() == owner_pid:
            time.sleep(POLL_INTERVAL_S)
        return
    try:
        # The owner may have died, and its pid been reused, before the pidfd was opened: the
        # parent id tells (an orphan is re-parented at once).
        if os.getppid() != owner_pid:
            return
        select.select([handle], [], [])
    finally:
        os.close(handle)


def _die(owner_pid: int) -> None:
    _wait_for_exit(owner_pid)
    log.warning("owner process %d ended: killing this process (%d) and its descendants",
                owner_pid, os.getpid())
    kill_tree(os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_owner(owner_pid: int) -> None:
    """Arms this process: when ``owner_pid`` (its parent) ends, its descendants and then the
    process itself are SIGKILLed. Call first thing in the child."""
    if not Path("/proc/self/stat").exists():
        log.warning("no /proc here: this process does not die with its owner")
        return
    threading.Thread(target=_die, args=(owner_pid,), name="tandem-owner-watch",
                     daemon=True).start()
