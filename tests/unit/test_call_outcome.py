"""The request flow's event for each way a worker call can fail."""

import grpc
import pytest

from services.router.core.call_outcome import decode_failure, prefill_failure
from services.router.core.request_flow import Event

S = grpc.StatusCode


@pytest.mark.parametrize(("code", "event"), [
    (S.UNAVAILABLE, Event.PREFILL_UNREACHABLE),
    (S.INVALID_ARGUMENT, Event.REFUSED),
    (S.OUT_OF_RANGE, Event.REFUSED),
    (S.DEADLINE_EXCEEDED, Event.DEADLINE_PASSED),
    (S.INTERNAL, Event.PREFILL_FAILED),
    (S.CANCELLED, Event.PREFILL_FAILED),
])
def test_prefill_failure(code: grpc.StatusCode, event: Event) -> None:
    assert prefill_failure(code) is event


@pytest.mark.parametrize(("code", "event"), [
    (S.UNAVAILABLE, Event.WORKER_UNREACHABLE),
    (S.DEADLINE_EXCEEDED, Event.DEADLINE_PASSED),
    (S.INVALID_ARGUMENT, Event.WORKER_ERROR),
    (S.NOT_FOUND, Event.WORKER_ERROR),
    (S.CANCELLED, Event.WORKER_ERROR),
    (S.INTERNAL, Event.WORKER_FAILED),
    (S.UNKNOWN, Event.WORKER_FAILED),
])
def test_decode_failure(code: grpc.StatusCode, event: Event) -> None:
    assert decode_failure(code) is event
