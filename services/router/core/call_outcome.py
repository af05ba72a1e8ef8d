"""What a worker call's gRPC status means for the request (pure): the event the request flow
(``request_flow``) is fed when a remote prefill or a decode call fails."""

from __future__ import annotations

import grpc

from services.router.core.request_flow import Event

# Status codes that mean "this worker could not take the request, or is gone" (the request is
# routed again, or migrated once tokens reached the client): the connection failed or was
# reset. A worker process killed mid-stream (any signal) and a worker server stopped with calls
# open both end the router's call with UNAVAILABLE ("Socket closed", "Cancelling all calls").
# Any other status is the request's (DEADLINE_EXCEEDED: its deadline passed; INTERNAL: the
# engine failed on it), and another worker would not do better.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE}
# Status codes that mean "the request itself is wrong" (no other worker would serve it).
_CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                  grpc.StatusCode.OUT_OF_RANGE}
# Status codes that say nothing against the worker, and that another worker would not change.
_REQUEST_ENDED = {*_CLIENT_ERRORS, grpc.StatusCode.CANCELLED}


def prefill_failure(code: grpc.StatusCode) -> Event:
    """The request flow's event for a remote prefill call that ended with ``code``."""
    if code in _CLIENT_ERRORS:  # the decode worker would refuse it too
        return Event.REFUSED
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return Event.DEADLINE_PASSED
    return Event.PREFILL_UNREACHABLE if code in _RETRYABLE else Event.PREFILL_FAILED


def decode_failure(code: grpc.StatusCode) -> Event:
    """The request flow's event for a decode call that ended with ``code``."""
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return Event.DEADLINE_PASSED
    if code in _RETRYABLE:
        return Event.WORKER_UNREACHABLE
    return Event.WORKER_ERROR if code in _REQUEST_ENDED else Event.WORKER_FAILED
