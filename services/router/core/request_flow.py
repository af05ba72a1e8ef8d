"""The life of one request at the router, as a pure state machine.

A request is routed (a decode worker, maybe a prefill worker), optionally prefilled on the
prefill worker, then decoded; a decode worker that is unreachable before any of its tokens
reached the client is quarantined and the request routed again, up to ``retries`` times. A
decode worker lost after its tokens reached the client is quarantined and the request
migrated: routed again and resumed on another decode worker from the prompt plus the tokens
already sent, up to ``migrations`` times per request. The machine only decides: the driver
(``services.router.generation``) makes the calls, feeds back what happened as an ``Event``
and does what the returned ``Action`` says.

    ROUTING --routed, local prefill--> DECODING
    ROUTING --routed, remote prefill--> PREFILLING   (DECODING if a hand-off is in hand)
    PREFILLING --prefill done--> DECODING (with the hand-off)
    PREFILLING --prefill worker failed--> DECODING (the decode worker prefills: one fallback)
    DECODING --first token--> STREAMING
    DECODING --worker unreachable--> ROUTING (another worker), or FAILED when out of retries
    DECODING --worker failed (its fault, not the request's)--> ROUTING (another worker; not
        quarantined: its circuit breaker judges it), or FAILED when out of retries
    STREAMING --stream ended--> DONE
    STREAMING --worker unreachable--> MIGRATING, or FAILED past the migration limit
    MIGRATING --routed--> RESUMING (the new decode worker continues from the tokens sent)
    MIGRATING --no worker left--> FAILED
    RESUMING --first token--> STREAMING
    RESUMING --worker unreachable--> MIGRATING again, or FAILED past the limit
    any phase --deadline passed--> FAILED (outcome "deadline")

New behaviour at a worker failure (admission control: a phase before ROUTING) is a row of
``_TRANSITIONS``. No I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable


class Phase(enum.Enum):
    ROUTING = "routing"
    """Choosing the decode worker (and maybe a prefill worker)."""
    PREFILLING = "prefilling"
    """A prefill worker computes the prompt's KV blocks and first token."""
    DECODING = "decoding"
    """The decode worker's call is open; none of its tokens has reached the client yet, so
    another worker can still take the request."""
    STREAMING = "streaming"
    """The decode worker's tokens are reaching the client."""
    MIGRATING = "migrating"
    """The decode worker was lost mid-stream: choosing another one to resume the request."""
    RESUMING = "resuming"
    """The new decode worker's call is open (it continues from the tokens already sent); none
    of its tokens has reached the client yet."""
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    """The client went away or the deadline passed."""


class Event(enum.Enum):
    ROUTED_LOCAL = "routed; the decode worker prefills"
    ROUTED_REMOTE = "routed with a prefill worker"
    NO_WORKER = "no live decode worker is left"
    PREFILL_DONE = "the prefill worker's first token and KV handle arrived"
    PREFILL_FINISHED = "the prefill worker's first token ended the request"
    PREFILL_UNREACHABLE = "the prefill worker is unreachable"
    PREFILL_FAILED = "the prefill worker failed for another reason"
    REFUSED = "a worker refused the request itself (no other worker would serve it)"
    FIRST_TOKEN = "the decode worker's first message arrived"
    FINISHED = "the request's last token reached the client"
    STREAM_ENDED = "the decode worker's stream ended"
    WORKER_UNREACHABLE = "the decode worker is unreachable"
    WORKER_ERROR = "the decode worker failed the request itself (invalid, or out of time)"
    WORKER_FAILED = ("the decode worker failed through its own fault (an engine error): another "
                     "worker may serve the request")
    DEADLINE_PASSED = "the request's deadline passed"
    CANCELLED = "the client went away or the deadline passed"


class Step(enum.Enum):
    """What the driver does next."""

    ROUTE = "route"
    PREFILL = "prefill"
    DECODE = "decode"
    STREAM = "stream"
    """Keep relaying the decode worker's stream."""
    FINISH = "finish"
    """Stop; the request is over (``Action.outcome`` says how)."""
    FAIL = "fail"
    """Raise the error at hand (``Action.outcome`` says which kind)."""
    MIGRATE = "migrate"
    """Route the request again (a local prefill: the new decode worker computes or loads the
    prompt and the tokens sent), then feed ROUTED_LOCAL or NO_WORKER."""


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    step: Step
    quarantine: bool = False
    """First take the worker that just failed out of routing (and out of this request's
    candidates)."""
    outcome: str = ""
    """FINISH and FAIL: the request's ``tandem.outcome`` (ok, error, unavailable, cancelled,
    deadline)."""
    exclude: bool = False
    """ROUTE: leave the worker that just failed out of this request's candidates (without
    quarantining it: ``quarantine`` implies this)."""


@dataclasses.dataclass(frozen=True, slots=True)
class FlowState:
    phase: Phase
    attempt: int = 0
    """Routing attempts before the current one (the first route is attempt 0)."""
    handed_off: bool = False
    """A prefill worker's first token and KV handle are in hand: any decode worker continues
    from them, so the prompt is not prefilled again on a retry."""
    finished: bool = False
    """The request's last token reached the client."""
    migrations: int = 0
    """Times the request was migrated to another decode worker after tokens were sent."""


class InvalidTransition(ValueError):
    """An event that cannot happen in the current phase (a bug in the driver)."""


ROUTE = Action(Step.ROUTE)
RETRY_ELSEWHERE = Action(Step.ROUTE, quarantine=True)
RETRY_AFTER_FAILURE = Action(Step.ROUTE, exclude=True)
PREFILL = Action(Step.PREFILL)
DECODE = Action(Step.DECODE)
DECODE_LOCALLY_AFTER_QUARANTINE = Action(Step.DECODE, quarantine=True)
STREAM = Action(Step.STREAM)
FINISH_OK = Action(Step.FINISH, outcome="ok")
FINISH_UNFINISHED = Action(Step.FINISH, outcome="error")
FAIL_ERROR = Action(Step.FAIL, outcome="error")
FAIL_UNAVAILABLE = Action(Step.FAIL, outcome="unavailable")
STOP_CANCELLED = Action(Step.FINISH, outcome="cancelled")
FAIL_DEADLINE = Action(Step.FAIL, outcome="deadline")
MIGRATE = Action(Step.MIGRATE, quarantine=True)


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """How often a request may move to another decode worker."""

    retries: int = 1
    """Routings again after a decode worker was unreachable before any token was sent."""
    migrations: int = 0
    """Migrations after a decode worker was lost once tokens were sent (0: none)."""


Transition = Callable[[FlowState, Limits], tuple[FlowState, Action]]


# States are built directly rather than with dataclasses.replace: a handful of transitions
# run per request on the router's hot path.
def _in(phase: Phase, state: FlowState) -> FlowState:
    return FlowState(phase, state.attempt, state.handed_off, state.finished, state.migrations)


def _to(phase: Phase, action: Action) -> Transition:
    def transition(state: FlowState, limits: Limits) -> tuple[FlowState, Action]:
        return _in(phase, state), action
    return transition


def _routed_remote(state: FlowState, limits: Limits) -> tuple[FlowState, Action]:
    if state.handed_off:  # the stored blocks serve any decode worker
        return _in(Phase.DECODING, state), DECODE
    return _in(Phase.PREFILLING, state), PREFILL


def _prefill_done(state: FlowState, limits: Limits) -> tuple[FlowState, Action]:
    return (FlowState(Phase.DECODING, state.attempt, True, state.finished, state.migrations),
            DECODE)


def _retry_elsewhere(state: FlowState, limits: Limits) -> tuple[FlowState, Action]:
    if state.attempt >= limits.retries:
        return _in(Phase.FAILED, state), FAIL_UNAVAILABLE
    return (FlowState(Phase.ROUTING, state.attempt + 1, state.handed_off, state.finished,
                      state.migrations), RETRY_ELSEWHERE)


def _retry_after_failure(state: FlowState, limits: Limits) -> tuple[FlowState, Action]:
    if state.attempt >= limits.retries:
        return _in(Phase.FAILED, state), FAIL_ERROR
    return (FlowState(Phase.ROUTING, state.attempt + 1, state.handed_off, state.finished,
                      state.migrations), RETRY_AFTER_FAILURE)


def _migrate(state: FlowState, limits: Limits) -> tuple[FlowState, Action]:
    if state.finished:  # lost after its last token: nothing is left to resume
        return _in(Phase.DONE, state), FINISH_OK
    if state.migrations >= limits.migrations:
        return _in(Phase.FAILED, state), FAIL_UNAVAILABLE
    return (FlowState(Phase.MIGRATING, state.attempt, state.handed_off, state.finished,
                      state.migrations + 1), MIGRATE)


def _finished(state: FlowState, limits: Limits) -> tuple[FlowState, Action]:
    return (FlowState(state.phase, state.attempt, state.handed_off, True, state.migrations),
            STREAM)


def _stream_ended(state: FlowState, limits: Limits) -> tuple[FlowState, Action]:
    return _in(Phase.DONE, state), FINISH_OK if state.finished else FINISH_UNFINISHED


_TRANSITIONS: dict[tuple[Phase, Event], Transition] = {
    (Phase.ROUTING, Event.ROUTED_LOCAL): _to(Phase.DECODING, DECODE),
    (Phase.ROUTING, Event.ROUTED_REMOTE): _routed_remote,
    (Phase.ROUTING, Event.NO_WORKER): _to(Phase.FAILED, FAIL_UNAVAILABLE),
    (Phase.PREFILLING, Event.PREFILL_DONE): _prefill_done,
    (Phase.PREFILLING, Event.PREFILL_FINISHED): _to(Phase.DONE, FINISH_OK),
    (Phase.PREFILLING, Event.PREFILL_UNREACHABLE):
        _to(Phase.DECODING, DECODE_LOCALLY_AFTER_QUARANTINE),
    (Phase.PREFILLING, Event.PREFILL_FAILED): _to(Phase.DECODING, DECODE),
    (Phase.PREFILLING, Event.REFUSED): _to(Phase.FAILED, FAIL_ERROR),
    (Phase.DECODING, Event.FIRST_TOKEN): _to(Phase.STREAMING, STREAM),
    (Phase.DECODING, Event.STREAM_ENDED): _stream_ended,
    # After a remote prefill another decode worker can still continue from the stored
    # blocks: only tokens the decode worker sent are unrecoverable.
    (Phase.DECODING, Event.WORKER_UNREACHABLE): _retry_elsewhere,
    (Phase.DECODING, Event.WORKER_ERROR): _to(Phase.FAILED, FAIL_ERROR),
    (Phase.DECODING, Event.WORKER_FAILED): _retry_after_failure,
    (Phase.STREAMING, Event.FINISHED): _finished,
    (Phase.STREAMING, Event.STREAM_ENDED): _stream_ended,
    # Tokens reached the client: another decode worker resumes from them (migration).
    (Phase.STREAMING, Event.WORKER_UNREACHABLE): _migrate,
    (Phase.STREAMING, Event.WORKER_ERROR): _to(Phase.FAILED, FAIL_ERROR),
    (Phase.STREAMING, Event.WORKER_FAILED): _to(Phase.FAILED, FAIL_ERROR),
    (Phase.MIGRATING, Event.ROUTED_LOCAL): _to(Phase.RESUMING, DECODE),
    (Phase.MIGRATING, Event.NO_WORKER): _to(Phase.FAILED, FAIL_UNAVAILABLE),
    (Phase.RESUMING, Event.FIRST_TOKEN): _to(Phase.STREAMING, STREAM),
    (Phase.RESUMING, Event.STREAM_ENDED): _stream_ended,
    (Phase.RESUMING, Event.WORKER_UNREACHABLE): _migrate,
    (Phase.RESUMING, Event.WORKER_ERROR): _to(Phase.FAILED, FAIL_ERROR),
    (Phase.RESUMING, Event.WORKER_FAILED): _to(Phase.FAILED, FAIL_ERROR),
}


def transition(state: FlowState, event: Event, limits: Limits) -> tuple[FlowState, Action]:
    """The next state and what to do, for ``event`` in ``state`` under ``limits``."""
    if event is Event.CANCELLED:
        return _in(Phase.CANCELLED, state), STOP_CANCELLED
    if event is Event.DEADLINE_PASSED:
        return _in(Phase.FAILED, state), FAIL_DEADLINE
    step = _TRANSITIONS.get((state.phase, event))
    if step is None:
        raise InvalidTransition(f"{event.name} cannot happen while {state.phase.value}")
    return step(state, limits)


class RequestFlow:
    """One request's state, advanced by events."""

    __slots__ = ("limits", "outcome", "state")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.state = FlowState(Phase.ROUTING)
        self.outcome = "error"
        """The ``tandem.outcome`` so far: error until the request ends otherwise."""

    def on(self, event: Event) -> Action:
        self.state, action = transition(self.state, event, self.limits)
        if action.outcome:
            self.outcome = action.outcome
        return action
