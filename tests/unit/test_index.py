"""The block index: stored/removed/cleared/moved, overlaps, removal, resync by snapshot."""

from __future__ import annotations

import random

import pytest

from services.router.core.index import BlockIndex
from tandem.kv_events import KVEvent


def chain(*ids: int) -> list[bytes]:
    return [n.to_bytes(16, "big") for n in ids]


PROMPT = chain(1, 2, 3, 4, 5)


def build(events: list[tuple[str, str, list[int]]]) -> BlockIndex:
    index = BlockIndex()
    for seq, (source, kind, ids) in enumerate(events, start=1):
        index.apply(source, KVEvent(seq, kind, chain(*ids)))
    return index


@pytest.mark.parametrize(("events", "device", "store"), [
    ([], {}, ()),
    ([("worker:a", "stored", [1, 2, 3])], {"a": 3}, ()),
    ([("worker:a", "stored", [1, 2, 3, 4, 5, 6])], {"a": 5}, ()),
    ([("worker:a", "stored", [2, 3])], {}, ()),  # no leading block: no overlap
    ([("worker:a", "stored", [1, 2, 3]), ("worker:b", "stored", [1])], {"a": 3, "b": 1}, ()),
    ([("worker:a", "stored", [1, 2, 3]), ("worker:a", "removed", [2])], {"a": 1}, ()),
    ([("worker:a", "stored", [1, 2, 3]), ("worker:a", "cleared", [])], {}, ()),
    ([("worker:a", "stored", [1, 2]), ("worker:b", "stored", [1, 2, 3]),
      ("worker:b", "cleared", [])], {"a": 2}, ()),
    ([("worker:a", "removed", [9])], {}, ()),  # removing what was never stored is harmless
    ([("store:cxl", "stored", [1, 2]), ("store:nvme", "stored", [1, 2, 3])], {},
     ("cxl", "cxl", "nvme")),
    ([("store:cxl", "stored", [1, 2, 3]), ("store:cxl", "moved", [3])], {},
     ("cxl", "cxl", "device")),
])
def test_overlaps(events: list[tuple[str, str, list[int]]], device: dict[str, int],
                  store: tuple[str, ...]) -> None:
    overlaps = build(events).overlaps(PROMPT)
    assert overlaps.device == device
    assert overlaps.store == store


def test_moved_goes_to_destination_tier() -> None:
    index = BlockIndex()
    index.apply("store:cxl", KVEvent(1, "stored", chain(1, 2)))
    index.apply("store:cxl", KVEvent(2, "moved", chain(2), tier="nvme"))
    assert index.overlaps(PROMPT).store == ("cxl", "nvme")
    assert index.blocks_of("store:cxl") == 1 and index.blocks_of("store:nvme") == 1


def test_counts_and_removing_a_worker_frees_its_slot() -> None:
    index = build([("worker:a", "stored", [1, 2, 3]), ("worker:a", "stored", [2, 3]),
                   ("worker:b", "stored", [1, 2])])
    assert index.blocks_of("worker:a") == 3 and index.unique_blocks == 3 and index.entries == 5
    index.remove_source("worker:a")
    assert index.overlaps(PROMPT).device == {"b": 2}
    assert "worker:a" not in index.sources and index.unique_blocks == 2
    index.stored("worker:c", chain(1))  # reuses a's slot without inheriting its blocks
    assert index.overlaps(PROMPT).device == {"b": 2, "c": 1}


def test_resync_replaces_a_workers_state() -> None:
    index = build([("worker:a", "stored", [1, 2, 3]), ("worker:b", "stored", [1, 2, 3])])
    # After a gap, a's snapshot says it holds only blocks 1, 2 and 7.
    index.replace("worker:a", chain(1, 2, 7))
    assert index.overlaps(PROMPT).device == {"a": 2, "b": 3}
    assert index.blocks_of("worker:a") == 3


def test_many_workers_overlap_lengths() -> None:
    index = BlockIndex()
    for worker in range(200):
        index.stored(f"worker:w{worker}", PROMPT[: worker % 6])
    device = index.overlaps(PROMPT).device
    assert all(device.get(f"w{w}", 0) == w % 6 for w in range(200))


def reference_overlaps(held: dict[str, set[bytes]], prompt: list[bytes]) -> dict[str, int]:
    device: dict[str, int] = {}
    for source, blocks in held.items():
        length = 0
        while length < len(prompt) and prompt[length] in blocks:
            length += 1
        if length and source.startswith("worker:"):
            device[source.removeprefix("worker:")] = length
    return device


@pytest.mark.parametrize("seed", range(8))
def test_random_event_sequences_match_a_plain_model(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores, removes, clears and source removals in random order (ids freed and reused,
    logs compacted often) leave the index equal to a dict of sets."""
    monkeypatch.setattr("services.router.core.index.LOG_SLACK", 4)
    rng = random.Random(seed)
    index = BlockIndex()
    held: dict[str, set[bytes]] = {}
    sources = [f"worker:w{n}" for n in range(6)]
    universe = chain(*range(1, 40))
    for step in range(3000):
        source = rng.choice(sources)
        action = rng.random()
        if action < 0.55:
            start = rng.randrange(len(universe))
            blocks = universe[start:start + rng.randrange(1, 8)]
            index.stored(source, blocks)
            held.setdefault(source, set()).update(blocks)
        elif action < 0.93:
            blocks = rng.sample(universe, rng.randrange(1, 6))
            index.removed(source, blocks)
            held.get(source, set()).difference_update(blocks)
        elif action < 0.97:
            index.cleared(source)
            held.get(source, set()).clear()
        else:
            index.remove_source(source)
            held.pop(source, None)
        if step % 50 == 0:
            for length in (1, 5, 20, 39):
                assert index.overlaps(universe[:length]).device == reference_overlaps(
                    held, universe[:length])
    for source in sources:
        assert index.blocks_of(source) == len(held.get(source, set()))
    assert index.unique_blocks == len(set().union(*held.values()))


def test_a_sources_log_stays_proportional_to_its_blocks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Churn does not grow the per-source log that clearing walks: neither the same blocks
    stored and removed over and over, nor a stream of blocks passing through a source while
    another source keeps them."""
    monkeypatch.setattr("services.router.core.index.LOG_SLACK", 4)
    index = BlockIndex()
    blocks = chain(*range(1, 11))
    for _ in range(200):
        index.stored("worker:a", blocks)
        index.removed("worker:a", blocks[5:])
    passing = chain(*range(100, 600))
    index.stored("worker:b", passing)
    for block in passing:
        index.stored("worker:a", [block])
        index.removed("worker:a", [block])
    assert index.blocks_of("worker:a") == 5
    assert len(index._logs[index._slot_of["worker:a"]]) <= 2 * 5 + 4 + 1
    index.cleared("worker:a")
    index.cleared("worker:b")
    assert index.unique_blocks == 0 and index.overlaps(blocks).device == {}
