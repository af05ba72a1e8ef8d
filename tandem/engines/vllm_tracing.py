"""Engine steps of vLLM in the request's trace (see ``step_trace`` for the spans and events).

vLLM's EngineCore runs in another process; what this process sees of a step is one call of
the stat loggers (``StatLoggerBase.record``) per step, made right after that step's outputs
were handed to the requests' queues. With ``enable_logging_iteration_details`` the scheduler
stats of the call carry the step's batch (context and generation requests) and the tokens it
scheduled, and the forward-pass time. ``StepJournal`` keeps the recent steps; each request's
``VllmRequestSteps`` attributes to it, for every ``RequestOutput`` that arrives with n new
tokens, the n newest steps that sampled tokens and were not attributed to it yet. That is
exact while the consumer keeps up (one output per step); when outputs were merged the newest
steps are assumed. Prefill chunks that sample nothing are not attributed (the prefill span
covers them, and vLLM's own queue and prefill timings are recorded).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Any

from tandem.engines.base import EngineRequest
from tandem.engines.step_trace import (
    EngineStep,
    RequestTrace,
    StepTraceSettings,
    start_request_trace,
)


@dataclasses.dataclass(frozen=True)
class JournalSettings:
    """How many recent engine steps the journal keeps."""

    capacity: int = 1024
    """Steps kept; a request whose consumer lags further behind loses its oldest step events."""


def step_from_stats(index: int, scheduler_stats: Any, iteration_stats: Any,
                    time_ns: int) -> EngineStep:
    """An ``EngineStep`` from one stat-logger call (scheduler stats present)."""
    output_tokens = iteration_stats.num_generation_tokens if iteration_stats is not None else 0
    details = getattr(scheduler_stats, "iteration_details", None)
    if details is not None and not details.is_dummy:
        return EngineStep(
            index=index,
            batch_size=details.num_ctx_requests + details.num_generation_requests,
            waiting=scheduler_stats.num_waiting_reqs,
            prompt_tokens=details.num_ctx_tokens,
            decode_tokens=details.num_generation_tokens,
            output_tokens=output_tokens,
            time_ns=time_ns,
            duration_s=details.elapsed_ms / 1000,
        )
    # Without iteration details: the running requests and the tokens of the step's outputs.
    prompt_tokens = iteration_stats.num_prompt_tokens if iteration_stats is not None else 0
    return EngineStep(
        index=index, batch_size=scheduler_stats.num_running_reqs,
        waiting=scheduler_stats.num_waiting_reqs, prompt_tokens=prompt_tokens,
        decode_tokens=output_tokens, output_tokens=output_tokens, time_ns=time_ns)


class StepJournal:
    """The engine's recent steps, oldest first, as the stat logger reports them."""

    def __init__(self, settings: JournalSettings | None = None) -> None:
        self.steps: collections.deque[EngineStep] = collections.deque(
            maxlen=(settings or JournalSettings()).capacity)
        self.last_index = 0

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        """One stat-logger call: one engine step (calls without scheduler stats are ignored)."""
        if scheduler_stats is None:
            return
        self.last_index += 1
        self.steps.append(step_from_stats(self.last_index, scheduler_stats, iteration_stats,
                                          time.time_ns()))

    def sampled_after(self, index: int, count: int) -> list[EngineStep]:
        """Up to ``count`` newest steps after ``index`` that sampled tokens, oldest first."""
        found: list[EngineStep] = []
        for step in reversed(self.steps):
            if step.index <= index or len(found) == count:
                break
            if step.output_tokens > 0:
                found.append(step)
        found.reverse()
        return found


class VllmRequestSteps:
    """Feeds one request's ``RequestOutput``s, with the journal's steps, to its trace."""

    def __init__(self, journal: StepJournal, request_trace: RequestTrace) -> None:
        self.journal = journal
        self.trace = request_trace
        self.last_index = journal.last_index  # steps before submission never served it
        self.first = True

    def on_output(self, new_tokens: int, metrics: Any) -> None:
        """``new_tokens`` of one output; ``metrics`` is its ``RequestOutput.metrics``."""
        if self.first:
            self.first = False
            timing = engine_timing(metrics)
            if timing is not None:
                self.trace.engine_timing(*timing)
        if new_tokens <= 0:
            return
        steps = self.journal.sampled_after(self.last_index, new_tokens)
        if not steps:
            return
        self.last_index = steps[-1].index
        extra = new_tokens - len(steps)  # tokens of steps the journal no longer holds
        for step in steps:
            self.trace.step(step, 1 + extra)
            extra = 0

    def finish(self, finish_reason: str | None, output_tokens: int) -> None:
        self.trace.finish(finish_reason, output_tokens)


class VllmTracing:
    """What the vLLM adapter holds: the journal its stat logger feeds, and a trace per request."""

    def __init__(self, journal: JournalSettings | None = None,
                 steps: StepTraceSettings | None = None) -> None:
        self.journal = StepJournal(journal)
        self.settings = steps or StepTraceSettings()

    def start(self, request: EngineRequest, model: str, engine: str) -> VllmRequestSteps | None:
        """The step feed of a request (None for requests without trace context)."""
        request_trace = start_request_trace(request, model, engine, self.settings)
        if request_trace is None:
            return None
        return VllmRequestSteps(self.journal, request_trace)


def engine_timing(metrics: Any) -> tuple[float, float] | None:
    """(queue, prefill) seconds from vLLM's ``RequestStateStats`` (engine-core timestamps):
    queued → scheduled, scheduled → first token. None when vLLM does not report them."""
    queued = getattr(metrics, "queued_ts", 0.0)
    scheduled = getattr(metrics, "scheduled_ts", 0.0)
    first_token = getattr(metrics, "first_token_ts", 0.0)
    if not (queued and scheduled and first_token):
        return None
    return max(0.0, scheduled - queued), max(0.0, first_token - scheduled)


class _DropIterationLines(logging.Filter):
    """vLLM's default stat logger prints every iteration's details at INFO once they are
    enabled; the journal needs the details, the log does not need a line per step."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("%sIteration(")


_FILTER = _DropIterationLines()


def quiet_iteration_log() -> None:
    """Installs the filter on vLLM's stat-logger module logger (idempotent)."""
    logger = logging.getLogger("vllm.v1.metrics.loggers")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
