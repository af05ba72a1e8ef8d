"""Settings of the KV client (``KVClient``)."""

from __future__ import annotations

import dataclasses

from tandem.service.tls import TlsSettings

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class KVClientSettings:
    """How a worker talks to its KV store."""

    same_host: bool | None = None
    """Use the arena and block files directly: None = when the store's host identity matches."""
    host_id: str = ""
    """This process's host identity (default: hostname)."""
    streams: int = 2
    """Concurrent gRPC streams (separate connections) for remote payload transfer over gRPC."""
    force_grpc: bool = False
    """Move remote payloads and Lookup over gRPC even when the store offers a data plane (tests,
    benchmarks, a network that only lets gRPC through)."""
    data_connections: int = 4
    """Most data-plane connections kept open to the store (a call holds one; concurrent calls
    beyond this wait for one)."""
    chunk_bytes: int = 1 * MiB
    """Payload bytes per message on the remote path."""
    lease_ms: int = 0
    """Pin lease of same-host reads (0: the store's default)."""
    timeout_s: float = 60.0
    """Deadline of one call."""
    populate: bool = True
    """Pre-fault the arena mapping (MAP_POPULATE)."""
    direct_io: bool = False
    """Write same-host nvme blocks with O_DIRECT: faster durable writes, but a read soon after
    comes from the disk rather than the page cache (see ``tandem.kvclient.blockfile``)."""
    malloc_keep_bytes: int = 0
    """Freed heap memory this process keeps mapped for reuse, so bulk remote transfers do not
    page-fault fresh buffers (process-wide: ``tandem.kvclient.memtune``); 0 leaves glibc's
    defaults."""
    reconnect_base_s: float = 0.2
    """First pause before trying an unreachable store again (``StoreLink``); doubled after each
    failed try, with full jitter."""
    reconnect_max_s: float = 5.0
    """Longest pause between two tries to reach the store."""
    tls: TlsSettings = dataclasses.field(default_factory=TlsSettings)
    """TLS of the calls to the store, gRPC and data plane alike (the calling service's
    --tls-* settings)."""
