"""Translating vLLM's block events into tandem's: the chain the router computes, announced once
per block, removed when vLLM's last copy goes, parents before children in the snapshot."""

from __future__ import annotations

import pytest

from tandem.engines.vllm_kv_events import KVEventTranslator, cache_salt_of
from tandem.hashing import block_hashes, hash_salt

MODEL = "SmolLM2-135M-Instruct"
BS = 4
TOKENS = list(range(100, 124))  # 6 blocks
ROUTER = block_hashes(TOKENS, BS, hash_salt(MODEL))
"""What the router computes for a prompt of TOKENS."""


def translator() -> tuple[KVEventTranslator, list[tuple[str, list[bytes], bytes]]]:
    events: list[tuple[str, list[bytes], bytes]] = []
    return KVEventTranslator(MODEL, BS, lambda t, h, p: events.append((t, h, p))), events


def blocks(first: int, last: int) -> list[int]:
    """Tokens of blocks first..last-1 of TOKENS."""
    return TOKENS[first * BS:last * BS]


def test_root_and_continuation_give_the_routers_chain() -> None:
    bridge, events = translator()
    bridge.stored([11, 12], None, blocks(0, 2), BS)
    bridge.stored([13, 14, 15, 16], 12, blocks(2, 6), BS)
    assert events == [("stored", ROUTER[:2], hash_salt(MODEL)),
                      ("stored", ROUTER[2:], ROUTER[1])]
    assert bridge.cached_hashes() == ROUTER


@pytest.mark.parametrize(("stored", "expected"), [
    # (vLLM hashes, parent, first block, last block, block size, medium) -> events
    ([([11, 12], None, 0, 2, BS, "GPU"), ([11, 12], None, 0, 2, BS, "GPU")],
     [("stored", ROUTER[:2], hash_salt(MODEL))]),  # stored again (reuse report): once
    ([([11, 12], None, 0, 2, BS, "GPU"), ([11, 12, 13], None, 0, 3, BS, "GPU")],
     [("stored", ROUTER[:2], hash_salt(MODEL)), ("stored", ROUTER[2:3], ROUTER[1])]),
    ([([11], None, 0, 1, BS, "CPU")], []),  # vLLM's host offload pool is not the device
    ([([11], None, 0, 1, BS, None)], [("stored", ROUTER[:1], hash_salt(MODEL))]),
    ([([11], None, 0, 2, 2 * BS, "GPU")], []),  # another block size: not the router's blocks
    ([([11, 12], None, 0, 1, BS, "GPU")], []),  # token ids do not cover the blocks
    ([([13], 12, 2, 3, BS, "GPU")], []),  # unknown parent (its event was lost)
])
def test_stored_events(stored: list[tuple[list[int], int | None, int, int, int, str | None]],
                       expected: list[tuple[str, list[bytes], bytes]]) -> None:
    bridge, events = translator()
    for hashes, parent, first, last, size, medium in stored:
        bridge.stored(hashes, parent, blocks(first, last), size, medium=medium)
    assert events == expected


def test_removed_maps_back_and_ignores_what_it_never_saw() -> None:
    bridge, events = translator()
    bridge.stored([11, 12, 13], None, blocks(0, 3), BS)
    events.clear()
    bridge.removed([13, 99])
    bridge.removed([12], medium="CPU")  # a host-pool copy going away: the device keeps it
    assert events == [("removed", [ROUTER[2]], b"")]
    assert bridge.cached_hashes() == ROUTER[:2]


def test_a_block_held_under_two_keys_goes_with_the_last() -> None:
    bridge, events = translator()
    bridge.stored([11], None, blocks(0, 1), BS, group=0)
    bridge.stored([11], None, blocks(0, 1), BS, group=1)
    bridge.removed([11], group=0)
    assert [e[0] for e in events] == ["stored"]
    bridge.removed([11], group=1)
    assert events[-1] == ("removed", [ROUTER[0]], b"")


def test_cleared_forgets_everything() -> None:
    bridge, events = translator()
    bridge.stored([11, 12], None, blocks(0, 2), BS)
    bridge.cleared()
    assert events[-1] == ("cleared", [], b"")
    assert bridge.cached_hashes() == []
    bridge.stored([13], 12, blocks(2, 3), BS)  # its parent is gone from the translation
    assert bridge.skipped_events == 1


def test_snapshot_puts_parents_first_even_when_a_parent_came_back_later() -> None:
    bridge, _ = translator()
    bridge.stored([11, 12, 13], None, blocks(0, 3), BS)
    bridge.removed([11])
    bridge.stored([21], None, blocks(0, 1), BS)  # the root block again, under a new vLLM hash
    assert bridge.cached_hashes() == ROUTER[:3]


def test_an_adapter_salts_its_own_chain() -> None:
    bridge, events = translator()
    bridge.stored([11], None, blocks(0, 1), BS, lora_name="sql")
    assert events[0][1] == block_hashes(blocks(0, 1), BS, hash_salt(MODEL, "sql"))
    assert events[0][1] != ROUTER[:1]


ACME = hash_salt(MODEL, "", "acme")
"""A tenant's salt; the worker passes its text to vLLM as the request's ``cache_salt``."""


@pytest.mark.parametrize(("extra_keys", "lora_name", "expected"), [
    (None, None, None),
    ((), None, None),
    (("s",), None, "s"),
    (("sql", "s"), "sql", "s"),  # the LoRA name comes first
    (("sql",), "sql", None),  # an adapter and no salt
    ((["img", 0], "s", b"\x01"), None, "s"),  # multimodal pairs before, embedding digests after
    ((["img", 0], b"\x01"), None, None),
])
def test_cache_salt_of(extra_keys: tuple[object, ...] | None, lora_name: str | None,
                       expected: str | None) -> None:
    assert cache_salt_of(extra_keys, lora_name) == expected


@pytest.mark.parametrize(("extra_keys", "lora_name", "root"), [
    ([(ACME.hex(),), None], None, ACME),  # a tenant's request: its own chain
    ([("sql", hash_salt(MODEL, "sql", "acme").hex())], "sql", hash_salt(MODEL, "sql", "acme")),
    ([(hash_salt(MODEL).hex(),)], None, hash_salt(MODEL)),  # the default tenant, salted
    (None, None, hash_salt(MODEL)),  # no salt at all (a canary): the model's chain
])
def test_a_salted_request_roots_at_its_tenants_salt(
        extra_keys: list[tuple[str, ...] | None] | None, lora_name: str | None,
        root: bytes) -> None:
    bridge, events = translator()
    bridge.stored([11, 12], None, blocks(0, 2), BS, lora_name=lora_name, extra_keys=extra_keys)
    assert events == [("stored", block_hashes(blocks(0, 2), BS, root), root)]
    bridge.stored([13], 12, blocks(2, 3), BS)  # the chain goes on from the tenant's blocks
    assert events[-1] == ("stored", block_hashes(blocks(0, 3), BS, root)[2:], events[0][1][1])


def test_two_tenants_same_prompt_are_two_chains() -> None:
    bridge, events = translator()
    bridge.stored([11, 12], None, blocks(0, 2), BS, extra_keys=[(ACME.hex(),), None])
    bridge.stored([21, 22], None, blocks(0, 2), BS,
                  extra_keys=[(hash_salt(MODEL, "", "globex").hex(),), None])
    assert [e[1] for e in events] == [block_hashes(blocks(0, 2), BS, ACME),
                                      block_hashes(blocks(0, 2), BS,
                                                   hash_salt(MODEL, "", "globex"))]
    assert not set(events[0][1]) & set(events[1][1])
    assert not set(events[0][1]) & set(ROUTER)  # nor the default tenant's


def test_a_salt_tandem_never_set_is_credited_to_no_one() -> None:
    bridge, events = translator()
    bridge.stored([11], None, blocks(0, 1), BS, extra_keys=[("someone-elses",)])
    assert events == [] and bridge.skipped_events == 1
