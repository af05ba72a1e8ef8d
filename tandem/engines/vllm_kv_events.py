"""vLLM's KV events, bridged into tandem's.

vLLM's engine core (a separate process) publishes batches of ``BlockStored`` /
``BlockRemoved`` / ``AllBlocksCleared`` over ZMQ. vLLM names a block by its own hash (sha256
of its own encoding, by default cut to a 64-bit int); tandem names it by the chain of
``tandem.hashing``, which the router computes from the prompt. A ``BlockStored`` carries its
blocks' token ids and the vLLM hash of the first block's parent, so each block's tandem hash
follows from its parent's. A chain's root is the request's salt: vLLM puts a request's
``cache_salt`` (the tenant's salt, which the worker passes it) among the first block's extra keys,
so a tenant's blocks map to the tenant-rooted hashes the router computes for that tenant, and
two tenants' identical prompts stay two chains. ``KVEventTranslator`` keeps vLLM hash -> tandem
hash for every block vLLM holds and passes tandem events (``stored`` / ``removed`` /
``cleared``) to the worker's KV event sink. ``VllmKVEventBridge`` is the transport around it.

Transport: the worker binds a SUB socket on a port the OS picks on loopback and gives vLLM that
address; vLLM's publisher connects to it (vLLM connects when the endpoint has no wildcard), long
before the first request, so no event is lost to a late subscriber. vLLM numbers its batches
from 0; on a jump the bridge asks vLLM's replay socket (a ROUTER the publisher binds, on an ipc
path private to this worker) for the missing batches. A batch no longer in vLLM's replay buffer
is lost for good: the bridge announces ``cleared`` and starts over, so the index misses blocks
vLLM still holds (until they are stored again) but never keeps stale ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tandem.engines.base import KVEventSink
from tandem.hashing import chain_root, extend_hashes

log = logging.getLogger(__name__)

VllmHash = bytes | int
"""vLLM's name of a block (``ExternalBlockHash``)."""
DEVICE_MEDIA = (None, "GPU")
"""Media of vLLM's device block pool ("GPU" on every platform, the CPU build included);
"CPU" marks vLLM's host offload pool, which is not the worker's device cache."""
END_OF_REPLAY = -1
"""Sequence number of the frame that ends a replay answer (vLLM's ``END_SEQ``)."""


def cache_salt_of(extra_keys: Sequence[Any] | None, lora_name: str | None) -> str | None:
    """The ``cache_salt`` among a first block's extra keys as vLLM publishes them (in order: the
    LoRA name when the request has an adapter, ``(mm_identifier, offset)`` pairs, the cache salt,
    prompt-embedding digests as bytes); None when the request had none."""
    keys = list(extra_keys or ())
    if lora_name and keys and keys[0] == lora_name:
        keys = keys[1:]
    return next((key for key in keys if isinstance(key, str)), None)


class KVEventTranslator:
    """vLLM block events -> tandem block events, and the set of blocks vLLM holds now. No I/O.

    Blocks are keyed by (KV cache group, vLLM hash); a tandem hash is held while at least one
    such key maps to it, and is announced when the first appears and when the last goes."""

    def __init__(self, model: str, block_size: int, sink: KVEventSink | None = None) -> None:
        self.model = model
        self.block_size = block_size
        self.sink = sink
        self.skipped_events = 0
        """Stored events not translated: a foreign block size or medium, or an unknown
        parent (its own stored event was lost)."""
        self._tandem_of: dict[tuple[int, VllmHash], bytes] = {}
        self._holders: dict[bytes, int] = {}
        """Tandem hash -> how many (group, vLLM hash) keys map to it."""
        self._parent_of: dict[bytes, bytes] = {}

    def _emit(self, event_type: str, hashes: list[bytes], parent: bytes) -> None:
        if self.sink is not None:
            self.sink(event_type, hashes, parent)

    def stored(
        self, block_hashes: Sequence[VllmHash], parent: VllmHash | None,
        token_ids: Sequence[int], block_size: int, group: int | None = None,
        medium: str | None = None, lora_name: str | None = None,
        extra_keys: Sequence[Any] | None = None,
    ) -> None:
        """vLLM cached ``block_hashes`` (a chain continuing ``parent``; None: from the root).
        ``extra_keys``: vLLM's per-block extra keys (the first block's carry the cache salt)."""
        key_group = group or 0
        if (medium not in DEVICE_MEDIA or block_size != self.block_size
                or len(token_ids) != len(block_hashes) * block_size):
            self.skipped_events += 1
            return
        if parent is None:
            first_keys = extra_keys[0] if extra_keys else None
            tandem_parent: bytes | None = chain_root(  # one hash: not worth a per-tenant cache
                self.model, lora_name or "", cache_salt_of(first_keys, lora_name))
        else:
            tandem_parent = self._tandem_of.get((key_group, parent))
        if tandem_parent is None:
            self.skipped_events += 1
            return
        runs: list[tuple[bytes, list[bytes]]] = []
        fresh: list[bytes] = []
        run_parent = tandem_parent
        for vllm_hash, tandem_hash in zip(
                block_hashes, extend_hashes(tandem_parent, token_ids, block_size), strict=True):
            key = (key_group, vllm_hash)
            is_new = False
            if key not in self._tandem_of:
                self._tandem_of[key] = tandem_hash
                holders = self._holders.get(tandem_hash, 0)
                self._holders[tandem_hash] = holders + 1
                if holders == 0:
                    self._parent_of[tandem_hash] = tandem_parent
                    is_new = True
            if is_new:
                if not fresh:
                    run_parent = tandem_parent
                fresh.append(tandem_hash)
            elif fresh:
                runs.append((run_parent, fresh))
                fresh = []
            tandem_parent = tandem_hash
        if fresh:
            runs.append((run_parent, fresh))
        for run_parent, hashes in runs:
            self._emit("stored", hashes, run_parent)

    def removed(self, block_hashes: Sequence[VllmHash], group: int | None = None,
                medium: str | None = None) -> None:
        """vLLM evicted ``block_hashes``."""
        if medium not in DEVICE_MEDIA:
            return
        key_group = group or 0
        gone: list[bytes] = []
        for vllm_hash in block_hashes:
            tandem_hash = self._tandem_of.pop((key_group, vllm_hash), None)
            if tandem_hash is None:
                continue
            holders = self._holders[tandem_hash] - 1
            if holders:
                self._holders[tandem_hash] = holders
            else:
                del self._holders[tandem_hash]
                del self._parent_of[tandem_hash]
                gone.append(tandem_hash)
        if gone:
            self._emit("removed", gone, b"")

    def cleared(self) -> None:
        """vLLM holds nothing (a reset), or the translation lost events: start over."""
        self._tandem_of.clear()
        self._holders.clear()
        self._parent_of.clear()
        self._emit("cleared", [], b"")

    def cached_hashes(self) -> list[bytes]:
        """Every tandem hash vLLM holds, parents before children."""
        ordered: list[bytes] = []
        placed: set[bytes] = set()
        for block_hash in self._holders:
            pending: list[bytes] = []
            while block_hash in self._holders and block_hash not in placed:
                placed.add(block_hash)
                pending.append(block_hash)
                block_hash = self._parent_of[block_hash]
            ordered.extend(reversed(pending))
        return ordered


class VllmKVEventBridge:
    """Subscribes to the engine core's KV event publisher and feeds a ``KVEventTranslator``.

    ``open()`` before the engine starts (it returns the ``KVEventsConfig`` to give vLLM),
    ``start(block_size)`` once the engine has its block size, ``close()`` after it stopped."""

    def __init__(self, model: str, sink: KVEventSink | None = None, host: str = "127.0.0.1",
                 receive_hwm: int = 100_000, replay_timeout_s: float = 5.0) -> None:
        self.model = model
        self.sink = sink
        self.host = host
        self.receive_hwm = receive_hwm
        self.replay_timeout_s = replay_timeout_s
        self.translator: KVEventTranslator | None = None
        self.endpoint = ""
        self.replay_endpoint = ""
        self.batches = 0
        self.replays = 0
        self.lost = 0
        """Times batches were missing from vLLM's replay buffer (each one a fresh start)."""
        self._next_seq = 0
        self._context: Any = None
        self._socket: Any = None
        self._dir: Path | None = None
        self._decoder: Any = None
        self._vllm: Any = None
        """vLLM's kv_events module (its event classes)."""
        self._task: asyncio.Task[None] | None = None

    def open(self) -> Any:
        """Binds the subscriber; returns vLLM's ``KVEventsConfig`` pointing at it."""
        import zmq
        import zmq.asyncio
        from vllm.config.kv_events import KVEventsConfig

        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, self.receive_hwm)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        port = self._socket.bind_to_random_port(f"tcp://{self.host}")
        self.endpoint = f"tcp://{self.host}:{port}"
        self._dir = Path(tempfile.mkdtemp(prefix="tandem-kv-"))
        self.replay_endpoint = f"ipc://{self._dir}/replay"
        return KVEventsConfig(enable_kv_cache_events=True, publisher="zmq",
                              endpoint=self.endpoint, replay_endpoint=self.replay_endpoint)

    def start(self, block_size: int) -> None:
        """Starts translating; announces ``cleared`` first (a restarted worker holds nothing)."""
        import msgspec
        from vllm.distributed import kv_events

        if self._socket is None:
            raise RuntimeError("VllmKVEventBridge.open() was not called")
        self._vllm = kv_events
        self._decoder = msgspec.msgpack.Decoder(kv_events.KVEventBatch)
        self.translator = KVEventTranslator(self.model, block_size, self._forward)
        self.translator.cleared()
        self._task = asyncio.create_task(self._run(), name="vllm-kv-events")

    def _forward(self, event_type: str, hashes: list[bytes], parent: bytes) -> None:
        if self.sink is not None:
            self.sink(event_type, hashes, parent)

    def cached_hashes(self) -> list[bytes] | None:
        """What vLLM holds now, in tandem hashes (None before ``start``)."""
        return None if self.translator is None else self.translator.cached_hashes()

    async def _run(self) -> None:
        while True:
            _topic, seq_bytes, payload = await self._socket.recv_multipart()
            seq = int.from_bytes(seq_bytes, "big", signed=True)
            try:
                if seq > self._next_seq:
                    await self._replay(self._next_seq)
                    if seq > self._next_seq:
                        self._start_over(seq)
                if seq == self._next_seq:
                    self._apply(seq, payload)
            except Exception:
                log.exception("vLLM KV event batch not applied; starting over")
                self._start_over(seq + 1)

    def _apply(self, seq: int, payload: bytes) -> None:
        assert self.translator is not None
        translator = self.translator
        vllm = self._vllm
        for event in self._decoder.decode(payload).events:
            if isinstance(event, vllm.BlockStored):
                translator.stored(event.block_hashes, event.parent_block_hash, event.token_ids,
                                  event.block_size, event.group_idx, event.medium,
                                  event.lora_name, event.extra_keys)
            elif isinstance(event, vllm.BlockRemoved):
                translator.removed(event.block_hashes, event.group_idx, event.medium)
            elif isinstance(event, vllm.AllBlocksCleared):
                translator.cleared()
        self._next_seq = seq + 1
        self.batches += 1

    async def _replay(self, start: int) -> None:
        """Fetches batches ``start``... from vLLM's replay buffer and applies them."""
        import zmq

        self.replays += 1
        log.info("vLLM KV event gap; replaying", extra={"from_seq": start})
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.replay_endpoint)
        try:
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            async with asyncio.timeout(self.replay_timeout_s):
                while True:
                    _empty, _topic, seq_bytes, payload = await dealer.recv_multipart()
                    seq = int.from_bytes(seq_bytes, "big", signed=True)
                    if seq == END_OF_REPLAY:
                        return
                    if seq > self._next_seq:
                        self._start_over(seq)
                    if seq == self._next_seq:
                        self._apply(seq, payload)
        except TimeoutError:
            log.warning("vLLM KV event replay timed out", extra={"from_seq": start})
        finally:
            dealer.close()

    def _start_over(self, seq: int) -> None:
        assert self.translator is not None
        self.lost += 1
        log.warning("vLLM KV events lost; announcing cleared",
                    extra={"expected": self._next_seq, "got": seq})
        self.translator.cleared()
        self._next_seq = seq

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._context is not None:
            self._context.destroy(linger=0)
            self._context = None
            self._socket = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
