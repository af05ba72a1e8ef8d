"""Settings of the KV store service."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Interval

from tandem.service.groups import ControlPlaneSettings, GrpcSettings, ServerSettings
from tandem.service.settings import Settings, shared
from tandem.telemetry import TelemetrySettings

GiB = 1 << 30
MiB = 1 << 20


TierKind = Literal["cxl", "nvme"]
"""The kinds of tier (``tiers.registry.TIER_KINDS``; a test keeps them equal)."""

Port = Annotated[int, Interval(ge=0, le=65535)]


@dataclasses.dataclass(frozen=True)
class StoreSettings(Settings):
    """The store's own rules: reservations, leases, promotion, verification. The store takes
    this group; its fields are flags of the service like any other (the service's settings
    extend it, so the flags keep their names)."""

    reserve_timeout_s: Annotated[float, Gt(0)] = 30.0
    """A reservation not committed within this time is reclaimed."""
    lease_ms: Annotated[int, Gt(0)] = 30_000
    """Default lease of the pins that a Get takes."""
    promote_on_hit: bool = True
    """Move a block hit in a lower tier up a tier when that tier has room."""
    verify_on_commit: bool = False
    """Re-checksum same-host arena writes at commit (every read verifies anyway)."""
    verify_on_start: bool = True
    """Verify the checksum of every arena block when reconciling at start."""


@dataclasses.dataclass(frozen=True)
class KVStoreSettings(StoreSettings):
    """KV store: content-addressed KV blocks, metadata in Redis, payloads in a shared-memory
    arena (cxl) and block files (nvme).

    Every flag can also be set as TANDEM_KVSTORE_<FLAG> in the environment."""

    port: Port = 50080
    """gRPC port."""
    store_id: str = "kvstore"
    """Name of this store in Redis keys (one store per host)."""
    host_id: str = ""
    """Host identity announced to clients (same identity = same-host path); default: hostname."""
    tiers: tuple[TierKind, ...] = ("cxl", "nvme")
    """Tiers, fastest first (comma-separated; known: cxl, nvme)."""
    cxl_path: str = "/dev/shm/tandem-kv-arena"
    """Arena file of the cxl tier (a file on a DAX device or /dev/shm)."""
    cxl_capacity_bytes: Annotated[int, Gt(0)] = 1 * GiB
    """Capacity of the cxl tier (rounded down to whole slots)."""
    slot_bytes: Annotated[int, Gt(0)] = 3 * MiB
    """Size of one arena slot: the largest block the cxl tier holds (multiple of 4096)."""
    nvme_path: str = "/var/tmp/tandem-kvstore"
    """Directory of the nvme tier's block files."""
    nvme_capacity_bytes: Annotated[int, Gt(0)] = 16 * GiB
    """Capacity of the nvme tier."""
    nvme_direct_io: bool = True
    """Write blocks demoted to the nvme tier with O_DIRECT (past the page cache): faster
    durable writes of blocks that nobody is about to read."""
    high_watermark: Annotated[float, Interval(gt=0, le=1)] = 0.9
    """Fraction of a tier's capacity past which blocks move down (dropped from the last tier)."""
    low_watermark: Annotated[float, Interval(gt=0, le=1)] = 0.75
    """Fraction of a tier's capacity that eviction brings it back down to."""
    chunk_bytes: Annotated[int, Gt(0)] = 1 * MiB
    """Payload bytes per message of an inline (remote) Get."""
    max_block_bytes: Annotated[int, Gt(0)] = 64 * MiB
    """Largest block payload accepted."""
    max_chain_blocks: Annotated[int, Ge(1)] = 4096
    """Most block hashes accepted in one request."""
    populate: bool = True
    """Pre-fault the arena mapping (MAP_POPULATE)."""
    malloc_keep_bytes: Annotated[int, Ge(0)] = 256 * MiB
    """Freed heap memory the process keeps mapped instead of returning it to the kernel, so
    bulk gRPC messages reuse warm pages rather than page-faulting fresh ones (0: glibc
    defaults)."""
    data_plane: bool = True
    """Run the data plane: remote payloads and Lookup over a length-prefixed binary protocol on
    a TCP port of its own, beside gRPC (docs/kvstore.md, "Data plane"); false: gRPC only."""
    data_port: Port = 0
    """TCP port of the data plane (on --host); 0 picks a free port. Clients learn it from
    Describe, so only a deployment behind a fixed port map (a Service) needs to set it."""
    data_advertise_host: str = ""
    """Host that clients connect to for the data plane (empty: the host of the gRPC address
    they used)."""
    control: ControlPlaneSettings = shared(ControlPlaneSettings)
    """Redis holding the block metadata, leases and KV events."""
    server: ServerSettings = shared(ServerSettings)
    """Interface (gRPC and data plane) and drain."""
    grpc: GrpcSettings = shared(GrpcSettings)
    """gRPC transport limits."""
    telemetry: TelemetrySettings = shared(TelemetrySettings)
    """Logs, traces, metrics."""

    def validate(self) -> None:
        if not self.tiers or len(set(self.tiers)) != len(self.tiers):
            raise ValueError(f"--tiers: none or repeated in {','.join(self.tiers)}")
        if self.slot_bytes % 4096:
            raise ValueError("--slot-bytes must be a positive multiple of 4096")
        if "cxl" in self.tiers and self.cxl_capacity_bytes < self.slot_bytes:
            raise ValueError("--cxl-capacity-bytes must hold at least one slot")
        if self.low_watermark > self.high_watermark:
            raise ValueError("need 0 < --low-watermark <= --high-watermark <= 1")
