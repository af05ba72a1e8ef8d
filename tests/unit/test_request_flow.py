"""The router's request state machine (``core.request_flow``): every transition, table-driven."""

from __future__ import annotations

import pytest

from services.router.core.request_flow import (
    Action,
    Event,
    FlowState,
    InvalidTransition,
    Limits,
    Phase,
    RequestFlow,
    Step,
    transition,
)

R, P, D, S = Phase.ROUTING, Phase.PREFILLING, Phase.DECODING, Phase.STREAMING
M, RE, F = Phase.MIGRATING, Phase.RESUMING, Phase.FAILED
MIGRATE = Action(Step.MIGRATE, quarantine=True)
ROUTE_AGAIN = Action(Step.ROUTE, quarantine=True)
DECODE = Action(Step.DECODE)
FAIL_UNAVAILABLE = Action(Step.FAIL, outcome="unavailable")
FAIL_ERROR = Action(Step.FAIL, outcome="error")
FINISH_OK = Action(Step.FINISH, outcome="ok")

# (state, event, limits) -> (next state, action)
ROWS = [
    # routing
    (FlowState(R), Event.ROUTED_LOCAL, Limits(1), FlowState(D), DECODE),
    (FlowState(R), Event.ROUTED_REMOTE, Limits(1), FlowState(P), Action(Step.PREFILL)),
    (FlowState(R, attempt=1, handed_off=True), Event.ROUTED_REMOTE, Limits(1),
     FlowState(D, attempt=1, handed_off=True), DECODE),  # the hand-off is reused, no 2nd prefill
    (FlowState(R, attempt=1, handed_off=True), Event.ROUTED_LOCAL, Limits(1),
     FlowState(D, attempt=1, handed_off=True), DECODE),
    (FlowState(R), Event.NO_WORKER, Limits(1), FlowState(F), FAIL_UNAVAILABLE),
    # remote prefill
    (FlowState(P), Event.PREFILL_DONE, Limits(1), FlowState(D, handed_off=True), DECODE),
    (FlowState(P), Event.PREFILL_FINISHED, Limits(1), FlowState(Phase.DONE), FINISH_OK),
    (FlowState(P), Event.PREFILL_UNREACHABLE, Limits(1), FlowState(D),
     Action(Step.DECODE, quarantine=True)),  # quarantined, the decode worker prefills
    (FlowState(P), Event.PREFILL_FAILED, Limits(1), FlowState(D), DECODE),
    (FlowState(P), Event.REFUSED, Limits(1), FlowState(F), FAIL_ERROR),
    # decode, before any of the decode worker's tokens reached the client
    (FlowState(D), Event.FIRST_TOKEN, Limits(1), FlowState(S), Action(Step.STREAM)),
    (FlowState(D), Event.WORKER_UNREACHABLE, Limits(1), FlowState(R, attempt=1), ROUTE_AGAIN),
    (FlowState(D, attempt=1), Event.WORKER_UNREACHABLE, Limits(1), FlowState(F, attempt=1),
     FAIL_UNAVAILABLE),  # out of retries
    (FlowState(D), Event.WORKER_UNREACHABLE, Limits(0), FlowState(F), FAIL_UNAVAILABLE),
    (FlowState(D, attempt=1), Event.WORKER_UNREACHABLE, Limits(3), FlowState(R, attempt=2),
     ROUTE_AGAIN),
    (FlowState(D, handed_off=True), Event.WORKER_UNREACHABLE, Limits(1),
     FlowState(R, attempt=1, handed_off=True), ROUTE_AGAIN),  # continues from stored blocks
    (FlowState(D), Event.WORKER_ERROR, Limits(1), FlowState(F), FAIL_ERROR),
    # the worker failed through its own fault: another one takes the request, not quarantined
    (FlowState(D), Event.WORKER_FAILED, Limits(1), FlowState(R, attempt=1),
     Action(Step.ROUTE, exclude=True)),
    (FlowState(D, attempt=1), Event.WORKER_FAILED, Limits(1), FlowState(F, attempt=1),
     FAIL_ERROR),  # out of retries
    (FlowState(S), Event.WORKER_FAILED, Limits(1, 2), FlowState(F), FAIL_ERROR),
    (FlowState(RE, migrations=1), Event.WORKER_FAILED, Limits(1, 2),
     FlowState(F, migrations=1), FAIL_ERROR),
    (FlowState(D), Event.STREAM_ENDED, Limits(1), FlowState(Phase.DONE),
     Action(Step.FINISH, outcome="error")),  # ended without a token
    # streaming
    (FlowState(S), Event.FINISHED, Limits(1), FlowState(S, finished=True), Action(Step.STREAM)),
    (FlowState(S, finished=True), Event.STREAM_ENDED, Limits(1),
     FlowState(Phase.DONE, finished=True), FINISH_OK),
    (FlowState(S), Event.STREAM_ENDED, Limits(1), FlowState(Phase.DONE),
     Action(Step.FINISH, outcome="error")),  # ended without a finish reason
    # no migration allowed: tokens reached the client, so no other worker can take over
    (FlowState(S), Event.WORKER_UNREACHABLE, Limits(3), FlowState(F), FAIL_UNAVAILABLE),
    (FlowState(S), Event.WORKER_ERROR, Limits(3), FlowState(F), FAIL_ERROR),
    # migration: tokens reached the client, another decode worker resumes from them
    (FlowState(S), Event.WORKER_UNREACHABLE, Limits(0, 2), FlowState(M, migrations=1),
     MIGRATE),  # the retries (before any token) do not bound migrations
    (FlowState(S, attempt=1, handed_off=True), Event.WORKER_UNREACHABLE, Limits(1, 2),
     FlowState(M, attempt=1, handed_off=True, migrations=1), MIGRATE),  # after a hand-off
    (FlowState(S, migrations=1), Event.WORKER_UNREACHABLE, Limits(1, 2),
     FlowState(M, migrations=2), MIGRATE),
    (FlowState(S, migrations=2), Event.WORKER_UNREACHABLE, Limits(1, 2),
     FlowState(F, migrations=2), FAIL_UNAVAILABLE),  # past the limit
    (FlowState(S, finished=True), Event.WORKER_UNREACHABLE, Limits(1, 2),
     FlowState(Phase.DONE, finished=True), FINISH_OK),  # lost after the last token: complete
    (FlowState(S, migrations=1), Event.WORKER_ERROR, Limits(1, 2), FlowState(F, migrations=1),
     FAIL_ERROR),  # a worker error is the request's: another worker would fail it too
    (FlowState(M, migrations=1), Event.ROUTED_LOCAL, Limits(1, 2),
     FlowState(RE, migrations=1), DECODE),
    (FlowState(M, migrations=1), Event.NO_WORKER, Limits(1, 2), FlowState(F, migrations=1),
     FAIL_UNAVAILABLE),
    (FlowState(RE, migrations=1), Event.FIRST_TOKEN, Limits(1, 2),
     FlowState(S, migrations=1), Action(Step.STREAM)),
    (FlowState(RE, migrations=1), Event.WORKER_UNREACHABLE, Limits(1, 2),
     FlowState(M, migrations=2), MIGRATE),  # the new worker was lost before answering
    (FlowState(RE, migrations=2), Event.WORKER_UNREACHABLE, Limits(1, 2),
     FlowState(F, migrations=2), FAIL_UNAVAILABLE),
    (FlowState(RE, migrations=1), Event.WORKER_ERROR, Limits(1, 2),
     FlowState(F, migrations=1), FAIL_ERROR),
    (FlowState(RE, migrations=1), Event.STREAM_ENDED, Limits(1, 2),
     FlowState(Phase.DONE, migrations=1), Action(Step.FINISH, outcome="error")),
    (FlowState(S, finished=True, migrations=1), Event.STREAM_ENDED, Limits(1, 2),
     FlowState(Phase.DONE, finished=True, migrations=1), FINISH_OK),  # migrations are kept
    (FlowState(RE, migrations=1), Event.CANCELLED, Limits(1, 2),
     FlowState(Phase.CANCELLED, migrations=1), Action(Step.FINISH, outcome="cancelled")),
    # the deadline, from anywhere
    (FlowState(R), Event.DEADLINE_PASSED, Limits(1), FlowState(F),
     Action(Step.FAIL, outcome="deadline")),
    (FlowState(S, finished=False, migrations=1), Event.DEADLINE_PASSED, Limits(1, 2),
     FlowState(F, migrations=1), Action(Step.FAIL, outcome="deadline")),
    # cancellation, from anywhere
    (FlowState(R), Event.CANCELLED, Limits(1), FlowState(Phase.CANCELLED),
     Action(Step.FINISH, outcome="cancelled")),
    (FlowState(P, attempt=1), Event.CANCELLED, Limits(1), FlowState(Phase.CANCELLED, attempt=1),
     Action(Step.FINISH, outcome="cancelled")),
    (FlowState(S, finished=True), Event.CANCELLED, Limits(1),
     FlowState(Phase.CANCELLED, finished=True), Action(Step.FINISH, outcome="cancelled")),
]


@pytest.mark.parametrize(("state", "event", "limits", "next_state", "action"), ROWS,
                         ids=[f"{row[0].phase.name}-{row[1].name}-{i}"
                              for i, row in enumerate(ROWS)])
def test_transition(state: FlowState, event: Event, limits: Limits, next_state: FlowState,
                    action: Action) -> None:
    assert transition(state, event, limits) == (next_state, action)


@pytest.mark.parametrize(("phase", "event"), [
    (R, Event.FIRST_TOKEN),
    (R, Event.PREFILL_DONE),
    (P, Event.FIRST_TOKEN),
    (D, Event.FINISHED),  # a finish is always preceded by the decode worker's first token
    (S, Event.ROUTED_LOCAL),
    (Phase.DONE, Event.STREAM_ENDED),
    (Phase.FAILED, Event.ROUTED_LOCAL),
    (M, Event.ROUTED_REMOTE),  # a migration is always resumed on the decode worker itself
    (M, Event.FIRST_TOKEN),
    (RE, Event.FINISHED),
])
def test_an_event_that_cannot_happen_is_refused(phase: Phase, event: Event) -> None:
    with pytest.raises(InvalidTransition):
        transition(FlowState(phase), event, Limits(1, 1))


# A request's whole life: events fed in order -> the steps taken and the final outcome.
@pytest.mark.parametrize(("limits", "events", "steps", "outcome"), [
    (Limits(1), [Event.ROUTED_LOCAL, Event.FIRST_TOKEN, Event.FINISHED, Event.STREAM_ENDED],
     [Step.DECODE, Step.STREAM, Step.STREAM, Step.FINISH], "ok"),
    (Limits(1), [Event.ROUTED_REMOTE, Event.PREFILL_DONE, Event.WORKER_UNREACHABLE,
         Event.ROUTED_REMOTE, Event.FIRST_TOKEN, Event.FINISHED, Event.STREAM_ENDED],
     [Step.PREFILL, Step.DECODE, Step.ROUTE, Step.DECODE, Step.STREAM, Step.STREAM,
      Step.FINISH], "ok"),
    (Limits(1), [Event.ROUTED_LOCAL, Event.WORKER_UNREACHABLE, Event.ROUTED_LOCAL,
         Event.WORKER_UNREACHABLE],
     [Step.DECODE, Step.ROUTE, Step.DECODE, Step.FAIL], "unavailable"),
    (Limits(1), [Event.ROUTED_LOCAL, Event.WORKER_UNREACHABLE, Event.NO_WORKER],
     [Step.DECODE, Step.ROUTE, Step.FAIL], "unavailable"),
    (Limits(2), [Event.ROUTED_REMOTE, Event.PREFILL_FAILED, Event.FIRST_TOKEN, Event.CANCELLED],
     [Step.PREFILL, Step.DECODE, Step.STREAM, Step.FINISH], "cancelled"),
    # not over yet: error if it stops here
    (Limits(1), [Event.ROUTED_REMOTE], [Step.PREFILL], "error"),
    (Limits(1, 2), [Event.ROUTED_LOCAL, Event.FIRST_TOKEN, Event.WORKER_UNREACHABLE,
                    Event.ROUTED_LOCAL, Event.FIRST_TOKEN, Event.FINISHED, Event.STREAM_ENDED],
     [Step.DECODE, Step.STREAM, Step.MIGRATE, Step.DECODE, Step.STREAM, Step.STREAM,
      Step.FINISH], "ok"),  # migrated once, finished
    (Limits(1, 1), [Event.ROUTED_REMOTE, Event.PREFILL_DONE, Event.FIRST_TOKEN,
                    Event.WORKER_UNREACHABLE, Event.ROUTED_LOCAL, Event.FIRST_TOKEN,
                    Event.WORKER_UNREACHABLE],
     [Step.PREFILL, Step.DECODE, Step.STREAM, Step.MIGRATE, Step.DECODE, Step.STREAM,
      Step.FAIL], "unavailable"),  # disaggregated, migrated once, then past the limit
    (Limits(1, 2), [Event.ROUTED_LOCAL, Event.FIRST_TOKEN, Event.WORKER_UNREACHABLE,
                    Event.NO_WORKER], [Step.DECODE, Step.STREAM, Step.MIGRATE, Step.FAIL],
     "unavailable"),  # no other worker is live
])
def test_a_request_flow(limits: Limits, events: list[Event], steps: list[Step],
                        outcome: str) -> None:
    flow = RequestFlow(limits)
    assert [flow.on(event).step for event in events] == steps
    assert flow.outcome == outcome
