"""Chained block hashes: the identity of a KV block everywhere in tandem.

``h[i] = H(h[i-1], tokens of block i)`` with ``h[-1] = H(salt)``; the salt carries model, adapter
and tenant so two tenants never share cache. Only whole blocks are hashed: a trailing partial
block has no identity (it is never shared or stored). ``H`` is BLAKE2b with a 16-byte digest:
collision-resistant (blocks are shared across tenants' requests by hash alone) and ~1 µs per
128-token block.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

HASH_BYTES = 16


def hash_salt(model: str, adapter: str = "", tenant: str = "") -> bytes:
    """The root of every chain for one (model, adapter, tenant)."""
    material = "\x1f".join((model, adapter, tenant)).encode()
    return hashlib.blake2b(material, digest_size=HASH_BYTES, person=b"tandem-salt").digest()


def salt_text(salt: bytes) -> str:
    """A salt as it travels in text: a worker's KV-transfer parameters and vLLM's per-request
    ``cache_salt`` (which vLLM mixes into its own hash of the prompt's first block)."""
    return salt.hex()


def salt_from_text(text: object) -> bytes | None:
    """The salt ``salt_text`` wrote; None for anything else (a salt tandem did not set)."""
    if not isinstance(text, str) or len(text) != 2 * HASH_BYTES:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def chain_root(model: str, adapter: str, cache_salt: str | None) -> bytes | None:
    """The tandem salt of a chain an engine cached: the request's own salt when it carried one
    (a tenant's, as the router computed it), else the model's and adapter's (a request that came
    without one: a canary, a direct engine call). None: a salt that is not tandem's, whose blocks
    must not be credited to anyone."""
    if cache_salt is None:
        return hash_salt(model, adapter)
    return salt_from_text(cache_salt)


def block_hashes(token_ids: Sequence[int], block_size: int, salt: bytes) -> list[bytes]:
    """Hashes of every whole block of ``token_ids``, chained from ``salt``."""
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    tokens = array("I", token_ids).tobytes()
    stride = 4 * block_size
    parent = salt
    hashes: list[bytes] = []
    for start in range(0, len(tokens) - stride + 1, stride):
        digest = hashlib.blake2b(parent, digest_size=HASH_BYTES)
        digest.update(tokens[start:start + stride])
        parent = digest.digest()
        hashes.append(parent)
    return hashes


def extend_hashes(
    parent: bytes, token_ids: Sequence[int], block_size: int
) -> list[bytes]:
    """Continues a chain from ``parent`` over further whole blocks (same rule as above)."""
    return block_hashes(token_ids, block_size, parent)


def tail_hash(parent: bytes, token_ids: Sequence[int]) -> bytes:
    """Hash of a prompt's partial last block (fewer than a block of tokens), chained from the
    last whole block. Its own domain (``person``) keeps it apart from every whole block's hash:
    only a prompt with exactly these tokens reuses it (a prefill hands it to its decode)."""
    digest = hashlib.blake2b(parent, digest_size=HASH_BYTES, person=b"tandem-tail")
    digest.update(array("I", token_ids).tobytes())
    return digest.digest()


def prompt_hashes(token_ids: Sequence[int], block_size: int, salt: bytes) -> list[bytes]:
    """Whole-block hashes of a prompt, then its partial tail's hash when it has one: the blocks a
    prefill stores and its KV handle names (they cover exactly ``len(token_ids)`` tokens)."""
    hashes = block_hashes(token_ids, block_size, salt)
    whole = len(hashes) * block_size
    if whole < len(token_ids):
        hashes.append(tail_hash(hashes[-1] if hashes else salt, token_ids[whole:]))
    return hashes
