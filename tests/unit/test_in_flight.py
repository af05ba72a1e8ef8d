"""The router's in-flight ledger (``core.in_flight``): what routing reads as each worker's load."""

from __future__ import annotations

import pytest

from services.router.core.in_flight import InFlightLedger


# calls on one ledger -> (requests in flight on "w", prompt blocks pending on "w")
@pytest.mark.parametrize(("calls", "running", "pending"), [
    ([], 0, 0),
    ([("decode_started", 5)], 1, 5),
    ([("decode_started", 5), ("decode_answered", 5)], 1, 0),
    ([("decode_started", 5), ("decode_answered", 5), ("decode_ended",)], 0, 0),
    ([("decode_started", 5), ("decode_started", 3), ("decode_answered", 5)], 2, 3),
    ([("decode_ended",), ("decode_answered", 4)], 0, 0),  # never below zero
    ([("prefill_started",), ("prefill_started",), ("prefill_ended",)], 1, 0),
])
def test_ledger(calls: list[tuple[str] | tuple[str, int]], running: int, pending: int) -> None:
    ledger = InFlightLedger()
    for name, *args in calls:
        getattr(ledger, name)("w", *args)
    assert (ledger.running("w"), ledger.pending_prefill("w")) == (running, pending)
    assert ledger.running("other") == 0 and ledger.pending_prefill("other") == 0
