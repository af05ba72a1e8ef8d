"""The connector's transfer bookkeeping: which blocks load and save in which step."""

from __future__ import annotations

import pytest

from tandem.kvconnector.plan import RequestPlan, external_tokens, loadable_blocks

BS = 4


@pytest.mark.parametrize(("prompt", "expected"), [
    (0, 0), (1, 0), (4, 0), (5, 1), (8, 1), (9, 2), (12, 2), (13, 3),
])
def test_the_last_prompt_token_is_always_computed(prompt: int, expected: int) -> None:
    assert loadable_blocks(prompt, BS) == expected


@pytest.mark.parametrize(("present", "computed", "prompt", "expected"), [
    (0, 0, 20, 0),     # nothing in the store
    (3, 0, 20, 12),    # three blocks to load
    (3, 8, 20, 4),     # the engine holds two: load the third
    (3, 12, 20, 0),    # the engine holds all three
    (5, 0, 20, 19),    # all five present, but the last prompt token must be computed
    (5, 16, 20, 3),    # the engine holds four: the fifth loads but for the last token
    (1, 0, 1, 0),      # a one-token prompt computes its token
    (5, 0, 21, 20),    # 21 tokens: all five whole blocks load
    (9, 0, 21, 20),    # the store holds more than the prompt (a longer chain)
])
def test_external_tokens(present: int, computed: int, prompt: int, expected: int) -> None:
    assert external_tokens(present, computed, prompt, BS) == expected


def plan(prompt_tokens: int = 18, save: bool = True) -> RequestPlan:
    hashes = [bytes([i]) * 16 for i in range(prompt_tokens // BS)]
    return RequestPlan("r", hashes, b"salt", prompt_tokens, BS, save)


def test_load_is_sent_once_with_the_right_blocks_and_parent() -> None:
    p = plan()
    p.found_in_store(3)
    p.plan_load(computed_tokens=4, external=8)
    p.set_blocks([10, 11, 12, 13, 14])
    run = p.take_load()
    assert run is not None
    assert run.block_ids == (11, 12) and run.hashes == (p.hashes[1], p.hashes[2])
    assert run.parent == p.hashes[0]
    assert p.take_load() is None


def test_load_without_allocated_blocks_is_a_bug_not_garbage() -> None:
    p = plan()
    p.plan_load(0, 8)
    p.set_blocks([10])
    with pytest.raises(ValueError):
        p.take_load()


def test_chunked_prefill_saves_each_chunks_whole_blocks_once() -> None:
    p = plan(prompt_tokens=18)  # 4 whole blocks + 2 tokens
    p.plan_load(0, 0)
    p.set_blocks([5, 6])
    first = p.take_save(computed_after_step=7)  # chunk 1: tokens 0-6 → block 0 complete
    assert first is not None and first.block_ids == (5,) and first.parent == b"salt"
    p.add_blocks([7, 8, 9])
    second = p.take_save(computed_after_step=18)  # chunk 2: the rest of the prompt
    assert second is not None
    assert second.block_ids == (6, 7, 8) and second.parent == p.hashes[0]
    assert p.take_save(computed_after_step=19) is None  # generated tokens are never saved


def test_blocks_found_in_the_store_are_not_saved_again() -> None:
    p = plan(prompt_tokens=18)
    p.found_in_store(2)
    p.plan_load(0, 8)
    p.set_blocks([1, 2, 3, 4, 5])
    run = p.take_save(18)
    assert run is not None and run.block_ids == (3, 4) and run.parent == p.hashes[1]


def test_a_consumer_saves_nothing() -> None:
    p = plan(save=False)
    p.set_blocks([1, 2, 3, 4, 5])
    assert p.take_save(18) is None


def test_preemption_drops_blocks_and_keeps_what_was_saved() -> None:
    p = plan()
    p.set_blocks([1, 2, 3, 4, 5])
    assert p.take_save(9) is not None
    p.reset_after_preemption()
    p.plan_load(0, 8)  # rescheduled: its two saved blocks now come back from the store
    p.set_blocks([7, 8, 9, 10, 11])
    load = p.take_load()
    assert load is not None and load.block_ids == (7, 8)
    save = p.take_save(18)
    assert save is not None and save.block_ids == (9, 10)


@pytest.mark.parametrize(("present", "computed", "prompt", "covered", "expected"), [
    (3, 0, 11, 10, 10),   # decode after a hand-off: 2 whole blocks + a 2-token tail, all of it
    (3, 8, 11, 10, 2),    # the engine holds the whole blocks: only the tail loads
    (2, 0, 11, 10, 8),    # the tail is gone: whole blocks only
    # a structured hand-off's decode (the first token replayed as output, not in the prompt),
    # or a prefill of a stored prompt: all but the last token, which is computed
    (3, 0, 10, 10, 9),
    (3, 8, 10, 10, 1),
    (1, 0, 2, 2, 1),      # a 2-token prompt: one token loads from its tail
])
def test_external_tokens_with_a_tail(present: int, computed: int, prompt: int, covered: int,
                                     expected: int) -> None:
    assert external_tokens(present, computed, prompt, BS, covered) == expected


def test_a_hand_off_saves_the_partial_tail_once_the_prompt_is_computed() -> None:
    hashes = [b"a" * 16, b"b" * 16, b"t" * 16]  # two whole blocks + the tail of 2 tokens
    p = RequestPlan("r", hashes, b"salt", 10, BS, save=True, covered_tokens=10)
    p.set_blocks([4, 5, 6])
    first = p.take_save(computed_after_step=9)  # chunk 1: the tail is not complete yet
    assert first is not None and first.hashes == (b"a" * 16, b"b" * 16)
    last = p.take_save(computed_after_step=10)
    assert last is not None and last.hashes == (b"t" * 16,) and last.block_ids == (6,)
    assert last.parent == b"b" * 16
    assert p.take_save(computed_after_step=11) is None


def test_a_load_with_a_tail_covers_its_block() -> None:
    hashes = [b"a" * 16, b"b" * 16, b"t" * 16]
    p = RequestPlan("r", hashes, b"salt", 11, BS, save=False, covered_tokens=10)
    p.plan_load(computed_tokens=0, external=p.external_tokens(3, 0))
    p.set_blocks([7, 8, 9])
    run = p.take_load()
    assert run is not None and run.block_ids == (7, 8, 9) and run.hashes == tuple(hashes)


def test_a_structured_hand_off_loads_the_tail_but_for_the_last_token() -> None:
    hashes = [b"a" * 16, b"b" * 16, b"t" * 16]  # two whole blocks + the tail of 2 tokens
    p = RequestPlan("r", hashes, b"salt", 10, BS, save=False, covered_tokens=10)
    external = p.external_tokens(3, 0)
    assert external == 9
    p.plan_load(computed_tokens=0, external=external)
    p.set_blocks([7, 8, 9])
    run = p.take_load()
    assert run is not None and run.block_ids == (7, 8, 9) and run.hashes == tuple(hashes)
