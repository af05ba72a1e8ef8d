"""The ``mock`` engine: simulated, for tests and load (``--mock-*`` flags)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tandem.engines.mock import MockEngine, MockSettings
    from tandem.worker.settings import WorkerSettings


def mock_settings(settings: WorkerSettings) -> MockSettings:
    """The simulated engine's settings for a worker with ``settings``."""
    from tandem.engines.mock import MockSettings

    return MockSettings(
        model=settings.model.served_model_name,
        profile=settings.mock.profile,
        speedup=settings.mock.speedup,
        max_model_len=settings.model.max_model_len,
        decode_time_per_step_s=settings.mock.decode_ms / 1000,
        prefill_time_per_token_s=settings.mock.prefill_ms_per_token / 1000,
        kvstore_address=settings.kvstore_address, kvstore_host_id=settings.kv_host_id,
        kvstore_tls=settings.grpc.tls,
        kv_block_bytes=settings.mock.kv_block_bytes,
        max_num_seqs=settings.mock.max_num_seqs, fail_rate=settings.mock.fail_rate,
        block_size=settings.mock.block_size, num_blocks=settings.mock.num_blocks,
    )


def build(settings: WorkerSettings, role: str) -> MockEngine:
    """A simulated engine (the same for every role)."""
    from tandem.engines.mock import MockEngine

    return MockEngine(mock_settings(settings))
