"""What each worker of a running system measured itself: its stage histograms (``tandem.stages``:
queue, prefill, kv_put, kv_get, first_decode_step) read from its /metrics, and the CPU time of
its processes (the worker and the vLLM processes under it).

A benchmark that sends one request at a time takes a snapshot before and after it: the
difference is that request's own figures, as the worker timed them (the KV connector's put and
get of the request's blocks, the engine's compute), not a re-measurement from outside.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.request

import psutil
from prometheus_client.parser import text_string_to_metric_families

from tandem.stages import Stage, prometheus_name

WORKER_LABEL = "tandem_worker_id"
"""Label of the load gauges every worker exports (``tandem.worker.metrics``)."""

_STAGE_OF = {prometheus_name(stage): stage for stage in Stage}


@dataclasses.dataclass(frozen=True)
class StageTotal:
    """A stage histogram's sample count and sum of seconds."""

    count: float = 0.0
    seconds: float = 0.0

    def __sub__(self, other: StageTotal) -> StageTotal:
        return StageTotal(self.count - other.count, self.seconds - other.seconds)


@dataclasses.dataclass(frozen=True)
class WorkerSnapshot:
    stages: dict[Stage, StageTotal]
    cpu_s: float
    """CPU seconds (user + system) of the worker's process tree so far."""

    def __sub__(self, other: WorkerSnapshot) -> WorkerSnapshot:
        return WorkerSnapshot(
            {stage: total - other.stages.get(stage, StageTotal())
             for stage, total in self.stages.items()}, self.cpu_s - other.cpu_s)

    def seconds(self, stage: Stage) -> float:
        return self.stages.get(stage, StageTotal()).seconds

    def count(self, stage: Stage) -> float:
        return self.stages.get(stage, StageTotal()).count


def parse_page(text: str) -> tuple[str | None, dict[Stage, StageTotal]]:
    """The worker id a /metrics page belongs to (None: not a worker) and its stage totals."""
    worker: str | None = None
    counts: dict[Stage, float] = {}
    sums: dict[Stage, float] = {}
    for family in text_string_to_metric_families(text):
        stage = _STAGE_OF.get(family.name)
        for sample in family.samples:
            worker = worker or sample.labels.get(WORKER_LABEL)
            if stage is None:
                continue
            if sample.name.endswith("_count"):
                counts[stage] = counts.get(stage, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                sums[stage] = sums.get(stage, 0.0) + sample.value
    return worker, {stage: StageTotal(counts.get(stage, 0.0), sums.get(stage, 0.0))
                    for stage in counts}


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and every process under it (ended children are not counted)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


class WorkerStages:
    """Snapshots of the workers of a system, by worker id."""

    def __init__(self, metrics_urls: list[str], pids: dict[str, int]) -> None:
        self.urls: dict[str, str] = {}
        for url in metrics_urls:
            worker, _ = parse_page(self._page(url))
            if worker is not None:
                self.urls[worker] = url
        self.pids = pids

    @staticmethod
    def _page(url: str) -> str:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return str(reply.read().decode())

    def snapshot(self, worker: str) -> WorkerSnapshot:
        _, stages = parse_page(self._page(self.urls[worker]))
        pid = self.pids.get(worker)
        return WorkerSnapshot(stages, tree_cpu_seconds(pid) if pid else 0.0)

    def after(self, worker: str, before: WorkerSnapshot, stage: Stage,
              timeout_s: float = 10.0) -> WorkerSnapshot:
        """The difference since ``before`` once ``stage`` has a new sample (a worker records a
        request's stages as the request ends, which may be a moment after its reply left)."""
        deadline = time.monotonic() + timeout_s
        while True:
            delta = self.snapshot(worker) - before
            if delta.count(stage) > 0 or time.monotonic() > deadline:
                return delta
            time.sleep(0.05)
