"""Admission control (``core.admission``): slots, the queue, refusals, Retry-After and the
retry budget, table-driven."""

from __future__ import annotations

import pytest

from services.router.core.admission import (
    Admission,
    AdmissionSettings,
    RetryBudget,
    Ticket,
    Verdict,
)

A, Q, FULL, NONE = Verdict.ADMIT, Verdict.QUEUE, Verdict.FULL, Verdict.NO_CAPACITY


# (max_num_seqs, kv_blocks, block_size) -> slots, with oversubscription 2, 1024-token requests
@pytest.mark.parametrize(("announced", "slots"), [
    ((8, 0, 0), 16),  # batch limit only
    ((0, 0, 0), 128),  # nothing announced: the default batch limit (64)
    ((256, 4096, 16), 128),  # KV: 65,536 tokens hold 64 requests of 1,024
    ((8, 4096, 16), 16),  # the batch limit is the lower
    ((64, 10, 16), 2),  # a tiny KV cache still takes one request (x2)
])
def test_worker_slots(announced: tuple[int, int, int], slots: int) -> None:
    assert AdmissionSettings().worker_slots(*announced) == slots


# A script of operations on one Admission with capacity 2 and a queue of 2:
# ("admit", expected verdict) | ("enqueue",) | ("give_up", ticket index, expected) |
# ("release", expected ticket index or None) | ("capacity", n, expected granted indices)
ROWS: list[tuple[str, list[tuple[object, ...]], int, int]] = [
    ("admitted up to the capacity", [("admit", A), ("admit", A)], 2, 0),
    ("then queued, then refused",
     [("admit", A), ("admit", A), ("admit", Q), ("enqueue",), ("admit", Q), ("enqueue",),
      ("admit", FULL)], 2, 2),
    ("a release hands the slot to the oldest waiter",
     [("admit", A), ("admit", A), ("admit", Q), ("enqueue",), ("admit", Q), ("enqueue",),
      ("release", 0)], 2, 1),
    ("a waiter that gave up is skipped",
     [("admit", A), ("admit", A), ("admit", Q), ("enqueue",), ("admit", Q), ("enqueue",),
      ("give_up", 0, True), ("release", 1)], 2, 0),
    ("a waiter granted before it gave up holds the slot",
     [("admit", A), ("admit", A), ("admit", Q), ("enqueue",), ("release", 0),
      ("give_up", 0, False)], 2, 0),
    ("a release with nobody waiting frees the slot",
     [("admit", A), ("admit", A), ("release", None), ("admit", A)], 2, 0),
    ("new requests queue behind waiters (FIFO)",
     [("admit", A), ("admit", A), ("admit", Q), ("enqueue",), ("capacity", 2, []),
      ("admit", Q)], 2, 1),
    ("more capacity grants waiters",
     [("admit", A), ("admit", A), ("admit", Q), ("enqueue",), ("admit", Q), ("enqueue",),
      ("capacity", 3, [0])], 3, 1),
    ("no capacity: unavailable", [("capacity", 0, []), ("admit", NONE)], 0, 0),
]


@pytest.mark.parametrize(("script", "in_flight", "queued"), [row[1:] for row in ROWS],
                         ids=[row[0] for row in ROWS])
def test_admission(script: list[tuple[object, ...]], in_flight: int, queued: int) -> None:
    admission = Admission(AdmissionSettings(max_queue=2))
    admission.set_capacity(2)
    tickets: list[Ticket] = []
    for step in script:
        name = step[0]
        if name == "admit":
            assert admission.admit() is step[1]
        elif name == "enqueue":
            tickets.append(Ticket(len(tickets)))
            admission.enqueue(tickets[-1])
        elif name == "give_up":
            assert admission.give_up(tickets[step[1]]) is step[2]  # type: ignore[index]
        elif name == "release":
            granted = admission.release(1.0)
            assert (None if granted is None else granted.payload) == step[1]
        else:
            granted_list = admission.set_capacity(step[1])  # type: ignore[arg-type]
            assert [t.payload for t in granted_list] == step[2]
    assert (admission.in_flight, admission.queued) == (in_flight, queued)


def test_no_worker_wait_queues_for_the_first_worker() -> None:
    """Scale-to-zero: with no worker, a request waits (up to ``no_worker_wait_s``) in the
    queue, and the first worker's capacity grants it; the queue's bound still holds."""
    admission = Admission(AdmissionSettings(max_queue=1, no_worker_wait_s=30.0,
                                            max_queue_wait_s=2.0))
    assert admission.admit() is Q
    assert admission.wait_limit_s() == 30.0
    admission.enqueue(Ticket("first"))
    assert admission.admit() is FULL
    assert [t.payload for t in admission.set_capacity(1)] == ["first"]
    assert admission.wait_limit_s() == 2.0
    assert (admission.in_flight, admission.queued) == (1, 0)


def test_zero_queue_refuses_at_once() -> None:
    admission = Admission(AdmissionSettings(max_queue=0))
    admission.set_capacity(1)
    assert admission.admit() is A
    assert admission.admit() is FULL


@pytest.mark.parametrize(("mean_s", "queued", "capacity", "expected_ms"), [
    (1.0, 0, 10, 100),  # 1 s / 10 slots = 100 ms
    (1.0, 9, 10, 1000),  # ten ahead
    (0.01, 0, 10, 50),  # below the minimum
    (100.0, 100, 1, 30_000),  # above the maximum
])
def test_retry_after(mean_s: float, queued: int, capacity: int, expected_ms: int) -> None:
    admission = Admission(AdmissionSettings(retry_after_min_ms=50, max_queue=1000))
    admission.set_capacity(capacity)
    admission.mean_duration_s = mean_s
    for _ in range(capacity):
        admission.admit()
    for _ in range(queued):
        admission.enqueue(Ticket())
    assert admission.retry_after_ms() == expected_ms


def test_mean_duration_follows_releases() -> None:
    admission = Admission(AdmissionSettings(), duration_weight=0.5)
    admission.set_capacity(1)
    admission.mean_duration_s = 1.0
    admission.admit()
    admission.release(3.0)
    assert admission.mean_duration_s == 2.0


def test_retry_budget_bounds_retries_to_a_ratio_of_requests() -> None:
    budget = RetryBudget(ratio=0.1, reserve=2)
    assert budget.spend() and budget.spend() and not budget.spend()  # the reserve
    allowed = 0
    for _ in range(1000):
        budget.deposit()
        allowed += budget.spend()  # every request fails once and asks for a retry
    assert 99 <= allowed <= 100
    for _ in range(1000):
        budget.deposit()
    assert budget.balance == 2  # a quiet period never saves more than the reserve
