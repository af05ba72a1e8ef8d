"""The router's request state machine (``core.request_flow``): every transition, table-driven."""

from __future__ import annotations

import pytest

from services.router.core.request_flow import (
    Action,
    Event,
    FlowState,
    InvalidTransition,
    Phase,
    RequestFlow,
    Step,
    transition,
)

R, P, D, S = Phase.ROUTING, Phase.PREFILLING, Phase.DECODING, Phase.STREAMING
ROUTE_AGAIN = Action(Step.ROUTE, quarantine=True)
DECODE = Action(Step.DECODE)
FAIL_UNAVAILABLE = Action(Step.FAIL, outcome="unavailable")
FAIL_ERROR = Action(Step.FAIL, outcome="error")
FINISH_OK = Action(Step.FINISH, outcome="ok")

# (state, event, retries) -> (next state, action)
ROWS = [
    # routing
    (FlowState(R), Event.ROUTED_LOCAL, 1, FlowState(D), DECODE),
    (FlowState(R), Event.ROUTED_REMOTE, 1, FlowState(P), Action(Step.PREFILL)),
    (FlowState(R, attempt=1, handed_off=True), Event.ROUTED_REMOTE, 1,
     FlowState(D, attempt=1, handed_off=True), DECODE),  # the hand-off is reused, no 2nd prefill
    (FlowState(R, attempt=1, handed_off=True), Event.ROUTED_LOCAL, 1,
     FlowState(D, attempt=1, handed_off=True), DECODE),
    (FlowState(R), Event.NO_WORKER, 1, FlowState(Phase.FAILED), FAIL_UNAVAILABLE),
    # remote prefill
    (FlowState(P), Event.PREFILL_DONE, 1, FlowState(D, handed_off=True), DECODE),
    (FlowState(P), Event.PREFILL_FINISHED, 1, FlowState(Phase.DONE), FINISH_OK),
    (FlowState(P), Event.PREFILL_UNREACHABLE, 1, FlowState(D),
     Action(Step.DECODE, quarantine=True)),  # quarantined, the decode worker prefills
    (FlowState(P), Event.PREFILL_FAILED, 1, FlowState(D), DECODE),
    (FlowState(P), Event.REFUSED, 1, FlowState(Phase.FAILED), FAIL_ERROR),
    # decode, before any of the decode worker's tokens reached the client
    (FlowState(D), Event.FIRST_TOKEN, 1, FlowState(S), Action(Step.STREAM)),
    (FlowState(D), Event.WORKER_UNREACHABLE, 1, FlowState(R, attempt=1), ROUTE_AGAIN),
    (FlowState(D, attempt=1), Event.WORKER_UNREACHABLE, 1, FlowState(Phase.FAILED, attempt=1),
     FAIL_UNAVAILABLE),  # out of retries
    (FlowState(D), Event.WORKER_UNREACHABLE, 0, FlowState(Phase.FAILED), FAIL_UNAVAILABLE),
    (FlowState(D, attempt=1), Event.WORKER_UNREACHABLE, 3, FlowState(R, attempt=2),
     ROUTE_AGAIN),
    (FlowState(D, handed_off=True), Event.WORKER_UNREACHABLE, 1,
     FlowState(R, attempt=1, handed_off=True), ROUTE_AGAIN),  # continues from stored blocks
    (FlowState(D), Event.WORKER_ERROR, 1, FlowState(Phase.FAILED), FAIL_ERROR),
    (FlowState(D), Event.STREAM_ENDED, 1, FlowState(Phase.DONE),
     Action(Step.FINISH, outcome="error")),  # ended without a token
    # streaming: tokens reached the client, so no other worker can take over
    (FlowState(S), Event.FINISHED, 1, FlowState(S, finished=True), Action(Step.STREAM)),
    (FlowState(S, finished=True), Event.STREAM_ENDED, 1, FlowState(Phase.DONE, finished=True),
     FINISH_OK),
    (FlowState(S), Event.STREAM_ENDED, 1, FlowState(Phase.DONE),
     Action(Step.FINISH, outcome="error")),  # ended without a finish reason
    (FlowState(S), Event.WORKER_UNREACHABLE, 3, FlowState(Phase.FAILED), FAIL_UNAVAILABLE),
    (FlowState(S), Event.WORKER_ERROR, 3, FlowState(Phase.FAILED), FAIL_ERROR),
    # cancellation, from anywhere
    (FlowState(R), Event.CANCELLED, 1, FlowState(Phase.CANCELLED),
     Action(Step.FINISH, outcome="cancelled")),
    (FlowState(P, attempt=1), Event.CANCELLED, 1, FlowState(Phase.CANCELLED, attempt=1),
     Action(Step.FINISH, outcome="cancelled")),
    (FlowState(S, finished=True), Event.CANCELLED, 1,
     FlowState(Phase.CANCELLED, finished=True), Action(Step.FINISH, outcome="cancelled")),
]


@pytest.mark.parametrize(("state", "event", "retries", "next_state", "action"), ROWS,
                         ids=[f"{row[0].phase.name}-{row[1].name}-{i}"
                              for i, row in enumerate(ROWS)])
def test_transition(state: FlowState, event: Event, retries: int, next_state: FlowState,
                    action: Action) -> None:
    assert transition(state, event, retries) == (next_state, action)


@pytest.mark.parametrize(("phase", "event"), [
    (R, Event.FIRST_TOKEN),
    (R, Event.PREFILL_DONE),
    (P, Event.FIRST_TOKEN),
    (D, Event.FINISHED),  # a finish is always preceded by the decode worker's first token
    (S, Event.ROUTED_LOCAL),
    (Phase.DONE, Event.STREAM_ENDED),
    (Phase.FAILED, Event.ROUTED_LOCAL),
])
def test_an_event_that_cannot_happen_is_refused(phase: Phase, event: Event) -> None:
    with pytest.raises(InvalidTransition):
        transition(FlowState(phase), event, 1)


# A request's whole life: events fed in order -> the steps taken and the final outcome.
@pytest.mark.parametrize(("retries", "events", "steps", "outcome"), [
    (1, [Event.ROUTED_LOCAL, Event.FIRST_TOKEN, Event.FINISHED, Event.STREAM_ENDED],
     [Step.DECODE, Step.STREAM, Step.STREAM, Step.FINISH], "ok"),
    (1, [Event.ROUTED_REMOTE, Event.PREFILL_DONE, Event.WORKER_UNREACHABLE,
         Event.ROUTED_REMOTE, Event.FIRST_TOKEN, Event.FINISHED, Event.STREAM_ENDED],
     [Step.PREFILL, Step.DECODE, Step.ROUTE, Step.DECODE, Step.STREAM, Step.STREAM,
      Step.FINISH], "ok"),
    (1, [Event.ROUTED_LOCAL, Event.WORKER_UNREACHABLE, Event.ROUTED_LOCAL,
         Event.WORKER_UNREACHABLE],
     [Step.DECODE, Step.ROUTE, Step.DECODE, Step.FAIL], "unavailable"),
    (1, [Event.ROUTED_LOCAL, Event.WORKER_UNREACHABLE, Event.NO_WORKER],
     [Step.DECODE, Step.ROUTE, Step.FAIL], "unavailable"),
    (2, [Event.ROUTED_REMOTE, Event.PREFILL_FAILED, Event.FIRST_TOKEN, Event.CANCELLED],
     [Step.PREFILL, Step.DECODE, Step.STREAM, Step.FINISH], "cancelled"),
    (1, [Event.ROUTED_REMOTE], [Step.PREFILL], "error"),  # not over yet: error if it stops here
])
def test_a_request_flow(retries: int, events: list[Event], steps: list[Step],
                        outcome: str) -> None:
    flow = RequestFlow(retries)
    assert [flow.on(event).step for event in events] == steps
    assert flow.outcome == outcome
