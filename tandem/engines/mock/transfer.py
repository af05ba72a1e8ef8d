"""The simulated engine's KV traffic, for real: a prefill writes the prompt's blocks to the KV
store, a hand-off reads them back, through tandem's KV client, as vLLM's connector does (the
same hashes, spans and stages), with payloads of the simulated block size. The payload bytes
carry nothing (the mock computes nothing); their size and path are real.

A store that is not up yet, or goes away, never fails a request: the link (``StoreLink``)
reconnects in the background and, until it has, requests skip the store (a save is lost, a
load computes the prompt instead).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from tandem.engines.base import EngineRequest
from tandem.hashing import prompt_hashes
from tandem.kv_transfers import Direction, record_transfer_stages
from tandem.kvclient.client import KVClientSettings
from tandem.kvclient.link import StoreLink
from tandem.service.tls import TlsSettings
from tandem.telemetry import context_from_headers

log = logging.getLogger(__name__)

DEFAULT_BLOCK_BYTES = 4096
"""Block size in the store without a profile that knows its model's KV size."""


class MockKVTransfer:
    """Puts and gets one request's prompt blocks; ``kv_transfer`` of the request says which
    (``save`` and ``salt`` on a prefill, ``block_hashes`` and ``num_tokens`` on a hand-off)."""

    def __init__(self, address: str, block_size: int, block_bytes: int, salt: bytes,
                 host_id: str = "", tls: TlsSettings | None = None) -> None:
        self.block_size = block_size
        self.salt = salt
        self.payload = bytes(block_bytes)  # one zeroed block, written under every hash
        # A fleet hosts many simulated engines in one process: none pre-faults the whole arena.
        self.link = StoreLink(address, KVClientSettings(
            populate=False, host_id=host_id, tls=tls or TlsSettings()))

    @property
    def connected(self) -> bool:
        return self.link.connected

    async def connect(self) -> None:
        """Connects if the store answers; otherwise keeps trying in the background."""
        await self.link.start()

    async def close(self) -> None:
        await self.link.close()

    async def save(self, request: EngineRequest) -> None:
        """Writes the prompt's blocks (whole blocks and the partial tail, as a prefill
        hand-off does) when the request asks for it."""
        params = _params(request)
        if not params.get("save"):
            return
        salt = bytes.fromhex(params["salt"]) if params.get("salt") else self.salt
        hashes = prompt_hashes(request.prompt_token_ids, self.block_size, salt)
        client = self.link.client
        if not hashes or client is None:
            return
        started = time.perf_counter()
        try:
            result = await client.put(hashes, [self.payload] * len(hashes), salt,
                                      context=context_from_headers(request.trace_headers))
        except Exception as error:  # a lost save is a future miss, never a failed request
            log.warning("KV store put failed: %s", error)
            await self.link.lost(error)
            return
        if result.failed:
            log.warning("KV store refused %d blocks", len(result.failed))
        record_transfer_stages({Direction.PUT: time.perf_counter() - started})

    async def load(self, request: EngineRequest) -> int:
        """Reads the blocks of the request's KV handle; returns the prompt tokens they cover
        (0 without a handle, or when the store no longer holds its first block)."""
        params = _params(request)
        hashes = [bytes.fromhex(h) for h in params.get("block_hashes", ())]
        client = self.link.client
        if not hashes or client is None:
            return 0
        started = time.perf_counter()
        try:
            blocks = await client.get(hashes, context=context_from_headers(request.trace_headers))
        except Exception as error:  # the store is a cache: unreachable means compute
            log.warning("KV store get failed: %s", error)
            await self.link.lost(error)
            return 0
        record_transfer_stages({Direction.GET: time.perf_counter() - started})
        if len(blocks) == len(hashes):
            return int(params.get("num_tokens", len(hashes) * self.block_size))
        return len(blocks) * self.block_size


def _params(request: EngineRequest) -> Mapping[str, Any]:
    return request.kv_transfer or {}
