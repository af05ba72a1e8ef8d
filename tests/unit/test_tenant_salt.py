"""A tenant's salt: how it is derived, how it travels as text (vLLM's ``cache_salt``), and
which salt roots a chain an engine reports (``chain_root``)."""

from __future__ import annotations

import pytest

from tandem.hashing import (
    HASH_BYTES,
    block_hashes,
    chain_root,
    hash_salt,
    salt_from_text,
    salt_text,
)

MODEL = "SmolLM2-135M-Instruct"
TOKENS = list(range(100, 132))
BS = 16


@pytest.mark.parametrize(("a", "b"), [
    ((MODEL, "", "acme"), (MODEL, "", "globex")),  # two tenants
    ((MODEL, "", "acme"), (MODEL, "", "")),  # a tenant and the default tenant
    ((MODEL, "", "acme"), (MODEL, "sql", "acme")),  # one tenant, two adapters
    ((MODEL, "", "acme"), ("other-model", "", "acme")),  # one tenant, two models
    ((MODEL, "a", "b"), (MODEL, "a\x1fb", "")),  # the separator cannot forge a neighbour...
    ((MODEL, "", "x\x1f"), (MODEL, "x", "")),  # ...in either direction
])
def test_distinct_tenants_get_distinct_chains(a: tuple[str, str, str],
                                              b: tuple[str, str, str]) -> None:
    assert hash_salt(*a) != hash_salt(*b)
    assert block_hashes(TOKENS, BS, hash_salt(*a))[0] != block_hashes(TOKENS, BS, hash_salt(*b))[0]


def test_same_tenant_same_chain_and_default_tenant_is_the_models() -> None:
    assert hash_salt(MODEL, "", "acme") == hash_salt(MODEL, "", "acme")
    assert hash_salt(MODEL, "", "") == hash_salt(MODEL)
    assert len(hash_salt(MODEL, "", "acme")) == HASH_BYTES


@pytest.mark.parametrize(("text", "expected"), [
    (salt_text(hash_salt(MODEL, "", "acme")), hash_salt(MODEL, "", "acme")),
    ("00" * HASH_BYTES, bytes(HASH_BYTES)),
    ("00" * (HASH_BYTES - 1), None),  # too short
    ("00" * (HASH_BYTES + 1), None),  # too long
    ("zz" * HASH_BYTES, None),  # not hex
    ("acme", None),  # a tenant's name is not its salt
    (None, None),
    (b"\x00" * HASH_BYTES, None),  # bytes are not the text form
])
def test_salt_from_text(text: object, expected: bytes | None) -> None:
    assert salt_from_text(text) == expected


@pytest.mark.parametrize(("adapter", "cache_salt", "expected"), [
    ("", None, hash_salt(MODEL)),  # no salt: the model's chain (a canary, a direct call)
    ("sql", None, hash_salt(MODEL, "sql")),  # no salt, an adapter: the adapter's chain
    ("", salt_text(hash_salt(MODEL, "", "acme")), hash_salt(MODEL, "", "acme")),  # the tenant's
    ("sql", salt_text(hash_salt(MODEL, "sql", "acme")), hash_salt(MODEL, "sql", "acme")),
    ("", salt_text(hash_salt(MODEL)), hash_salt(MODEL)),  # the default tenant's, sent explicitly
    ("", "not-tandems", None),  # a salt tandem never set: credited to no one
    ("", "", None),
])
def test_chain_root(adapter: str, cache_salt: str | None, expected: bytes | None) -> None:
    assert chain_root(MODEL, adapter, cache_salt) == expected
