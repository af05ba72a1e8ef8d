"""The block index: stored/removed/cleared/moved, overlaps, removal, resync by snapshot."""

from __future__ import annotations

import pytest

from services.router.index import BlockIndex
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
