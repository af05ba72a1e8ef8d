"""The local launcher's KV store (``--kvstore``): its settings for one run of the system,
its arena slot sized to one block of the workers it serves."""

from __future__ import annotations

from pathlib import Path

from services.kvstore.settings import KVStoreSettings
from tandem.service.groups import ControlPlaneSettings, ServerSettings
from tandem.telemetry import TelemetrySettings


def slot_bytes(engine: str, dtype: str, model_dir: str) -> int:
    """The store's slot fits one block of the vLLM workers (their ``dtype`` as each resolves it
    on this host); mock workers' blocks fit the store's default."""
    least = KVStoreSettings.slot_bytes
    if engine != "vllm":
        return least
    from tandem.engines.vllm_dtype import host_dtype, store_slot_bytes

    return store_slot_bytes(model_dir, host_dtype(dtype, model_dir), least)


def kvstore_settings(namespace: str, host: str, port: int, arena: str, run_dir: Path,
                     cxl_mib: int, nvme_mib: int, slot: int, otlp_endpoint: str | None,
                     metrics_port: int) -> KVStoreSettings:
    """One store on ``host:port`` with its arena file at ``arena`` (the cxl tier) and its nvme
    tier under ``run_dir``."""
    return KVStoreSettings(
        control=ControlPlaneSettings(namespace=namespace),
        server=ServerSettings(host=host), port=port,
        cxl_path=arena, cxl_capacity_bytes=cxl_mib << 20,
        nvme_path=str(run_dir.resolve() / "kvstore-nvme"), nvme_capacity_bytes=nvme_mib << 20,
        slot_bytes=slot,
        telemetry=TelemetrySettings(otlp_endpoint=otlp_endpoint, metrics_port=metrics_port))
