"""The ``vllm`` engine: vLLM in-process, with tandem's KV connector when a store is set."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tandem.engines.vllm_engine import VllmEngine, VllmSettings
    from tandem.worker.settings import WorkerSettings


def vllm_settings(settings: WorkerSettings, role: str) -> VllmSettings:
    """vLLM's settings for a worker of ``role`` with ``settings``; the KV connector's spans
    carry the worker's service name."""
    from tandem.engines.vllm_dtype import host_dtype
    from tandem.engines.vllm_engine import VllmSettings
    from tandem.kvconnector.settings import ConnectorSettings

    connector = None
    if settings.kvstore_address:
        connector = ConnectorSettings(
            store_address=settings.kvstore_address, model=settings.model.served_model_name,
            save=settings.kv_save, lookup=settings.kv_lookup,
            otlp_endpoint=settings.telemetry.otlp_endpoint, service_name=f"tandem-{role}",
            host_id=settings.kv_host_id, tls_cert=settings.grpc.tls.cert,
            tls_key=settings.grpc.tls.key, tls_ca=settings.grpc.tls.ca,
            tls_server_name=settings.grpc.tls.server_name)
    model_dir = settings.model.resolved_dir()
    return VllmSettings(
        model_dir=model_dir,
        served_model_name=settings.model.served_model_name,
        max_model_len=settings.model.max_model_len,
        kv_cache_gib=settings.kv_cache_gib,
        cpu_cores=settings.cpu_cores,
        dtype=host_dtype(settings.dtype, model_dir),
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        otlp_traces_endpoint=settings.telemetry.otlp_endpoint,
        kv_connector=connector,
    )


def build(settings: WorkerSettings, role: str) -> VllmEngine:
    """vLLM's engine (it loads the model when the worker starts it, not here)."""
    from tandem.engines.vllm_engine import VllmEngine

    return VllmEngine(vllm_settings(settings, role))
