"""The hash of a prompt's partial tail block: chained, in its own domain."""

from __future__ import annotations

from tandem.hashing import block_hashes, hash_salt, prompt_hashes, tail_hash


def test_a_tail_hash_never_equals_a_whole_block_hash() -> None:
    salt = hash_salt("m")
    tokens = list(range(10))
    assert tail_hash(salt, tokens[:4]) != block_hashes(tokens[:4], 4, salt)[0]


def test_prompt_hashes_are_the_whole_blocks_then_the_tail() -> None:
    salt = hash_salt("m")
    tokens = list(range(10))
    hashes = prompt_hashes(tokens, 4, salt)
    assert hashes[:2] == block_hashes(tokens, 4, salt)
    assert hashes[2] == tail_hash(hashes[1], tokens[8:])
    assert prompt_hashes(tokens[:8], 4, salt) == block_hashes(tokens[:8], 4, salt)
    assert prompt_hashes(tokens[:3], 4, salt) == [tail_hash(salt, tokens[:3])]
    assert tail_hash(hashes[1], [8, 9]) != tail_hash(hashes[1], [8, 10])
