"""Start-up reconciliation (pure): what the tiers really hold decides, not Redis.

Inputs are what Redis says (committed records, reservations) and what the tiers hold (arena
headers with their checksum verdicts, block files, temporaries). The plan says which blocks the
store keeps, which Redis records are lost (payload gone), which blocks Redis forgot (Redis
restarted without persistence), and which slots and files are garbage (stale reservations,
corrupt or duplicate payloads, orphan temporaries).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from services.kvstore.core.metadata import Block, State
from tandem.kvclient.block_format import STATE_COMMITTED, BlockHeader


@dataclasses.dataclass(frozen=True)
class Record:
    """A committed block as Redis records it."""

    tier: str
    slot: int
    size: int
    checksum: int
    generation: int
    parent: bytes
    path: str

    def encode(self) -> bytes:
        return "|".join((self.tier, str(self.slot), str(self.size), str(self.checksum),
                         str(self.generation), self.parent.hex(), self.path)).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Record | None:
        try:
            tier, slot, size, crc, gen, parent, path = raw.decode().split("|", 6)
            return cls(tier, int(slot), int(size), int(crc), int(gen), bytes.fromhex(parent),
                       path)
        except (ValueError, UnicodeDecodeError):
            return None


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """A block file found in a file tier."""

    tier: str
    path: str
    header: BlockHeader | None
    payload_bytes: int


@dataclasses.dataclass
class TierContents:
    """What one tier holds at start."""

    slot_headers: dict[int, BlockHeader] = dataclasses.field(default_factory=dict)
    """Headers of the slots that are in use, by slot."""
    verified_slots: set[int] = dataclasses.field(default_factory=set)
    """Slots among those whose payload passed its checks."""
    files: dict[bytes, FileEntry] = dataclasses.field(default_factory=dict)
    """Block files, by the hash their name says."""
    temporaries: list[str] = dataclasses.field(default_factory=list)
    """Files left half-written (never committed)."""


@dataclasses.dataclass
class Plan:
    keep: list[Block] = dataclasses.field(default_factory=list)
    found: list[Block] = dataclasses.field(default_factory=list)  # kept, unknown to Redis
    lost: list[tuple[bytes, str]] = dataclasses.field(default_factory=list)  # (hash, tier)
    free_slots: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    delete_paths: list[str] = dataclasses.field(default_factory=list)
    stale_writing: list[bytes] = dataclasses.field(default_factory=list)
    corrupt: int = 0


def plan(
    tier_order: list[str],
    redis_blocks: dict[bytes, Record],
    redis_writing: set[bytes],
    arena_headers: dict[tuple[str, int], BlockHeader],
    arena_ok: set[tuple[str, int]],
    files: dict[bytes, FileEntry],
    temporaries: list[str],
    last_access: dict[bytes, float],
) -> Plan:
    """Decides the store's content after a restart (see the module docstring)."""
    result = Plan(stale_writing=sorted(redis_writing), delete_paths=list(temporaries))
    rank = {tier: index for index, tier in enumerate(tier_order)}
    candidates: dict[bytes, Block] = {}

    def offer(block: Block, discard: tuple[str, int] | str) -> None:
        current = candidates.get(block.block_hash)
        if current is not None and rank[current.tier] <= rank[block.tier]:
            _discard(result, discard)
            return
        if current is not None:
            _discard(result, (current.tier, current.slot) if current.slot >= 0 else current.path)
        candidates[block.block_hash] = block

    for (tier, slot), header in sorted(arena_headers.items()):
        if header.state != STATE_COMMITTED:
            result.free_slots.append((tier, slot))
            continue
        if (tier, slot) not in arena_ok:
            result.corrupt += 1
            result.free_slots.append((tier, slot))
            continue
        offer(_block(header, tier, slot, "", last_access), (tier, slot))
    for block_hash, entry in sorted(files.items()):
        file_header = entry.header
        if (file_header is None or file_header.state != STATE_COMMITTED
                or file_header.block_hash != block_hash
                or file_header.size != entry.payload_bytes):
            result.corrupt += 1
            result.delete_paths.append(entry.path)
            continue
        offer(_block(file_header, entry.tier, -1, entry.path, last_access), entry.path)

    for block_hash, record in redis_blocks.items():
        if block_hash not in candidates:
            result.lost.append((block_hash, record.tier))
    result.keep = [candidates[h] for h in sorted(candidates, key=lambda h: (
        candidates[h].last_access, h))]
    result.found = [block for block in result.keep if block.block_hash not in redis_blocks]
    return result


def plan_for(
    contents: Mapping[str, TierContents],
    redis_blocks: dict[bytes, Record],
    redis_writing: set[bytes],
    last_access: dict[bytes, float],
) -> Plan:
    """``plan`` of what each tier holds (``contents`` by tier name, fastest tier first; of two
    files of one block the faster tier's is offered)."""
    headers: dict[tuple[str, int], BlockHeader] = {}
    verified: set[tuple[str, int]] = set()
    files: dict[bytes, FileEntry] = {}
    temporaries: list[str] = []
    for tier, found in contents.items():
        for slot, header in found.slot_headers.items():
            headers[(tier, slot)] = header
        verified.update((tier, slot) for slot in found.verified_slots)
        temporaries += found.temporaries
        for block_hash, entry in found.files.items():
            files.setdefault(block_hash, entry)
    return plan(list(contents), redis_blocks, redis_writing, headers, verified, files,
                temporaries, last_access)


def _discard(result: Plan, what: tuple[str, int] | str) -> None:
    if isinstance(what, tuple):
        result.free_slots.append(what)
    else:
        result.delete_paths.append(what)


def _block(header: BlockHeader, tier: str, slot: int, path: str,
           last_access: dict[bytes, float]) -> Block:
    return Block(
        block_hash=header.block_hash, parent=header.parent, tier=tier, state=State.COMMITTED,
        size=header.size, generation=header.generation, slot=slot, path=path,
        checksum=header.checksum, last_access=last_access.get(header.block_hash, 0.0))
