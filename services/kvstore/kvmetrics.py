"""The store's OpenTelemetry instruments (``tandem_kvstore_*``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from tandem.kvclient.transport import DATAPLANE, GRPC
from tandem.telemetry import meter

PATHS = (GRPC, DATAPLANE)
"""Transports of remote transfers (label ``path``; same-host calls are ``local``)."""


class KVMetrics:
    def __init__(self, tier_stats: Callable[[], Iterable[tuple[str, int, int]]],
                 pinned: Callable[[], int]) -> None:
        m = meter("tandem.kvstore")
        self.hits = m.create_counter("tandem_kvstore_hits", unit="{block}",
                                     description="Blocks found by Get, per tier")
        self.misses = m.create_counter("tandem_kvstore_misses", unit="{block}",
                                       description="Blocks asked for by Get and not found")
        self.evictions = m.create_counter("tandem_kvstore_evictions", unit="{block}",
                                          description="Blocks dropped from the last tier")
        self.demotions = m.create_counter("tandem_kvstore_demotions", unit="{block}",
                                          description="Blocks moved one tier down")
        self.promotions = m.create_counter("tandem_kvstore_promotions", unit="{block}",
                                           description="Blocks moved one tier up after a hit")
        self.checksum_failures = m.create_counter(
            "tandem_kvstore_checksum_failures", unit="{block}",
            description="Payloads that failed checksum verification (dropped, never served)")
        self.put_bytes = m.create_counter("tandem_kvstore_put_bytes", unit="By",
                                          description="Payload bytes stored, per tier")
        self.get_bytes = m.create_counter("tandem_kvstore_get_bytes", unit="By",
                                          description="Payload bytes served inline, per tier")
        self.put_latency = m.create_histogram(
            "tandem_kvstore_put_duration", unit="s",
            description="Put/Commit latency, per path (local, grpc, dataplane)")
        self.get_latency = m.create_histogram(
            "tandem_kvstore_get_duration", unit="s",
            description="Get latency, per path (local, grpc, dataplane)")
        self.lookup_latency = m.create_histogram(
            "tandem_kvstore_lookup_duration", unit="s",
            description="Lookup latency, per path (grpc, dataplane)")
        self.transfer_bytes = m.create_counter(
            "tandem_kvstore_transfer_bytes", unit="By",
            description="Payload bytes of remote puts (in) and gets (out), per path (grpc, "
                        "dataplane)")
        self.dataplane_errors = m.create_counter(
            "tandem_kvstore_dataplane_errors", unit="{connection}",
            description="Data-plane connections the store ended with an error frame (bad input "
                        "from the peer, a transfer past its reservation or lease, internal)")

        def tier_bytes(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(used, {"tier": tier}) for tier, used, _ in tier_stats()]

        def tier_blocks(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(count, {"tier": tier}) for tier, _, count in tier_stats()]

        def pinned_blocks(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(pinned())]

        # Publish every per-tier counter at zero from the start, so dashboards and alerts see
        # "no evictions yet" as 0 rather than as a missing series.
        for tier, _, _ in tier_stats():
            for counter in (self.hits, self.evictions, self.demotions, self.promotions,
                            self.checksum_failures, self.put_bytes, self.get_bytes):
                counter.add(0, {"tier": tier})
        self.misses.add(0)
        for path in PATHS:
            for direction in ("in", "out"):
                self.transfer_bytes.add(0, {"path": path, "direction": direction})
        self.dataplane_errors.add(0)

        m.create_observable_gauge("tandem_kvstore_bytes", [tier_bytes], unit="By",
                                  description="Bytes in use per tier")
        m.create_observable_gauge("tandem_kvstore_blocks", [tier_blocks], unit="{block}",
                                  description="Blocks per tier")
        m.create_observable_gauge("tandem_kvstore_pinned_blocks", [pinned_blocks],
                                  unit="{block}", description="Blocks pinned by readers")

    def remote_put(self, seconds: float, size: int, path: str) -> None:
        """A remote put of ``size`` payload bytes received over ``path`` (grpc, dataplane)."""
        self.put_latency.record(seconds, {"path": path})
        self.transfer_bytes.add(size, {"path": path, "direction": "in"})

    def remote_get(self, seconds: float, size: int, path: str) -> None:
        """A remote get of ``size`` payload bytes sent over ``path``."""
        self.get_latency.record(seconds, {"path": path})
        self.transfer_bytes.add(size, {"path": path, "direction": "out"})

    def lookup(self, seconds: float, path: str) -> None:
        """(Request counts per path are the duration histograms' counts.)"""
        self.lookup_latency.record(seconds, {"path": path})
