"""The KV-transfer parameters a worker hands its engine's KV connector for one request."""

from __future__ import annotations

from typing import Any

from tandem.hashing import salt_text
from tandem.v1 import common_pb2


def kv_transfer_params(salt: bytes, handle: common_pb2.KVHandle | None = None,
                       save: bool | None = None) -> dict[str, Any] | None:
    """What the engine's KV connector needs for one request (None: its defaults)."""
    params: dict[str, Any] = {}
    if salt:
        params["salt"] = salt_text(salt)
    if handle is not None and handle.block_hashes:
        params["block_hashes"] = [h.hex() for h in handle.block_hashes]
        params["num_tokens"] = handle.num_tokens
    if save is not None:
        params["save"] = save
    return params or None
